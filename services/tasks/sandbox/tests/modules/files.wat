;; Tries to open "../outside" and "/etc/passwd" through the preopen (fd 3), creates "out.txt"
;; and writes to it, then exits with the errno of the first open (99 if the second one worked).
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "../outside")
  (data (i32.const 120) "/etc/passwd")
  (data (i32.const 140) "out.txt")
  (data (i32.const 160) "made it\n")
  (func (export "_start")
    (local $outside i32)
    (local $fd i32)
    (local.set $outside
      (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 10)
        (i32.const 0) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 0)))
    (if (i32.eqz (call $path_open (i32.const 3) (i32.const 0) (i32.const 120) (i32.const 11)
          (i32.const 0) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 0)))
      (then (call $proc_exit (i32.const 99))))
    ;; oflags 1 = creat
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 140) (i32.const 7)
          (i32.const 1) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 0))
      (then (call $proc_exit (i32.const 98))))
    (local.set $fd (i32.load (i32.const 0)))
    (i32.store (i32.const 8) (i32.const 160))
    (i32.store (i32.const 12) (i32.const 8))
    (drop (call $fd_write (local.get $fd) (i32.const 8) (i32.const 1) (i32.const 16)))
    (drop (call $fd_close (local.get $fd)))
    (call $proc_exit (local.get $outside))))
