//! The helper shim: a tiny supervisor process that `p2posd` puts in front of every helper
//! program, so that nothing a helper starts outlives the node.
//!
//! A parent-death signal reaches only the process that asked for it, not the processes a
//! helper starts itself. So the node starts `p2posd __p2pos-helper-shim NODE_PID [--cgroup
//! DIR]... [--rlimit-as BYTES] [--rlimit-nproc N] [--fs-rx PATH]... [--fs-rw PATH]... [--no-tcp] --
//! PROGRAM ARGS...` as the leader of a new
//! process group, in the helper's cgroup (if any), with a parent-death signal; the shim
//! - becomes a child subreaper (orphans of the helper's tree become its children, and it reaps
//!   them: no zombies),
//! - closes every inherited file descriptor but stdin, stdout and stderr, resets every signal
//!   to its default action, and runs the program (no shell) in its own (the shim's) process
//!   group, with the rlimits it was given (where cgroups are not writable), confined by Landlock
//!   to the paths it was given (see [`crate::fs_confine`]; the ruleset is built before the
//!   program's process is forked, and enforced in it right before `exec`),
//! - then waits, with every signal blocked and read with `sigwait`: signals sent to the group
//!   (the node's stop signal) reach the program directly and the shim ignores them; when the
//!   node dies (the parent-death signal, and its parent is no longer the node) it kills every
//!   process of its cgroup (the `DIR`s: those that left the process group too), moves itself
//!   out and removes the cgroup (and the node's, if it was the last), then kills the whole
//!   group with SIGKILL, itself included; when the program exits it exits the same way
//!   (the same code, or killed by the same signal), and the node kills what is left of the
//!   group.
//!
//! The shim is a plain synchronous program: it runs before any runtime is started.

use std::{
    ffi::{OsStr, OsString},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    cgroup,
    fs_confine::{FsRules, Ruleset},
    rlimit::Rlimits,
};
use nix::{
    sys::{
        signal::{SigHandler, SigSet, Signal, kill, killpg, raise, signal},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{Pid, getpgrp, getppid},
};

/// The first argument that makes `p2posd` run as a helper shim.
pub const SHIM_ARG: &str = "__p2pos-helper-shim";

/// Exit code when the program cannot be started at all (as a shell's).
const CANNOT_RUN: i32 = 127;

/// Runs the shim and exits if this process was started as one (`argv[1]` is [`SHIM_ARG`]);
/// otherwise returns at once. `p2posd` calls it first thing in `main`.
pub fn run_if_requested() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new(SHIM_ARG)) {
        return;
    }
    let code = run(&args.collect::<Vec<_>>());
    std::process::exit(code);
}

/// What the shim does besides running the program.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Options {
    /// The directories of the helper's cgroup (the first lists its processes), emptied and
    /// removed when the node dies.
    pub(crate) cgroups: Vec<PathBuf>,
    /// The program's rlimits.
    pub(crate) rlimits: Rlimits,
    /// What the program may reach of the file system (none given: unconfined).
    pub(crate) fs: FsRules,
}

/// The shim's command line up to the program's arguments: [`SHIM_ARG`], the node's pid, the
/// options, `--`, the program.
pub(crate) fn command_line(node: u32, options: &Options, program: &Path) -> Vec<OsString> {
    let mut args = vec![OsString::from(SHIM_ARG), node.to_string().into()];
    for dir in &options.cgroups {
        args.extend(["--cgroup".into(), dir.as_os_str().to_owned()]);
    }
    args.extend(options.rlimits.shim_args());
    args.extend(options.fs.shim_args());
    args.extend(["--".into(), program.as_os_str().to_owned()]);
    args
}

fn run(args: &[OsString]) -> i32 {
    let Some((node, options, program, program_args)) = parse(args) else {
        eprintln!(
            "p2posd: the helper shim needs NODE_PID [--cgroup DIR]... [--rlimit-as BYTES] \
             [--rlimit-nproc N] [--fs-rx PATH]... [--fs-rw PATH]... [--no-tcp] -- PROGRAM [ARGS...]"
        );
        return CANNOT_RUN;
    };
    // Every signal is read with sigwait from here on (SIGKILL and SIGSTOP cannot be blocked);
    // the node started the shim with them blocked already, so that even a parent-death signal
    // right at its start is read, not fatal.
    let all = SigSet::all();
    if let Err(e) = all.thread_block() {
        eprintln!("p2posd: helper shim: cannot block signals: {e}");
        return CANNOT_RUN;
    }
    if getppid() != node {
        // The node is already gone: its cgroup holds only this process.
        cgroup::abandon(&options.cgroups);
        return CANNOT_RUN;
    }
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("p2posd: helper shim: cannot become a subreaper: {e}");
        return CANNOT_RUN;
    }
    reset_signal_actions();
    close_inherited_fds();
    let mut command = Command::new(program);
    command.args(program_args);
    let rlimits = options.rlimits;
    // Built here, enforced in the program's process: what it may reach of the file system.
    let mut confine = match (!options.fs.is_empty()).then(|| Ruleset::build(&options.fs)) {
        None => None,
        Some(Ok(ruleset)) => Some(ruleset),
        Some(Err(e)) => {
            eprintln!("p2posd: helper shim: cannot confine the program with Landlock: {e}");
            return CANNOT_RUN;
        }
    };
    // SAFETY: runs in the forked child before exec; sigprocmask, setrlimit, prctl and
    // landlock_restrict_self are async-signal-safe, and the shim is single-threaded.
    unsafe {
        command.pre_exec(move || {
            rlimits.apply()?;
            if let Some(ruleset) = confine.take() {
                ruleset.restrict()?;
            }
            SigSet::all().thread_unblock().map_err(std::io::Error::from)
        });
    }
    // Signals sent to the group before the program exists (a stop right after the start)
    // wait here, blocked; the program is given them once it runs.
    let missed = pending_signals();
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("p2posd: cannot run {}: {e}", program.to_string_lossy());
            return CANNOT_RUN;
        }
    };
    let program_pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    for signal in missed {
        let _ = kill(program_pid, signal);
    }
    loop {
        let Ok(signal) = all.wait() else {
            continue;
        };
        if signal == Signal::SIGCHLD {
            if let Some(status) = reap(program_pid) {
                return exit_like(status);
            }
        } else if getppid() != node {
            // The node died: nothing of this helper may outlive it, not even what left its
            // process group.
            if !options.cgroups.is_empty() {
                cgroup::abandon(&options.cgroups);
            }
            let _ = killpg(getpgrp(), Signal::SIGKILL);
            return CANNOT_RUN;
        }
        // Any other signal was sent to the whole group: the program has it too.
    }
}

