//! Resource limits of helpers: a spec's [`Limits`] checked from the protobuf message, the
//! per-app quotas of the `[tasks]` config, the limits a run gets (its spec's, else its app's
//! quota), the admission check (an app's helpers' limits, summed, fit in its quota), and how
//! amounts are shown to people ("64 MiB", "0.5 cores").

use p2pos_proto::tasks::v1 as pb;

use crate::Error;

/// The smallest memory limit a spec may set: less would not even start a program.
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;
/// The largest memory limit (1 TiB).
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;
/// The largest CPU share a spec may set, in cores.
pub const MAX_CPU: f64 = 1024.0;
/// The smallest CPU share a spec may set, in cores.
pub const MIN_CPU: f64 = 0.01;
/// The largest process limit.
pub const MAX_PIDS: u32 = 1_000_000;

/// One helper's limits, or one app's quota; `None`: not limited (a spec: not set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Bytes of memory.
    pub(crate) memory: Option<u64>,
    /// Thousandths of a core.
    pub(crate) cpu_millis: Option<u32>,
    /// Processes and threads.
    pub(crate) pids: Option<u32>,
}

fn invalid(why: String) -> Error {
    Error::InvalidSpec(why)
}

/// Cores as thousandths of a core, checked; 0 is "not set".
pub(crate) fn cpu_millis(cores: f64, what: &str) -> Result<Option<u32>, String> {
    if cores == 0.0 {
        return Ok(None);
    }
    if !cores.is_finite() || !(MIN_CPU..=MAX_CPU).contains(&cores) {
        return Err(format!(
            "{what} {cores} is not a share of cores from {MIN_CPU} to {MAX_CPU} (0: not set)"
        ));
    }
    // In range, so the product fits in a u32.
    Ok(Some((cores * 1000.0).round() as u32))
}

impl TryFrom<Option<pb::Limits>> for Limits {
    type Error = Error;

    fn try_from(limits: Option<pb::Limits>) -> Result<Self, Error> {
        let pb::Limits {
            memory_bytes,
            cpu,
            pids,
        } = limits.unwrap_or_default();
        let memory = match memory_bytes {
            0 => None,
            b if !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&b) => {
                return Err(invalid(format!(
                    "limits.memory_bytes {b} is out of range: from {} to {} (0: the app's quota)",
                    MIN_MEMORY_BYTES, MAX_MEMORY_BYTES
                )));
            }
            b => Some(b),
        };
        let cpu_millis = cpu_millis(cpu, "limits.cpu").map_err(invalid)?;
        let pids = match pids {
            0 => None,
            p if p > MAX_PIDS => {
                return Err(invalid(format!(
                    "limits.pids {p} is over {MAX_PIDS} (0: the app's quota)"
                )));
            }
            p => Some(p),
        };
        Ok(Limits {
            memory,
            cpu_millis,
            pids,
        })
    }
}

impl Limits {
    /// As in the API (0 for what is not limited).
    pub(crate) fn to_proto(self) -> pb::Limits {
        pb::Limits {
            memory_bytes: self.memory.unwrap_or(0),
            cpu: self.cpu_millis.map_or(0.0, |m| f64::from(m) / 1000.0),
            pids: self.pids.unwrap_or(0),
        }
    }

    /// Whether nothing is limited.
    pub(crate) fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// These limits, each one not set taken from `quota`.
    pub(crate) fn or(self, quota: Limits) -> Limits {
        Limits {
            memory: self.memory.or(quota.memory),
            cpu_millis: self.cpu_millis.or(quota.cpu_millis),
            pids: self.pids.or(quota.pids),
        }
    }
}

/// One resource of the admission check: its name, its config key, its amount in a [`Limits`],
/// how an amount is shown.
type Check = (
    &'static str,
    &'static str,
    fn(&Limits) -> Option<u64>,
    fn(u64) -> String,
);

