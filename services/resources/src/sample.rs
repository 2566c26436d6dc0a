//! Sampling the machine with `sysinfo` (plus `statvfs` for the data directory's file system):
//! one [`Sampler`] keeps the state that CPU figures are measured against, and each
//! [`Sampler::sample`] reads `/proc` (it blocks: run it off the async threads).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use p2pos_kernel::events::now_ms;
use p2pos_proto::resources::v1::{Cpu, Disk, HelperUsage, Inventory, Memory, ProcessUsage};
use sysinfo::{
    CpuRefreshKind, Disks, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System,
};

/// A helper the task-control service runs: its app, its name and its first process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningHelper {
    /// The app it belongs to (empty for a node-wide helper).
    pub app_id: String,
    /// Its name.
    pub name: String,
    /// Its process id.
    pub pid: u32,
}

/// Takes samples of the machine; keeps what the next sample's CPU figures are measured from.
pub struct Sampler {
    system: System,
    /// The data directory, canonical, and the mount point of its file system (read once: it
    /// does not move while the node runs).
    data_dir: PathBuf,
    mount_point: String,
    node_pid: Pid,
}

impl Sampler {
    /// A sampler for a node whose data directory is `data_dir`. Reads the machine's mount
    /// list.
    pub fn new(data_dir: PathBuf) -> Self {
        let data_dir = data_dir.canonicalize().unwrap_or(data_dir);
        Self {
            system: System::new(),
            mount_point: mount_point(&data_dir),
            data_dir,
            node_pid: Pid::from_u32(std::process::id()),
        }
    }

