//! Fuzzing the node-to-node decoders on stable Rust: property-based targets (proptest) that
//! feed arbitrary bytes and mutated valid encodings to the real decoders, and check that they
//! never panic, never allocate for bytes that did not arrive, refuse bad input with a clear
//! error and give valid input back whole.
//!
//! A short run is part of the test suite (`tests/targets/`, one module per decoder); a long run
//! is the same tests with a time budget (see the README's "Fuzzing" section):
//!
//! - `P2POS_FUZZ_SECS=600`: each target runs fresh cases for that long (and says how many);
//! - else `P2POS_FUZZ_CASES` cases per target (default [`DEFAULT_CASES`]).
//!
//! A failing case is shrunk, and its seed is saved under the calling crate's
//! `proptest-regressions/<target>.txt` (commit it): every later run tries it first.
//!
//! # Layout
//! - this file: [`fuzz`], the runner of one target.
//! - [`alloc`]: an allocator that measures what one thread allocates ([`alloc::Metered`]).
//! - [`io`]: an in-memory reader that hands out bytes in given pieces ([`io::Trickle`]).
//! - [`mutate`]: strategies that damage valid encodings ([`mutate::mutated`]).

pub mod alloc;
pub mod io;
pub mod mutate;

use std::time::{Duration, Instant};

use proptest::{
    strategy::Strategy,
    test_runner::{Config, FileFailurePersistence, TestCaseResult, TestError, TestRunner},
};

/// Cases per target in a run without `P2POS_FUZZ_SECS` or `P2POS_FUZZ_CASES`.
pub const DEFAULT_CASES: u32 = 256;
/// Cases per round of a timed run: the runner reports between rounds.
const ROUND_CASES: u32 = 2_000;

/// What one run of a target does: how many cases, or for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// This many cases.
    Cases(u32),
    /// Rounds of fresh cases until this much time has passed.
    Time(Duration),
}

impl Budget {
    /// The budget the environment asks for: `P2POS_FUZZ_SECS`, else `P2POS_FUZZ_CASES`, else
    /// [`DEFAULT_CASES`].
    pub fn from_env() -> Budget {
        let number = |name: &str| -> Option<u64> {
            let value = std::env::var(name).ok()?;
            match value.trim().parse() {
                Ok(n) => Some(n),
                Err(_) => panic!("{name}={value:?} is not a number"),
            }
        };
        if let Some(secs) = number("P2POS_FUZZ_SECS") {
            return Budget::Time(Duration::from_secs(secs));
        }
        let cases = number("P2POS_FUZZ_CASES").map_or(DEFAULT_CASES, |n| {
            u32::try_from(n).unwrap_or(u32::MAX).max(1)
        });
        Budget::Cases(cases)
    }
}

/// Runs target `name` (its regressions are `proptest-regressions/<name>.txt` in the calling
/// crate) on values of `strategy` within the environment's [`Budget`]; panics with the
/// shrunk failing case if one fails or panics.
pub fn fuzz<S, F>(name: &str, strategy: S, test: F)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
    F: Fn(S::Value) -> TestCaseResult,
{
    let path: &'static str = Box::leak(format!("proptest-regressions/{name}.txt").into_boxed_str());
    let config = |cases| Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(path))),
        // Set so that the persisted cases are loaded (a `Direct` path ignores it).
        source_file: Some(path),
        // A failing case is worth a long shrink: it is what the regression test keeps.
        max_shrink_iters: 100_000,
        ..Config::default()
    };
    let check = |runner: &mut TestRunner| match runner.run(&strategy, &test) {
        Ok(()) => {}
        Err(TestError::Fail(why, value)) => {
            panic!("fuzz target {name} failed: {why}\nminimal failing input: {value:#?}")
        }
        Err(TestError::Abort(why)) => panic!("fuzz target {name} aborted: {why}"),
    };
    match Budget::from_env() {
        Budget::Cases(cases) => check(&mut TestRunner::new(config(cases))),
        Budget::Time(budget) => {
            let start = Instant::now();
            let mut rounds = 0u64;
            while start.elapsed() < budget {
                check(&mut TestRunner::new(config(ROUND_CASES)));
                rounds += 1;
            }
            let cases = rounds * u64::from(ROUND_CASES);
            let secs = start.elapsed().as_secs_f64();
            // Read by whoever runs a long fuzz (and copied into docs/fuzzing.md).
            eprintln!(
                "fuzz target {name}: {cases} cases in {secs:.0} s ({:.0}/s), no failure",
                cases as f64 / secs
            );
        }
    }
}
