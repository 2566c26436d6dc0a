//! Helper processes: how one is spawned (no shell, a clean environment, its own process group
//! and cgroup or rlimits, killed if the node dies), waited for (and everything left in its
//! cgroup killed), and signalled; its token and directory.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, so processes are spawned only
//! from the actor's thread (never from `spawn_blocking`, whose threads exit when idle).

use std::{
    io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::Arc,
    time::Duration,
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    io::BufReader,
    process::{Child, Command},
    task::JoinHandle,
};

use crate::{
    Error,
    cgroup::Group,
    fs_confine::FsRules,
    logs::{self, SharedLog},
    rlimit::Rlimits,
    shim,
    spec::Spec,
};
use p2pos_proto::tasks::v1::LogStream;

/// `unix:<path of the gateway socket>`.
pub const ENV_GATEWAY: &str = "P2POS_GATEWAY";
/// The helper's token (`helper-<64 hex>`), scoped to its app id.
pub const ENV_TOKEN: &str = "P2POS_TOKEN";
/// The app id the helper acts as: `<app>:<name>`, or `_node:<name>` for a helper of the node.
pub const ENV_APP_ID: &str = "P2POS_APP_ID";
/// The helper's name.
pub const ENV_HELPER: &str = "P2POS_HELPER";
/// The app the helper belongs to; empty for a helper of the node.
pub const ENV_HELPER_OWNER: &str = "P2POS_HELPER_OWNER";
/// The helper's own directory, `<data dir>/helpers/<app or _node>/<name>`.
pub const ENV_HELPER_DIR: &str = "P2POS_HELPER_DIR";
/// Prefix of a helper token.
pub const TOKEN_PREFIX: &str = p2pos_protocols::tasks::HELPER_TOKEN_PREFIX;
/// The directory, under the data directory, of the helpers' own directories.
pub const HELPERS_DIR: &str = "helpers";
/// The owner directory of the node's own helpers.
pub const NODE_OWNER_DIR: &str = "_node";

/// How long the exit of a process waits for its output to be read (its pipes may be held
/// open by processes that left its group).
const DRAIN_TIMEOUT: Duration = Duration::from_millis(250);

/// A fresh helper token: `helper-` and 64 lower-case hex digits.
pub(crate) fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{TOKEN_PREFIX}{}", data_encoding::HEXLOWER.encode(&bytes))
}

/// `<data dir>/helpers/<app or _node>/<name>`.
pub(crate) fn helper_dir(data_dir: &Path, app_id: &str, name: &str) -> PathBuf {
    let owner = if app_id.is_empty() {
        NODE_OWNER_DIR
    } else {
        app_id
    };
    data_dir.join(HELPERS_DIR).join(owner).join(name)
}

/// Creates `dir` (and its parents) with mode 0700.
pub(crate) fn create_dir(dir: &Path) -> Result<(), Error> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::HelperDir {
            path: dir.display().to_string(),
            source,
        })
}

/// Everything one process start needs.
pub(crate) struct Launch<'a> {
    /// The resolved program.
    pub(crate) program: &'a Path,
    /// Its arguments, environment and working directory.
    pub(crate) spec: &'a Spec,
    /// The gateway's unix socket.
    pub(crate) gateway: &'a Path,
    /// Its token.
    pub(crate) token: &'a str,
    /// The app id it acts as.
    pub(crate) app_id: &'a str,
    /// Its own directory (created).
    pub(crate) dir: &'a Path,
    /// The `p2posd` executable to run it under as a [`crate::shim`], if any.
    pub(crate) shim: Option<&'a Path>,
    /// The cgroup it runs in, if any.
    pub(crate) group: Option<Arc<Group>>,
    /// The rlimits of its program (where there is no cgroup).
    pub(crate) rlimits: Rlimits,
    /// What its program may reach of the file system (enforced by the shim).
    pub(crate) fs: FsRules,
}

/// A started process: its pid (also its process group) and the tasks reading its output.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) readers: [JoinHandle<()>; 2],
}

