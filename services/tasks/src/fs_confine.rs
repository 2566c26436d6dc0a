//! Helpers' file system confinement with Landlock: what a helper may read, run and write, so
//! that it cannot read the node's secrets (`identity.key`, `gateway.token`, the store) nor
//! other helpers' directories, though it runs as the node's user.
//!
//! The node works out the paths ([`FsRules::for_helper`]) and hands them to the helper's
//! [`crate::shim`] on its command line; the shim builds the Landlock ruleset before it starts
//! the program and the program's process enforces it on itself right before `exec`
//! ([`Ruleset::restrict`]). A helper may
//! - read and run: the system directories ([`SYSTEM_DIRS`]), its program's directory (the
//!   plug-in directory for an app's helper), the `read_paths` its spec names, and, for a
//!   helper the admin installed, its working directory;
//! - read and write: its own directory (`$P2POS_HELPER_DIR`) and the usual devices
//!   ([`DEVICES`]);
//! - nothing else: not the data directory, not `/tmp`, not home directories. A broad grant
//!   that holds the data directory (a program in a directory above it) is narrowed to what
//!   is beside the data directory at each level.
//!
//! Connecting to the gateway's socket stays possible (file system rights of Landlock ABI 5
//! do not cover connecting to a unix socket). Where the kernel has no Landlock, the node says
//! so once in its log and helpers run unconfined ([`warn_if_unsupported`]).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use landlock::{
    ABI, Access, AccessFs, AccessNet, RulesetAttr, RulesetCreated, RulesetCreatedAttr,
    path_beneath_rules,
};

/// Directories every helper may read and run programs from.
pub(crate) const SYSTEM_DIRS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/run",
    "/proc",
    "/sys",
    "/nix/store",
];

/// Devices every helper may read and write.
pub(crate) const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
    "/dev/shm",
];

/// The Landlock ABI whose file system rights are handled: every right up to device ioctls
/// (ABI 5), none that would also confine connecting to unix sockets (the gateway's).
const HANDLED_ABI: ABI = ABI::V5;

/// Most paths one helper is given: a narrowed grant stops here.
const MAX_PATHS: usize = 1024;

/// What one helper may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FsRules {
    /// Read and execute beneath these.
    pub(crate) read_exec: Vec<PathBuf>,
    /// Everything beneath these.
    pub(crate) read_write: Vec<PathBuf>,
    /// No TCP at all: neither bind nor connect (Landlock ABI 4 and later; unix sockets are
    /// not concerned). A job's sandbox never needs the network.
    pub(crate) no_tcp: bool,
}

/// Where one helper's files are.
pub(crate) struct HelperPaths<'a> {
    /// The node's data directory: hidden.
    pub(crate) data_dir: &'a Path,
    /// The helper's own directory (inside the data directory).
    pub(crate) helper_dir: &'a Path,
    /// Its resolved program.
    pub(crate) program: &'a Path,
    /// The plug-in directory (an app's helper runs from there).
    pub(crate) plugin_dir: &'a Path,
    /// Its working directory, for a helper the admin installed.
    pub(crate) admin_working_dir: Option<&'a Path>,
    /// What its spec lets it read besides.
    pub(crate) read_paths: &'a [PathBuf],
}

impl FsRules {
    /// The rules of one helper (see the module doc).
    pub(crate) fn for_helper(paths: &HelperPaths<'_>) -> FsRules {
        let hidden = paths
            .data_dir
            .canonicalize()
            .unwrap_or_else(|_| paths.data_dir.to_owned());
        let mut rules = FsRules::default();
        let mut read_exec = Grants::new(&hidden);
        for dir in SYSTEM_DIRS {
            read_exec.grant(Path::new(dir));
        }
        let program_dir = paths.program.parent().unwrap_or(Path::new("/"));
        let plugin_dir = paths
            .plugin_dir
            .canonicalize()
            .unwrap_or_else(|_| paths.plugin_dir.to_owned());
        if program_dir.starts_with(&plugin_dir) && !hidden.starts_with(&plugin_dir) {
            // The plug-in directory is the place for programs, inside the data directory or
            // not (but not the data directory itself, or above it).
            read_exec.paths.push(plugin_dir);
        } else if program_dir.starts_with(&hidden) {
            read_exec.paths.push(paths.program.to_owned());
        } else {
            read_exec.grant(program_dir);
        }
        if let Some(dir) = paths.admin_working_dir {
            read_exec.grant(dir);
        }
        for path in paths.read_paths {
            read_exec.grant(path);
        }
        rules.read_exec = read_exec.paths;
        rules.read_write.push(paths.helper_dir.to_owned());
        rules
            .read_write
            .extend(DEVICES.iter().map(PathBuf::from).filter(|p| p.exists()));
        rules
    }

