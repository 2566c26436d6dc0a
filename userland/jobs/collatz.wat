;; An example job in WebAssembly text: prints how many steps the Collatz sequence of N (its one
;; argument, a decimal number from 1 to 2^63) takes to reach 1, and a newline. Exits 2 when it
;; is given no number or something else. The Python example `examples/jobs_map.py` maps it over
;; many inputs across a group's peers.
(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  ;; argc at 0, the size of the arguments at 4, the output's iovec at 48, the count written at
  ;; 56; argv's pointers at 256, its bytes at 1024 (at most 32 KiB); the output ends at 40100.
  (memory (export "memory") 1)
  ;; The decimal number at $p, up to its NUL; exits 2 if it is empty, not digits, or too big.
  (func $parse (param $p i32) (result i64)
    (local $n i64) (local $c i32) (local $count i32)
    (block $done
      (loop $next
        (local.set $c (i32.load8_u (local.get $p)))
        (br_if $done (i32.eqz (local.get $c)))
        (if (i32.or (i32.lt_u (local.get $c) (i32.const 48)) (i32.gt_u (local.get $c) (i32.const 57)))
          (then (call $exit (i32.const 2))))
        (if (i32.ge_u (local.get $count) (i32.const 18)) (then (call $exit (i32.const 2))))
        (local.set $n
          (i64.add (i64.mul (local.get $n) (i64.const 10))
            (i64.extend_i32_u (i32.sub (local.get $c) (i32.const 48)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (local.set $count (i32.add (local.get $count) (i32.const 1)))
        (br $next)))
    (if (i32.eqz (local.get $count)) (then (call $exit (i32.const 2))))
    (local.get $n))
  ;; Writes $n in decimal so that it ends right before $end; returns where it starts.
  (func $format (param $n i64) (param $end i32) (result i32)
    (loop $more
      (local.set $end (i32.sub (local.get $end) (i32.const 1)))
      (i64.store8 (local.get $end) (i64.add (i64.rem_u (local.get $n) (i64.const 10)) (i64.const 48)))
      (local.set $n (i64.div_u (local.get $n) (i64.const 10)))
      (br_if $more (i64.ne (local.get $n) (i64.const 0))))
    (local.get $end))
  (func (export "_start")
    (local $n i64) (local $steps i64) (local $start i32)
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (if (i32.ne (i32.load (i32.const 0)) (i32.const 2)) (then (call $exit (i32.const 2))))
    (if (i32.gt_u (i32.load (i32.const 4)) (i32.const 32768)) (then (call $exit (i32.const 2))))
    (drop (call $args (i32.const 256) (i32.const 1024)))
    (local.set $n (call $parse (i32.load (i32.const 260))))
    (if (i64.eqz (local.get $n)) (then (call $exit (i32.const 2))))
    (block $done
      (loop $step
        (br_if $done (i64.eq (local.get $n) (i64.const 1)))
        (if (i64.eqz (i64.rem_u (local.get $n) (i64.const 2)))
          (then (local.set $n (i64.div_u (local.get $n) (i64.const 2))))
          (else (local.set $n (i64.add (i64.mul (local.get $n) (i64.const 3)) (i64.const 1)))))
        (local.set $steps (i64.add (local.get $steps) (i64.const 1)))
        (br $step)))
    (i32.store8 (i32.const 40100) (i32.const 10))
    (local.set $start (call $format (local.get $steps) (i32.const 40100)))
    (i32.store (i32.const 48) (local.get $start))
    (i32.store (i32.const 52) (i32.sub (i32.const 40101) (local.get $start)))
    (drop (call $write (i32.const 1) (i32.const 48) (i32.const 1) (i32.const 56)))))