/// Refuses a helper of app `app` asking for `asked` when the limits its app's other active
/// helpers set (`reserved`, summed) and it would exceed the app's `quota`.
pub(crate) fn admit(
    app: &str,
    helper: &str,
    quota: Limits,
    reserved: &[Limits],
    asked: Limits,
) -> Result<(), Error> {
    let sum = |f: fn(&Limits) -> Option<u64>| reserved.iter().filter_map(f).sum::<u64>();
    let checks: [Check; 3] = [
        ("memory", "app_memory_bytes", |l| l.memory, bytes),
        (
            "CPU",
            "app_cpu",
            |l| l.cpu_millis.map(u64::from),
            |m| cores(u32::try_from(m).unwrap_or(u32::MAX)),
        ),
        (
            "process",
            "app_pids",
            |l| l.pids.map(u64::from),
            |p| format!("{p} processes"),
        ),
    ];
    for (resource, key, get, show) in checks {
        let (Some(limit), Some(wanted)) = (get(&quota), get(&asked)) else {
            continue;
        };
        let taken = sum(get);
        if taken.saturating_add(wanted) > limit {
            return Err(Error::Quota {
                app: app.to_owned(),
                message: format!(
                    "helper {helper:?} asks for {} but app {app:?}'s {resource} quota ([tasks] \
                     {key}) is {}, and its running helpers already reserve {}",
                    show(wanted),
                    show(limit),
                    show(taken)
                ),
            });
        }
    }
    Ok(())
}

/// "64 MiB", "1.5 GiB", "1000 bytes".
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (size, unit) in UNITS {
        if n >= size {
            let whole = n / size;
            let tenths = (n % size) * 10 / size;
            return if tenths == 0 {
                format!("{whole} {unit}")
            } else {
                format!("{whole}.{tenths} {unit}")
            };
        }
    }
    format!("{n} bytes")
}

/// "0.5 cores", "1 core", "2 cores".
pub(crate) fn cores(millis: u32) -> String {
    let text = format!("{}", f64::from(millis) / 1000.0);
    if millis == 1000 {
        "1 core".to_owned()
    } else {
        format!("{text} cores")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb(memory_bytes: u64, cpu: f64, pids: u32) -> Option<pb::Limits> {
        Some(pb::Limits {
            memory_bytes,
            cpu,
            pids,
        })
    }

    #[test]
    fn limits_are_checked_and_shown_back() {
        let l = Limits::try_from(pb(64 << 20, 0.5, 20)).unwrap();
        assert_eq!(l.memory, Some(64 << 20));
        assert_eq!(l.cpu_millis, Some(500));
        assert_eq!(l.pids, Some(20));
        assert_eq!(Limits::try_from(Some(l.to_proto())).unwrap(), l);
        assert!(Limits::try_from(None).unwrap().is_empty());
        for bad in [
            pb(1, 0.0, 0),
            pb((1 << 40) + 1, 0.0, 0),
            pb(0, -1.0, 0),
            pb(0, f64::NAN, 0),
            pb(0, f64::INFINITY, 0),
            pb(0, 0.001, 0),
            pb(0, 2000.0, 0),
            pb(0, 0.0, MAX_PIDS + 1),
        ] {
            let err = Limits::try_from(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidSpec(_)), "{err}");
        }
    }

    #[test]
    fn unset_limits_come_from_the_quota() {
        let quota = Limits {
            memory: Some(1 << 30),
            cpu_millis: Some(1000),
            pids: Some(256),
        };
        let own = Limits {
            memory: Some(64 << 20),
            ..Limits::default()
        };
        assert_eq!(
            own.or(quota),
            Limits {
                memory: Some(64 << 20),
                cpu_millis: Some(1000),
                pids: Some(256)
            }
        );
    }

    #[test]
    fn an_app_s_helpers_fit_in_its_quota() {
        let quota = Limits {
            memory: Some(128 << 20),
            cpu_millis: Some(1000),
            pids: None,
        };
        let mem = |m: u64| Limits {
            memory: Some(m << 20),
            ..Limits::default()
        };
        assert!(admit("chat", "a", quota, &[mem(64)], mem(64)).is_ok());
        let err = admit("chat", "b", quota, &[mem(64), mem(32)], mem(64)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "helper \"b\" asks for 64 MiB but app \"chat\"'s memory quota ([tasks] \
             app_memory_bytes) is 128 MiB, and its running helpers already reserve 96 MiB"
        );
        let cpu = Limits {
            cpu_millis: Some(1500),
            ..Limits::default()
        };
        assert!(
            admit("chat", "c", quota, &[], cpu)
                .unwrap_err()
                .to_string()
                .contains("1.5 cores")
        );
        let pids = Limits {
            pids: Some(1_000_000),
            ..Limits::default()
        };
        assert!(
            admit("chat", "d", quota, &[], pids).is_ok(),
            "no pids quota"
        );
        assert!(admit("chat", "e", quota, &[], Limits::default()).is_ok());
    }

    #[test]
    fn amounts_read_well() {
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes(1000), "1000 bytes");
        assert_eq!(cores(500), "0.5 cores");
        assert_eq!(cores(1000), "1 core");
        assert_eq!(cores(2000), "2 cores");
    }
}
