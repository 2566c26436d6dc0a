;; A WASI 0.2 command that prints "hello, component\n" through wasi:cli/stdout and returns ok.
(component
  (import "wasi:io/error@0.2.0" (instance $io-error
    (export "error" (type (sub resource)))))
  (alias export $io-error "error" (type $error))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (alias outer 1 $error (type $error-outer))
    (export "error" (type $err (eq $error-outer)))
    (export "output-stream" (type $os (sub resource)))
    (type $stream-error (variant (case "last-operation-failed" (own $err)) (case "closed")))
    (export "stream-error" (type $se (eq $stream-error)))
    (export "[method]output-stream.blocking-write-and-flush"
      (func (param "self" (borrow $os)) (param "contents" (list u8)) (result (result (error $se)))))))
  (alias export $streams "output-stream" (type $output-stream))
  (import "wasi:cli/stdout@0.2.0" (instance $stdout
    (alias outer 1 $output-stream (type $os-outer))
    (export "output-stream" (type $os (eq $os-outer)))
    (export "get-stdout" (func (result (own $os))))))
  (core module $memory (memory (export "memory") 1))
  (core instance $memory (instantiate $memory))
  (alias core export $memory "memory" (core memory $mem))
  (core func $get-stdout (canon lower (func $stdout "get-stdout")))
  (core func $write
    (canon lower (func $streams "[method]output-stream.blocking-write-and-flush") (memory $mem)))
  (core module $m
    (import "env" "memory" (memory 1))
    (import "wasi" "get-stdout" (func $get-stdout (result i32)))
    (import "wasi" "write" (func $write (param i32 i32 i32 i32)))
    (data (i32.const 16) "hello, component\n")
    (func (export "run") (result i32)
      (call $write (call $get-stdout) (i32.const 16) (i32.const 17) (i32.const 64))
      (i32.load8_u (i32.const 64))))
  (core instance $i (instantiate $m
    (with "env" (instance (export "memory" (memory $mem))))
    (with "wasi" (instance
      (export "get-stdout" (func $get-stdout))
      (export "write" (func $write))))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-instance)))
