//! Emptying cgroups: killing every process a group lists (again, until none is left: a fork
//! racing the kill is caught by the next round), removing the groups, and what a helper's shim
//! does with its group when the node dies.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

use super::files::{KILL_DEADLINE, write};

/// Kills the processes of every group below `dir` (deepest first) and removes those groups,
/// and `dir` itself if `remove_self`. Returns how many processes it killed.
pub(super) fn empty_tree(dir: &Path, remove_self: bool) -> usize {
    let mut killed = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                killed += empty_tree(&entry.path(), true);
            }
        }
    }
    killed += kill_until_empty_blocking(&dir.join("cgroup.procs"));
    if remove_self {
        let _ = remove_dir_retrying(dir);
    }
    killed
}

/// The pids in a `cgroup.procs` file.
pub(super) fn read_pids(procs: &Path) -> Vec<i32> {
    std::fs::read_to_string(procs)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// SIGKILLs every pid listed in `procs` but this process; returns how many.
pub(super) fn kill_listed(procs: &Path) -> usize {
    let me = std::process::id();
    let mut killed = 0;
    for pid in read_pids(procs) {
        if pid > 1
            && u32::try_from(pid).ok() != Some(me)
            && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
        {
            killed += 1;
        }
    }
    killed
}

/// Kills what `procs` lists until it lists nothing (a fork racing the kill is caught by the
/// next round), for at most [`KILL_DEADLINE`]. For places that may block (start-up, drop).
fn kill_until_empty_blocking(procs: &Path) -> usize {
    let until = std::time::Instant::now() + KILL_DEADLINE;
    let mut killed = 0;
    while !read_pids(procs).is_empty() && std::time::Instant::now() < until {
        killed += kill_listed(procs);
        std::thread::sleep(Duration::from_millis(5));
    }
    killed
}

/// rmdir, retried while the kernel still counts exiting processes.
fn remove_dir_retrying(dir: &Path) -> io::Result<()> {
    let until = std::time::Instant::now() + KILL_DEADLINE;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if std::time::Instant::now() >= until => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// What the shim does when the node dies, with the directories of its helper's group (the
/// first lists its processes): kills every process in the group but the caller, until none is
/// left or [`KILL_DEADLINE`] has passed; moves the caller into the node's own cgroup; removes
/// the group, and its app's and the node's groups if they are empty now. Best effort: what is
/// left is removed by the next start of the node.
pub(crate) fn abandon(dirs: &[PathBuf]) {
    let Some(first) = dirs.first() else {
        return;
    };
    let procs = first.join("cgroup.procs");
    let until = std::time::Instant::now() + KILL_DEADLINE;
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    loop {
        let others = read_pids(&procs).iter().any(|p| *p != me);
        if others {
            kill_listed(&procs);
        }
        // The caller is a subreaper: the killed are its children now, and a zombie keeps its
        // group busy; done once none is left.
        let children_left = loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break true,
                Ok(_) => {}
                Err(_) => break false, // ECHILD
            }
        };
        if (!others && !children_left) || std::time::Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for dir in dirs {
        // <node's cgroup>/p2pos-<hash>/<app>/<leaf>
        let Some(node) = dir.ancestors().nth(3) else {
            continue;
        };
        // On v2 the node's own group may hand down controllers; then it sits in `p2posd`.
        let moved = write(&node.join("cgroup.procs"), "0").is_ok()
            || write(&node.join("p2posd").join("cgroup.procs"), "0").is_ok();
        if moved {
            for level in dir.ancestors().take(3) {
                if remove_dir_retrying(level).is_err() {
                    break;
                }
            }
        }
    }
}
