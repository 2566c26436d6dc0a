;; Sleeps 6 s (one poll_oneoff on the monotonic clock), then prints "done\n": a job that is
;; still running when a test kills its runner.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 200) "done\n")
  (func (export "_start")
    ;; subscription at 0: userdata (8), tag 0 = clock (1 + 7 padding), clock id 1 =
    ;; monotonic (4 + 4), timeout ns (8), precision (8), flags 0 (2 + 6)
    (i64.store (i32.const 0) (i64.const 1))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 6000000000))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (i32.const 0))
    ;; one event out at 104 (8-aligned), its count at 96
    (drop (call $poll (i32.const 0) (i32.const 104) (i32.const 1) (i32.const 96)))
    (i32.store (i32.const 300) (i32.const 200))
    (i32.store (i32.const 304) (i32.const 5))
    (drop (call $fd_write (i32.const 1) (i32.const 300) (i32.const 1) (i32.const 308)))))
