//! Helpers' cgroups, by plain file writes to the cgroup file system (v1 or v2, whichever the
//! machine has).
//!
//! The node makes one parent below its own cgroup, `p2pos-<hash of its data directory>` (on
//! v1 one per controller: memory, cpu, pids), one group per app below it with the app's quota,
//! and one per run of a helper, `<app>/<helper>-<run>`, with the helper's limits. A helper's
//! process joins its group before it execs (the node's `pre_exec` writes `0`, "this process",
//! into each `cgroup.procs`), so everything it starts is in it too, whatever its session or
//! process group; when it ends, every process left in the group is killed and the group
//! removed. The parent is named after the data directory, not the node's pid, so a node
//! restarted after a crash finds the groups of its earlier run and empties them first.
//!
//! Why not the `cgroups-rs` crate: it pulls in zbus and a second nix, converts paths with
//! `unwrap`, creates groups in every v1 hierarchy, and has no way to join a group between fork
//! and exec; the handful of files needed here are simpler to write directly.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::limits::Limits;

mod empty;

mod files;

pub(crate) use empty::abandon;
use empty::{empty_tree, kill_listed, read_pids};
use files::{KILL_DEADLINE, io_context, write};

/// Where cgroup file systems are mounted.
const MOUNT: &str = "/sys/fs/cgroup";
/// The v1 controllers used; memory and pids are required, cpu is used when present.
const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// The CFS period the CPU share is a quota of, in µs.
const CPU_PERIOD_US: u64 = 100_000;
/// The most shims one app's group holds at once (one per running helper).
const MAX_SHIMS_PER_APP: u32 = crate::service::MAX_RUNNING_PER_APP as u32;

/// Which cgroup version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

impl Version {
    /// "cgroup v1", "cgroup v2": the helper's `enforcement` in the API.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        }
    }
}

/// A directory of one controller (v1), or the one directory (v2, controller "").
#[derive(Debug, Clone)]
struct Dir {
    controller: &'static str,
    path: PathBuf,
}

/// The node's parent groups, writable.
#[derive(Debug)]
pub(crate) struct Cgroups {
    version: Version,
    roots: Vec<Dir>,
}

/// The group of one run of a helper.
#[derive(Debug)]
pub(crate) struct Group {
    version: Version,
    dirs: Vec<Dir>,
    /// `cgroup.procs` of each directory, ready for `pre_exec` (which may not allocate).
    procs: Vec<CString>,
}

/// The 64-bit FNV-1a hash of `bytes`, in hex: a stable short name for a data directory.
fn short_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// This process's cgroup in the hierarchy with `controller` (v1), or the unified one
/// (`controller` ""), from `/proc/self/cgroup`'s text.
fn own_cgroup(text: &str, controller: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then(|| path.to_owned())
    })
}

/// `base` joined with an absolute cgroup path.
fn below(base: &Path, cgroup: &str) -> PathBuf {
    base.join(cgroup.trim_start_matches('/'))
}

fn mkdir(path: &Path) -> Result<(), String> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_context(path, e)),
    }
}

impl Cgroups {
    /// The node's parent groups for the data directory `data_dir` (`suffix` after its name:
    /// one tree per part of the node), created; an error says why
    /// cgroups cannot be used here (not mounted, not writable, controllers missing).
    pub(crate) fn open(data_dir: &Path, suffix: &str) -> Result<Cgroups, String> {
        let dir = data_dir
            .canonicalize()
            .unwrap_or_else(|_| data_dir.to_owned());
        let name = format!("p2pos-{}{suffix}", short_hash(dir.as_os_str().as_bytes()));
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let mount = Path::new(MOUNT);
        if mount.join("cgroup.controllers").exists() {
            Self::open_v2(mount, &own, &name)
        } else {
            Self::open_v1(mount, &own, &name)
        }
    }

