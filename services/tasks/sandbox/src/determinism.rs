//! What a deterministic job sees instead of the host's time and entropy: clocks that do not
//! depend on real time, and random generators from a fixed seed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand_wasi::SeedableRng;
use rand_wasi::rngs::StdRng;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};

/// The seed of the secure generator; the insecure one and the insecure seed derive from it.
const SEED: u64 = 0x7032_706f_735f_7761; // "p2pos_wa"

/// How far the monotonic clock moves at each reading, in nanoseconds.
const TICK_NS: u64 = 1_000;

/// The wall clock of a deterministic job: always the Unix epoch.
struct FixedWallClock;

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// The monotonic clock of a deterministic job: moves by one tick at each reading, so that a
/// job timing a loop sees time pass, always by the same amount.
#[derive(Default)]
struct CountingClock {
    readings: AtomicU64,
}

impl HostMonotonicClock for CountingClock {
    fn resolution(&self) -> u64 {
        TICK_NS
    }

    fn now(&self) -> u64 {
        self.readings
            .fetch_add(1, Ordering::Relaxed)
            .saturating_mul(TICK_NS)
    }
}

/// Gives `builder` fixed clocks and seeded random generators.
pub(crate) fn make_deterministic(builder: &mut WasiCtxBuilder) {
    builder
        .wall_clock(FixedWallClock)
        .monotonic_clock(CountingClock::default())
        .secure_random(StdRng::seed_from_u64(SEED))
        .insecure_random(StdRng::seed_from_u64(SEED.rotate_left(32)))
        .insecure_random_seed(u128::from(SEED));
}