fn parse(args: &[OsString]) -> Option<(Pid, Options, &OsStr, &[OsString])> {
    let (node, mut rest) = args.split_first()?;
    let node: i32 = node.to_str()?.parse().ok()?;
    let mut options = Options::default();
    loop {
        let (flag, after) = rest.split_first()?;
        if flag == "--" {
            rest = after;
            break;
        }
        if flag == "--no-tcp" {
            options.fs.no_tcp = true;
            rest = after;
            continue;
        }
        let (value, after) = after.split_first()?;
        let number = || value.to_str()?.parse::<u64>().ok();
        match flag.to_str()? {
            "--cgroup" => options.cgroups.push(PathBuf::from(value)),
            "--rlimit-as" => options.rlimits.address_space = Some(number()?),
            "--rlimit-nproc" => options.rlimits.nproc = Some(number()?),
            "--fs-rx" => options.fs.read_exec.push(PathBuf::from(value)),
            "--fs-rw" => options.fs.read_write.push(PathBuf::from(value)),
            _ => return None,
        }
        rest = after;
    }
    let (program, program_args) = rest.split_first()?;
    Some((
        Pid::from_raw(node),
        options,
        program.as_os_str(),
        program_args,
    ))
}

/// The signals pending for this process (blocked since it started), but SIGCHLD.
fn pending_signals() -> Vec<Signal> {
    // SAFETY: sigpending fills the set it is given; sigismember reads it.
    unsafe {
        let mut set: nix::libc::sigset_t = std::mem::zeroed();
        if nix::libc::sigpending(&mut set) != 0 {
            return Vec::new();
        }
        Signal::iterator()
            .filter(|s| *s != Signal::SIGCHLD)
            .filter(|s| nix::libc::sigismember(&set, *s as i32) == 1)
            .collect()
    }
}

/// Default actions for every signal: an ignored signal would otherwise stay ignored in the
/// program.
fn reset_signal_actions() {
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: setting the default action installs no handler; nothing else runs in this
        // single-threaded process.
        let _ = unsafe { signal_default(signal) };
    }
}

unsafe fn signal_default(sig: Signal) -> nix::Result<SigHandler> {
    // SAFETY: see the caller.
    unsafe { signal(sig, SigHandler::SigDfl) }
}

/// Closes every file descriptor above stderr that the node let through.
fn close_inherited_fds() {
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect(),
        Err(_) => return,
    };
    for fd in fds {
        // The directory's own descriptor is already closed: EBADF is fine.
        let _ = nix::unistd::close(fd);
    }
}

/// Reaps every exited child; returns the program's status once it has exited.
fn reap(program: Pid) -> Option<WaitStatus> {
    let mut exited = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return exited,
            Ok(status) if status.pid() == Some(program) => exited = Some(status),
            Ok(_) => {} // an orphan of the helper's tree
        }
    }
}

/// Exits with the program's code, or dies of the signal that killed it.
fn exit_like(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, signal, _) => {
            // SAFETY: as in `reset_signal_actions`.
            let _ = unsafe { signal_default(signal) };
            let mut only = SigSet::empty();
            only.add(signal);
            let _ = only.thread_unblock();
            let _ = raise(signal);
            let _ = kill(Pid::this(), signal);
            128 + signal as i32
        }
        _ => CANNOT_RUN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_parsed_back() {
        for options in [
            Options::default(),
            Options {
                cgroups: vec![
                    "/sys/fs/cgroup/pids/p2pos-1/a/b-1".into(),
                    "/sys/fs/cgroup/memory/p2pos-1/a/b-1".into(),
                ],
                rlimits: Rlimits {
                    address_space: Some(64 << 20),
                    nproc: Some(100),
                },
                fs: FsRules {
                    read_exec: vec!["/usr".into(), "/opt/x y".into()],
                    read_write: vec!["/data/helpers/chat/voice".into()],
                    no_tcp: true,
                },
            },
        ] {
            let args: Vec<OsString> = command_line(42, &options, Path::new("/bin/prog"))
                .into_iter()
                .skip(1)
                .chain([OsString::from("--"), OsString::from("-x")])
                .collect();
            let (node, parsed, program, rest) = parse(&args).expect("parses");
            assert_eq!(node, Pid::from_raw(42));
            assert_eq!(parsed, options);
            assert_eq!(program, OsStr::new("/bin/prog"));
            assert_eq!(rest, [OsString::from("--"), OsString::from("-x")]);
        }
        assert!(parse(&[OsString::from("x")]).is_none());
        let unknown = ["1", "--what", "2", "--", "/bin/prog"].map(OsString::from);
        assert!(parse(&unknown).is_none());
    }
}
