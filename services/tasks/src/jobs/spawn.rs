//! Starting one job's sandbox process: `p2posd __p2pos-wasm-job DIR` behind the helper shim,
//! in a cgroup of its own under `_jobs` (the job's memory plus the runtime's, the lease's CPU
//! share, a few processes), confined by Landlock to its job directory, dying with the node.
//! Runs on the task-control actor's thread, like every process start (see `process`).

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
};

use actix::Message;
use nix::sys::signal::Signal;
use tokio::process::Child;
use tracing::warn;

use crate::{cgroup::Group, enforce::Enforcer, fs_confine::FsRules, limits::Limits, process};

/// The cgroup (and helper-table owner) name jobs run under; no app id begins with `_`.
pub(crate) const JOBS_GROUP: &str = "_jobs";
/// Memory the sandbox needs besides the job's (the runtime, the compiler, the module): the
/// submitter leases it with the job's.
pub(crate) const RUNTIME_MEMORY: u64 = 128 << 20;
/// Processes and threads the sandbox may have (the runtime starts a thread per core).
const PIDS: u32 = 256;
/// Without cgroups, the sandbox's address space: the job's and the runtime's memory, and the
/// room the runtime reserves for a memory and its guard (a bound, if a loose one).
const RESERVED_ADDRESS_SPACE: u64 = 8 << 30;
/// The sandbox process's own messages (not the job's output).
pub(crate) const SANDBOX_LOG: &str = "sandbox.log";

/// Start the sandbox on the job in `dir`.
#[derive(Message)]
#[rtype(result = "Result<Spawned, String>")]
pub(crate) struct SpawnJob {
    /// The job directory, written.
    pub(crate) dir: PathBuf,
    /// Names its cgroup.
    pub(crate) leaf: String,
    /// The run's memory (the lease's: the job's and the sandbox's), bytes.
    pub(crate) memory: u64,
    /// The job's own memory limit, bytes.
    pub(crate) job_memory: u64,
    /// The lease's CPU share, in thousandths of a core.
    pub(crate) cpu_millis: u32,
}

/// A started sandbox: its process, and the guard that kills it.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) guard: KillGuard,
}

/// Kills a sandbox's process group and cgroup when dropped, unless disarmed (it was killed
/// and waited for already): a run whose stream breaks, whose serving task is dropped (the
/// service stops), or whose start is answered to no one, leaves nothing behind.
pub(crate) struct KillGuard {
    /// Its process group.
    pub(crate) pid: u32,
    /// Its cgroup, if cgroups are used.
    pub(crate) group: Option<Arc<Group>>,
    pub(crate) armed: bool,
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        process::signal_group(self.pid, Signal::SIGKILL);
        if let Some(group) = self.group.take() {
            let spawned = std::thread::Builder::new()
                .name("job-cleanup".into())
                .spawn(move || group.kill_and_remove_blocking());
            if let Err(e) = spawned {
                warn!("cannot remove a job's cgroup: {e}");
            }
        }
    }
}

/// Starts it: `node_exe` is the `p2posd` executable (also the shim), `data_dir` the node's.
pub(crate) fn spawn(
    enforcer: &Enforcer,
    node_exe: &Path,
    data_dir: &Path,
    job: SpawnJob,
) -> Result<Spawned, String> {
    let SpawnJob {
        dir,
        leaf,
        memory,
        job_memory,
        cpu_millis,
    } = job;
    let limits = Limits {
        memory: Some(memory),
        cpu_millis: Some(cpu_millis.max(1)),
        pids: Some(PIDS),
    };
    let mut confinement = enforcer.confine(JOBS_GROUP, &leaf, Limits::default(), limits, true);
    if confinement.group.is_none() {
        // The runtime reserves address space far past a memory's size: the rlimit allows for
        // it (the sandbox's own limit holds the job's memories to `job_memory`).
        confinement.rlimits.address_space = Some(
            job_memory
                .saturating_add(RUNTIME_MEMORY)
                .saturating_add(RESERVED_ADDRESS_SPACE),
        );
    }
    let log = File::create(dir.join(SANDBOX_LOG))
        .map_err(|e| format!("cannot create {}: {e}", dir.join(SANDBOX_LOG).display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("cannot duplicate a file handle: {e}"))?;
    let fs = FsRules::for_job(data_dir, &dir, node_exe);
    let mut cmd = process::confined_command(
        node_exe,
        Some(node_exe),
        confinement.group.clone(),
        confinement.rlimits,
        fs,
    );
    cmd.arg(p2pos_sandbox::JOB_COMMAND)
        .arg(&dir)
        .env_clear()
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    let child = cmd.spawn().map_err(|e| {
        if let Some(group) = &confinement.group {
            group.kill_and_remove_blocking();
        }
        format!("cannot start the sandbox ({}): {e}", node_exe.display())
    })?;
    let pid = child.id().unwrap_or(0);
    Ok(Spawned {
        child,
        guard: KillGuard {
            pid,
            group: confinement.group,
            armed: true,
        },
    })
}