/// A command running `program` that dies with the node: under the [`crate::shim`] `shim` if
/// given (which then gets the cgroup, the rlimits and the file-system rules to enforce), else
/// directly (in `group`, with `rlimits`); in a process group of its own, with a parent-death
/// signal. Its arguments, environment and standard streams are the caller's to add. Must be
/// spawned on the actor's thread (see the module doc).
pub(crate) fn confined_command(
    program: &Path,
    shim: Option<&Path>,
    group: Option<Arc<Group>>,
    rlimits: Rlimits,
    fs: FsRules,
) -> Command {
    let node = nix::unistd::getpid();
    let (mut cmd, death_signal) = match shim {
        Some(shim) => {
            let mut cmd = Command::new(shim);
            let node_pid = u32::try_from(node.as_raw()).unwrap_or(0);
            let options = shim::Options {
                cgroups: group.as_ref().map(|g| g.dirs()).unwrap_or_default(),
                rlimits,
                fs,
            };
            cmd.args(shim::command_line(node_pid, &options, program));
            // The shim catches it and kills the helper's whole group.
            (cmd, Signal::SIGTERM)
        }
        None => (Command::new(program), Signal::SIGKILL),
    };
    cmd.process_group(0);
    // Without a shim, the node sets the program's rlimits itself.
    let rlimits = if shim.is_none() {
        rlimits
    } else {
        Rlimits::default()
    };
    let shimmed = shim.is_some();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (open, write, close, setrlimit, sigprocmask, prctl, getppid, _exit);
    // it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // In its cgroup before it runs anything: whatever it starts is in it too.
            if let Some(group) = &group {
                group.join_from_child()?;
            }
            rlimits.apply()?;
            if shimmed {
                // The shim reads every signal with sigwait: blocked from before it runs, the
                // parent-death signal cannot kill it before it has cleaned up.
                nix::sys::signal::SigSet::all()
                    .thread_block()
                    .map_err(io::Error::from)?;
            }
            nix::sys::prctl::set_pdeathsig(death_signal).map_err(io::Error::from)?;
            // The node died between fork and prctl: nobody would ever kill this process.
            if nix::unistd::getppid() != node {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd
}

/// Starts the process, its output going line by line into `log`. Must run on the actor's
/// thread (see the module doc).
pub(crate) fn spawn(launch: &Launch<'_>, log: &SharedLog) -> io::Result<Spawned> {
    let spec = launch.spec;
    let mut cmd = confined_command(
        launch.program,
        launch.shim,
        launch.group.clone(),
        launch.rlimits,
        launch.fs.clone(),
    );
    cmd.args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .env(ENV_GATEWAY, format!("unix:{}", launch.gateway.display()))
        .env(ENV_TOKEN, launch.token)
        .env(ENV_APP_ID, launch.app_id)
        .env(ENV_HELPER, &spec.name)
        .env(ENV_HELPER_OWNER, &spec.app_id)
        .env(ENV_HELPER_DIR, launch.dir)
        .current_dir(spec.working_dir.as_deref().unwrap_or(launch.dir))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("the process has no pid"))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        signal_group(pid, Signal::SIGKILL);
        return Err(io::Error::other("the process's output pipes are missing"));
    };
    let readers = [
        tokio::spawn(logs::read_lines(
            BufReader::new(stdout),
            LogStream::Stdout,
            log.clone(),
        )),
        tokio::spawn(logs::read_lines(
            BufReader::new(stderr),
            LogStream::Stderr,
            log.clone(),
        )),
    ];
    Ok(Spawned {
        child,
        pid,
        readers,
    })
}

/// How a process ended: its status, and how many of the processes of its cgroup the kernel's
/// OOM killer killed.
pub(crate) struct Ended {
    pub(crate) status: io::Result<ExitStatus>,
    pub(crate) oom_kills: u64,
}

/// Waits for the process (so it never stays a zombie), kills what is left of its process
/// group and of its cgroup (removing the cgroup), gives its output readers [`DRAIN_TIMEOUT`]
/// to reach the end of its pipes (so that a run's last lines are kept before its exit is
/// reported), then calls `exited`.
pub(crate) fn wait(
    spawned: Spawned,
    group: Option<Arc<Group>>,
    exited: impl FnOnce(Ended) + Send + 'static,
) {
    let Spawned {
        mut child,
        pid,
        readers,
    } = spawned;
    tokio::spawn(async move {
        let status = child.wait().await;
        // Processes the helper left behind in its group go with it, and in its cgroup those
        // that left the group (setsid, double forks).
        signal_group(pid, Signal::SIGKILL);
        let mut oom_kills = 0;
        if let Some(group) = group {
            oom_kills = group.oom_kills();
            group.kill_and_remove().await;
        }
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, futures::future::join_all(readers)).await;
        exited(Ended { status, oom_kills });
    });
}

/// Sends `signal` to the process group `pid`; a group already gone is not an error.
pub(crate) fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    if raw <= 1 {
        return; // never signal "every process" or init
    }
    if let Err(e) = killpg(Pid::from_raw(raw), signal)
        && e != nix::errno::Errno::ESRCH
    {
        tracing::warn!(pid, %signal, "cannot signal the helper's process group: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_and_fresh() {
        let a = new_token();
        assert!(a.starts_with("helper-"));
        assert_eq!(a.len(), "helper-".len() + 64);
        assert!(a["helper-".len()..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_token());
    }

    #[test]
    fn helper_dirs_are_per_owner() {
        let d = Path::new("/data");
        assert_eq!(
            helper_dir(d, "chat", "voice"),
            Path::new("/data/helpers/chat/voice")
        );
        assert_eq!(
            helper_dir(d, "", "voice"),
            Path::new("/data/helpers/_node/voice")
        );
    }

    #[test]
    fn helper_dirs_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = helper_dir(root.path(), "chat", "voice");
        create_dir(&dir).unwrap();
        create_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