    fn open_v1(mount: &Path, own: &str, name: &str) -> Result<Cgroups, String> {
        let mut roots = Vec::new();
        for controller in V1_CONTROLLERS {
            let hierarchy = mount.join(controller);
            let found = hierarchy.join("cgroup.procs").exists();
            let Some(cgroup) = own_cgroup(own, controller).filter(|_| found) else {
                if controller == "cpu" {
                    continue;
                }
                return Err(format!(
                    "no cgroup v1 {controller} controller at {}",
                    hierarchy.display()
                ));
            };
            let root = below(&hierarchy, &cgroup).join(name);
            // Proves it writable; it is removed until a helper starts (see `ensure_root`).
            mkdir(&root)?;
            roots.push(Dir {
                controller,
                path: root,
            });
        }
        Ok(Cgroups {
            version: Version::V1,
            roots,
        })
    }

    fn open_v2(mount: &Path, own: &str, name: &str) -> Result<Cgroups, String> {
        let cgroup =
            own_cgroup(own, "").ok_or("no cgroup v2 entry in /proc/self/cgroup".to_owned())?;
        let base = below(mount, &cgroup);
        let available = std::fs::read_to_string(base.join("cgroup.controllers"))
            .map_err(|e| io_context(&base.join("cgroup.controllers"), e))?;
        for needed in ["memory", "pids"] {
            if !available.split_whitespace().any(|c| c == needed) {
                return Err(format!(
                    "the cgroup v2 controller {needed} is not delegated to {}",
                    base.display()
                ));
            }
        }
        let enable = if available.split_whitespace().any(|c| c == "cpu") {
            "+memory +pids +cpu"
        } else {
            "+memory +pids"
        };
        let control = base.join("cgroup.subtree_control");
        if write(&control, enable).is_err() {
            // A group with processes cannot hand controllers down ("no internal processes"):
            // the node moves into a leaf of its own group first.
            let leaf = base.join("p2posd");
            mkdir(&leaf)?;
            write(&leaf.join("cgroup.procs"), "0")?;
            write(&control, enable)?;
        }
        let root = base.join(name);
        mkdir(&root)?;
        Ok(Cgroups {
            version: Version::V2,
            roots: vec![Dir {
                controller: "",
                path: root,
            }],
        })
    }

    /// The version in use.
    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// Kills every process left in groups of an earlier run of the node on this data
    /// directory and removes those groups, and the node's own until a helper starts. Returns
    /// how many processes it killed.
    pub(crate) fn clean_leftovers(&self) -> usize {
        let mut killed = 0;
        for root in &self.roots {
            killed += empty_tree(&root.path, true);
        }
        killed
    }

    /// Creates the node's group in `root` if it is not there (it exists only while helpers
    /// run, so that a node killed without helpers leaves nothing behind).
    fn ensure_root(&self, root: &Dir) -> Result<(), String> {
        if root.path.is_dir() {
            return Ok(());
        }
        mkdir(&root.path)?;
        match self.version {
            Version::V1 if root.controller == "memory" => {
                // Needed before kernel 5.x made it the only behaviour; fails harmlessly after.
                let _ = write(&root.path.join("memory.use_hierarchy"), "1");
                Ok(())
            }
            Version::V1 => Ok(()),
            Version::V2 => {
                let parent = root.path.parent().unwrap_or(Path::new(MOUNT));
                write(
                    &root.path.join("cgroup.subtree_control"),
                    &enabled_controllers(parent),
                )
            }
        }
    }

    /// Removes the node's parent groups (when the service stops; they must be empty).
    pub(crate) fn remove(&self) {
        for root in &self.roots {
            let _ = empty_tree(&root.path, true);
        }
    }

