//! What a helper's exit means and what follows it: how it is described to people, whether its
//! restart policy restarts it, the back-off before the restart, and the restart intensity
//! (more than `max_restarts` restarts within `restart_period` and it is marked failed).

use std::{collections::VecDeque, os::unix::process::ExitStatusExt, time::Duration};

use p2pos_kernel::events::now_ms;
use p2pos_proto::tasks::v1::ExitStatus;
use tokio::time::Instant;

use crate::signal;

/// When a helper that exited on its own is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restart {
    /// Never.
    Never,
    /// After a non-zero exit or a signal the node did not send.
    OnFailure,
    /// After any exit not asked for through the API.
    Always,
}

/// The first restart's back-off.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exit {
    /// As in the API.
    pub(crate) status: ExitStatus,
    /// "exited with code 3", "killed by SIGSEGV".
    pub(crate) reason: String,
    /// A non-zero exit, or a signal the node did not send.
    pub(crate) failure: bool,
}

impl Exit {
    /// Describes `status`; `sent` are the signals the node sent the process.
    pub(crate) fn new(status: std::io::Result<std::process::ExitStatus>, sent: &[i32]) -> Exit {
        let at_ms = now_ms();
        match status {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => Exit {
                    status: ExitStatus {
                        code: Some(code),
                        signal: String::new(),
                        at_ms,
                    },
                    reason: format!("exited with code {code}"),
                    failure: code != 0,
                },
                (None, Some(signo)) => {
                    let name = signal::name(signo);
                    Exit {
                        reason: format!("killed by {name}"),
                        status: ExitStatus {
                            code: None,
                            signal: name,
                            at_ms,
                        },
                        failure: !sent.contains(&signo),
                    }
                }
                (None, None) => Exit {
                    status: ExitStatus {
                        code: None,
                        signal: String::new(),
                        at_ms,
                    },
                    reason: format!("ended ({status})"),
                    failure: true,
                },
            },
            Err(e) => Exit {
                status: ExitStatus {
                    code: None,
                    signal: String::new(),
                    at_ms,
                },
                reason: format!("lost track of the process: {e}"),
                failure: true,
            },
        }
    }
}

impl Exit {
    /// The exit of a helper whose cgroup saw the kernel's OOM killer: over its memory limit
    /// (`limit` bytes), always a failure.
    pub(crate) fn over_memory(mut self, limit: Option<u64>) -> Exit {
        let limit = limit.map_or(String::new(), |l| format!(" ({})", crate::limits::bytes(l)));
        self.reason = if self.status.signal == "SIGKILL" {
            format!("killed: over its memory limit{limit}")
        } else {
            format!(
                "{}, after the kernel killed a process of it over its memory limit{limit}",
                self.reason
            )
        };
        self.failure = true;
        self
    }
}

/// Whether a helper that exited on its own (not stopped through the API) is restarted.
pub(crate) fn restarts(policy: Restart, exit: &Exit) -> bool {
    match policy {
        Restart::Never => false,
        Restart::OnFailure => exit.failure,
        Restart::Always => true,
    }
}

/// The back-off before the `n`-th restart within the intensity window (n ≥ 1): 100 ms,
/// doubling, at most 10 s.
pub(crate) fn backoff(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// How long each run of a crash loop is assumed to last at most, for [`period_floor`].
const QUICK_CRASH: Duration = Duration::from_secs(1);

/// The shortest restart period that holds `max_restarts` restarts of a crash loop (each run
/// lasting up to [`QUICK_CRASH`], each restart after its back-off), rounded up to whole
/// seconds: with a shorter one, old restarts would leave the window before the count is
/// reached, and the loop would never end FAILED.
pub(crate) fn period_floor(max_restarts: u32) -> Duration {
    let total: Duration = (1..=max_restarts).map(|n| backoff(n) + QUICK_CRASH).sum();
    let secs = total.as_secs() + u64::from(total.subsec_nanos() > 0);
    Duration::from_secs(secs)
}

/// The restarts of one helper within its intensity window.
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// When each restart happened, oldest first; at most `max_restarts` of them.
    times: VecDeque<Instant>,
}

impl Window {
    /// Forgets every restart (a start through the API).
    pub(crate) fn reset(&mut self) {
        self.times.clear();
    }

