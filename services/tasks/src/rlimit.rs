//! The fallback where cgroups are not writable: a helper's memory limit becomes its address
//! space limit (`RLIMIT_AS`) and its process limit a limit on the processes of its user
//! (`RLIMIT_NPROC`, counted from how many the user runs at its start); its CPU share is not
//! enforced.

use std::{ffi::OsString, io};

use crate::limits::Limits;

/// The rlimits a helper's program is started with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rlimits {
    /// `RLIMIT_AS`, bytes.
    pub(crate) address_space: Option<u64>,
    /// `RLIMIT_NPROC`, processes (threads) of the real user.
    pub(crate) nproc: Option<u64>,
}

impl Rlimits {
    /// The rlimits standing in for `limits`.
    pub(crate) fn for_limits(limits: Limits) -> Rlimits {
        Rlimits {
            address_space: limits.memory,
            nproc: limits
                .pids
                .map(|p| user_tasks(nix::unistd::getuid().as_raw()).saturating_add(u64::from(p))),
        }
    }

    /// Sets them on the calling process. Runs between fork and exec: only system calls.
    pub(crate) fn apply(&self) -> io::Result<()> {
        let set = |resource, value: u64| {
            let limit = nix::libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: setrlimit is async-signal-safe; `limit` lives across the call.
            if unsafe { nix::libc::setrlimit(resource, &limit) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        if let Some(bytes) = self.address_space {
            set(nix::libc::RLIMIT_AS, bytes)?;
        }
        if let Some(n) = self.nproc {
            set(nix::libc::RLIMIT_NPROC, n)?;
        }
        Ok(())
    }

    /// The shim's options that ask for them.
    pub(crate) fn shim_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if let Some(bytes) = self.address_space {
            args.extend(["--rlimit-as".into(), bytes.to_string().into()]);
        }
        if let Some(n) = self.nproc {
            args.extend(["--rlimit-nproc".into(), n.to_string().into()]);
        }
        args
    }
}

/// How many tasks (threads) processes of real user `uid` run now (what `RLIMIT_NPROC`
/// counts).
fn user_tasks(uid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut tasks = 0u64;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        };
        if field("Uid:") == Some(u64::from(uid)) {
            tasks += field("Threads:").unwrap_or(1);
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_become_rlimits() {
        let r = Rlimits::for_limits(Limits {
            memory: Some(64 << 20),
            cpu_millis: Some(500),
            pids: Some(10),
        });
        assert_eq!(r.address_space, Some(64 << 20));
        assert!(r.nproc.unwrap() > 10, "this test's own process counts");
        assert_eq!(
            r.shim_args()[..2],
            [OsString::from("--rlimit-as"), OsString::from("67108864")]
        );
        assert_eq!(Rlimits::for_limits(Limits::default()), Rlimits::default());
    }
}