    /// Creates the group of app `app` (its quota) if needed, and in it the group `leaf` of one
    /// run with `limits` (`extra_pids` more processes allowed, for the shim).
    pub(crate) fn create(
        &self,
        app: &str,
        leaf: &str,
        quota: Limits,
        limits: Limits,
        extra_pids: u32,
    ) -> Result<Group, String> {
        let mut dirs = Vec::new();
        for root in &self.roots {
            self.ensure_root(root)?;
            let app_dir = root.path.join(app);
            if !app_dir.is_dir() {
                mkdir(&app_dir)?;
                // Each running helper's shim counts against its app too.
                let shims = extra_pids.saturating_mul(MAX_SHIMS_PER_APP);
                self.apply(root.controller, &app_dir, quota, shims)?;
                if self.version == Version::V2 {
                    write(
                        &app_dir.join("cgroup.subtree_control"),
                        &enabled_controllers(&root.path),
                    )?;
                }
            }
            let dir = app_dir.join(leaf);
            mkdir(&dir)?;
            dirs.push(Dir {
                controller: root.controller,
                path: dir,
            });
        }
        let group = Group::new(self.version, dirs)?;
        for dir in &group.dirs {
            if let Err(e) = self.apply(dir.controller, &dir.path, limits, extra_pids) {
                group.remove_now();
                return Err(e);
            }
        }
        Ok(group)
    }

    /// Removes app `app`'s group if no helper group is left in it, and the node's if no app's
    /// is left.
    pub(crate) fn remove_app(&self, app: &str) {
        for root in &self.roots {
            if std::fs::remove_dir(root.path.join(app)).is_ok() {
                let _ = std::fs::remove_dir(&root.path);
            }
        }
    }

    /// Writes `limits` into the directory `dir` of `controller`.
    fn apply(
        &self,
        controller: &str,
        dir: &Path,
        limits: Limits,
        extra_pids: u32,
    ) -> Result<(), String> {
        let pids = limits.pids.map_or("max".to_owned(), |p| {
            p.saturating_add(extra_pids).to_string()
        });
        let quota_us = limits
            .cpu_millis
            .map(|m| u64::from(m) * CPU_PERIOD_US / 1000);
        match self.version {
            Version::V1 => match controller {
                "memory" => {
                    let bytes = limits.memory.map_or("-1".to_owned(), |b| b.to_string());
                    write(&dir.join("memory.limit_in_bytes"), &bytes)?;
                    // RAM and swap together, where swap is accounted.
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &bytes)?;
                    }
                    Ok(())
                }
                "cpu" => {
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    let quota = quota_us.map_or("-1".to_owned(), |q| q.to_string());
                    write(&dir.join("cpu.cfs_quota_us"), &quota)
                }
                "pids" => write(&dir.join("pids.max"), &pids),
                _ => Ok(()),
            },
            Version::V2 => {
                let bytes = limits.memory.map_or("max".to_owned(), |b| b.to_string());
                write(&dir.join("memory.max"), &bytes)?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    let swap_max = if limits.memory.is_some() { "0" } else { "max" };
                    write(&swap, swap_max)?;
                }
                let cpu = dir.join("cpu.max");
                if cpu.exists() {
                    let quota = quota_us.map_or("max".to_owned(), |q| q.to_string());
                    write(&cpu, &format!("{quota} {CPU_PERIOD_US}"))?;
                }
                write(&dir.join("pids.max"), &pids)
            }
        }
    }
}

