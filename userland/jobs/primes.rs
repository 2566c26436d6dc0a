//! An example job: counts the primes below N (its one argument, 100 000 by default) and
//! prints "primes below N: COUNT". Built for WASI preview 1 by the test suite
//! (`tests/tests/jobs.rs`) with Debian's `rustc --target wasm32-wasi`; any Rust toolchain with
//! that target (or `wasm32-wasip1`) builds it the same way:
//!
//! ```sh
//! rustc --target wasm32-wasi -O userland/jobs/primes.rs -o primes.wasm
//! p2pctl jobs run --on PEER primes.wasm 1000000
//! ```

fn main() {
    let n: usize = match std::env::args().nth(1) {
        None => 100_000,
        Some(arg) => match arg.parse() {
            Ok(n) => n,
            Err(_) => {
                eprintln!("usage: primes [N]: {arg:?} is not a number");
                std::process::exit(2);
            }
        },
    };
    let mut composite = vec![false; n.max(2)];
    let mut count = 0;
    for i in 2..n {
        if !composite[i] {
            count += 1;
            // i * i overflows a 32-bit usize (wasm32) from i = 65 536 on: no multiple of
            // such an i is below n unless i * i is.
            if i > (n - 1) / i {
                continue;
            }
            let mut j = i * i;
            while j < n {
                composite[j] = true;
                j += i;
            }
        }
    }
    println!("primes below {n}: {count}");
}