    /// Records a restart at `now` if it keeps the helper within `max` restarts in `period`:
    /// `Ok(restarts in the window, this one included)`, or `Err(restarts already in the
    /// window)` when it would exceed them.
    pub(crate) fn admit(&mut self, now: Instant, max: u32, period: Duration) -> Result<u32, u32> {
        while let Some(first) = self.times.front() {
            if now.duration_since(*first) >= period {
                self.times.pop_front();
            } else {
                break;
            }
        }
        let within = u32::try_from(self.times.len()).unwrap_or(u32::MAX);
        if within >= max {
            return Err(within);
        }
        self.times.push_back(now);
        Ok(within + 1)
    }
}

/// The reason of a helper marked failed by its intensity.
pub(crate) fn giving_up(restarts: u32, period: Duration, last: &str) -> String {
    format!(
        "restarted {restarts} times within {} s; giving up (last: {last})",
        period.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use std::process::ExitStatus as StdStatus;

    use super::*;

    #[test]
    fn backoff_doubles_up_to_ten_seconds() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(7), Duration::from_millis(6400));
        assert_eq!(backoff(8), Duration::from_secs(10));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn intensity_counts_restarts_within_the_period() {
        let mut w = Window::default();
        let t0 = Instant::now();
        let period = Duration::from_secs(60);
        assert_eq!(w.admit(t0, 2, period), Ok(1));
        assert_eq!(w.admit(t0 + Duration::from_secs(1), 2, period), Ok(2));
        assert_eq!(w.admit(t0 + Duration::from_secs(2), 2, period), Err(2));
        // The first restart leaves the window after the period.
        assert_eq!(w.admit(t0 + Duration::from_secs(60), 2, period), Ok(2));
        w.reset();
        assert_eq!(w.admit(t0 + Duration::from_secs(61), 2, period), Ok(1));
        assert_eq!(
            giving_up(2, period, "exited with code 3"),
            "restarted 2 times within 60 s; giving up (last: exited with code 3)"
        );
    }

    #[test]
    fn exits_are_described_and_judged() {
        let code = |c: i32| Exit::new(Ok(StdStatus::from_raw(c << 8)), &[]);
        let e = code(3);
        assert_eq!(e.reason, "exited with code 3");
        assert_eq!(e.status.code, Some(3));
        assert!(e.failure);
        assert!(!code(0).failure);
        let segv = Exit::new(Ok(StdStatus::from_raw(11)), &[]);
        assert_eq!(segv.reason, "killed by SIGSEGV");
        assert_eq!(segv.status.signal, "SIGSEGV");
        assert_eq!(segv.status.code, None);
        assert!(segv.failure);
        let ours = Exit::new(Ok(StdStatus::from_raw(15)), &[15]);
        assert!(
            !ours.failure,
            "a signal sent through the API is not a failure"
        );

        assert!(!restarts(Restart::Never, &e));
        assert!(restarts(Restart::OnFailure, &e));
        assert!(!restarts(Restart::OnFailure, &code(0)));
        assert!(!restarts(Restart::OnFailure, &ours));
        assert!(restarts(Restart::Always, &code(0)));

        let killed = Exit::new(Ok(StdStatus::from_raw(9)), &[]).over_memory(Some(64 << 20));
        assert_eq!(killed.reason, "killed: over its memory limit (64 MiB)");
        let child = code(1).over_memory(Some(64 << 20));
        assert_eq!(
            child.reason,
            "exited with code 1, after the kernel killed a process of it over its memory limit (64 MiB)"
        );
        assert!(child.failure);
    }

    #[test]
    fn the_period_floor_holds_a_crash_loop() {
        assert_eq!(period_floor(0), Duration::ZERO);
        assert_eq!(period_floor(1), Duration::from_secs(2));
        assert_eq!(period_floor(5), Duration::from_secs(9));
        // A crash loop of quick crashes fills the window before it slides.
        let mut w = Window::default();
        let period = period_floor(5);
        let mut now = Instant::now();
        let mut n = 0;
        while let Ok(within) = w.admit(now, 5, period) {
            now += backoff(within) + QUICK_CRASH;
            n += 1;
            assert!(n <= 5, "the loop ends");
        }
    }
}