    /// The rules of one job's sandbox process: the system directories and the node's
    /// executable `program` to read and run, its job directory `job_dir` (inside the data
    /// directory) to read and write; nothing else of the data directory.
    pub(crate) fn for_job(data_dir: &Path, job_dir: &Path, program: &Path) -> FsRules {
        let hidden = data_dir
            .canonicalize()
            .unwrap_or_else(|_| data_dir.to_owned());
        let mut read_exec = Grants::new(&hidden);
        for dir in SYSTEM_DIRS {
            read_exec.grant(Path::new(dir));
        }
        read_exec.paths.push(program.to_owned());
        let mut read_write = vec![job_dir.to_owned()];
        read_write.extend(DEVICES.iter().map(PathBuf::from).filter(|p| p.exists()));
        FsRules {
            read_exec: read_exec.paths,
            read_write,
            no_tcp: true,
        }
    }

    /// The shim's command-line options for these rules: `--fs-rx PATH`, `--fs-rw PATH`.
    pub(crate) fn shim_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        for (flag, paths) in [("--fs-rx", &self.read_exec), ("--fs-rw", &self.read_write)] {
            for path in paths {
                args.extend([OsString::from(flag), path.as_os_str().to_owned()]);
            }
        }
        if self.no_tcp {
            args.push(OsString::from("--no-tcp"));
        }
        args
    }

    /// Whether there is nothing to enforce (a shim started without rules).
    pub(crate) fn is_empty(&self) -> bool {
        self.read_exec.is_empty() && self.read_write.is_empty() && !self.no_tcp
    }
}

/// Read grants that never reach into the hidden directory.
struct Grants<'a> {
    hidden: &'a Path,
    paths: Vec<PathBuf>,
}

impl<'a> Grants<'a> {
    fn new(hidden: &'a Path) -> Self {
        Grants {
            hidden,
            paths: Vec::new(),
        }
    }

    /// Grants `path` (resolved), unless it is inside the hidden directory; one that holds it
    /// is narrowed to its entries, level by level, but the one that leads to it.
    fn grant(&mut self, path: &Path) {
        if let Ok(path) = path.canonicalize() {
            self.grant_canonical(path);
        }
    }

    fn grant_canonical(&mut self, path: PathBuf) {
        if self.paths.len() >= MAX_PATHS || path.starts_with(self.hidden) {
            return;
        }
        if !self.hidden.starts_with(&path) {
            self.paths.push(path);
            return;
        }
        let Ok(entries) = std::fs::read_dir(&path) else {
            return;
        };
        for entry in entries.flatten() {
            let child = entry.path();
            let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
            if is_link {
                // Where it leads, unless that holds the hidden directory too (a loop).
                if let Ok(target) = child.canonicalize()
                    && !self.hidden.starts_with(&target)
                {
                    self.grant_canonical(target);
                }
            } else {
                self.grant_canonical(child);
            }
        }
    }
}

/// A Landlock ruleset built from [`FsRules`], ready to be enforced by the process that will
/// `exec` the helper's program.
pub(crate) struct Ruleset(RulesetCreated);

impl Ruleset {
    /// Opens every path and builds the ruleset (paths that do not exist are left out). On a
    /// kernel without Landlock this succeeds and enforces nothing.
    pub(crate) fn build(rules: &FsRules) -> Result<Ruleset, landlock::RulesetError> {
        let all = AccessFs::from_all(HANDLED_ABI);
        let confines_files = !rules.read_exec.is_empty() || !rules.read_write.is_empty();
        let mut ruleset = landlock::Ruleset::default();
        if confines_files {
            ruleset = ruleset.handle_access(all)?;
        }
        if rules.no_tcp {
            // Handled, and no rule allows any port: every TCP bind and connect is refused.
            ruleset = ruleset.handle_access(AccessNet::from_all(ABI::V4))?;
        }
        let mut created = ruleset.create()?;
        if confines_files {
            created = created
                .add_rules(path_beneath_rules(
                    &rules.read_exec,
                    AccessFs::from_read(HANDLED_ABI),
                ))?
                .add_rules(path_beneath_rules(&rules.read_write, all))?;
        }
        Ok(Ruleset(created))
    }

    /// Confines the calling thread (and what it `exec`s) for good; sets no-new-privileges.
    /// Called in the forked child right before `exec`: two system calls, no allocation.
    pub(crate) fn restrict(self) -> std::io::Result<()> {
        self.0
            .restrict_self()
            .map(|_| ())
            .map_err(std::io::Error::other)
    }
}

/// The Landlock ABI version of the running kernel; 0 without Landlock.
pub(crate) fn kernel_abi() -> i64 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only returns
    // the ABI version (or -1 with errno); it reads and writes no memory.
    let version = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    version.max(0)
}