/// `+memory +pids ...`: the controllers `dir` hands down (v2), to hand down further.
fn enabled_controllers(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("cgroup.subtree_control"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Group {
    fn new(version: Version, dirs: Vec<Dir>) -> Result<Group, String> {
        let procs = dirs
            .iter()
            .map(|d| {
                CString::new(d.path.join("cgroup.procs").as_os_str().as_bytes())
                    .map_err(|_| format!("{}: NUL in the path", d.path.display()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Group {
            version,
            dirs,
            procs,
        })
    }

    /// Its directories, the one [`Group::path`] names first.
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        let first = self.path().to_owned();
        std::iter::once(first.clone())
            .chain(
                self.dirs
                    .iter()
                    .map(|d| d.path.clone())
                    .filter(|p| *p != first),
            )
            .collect()
    }

    /// The directory whose `cgroup.procs` lists the helper's processes: the pids
    /// controller's on v1, the group on v2.
    pub(crate) fn path(&self) -> &Path {
        self.dirs
            .iter()
            .find(|d| d.controller == "pids" || d.controller.is_empty())
            .or(self.dirs.first())
            .map_or(Path::new(""), |d| &d.path)
    }

    /// Moves the calling process into this group. Runs between fork and exec: only system
    /// calls, nothing allocated.
    pub(crate) fn join_from_child(&self) -> io::Result<()> {
        for procs in &self.procs {
            // SAFETY: a NUL-terminated path; open, write and close are async-signal-safe.
            unsafe {
                let fd =
                    nix::libc::open(procs.as_ptr(), nix::libc::O_WRONLY | nix::libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = nix::libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = io::Error::last_os_error();
                nix::libc::close(fd);
                if written != 1 {
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// How many times the kernel's OOM killer killed a process of this group.
    pub(crate) fn oom_kills(&self) -> u64 {
        let (dir, file) = match self.version {
            Version::V1 => (
                self.dirs.iter().find(|d| d.controller == "memory"),
                "memory.oom_control",
            ),
            Version::V2 => (self.dirs.first(), "memory.events"),
        };
        let Some(dir) = dir else { return 0 };
        std::fs::read_to_string(dir.path.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Kills every process in the group (v2: `cgroup.kill` where the kernel has it), until it
    /// is empty, then removes the group; gives up after [`KILL_DEADLINE`] (the next start of
    /// the node cleans up).
    pub(crate) async fn kill_and_remove(&self) {
        if self.version == Version::V2 {
            let _ = write(&self.path().join("cgroup.kill"), "1");
        }
        let procs = self.path().join("cgroup.procs");
        let until = tokio::time::Instant::now() + KILL_DEADLINE;
        while !read_pids(&procs).is_empty() && tokio::time::Instant::now() < until {
            kill_listed(&procs);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for dir in &self.dirs {
            loop {
                match std::fs::remove_dir(&dir.path) {
                    Err(e)
                        if e.kind() != io::ErrorKind::NotFound
                            && tokio::time::Instant::now() < until =>
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        tracing::warn!(group = %dir.path.display(), "cannot remove the helper's cgroup: {e}");
                        break;
                    }
                    _ => break,
                }
            }
        }
    }

    /// [`Group::kill_and_remove`], blocking (for the service's drop).
    pub(crate) fn kill_and_remove_blocking(&self) {
        for dir in &self.dirs {
            let _ = empty_tree(&dir.path, true);
        }
    }

    /// Removes the (still empty) group.
    fn remove_now(&self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(&dir.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroups_are_read_per_controller() {
        let v1 = "12:pids:/a\n4:memory:/process_api/x\n2:cpu,cpuacct:/\n0::/\n";
        assert_eq!(own_cgroup(v1, "memory").as_deref(), Some("/process_api/x"));
        assert_eq!(own_cgroup(v1, "cpu").as_deref(), Some("/"));
        assert_eq!(own_cgroup(v1, "pids").as_deref(), Some("/a"));
        assert_eq!(own_cgroup(v1, "freezer"), None);
        assert_eq!(
            own_cgroup("0::/user.slice/x\n", "").as_deref(),
            Some("/user.slice/x")
        );
        assert_eq!(
            below(Path::new("/sys/fs/cgroup/memory"), "/process_api/x"),
            Path::new("/sys/fs/cgroup/memory/process_api/x")
        );
        assert_eq!(
            below(Path::new("/sys/fs/cgroup/cpu"), "/"),
            Path::new("/sys/fs/cgroup/cpu")
        );
    }

    #[test]
    fn data_directories_get_stable_distinct_names() {
        assert_eq!(short_hash(b"/data/a"), short_hash(b"/data/a"));
        assert_ne!(short_hash(b"/data/a"), short_hash(b"/data/b"));
        assert_eq!(short_hash(b"").len(), 16);
    }
}
