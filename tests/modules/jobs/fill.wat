;; Fills its scratch directory. With no argument: files f00000000, f00000001, ... of 1 MiB each,
;; for ever; with one argument: one file, written 64 KiB at a time for ever. Exits with the
;; WASI errno of the first write or open that fails.
(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  ;; The iovec at 0, the count written at 8, the opened fd at 16, argc at 20, the file name
  ;; at 100 (9 bytes); the 64 KiB written each time at 65536.
  (memory (export "memory") 2)
  ;; "f" and the 8 hex digits of $i, at 100.
  (func $name (param $i i32)
    (local $k i32) (local $d i32)
    (i32.store8 (i32.const 100) (i32.const 102))
    (loop $next
      (local.set $d
        (i32.and
          (i32.shr_u (local.get $i) (i32.mul (i32.sub (i32.const 7) (local.get $k)) (i32.const 4)))
          (i32.const 15)))
      (i32.store8 (i32.add (i32.const 101) (local.get $k))
        (i32.add (local.get $d)
          (select (i32.const 48) (i32.const 87) (i32.lt_u (local.get $d) (i32.const 10)))))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $k) (i32.const 8)))))
  ;; Creates the file named at 100; its fd, or exits with the errno.
  (func $create (result i32)
    (local $err i32)
    (local.set $err
      (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 9) (i32.const 1)
        (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 16)))
    (if (local.get $err) (then (call $exit (local.get $err))))
    (i32.load (i32.const 16)))
  ;; Writes $chunks times 64 KiB to $fd; exits with the errno of a write that fails.
  (func $fill (param $fd i32) (param $chunks i32)
    (local $err i32)
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $chunks)))
        (local.set $err (call $write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
        (if (local.get $err) (then (call $exit (local.get $err))))
        (local.set $chunks (i32.sub (local.get $chunks) (i32.const 1)))
        (br $more))))
  (func (export "_start")
    (local $i i32)
    (drop (call $sizes (i32.const 20) (i32.const 24)))
    (if (i32.eq (i32.load (i32.const 20)) (i32.const 2))
      (then
        (call $name (i32.const 0))
        (call $fill (call $create) (i32.const 0x7fffffff))))
    (loop $file
      (call $name (local.get $i))
      (call $fill (call $create) (i32.const 16))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $file))))