/// Whether the missing Landlock has been logged (once per node).
static SAID_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Logs once, as a warning, that helpers cannot be confined where the kernel has no Landlock.
pub(crate) fn warn_if_unsupported() {
    let abi = kernel_abi();
    if abi == 0 {
        if !SAID_UNSUPPORTED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the kernel has no Landlock: helpers are not confined to their own files and can \
                 read everything the node's user can, the node's identity key and gateway.token \
                 included (Linux 5.13 or later with landlock in the `lsm=` boot list confines them)"
            );
        }
    } else {
        tracing::info!(abi, "helpers are confined to their own files with Landlock");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths<'a>(
        data: &'a Path,
        helper: &'a Path,
        program: &'a Path,
        plugins: &'a Path,
    ) -> HelperPaths<'a> {
        HelperPaths {
            data_dir: data,
            helper_dir: helper,
            program,
            plugin_dir: plugins,
            admin_working_dir: None,
            read_paths: &[],
        }
    }

    #[test]
    fn an_apps_helper_reads_the_system_and_its_plugins_and_writes_its_own_dir() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        let data = root.join("data");
        let plugins = data.join("plugins");
        let helper = data.join("helpers/chat/voice");
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::create_dir_all(&helper).unwrap();
        let program = plugins.join("voice");
        let rules = FsRules::for_helper(&paths(&data, &helper, &program, &plugins));
        assert!(rules.read_exec.contains(&plugins));
        assert!(rules.read_exec.contains(&PathBuf::from("/usr")));
        let under_root: Vec<_> = rules
            .read_exec
            .iter()
            .filter(|p| p.starts_with(&root))
            .collect();
        assert_eq!(under_root, [&plugins], "nothing else of the data dir");
        assert_eq!(rules.read_write[0], helper);
        assert!(rules.read_write.contains(&PathBuf::from("/dev/null")));
        assert!(!rules.is_empty());
        let args = rules.shim_args();
        assert_eq!(
            args.len(),
            2 * (rules.read_exec.len() + rules.read_write.len())
        );
        assert_eq!(args[0], "--fs-rx");
    }

    #[test]
    fn a_grant_above_the_data_dir_is_narrowed_around_it() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        let data = root.join("node/data");
        let helper = data.join("helpers/_node/x");
        std::fs::create_dir_all(&helper).unwrap();
        std::fs::create_dir_all(root.join("node/tools")).unwrap();
        std::fs::write(root.join("prog"), "").unwrap();
        std::fs::write(root.join("node/notes"), "").unwrap();
        std::os::unix::fs::symlink(&root, root.join("node/loop")).unwrap();
        std::os::unix::fs::symlink(&data, root.join("node/to-data")).unwrap();
        // An admin's program right above the data directory.
        let program = root.join("prog");
        let plugins = data.join("plugins");
        let rules = FsRules::for_helper(&paths(&data, &helper, &program, &plugins));
        let under_root: Vec<_> = rules
            .read_exec
            .iter()
            .filter(|p| p.starts_with(&root))
            .cloned()
            .collect();
        let mut expected = vec![
            root.join("prog"),
            root.join("node/tools"),
            root.join("node/notes"),
        ];
        expected.sort();
        let mut got = under_root.clone();
        got.sort();
        assert_eq!(
            got, expected,
            "everything beside the data dir, nothing in it"
        );
        // A program inside the data directory (not in the plug-in directory): that file only.
        std::fs::write(data.join("prog"), "").unwrap();
        let inside = data.join("prog");
        let rules = FsRules::for_helper(&paths(&data, &helper, &inside, &plugins));
        assert!(rules.read_exec.contains(&inside));
        assert!(!rules.read_exec.contains(&data));
        // The plug-in directory set to the data directory itself grants only the program.
        let rules = FsRules::for_helper(&paths(&data, &helper, &inside, &data));
        assert!(!rules.read_exec.contains(&data));
        assert!(rules.read_exec.contains(&inside));
    }

    #[test]
    fn a_ruleset_builds_here() {
        let rules = FsRules {
            read_exec: vec!["/usr".into(), "/no/such/dir".into()],
            read_write: vec!["/dev/null".into()],
            no_tcp: false,
        };
        assert!(Ruleset::build(&rules).is_ok());
        assert!(kernel_abi() >= 0);
    }

    /// A job's sandbox is refused TCP (the kernels this runs on have Landlock ABI 4 or later;
    /// one without is told here rather than passing unseen).
    #[test]
    fn no_tcp_refuses_connecting_and_nothing_else() {
        assert!(
            kernel_abi() >= 4,
            "this kernel's Landlock (ABI {}) cannot refuse TCP",
            kernel_abi()
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connects = |no_tcp: bool| {
            let rules = FsRules {
                no_tcp,
                ..FsRules::default()
            };
            // Nothing handled is no ruleset at all (the shim builds none then either).
            let mut ruleset = no_tcp.then(|| Ruleset::build(&rules).unwrap());
            let mut cmd = std::process::Command::new("/bin/bash");
            cmd.args([
                "-c",
                &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo ok"),
            ]);
            cmd.stderr(std::process::Stdio::null());
            // SAFETY: runs in the forked child before exec: landlock_restrict_self only.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    ruleset.take().map_or(Ok(()), Ruleset::restrict)
                });
            }
            let out = cmd.output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim() == "ok"
        };
        assert!(connects(false), "bash connects without the rule");
        assert!(!connects(true), "and not with it");
    }
}