    /// What the machine has and uses now, the node's own process and each of `helpers` with
    /// its process tree. Blocks while it reads `/proc`.
    pub fn sample(&mut self, helpers: &[RunningHelper], interval: Duration) -> Inventory {
        self.system
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        // The whole process table only when helpers run (their trees are found through it);
        // else the node's own process alone, which keeps an idle node small.
        let node_only = [self.node_pid];
        let which = if helpers.is_empty() {
            ProcessesToUpdate::Some(&node_only)
        } else {
            ProcessesToUpdate::All
        };
        self.system.refresh_processes_specifics(
            which,
            true,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        let children = self.children();
        let node = self.usage(self.node_pid, None);
        let helpers = helpers
            .iter()
            .map(|h| HelperUsage {
                app_id: h.app_id.clone(),
                name: h.name.clone(),
                usage: Some(self.usage(Pid::from_u32(h.pid), Some(&children))),
            })
            .collect();
        let load = System::load_average();
        let cpus = self.system.cpus();
        Inventory {
            cpu: Some(Cpu {
                logical_cores: u32::try_from(cpus.len()).unwrap_or(u32::MAX),
                physical_cores: System::physical_core_count()
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0),
                model: cpus
                    .first()
                    .map(|c| c.brand().trim().to_owned())
                    .unwrap_or_default(),
                load_1: load.one,
                load_5: load.five,
                load_15: load.fifteen,
                usage_percent: f64::from(self.system.global_cpu_usage()),
            }),
            memory: Some(Memory {
                total_bytes: self.system.total_memory(),
                available_bytes: self.system.available_memory(),
                used_bytes: self.system.used_memory(),
                swap_total_bytes: self.system.total_swap(),
                swap_used_bytes: self.system.used_swap(),
            }),
            disk: Some(disk(&self.data_dir, &self.mount_point)),
            node: Some(node),
            helpers,
            sampled_at_ms: now_ms(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Each process's children (threads left out: they are part of their process).
    fn children(&self) -> HashMap<Pid, Vec<Pid>> {
        let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
        for (pid, process) in self.system.processes() {
            if process.thread_kind().is_some() {
                continue;
            }
            if let Some(parent) = process.parent() {
                children.entry(parent).or_default().push(*pid);
            }
        }
        children
    }

    /// The usage of `root`, and of its descendants when `children` is given. A process that
    /// is gone counts as nothing.
    fn usage(&self, root: Pid, children: Option<&HashMap<Pid, Vec<Pid>>>) -> ProcessUsage {
        let mut usage = ProcessUsage {
            pid: root.as_u32(),
            ..ProcessUsage::default()
        };
        let mut todo = vec![root];
        while let Some(pid) = todo.pop() {
            let Some(process) = self.system.process(pid) else {
                continue;
            };
            usage.processes += 1;
            usage.memory_bytes += process.memory();
            usage.cpu_percent += f64::from(process.cpu_usage());
            if let Some(kids) = children.and_then(|c| c.get(&pid)) {
                todo.extend(kids);
            }
        }
        usage
    }
}

/// The file system holding `dir`: its sizes now, from `statvfs` of the directory itself.
fn disk(dir: &Path, mount_point: &str) -> Disk {
    let (total_bytes, available_bytes) = match nix::sys::statvfs::statvfs(dir) {
        Ok(fs) => {
            let block = fs.fragment_size();
            (
                fs.blocks().saturating_mul(block),
                fs.blocks_available().saturating_mul(block),
            )
        }
        Err(_) => (0, 0),
    };
    Disk {
        path: dir.display().to_string(),
        mount_point: mount_point.to_owned(),
        total_bytes,
        available_bytes,
    }
}

/// The mount point of the file system holding `dir`: the longest in the machine's disk list
/// that contains it.
fn mount_point(dir: &Path) -> String {
    Disks::new_with_refreshed_list()
        .iter()
        .map(|d| d.mount_point().to_path_buf())
        .filter(|m| dir.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
        .map(|m| m.display().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    fn meminfo_kib(field: &str) -> u64 {
        let text = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("field")
    }

    #[test]
    fn a_sample_agrees_with_proc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sampler = Sampler::new(dir.path().to_path_buf());
        // A child with a child: the tree of a "helper".
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn");
        let helper = RunningHelper {
            app_id: "app".into(),
            name: "h".into(),
            pid: child.id(),
        };
        let mut inventory = sampler.sample(std::slice::from_ref(&helper), Duration::from_secs(5));
        // The shell may not have started its child yet.
        for _ in 0..100 {
            if inventory.helpers[0]
                .usage
                .as_ref()
                .expect("usage")
                .processes
                == 2
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            inventory = sampler.sample(std::slice::from_ref(&helper), Duration::from_secs(5));
        }
        // The shell and its sleep: the whole process group.
        let group = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();

        let memory = inventory.memory.expect("memory");
        assert_eq!(memory.total_bytes, meminfo_kib("MemTotal:") * 1024);
        let cpus = std::fs::read_to_string("/proc/cpuinfo")
            .expect("cpuinfo")
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let cpu = inventory.cpu.expect("cpu");
        assert_eq!(cpu.logical_cores as usize, cpus);
        let loadavg = std::fs::read_to_string("/proc/loadavg").expect("loadavg");
        let one: f64 = loadavg
            .split(' ')
            .next()
            .expect("load")
            .parse()
            .expect("f64");
        assert!((cpu.load_1 - one).abs() < 1.0, "{} vs {one}", cpu.load_1);

        let node = inventory.node.expect("node");
        assert_eq!(node.pid, std::process::id());
        assert_eq!(node.processes, 1);
        assert!(node.memory_bytes > 1024 * 1024, "{node:?}");
        let helper = inventory.helpers[0].usage.expect("usage");
        assert_eq!(helper.processes, 2, "the shell and its sleep: {helper:?}");

        let disk = inventory.disk.expect("disk");
        let fs = nix::sys::statvfs::statvfs(dir.path()).expect("statvfs");
        assert_eq!(disk.total_bytes, fs.blocks() * fs.fragment_size());
        assert!(disk.available_bytes <= disk.total_bytes);
        assert!(
            disk.path.ends_with(
                dir.path()
                    .file_name()
                    .and_then(|n| n.to_str())
                    .expect("name")
            )
        );
        assert!(!disk.mount_point.is_empty(), "{disk:?}");
    }

    #[test]
    fn a_helper_that_is_gone_counts_as_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sampler = Sampler::new(dir.path().to_path_buf());
        let gone = RunningHelper {
            app_id: "app".into(),
            name: "gone".into(),
            pid: u32::MAX - 1,
        };
        let inventory = sampler.sample(&[gone], Duration::from_secs(5));
        let usage = inventory.helpers[0].usage.expect("usage");
        assert_eq!((usage.processes, usage.memory_bytes), (0, 0));
    }
}
