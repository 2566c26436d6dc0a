//! How helpers' limits are enforced on this machine, chosen once when the service starts:
//! cgroups (v1 or v2) where the node can write them, else rlimits; and what one run gets.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tracing::{info, warn};

use crate::{
    cgroup::{Cgroups, Group},
    limits::Limits,
    rlimit::Rlimits,
};

/// The `enforcement` of a helper under rlimits.
pub(crate) const RLIMITS: &str = "rlimits";

/// Whether the fallback has been logged (once per node, though the service may restart).
static SAID_FALLBACK: AtomicBool = AtomicBool::new(false);

/// Whose processes an enforcer confines: each has a cgroup tree of its own, so that one part
/// cleaning up what an earlier run left never touches the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// Helpers: `p2pos-<hash>`.
    Helpers,
    /// Jobs run for peers: `p2pos-<hash>-jobs`.
    Jobs,
}

impl Part {
    fn suffix(self) -> &'static str {
        match self {
            Part::Helpers => "",
            Part::Jobs => "-jobs",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Part::Helpers => "helper",
            Part::Jobs => "job",
        }
    }
}

/// Cgroups, or the rlimit fallback.
#[derive(Debug)]
pub(crate) enum Enforcer {
    Cgroups(Cgroups),
    Rlimits,
}

/// What one run of a helper gets.
pub(crate) struct Confinement {
    pub(crate) group: Option<Arc<Group>>,
    pub(crate) rlimits: Rlimits,
    /// "cgroup v1", "cgroup v2" or "rlimits".
    pub(crate) enforcement: &'static str,
}

impl Enforcer {
    /// Cgroups under the node's own cgroup if `use_cgroups` and they are writable (emptying
    /// what an earlier run on `data_dir` left there), else rlimits, said once in the log.
    pub(crate) fn new(use_cgroups: bool, data_dir: &Path, part: Part) -> Enforcer {
        let noun = part.noun();
        let why = if use_cgroups {
            match Cgroups::open(data_dir, part.suffix()) {
                Ok(cgroups) => {
                    let killed = cgroups.clean_leftovers();
                    if killed > 0 {
                        warn!(
                            processes = killed,
                            "killed {noun} processes left by an earlier run of the node"
                        );
                    }
                    info!(version = cgroups.version().name(), "{noun}s run in cgroups");
                    return Enforcer::Cgroups(cgroups);
                }
                Err(e) => e,
            }
        } else {
            "[tasks] cgroups = false".to_owned()
        };
        if !SAID_FALLBACK.swap(true, Ordering::Relaxed) {
            warn!(
                "{noun}s' limits cannot use cgroups ({why}): falling back to rlimits (memory \
                 as address space, processes counted per user, CPU not limited), and processes \
                 that leave a {noun}'s process group are not stopped with it"
            );
        }
        Enforcer::Rlimits
    }

    /// The confinement of one run of a helper of app `app` (its group's name), `leaf` naming
    /// the run, with `limits` under the app's `quota`; `shim`: the helper runs under the shim
    /// (one more process). A cgroup that cannot be made falls back to rlimits, with a warning.
    pub(crate) fn confine(
        &self,
        app: &str,
        leaf: &str,
        quota: Limits,
        limits: Limits,
        shim: bool,
    ) -> Confinement {
        if let Enforcer::Cgroups(cgroups) = self {
            match cgroups.create(app, leaf, quota, limits, u32::from(shim)) {
                Ok(group) => {
                    return Confinement {
                        group: Some(Arc::new(group)),
                        rlimits: Rlimits::default(),
                        enforcement: cgroups.version().name(),
                    };
                }
                Err(e) => warn!(
                    app,
                    helper = leaf,
                    "cannot make the helper's cgroup ({e}); using rlimits"
                ),
            }
        }
        Confinement {
            group: None,
            rlimits: Rlimits::for_limits(limits),
            enforcement: RLIMITS,
        }
    }

    /// App `app` has no helper running: its group goes (if it is empty).
    pub(crate) fn release_app(&self, app: &str) {
        if let Enforcer::Cgroups(cgroups) = self {
            cgroups.remove_app(app);
        }
    }

    /// The service stops: the node's groups go.
    pub(crate) fn remove(&self) {
        if let Enforcer::Cgroups(cgroups) = self {
            cgroups.remove();
        }
    }
}
