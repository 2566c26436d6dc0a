//! The checks of this node's own machine side: its services, gateway socket, store, disk,
//! helpers and the computer's load.

use std::{io::Write, os::unix::fs::FileTypeExt, os::unix::fs::PermissionsExt, path::Path};

use p2pos_kernel::{ServiceContext, ServiceError, ServiceState, events::now_ms};
use p2pos_proto::tasks::v1::{HelperState, HelperStatus};
use p2pos_protocols::{Resources, Tasks, resources, tasks};
use tokio::time::{Duration, timeout};

use super::check::{Evidence, bytes, count, fail, ok, warn};
use crate::within::within;
use p2pos_proto::monitor::v1::Check;

/// The store tree the store check writes its probe to.
pub(crate) const TREE: &str = "doctor";
/// How long another service may take to answer.
const SERVICE_WAIT: Duration = Duration::from_secs(10);
/// How long the store's probe may take.
const STORE_WAIT: Duration = Duration::from_secs(5);
/// Free space under which the data directory fails, and under which it warns.
const DISK_FAIL: u64 = 64 * 1024 * 1024;
const DISK_WARN: u64 = 256 * 1024 * 1024;
/// Restarts after which a helper waiting to restart is in a crash loop.
const CRASH_LOOP: u32 = 3;
/// Available memory (a share of the total) under which the machine is under pressure.
const MEMORY_WARN: f64 = 0.05;
/// The 15-minute load average, per core, over which the machine is overloaded (a moment at
/// full use, a build say, is not).
const LOAD_WARN: f64 = 4.0;

/// Every service is running, and none restarts over and over.
pub(crate) fn services(ctx: &ServiceContext) -> Check {
    let states = ctx.states.borrow().clone();
    let evidence: Vec<String> = states
        .iter()
        .map(|s| {
            let mut line = format!("{}: {}", s.name, s.state.as_str());
            if s.restarts > 0 {
                line.push_str(&format!(", restarted {} times", s.restarts));
            }
            if !s.last_error.is_empty() {
                line.push_str(&format!(" (last error: {})", s.last_error));
            }
            line
        })
        .collect();
    let down: Vec<&str> = states
        .iter()
        .filter(|s| matches!(s.state, ServiceState::Failed | ServiceState::Stopped))
        .map(|s| s.name)
        .collect();
    let restarted: Vec<&str> = states
        .iter()
        .filter(|s| s.restarts > 0 || s.state == ServiceState::Restarting)
        .map(|s| s.name)
        .collect();
    let check = if !down.is_empty() {
        fail(
            "services",
            format!("not running: {}", down.join(", ")),
            "see why in `p2pctl logs --level warn`, then restart the node",
        )
    } else if !restarted.is_empty() {
        warn(
            "services",
            format!("restarted since the node started: {}", restarted.join(", ")),
            "a service that restarts lost its work in flight; see why in `p2pctl logs --level warn`",
        )
    } else {
        ok("services", format!("all {} services running", states.len()))
    };
    check.evidence(evidence)
}

/// The gateway's socket is there, only for this user.
pub(crate) async fn gateway(ctx: &ServiceContext) -> Check {
    let path = ctx.config.gateway_socket();
    let shown = path.display().to_string();
    match blocking(move || std::fs::symlink_metadata(&path).map_err(|e| e.to_string())).await {
        Ok(meta) if !meta.file_type().is_socket() => fail(
            "gateway",
            format!("{shown} is not a socket"),
            format!("remove {shown} and restart the node"),
        ),
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => warn(
            "gateway",
            format!(
                "{shown} can be opened by other users (mode {:o})",
                meta.permissions().mode() & 0o777
            ),
            format!("chmod 600 {shown} (the node makes it 0600 at start)"),
        ),
        Ok(_) => ok("gateway", format!("serving on {shown} (mode 0600)")),
        Err(e) => fail(
            "gateway",
            format!("{shown}: {e}"),
            "apps cannot reach the node on its socket: restart the node",
        ),
    }
}

/// The store takes a write and a flush, and its directory takes new files (sled writes its
/// snapshots there).
pub(crate) async fn store(ctx: &ServiceContext) -> Check {
    let store = ctx.store.clone();
    let dir = ctx.config.data_dir.join(p2pos_kernel::store::DIR);
    let shown = dir.display().to_string();
    let probe = tokio::task::spawn_blocking(move || -> Result<(), String> {
        store
            .insert(TREE, b"probe", &now_ms().to_be_bytes())
            .and_then(|()| store.flush())
            .map_err(|e| format!("a write to the store failed: {e}"))?;
        probe_dir(&dir).map_err(|e| format!("cannot write a file in {}: {e}", dir.display()))
    });
    let remedy = format!(
        "the node cannot keep new messages, peers or settings: make {shown} writable by the \
         node's user (`chmod u+w {shown}`), or remount its file system read-write, then restart \
         the node"
    );
    match timeout(STORE_WAIT, probe).await {
        Ok(Ok(Ok(()))) => ok("store", format!("{shown} takes writes and flushes")),
        Ok(Ok(Err(e))) => fail("store", e, remedy),
        Ok(Err(e)) => fail("store", format!("the probe failed: {e}"), remedy),
        Err(_) => warn(
            "store",
            format!("a write and flush took over {STORE_WAIT:?}"),
            "the disk is very slow or stuck: check it (`dmesg`, `iostat`)",
        ),
    }
}

/// A call to another service, given up after [`SERVICE_WAIT`].
async fn ask<T>(call: impl Future<Output = Result<T, ServiceError>>) -> Result<T, String> {
    within(SERVICE_WAIT, call).await.map_err(|e| e.message)
}

/// Runs `work` (which touches the file system) off the async threads, giving up after
/// [`STORE_WAIT`] (a hung file system does not hang the doctor).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    match timeout(STORE_WAIT, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {STORE_WAIT:?}")),
    }
}

/// Creates, syncs and removes a file in `dir` (a name of its own: doctors may run side by
/// side).
fn probe_dir(dir: &Path) -> std::io::Result<()> {
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".doctor-probe-{}-{n}", std::process::id()));
    let mut file = std::fs::File::create(&path)?;
    file.write_all(b"p2pos doctor\n")?;
    file.sync_all()?;
    std::fs::remove_file(&path)
}

/// The data directory's file system has room.
pub(crate) async fn disk(ctx: &ServiceContext) -> Check {
    let dir = ctx.config.data_dir.clone();
    let shown = dir.display().to_string();
    let stat =
        match blocking(move || nix::sys::statvfs::statvfs(&dir).map_err(|e| e.to_string())).await {
            Ok(stat) => stat,
            Err(e) => {
                return warn(
                    "disk",
                    format!("cannot read {shown}'s file system: {e}"),
                    "check the file system the data directory is on (`df`, `dmesg`)",
                );
            }
        };
    // `fsblkcnt_t` and `c_ulong` are u64 here, not on every platform.
    #[allow(clippy::useless_conversion)]
    let (free, total) = (
        u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size())),
        u64::from(stat.blocks()).saturating_mul(u64::from(stat.fragment_size())),
    );
    let evidence = [format!(
        "{} free of {} ({} files free)",
        bytes(free),
        bytes(total),
        stat.files_available()
    )];
    let remedy = format!(
        "free space on {shown}'s file system (or move the data directory with --data-dir): the \
         store needs room to keep messages, and fails writes without it"
    );
    // Some file systems (btrfs) count no inodes at all: none free means none left only where
    // there are some.
    #[allow(clippy::useless_conversion)]
    let no_inodes = u64::from(stat.files()) > 0 && u64::from(stat.files_available()) == 0;
    let check = if no_inodes {
        fail(
            "disk",
            format!("{shown}'s file system has no free inode left"),
            remedy,
        )
    } else if free < DISK_FAIL {
        fail(
            "disk",
            format!("{shown} is nearly full: {} free", bytes(free)),
            remedy,
        )
    } else if free < DISK_WARN {
        warn(
            "disk",
            format!("{shown} is getting full: {} free", bytes(free)),
            remedy,
        )
    } else {
        ok("disk", format!("{} free for {shown}", bytes(free)))
    };
    check.evidence(evidence)
}

/// No helper is in a crash loop or has given up.
pub(crate) async fn helpers(ctx: &ServiceContext) -> Check {
    let listed = ask(ctx.registry.ask::<Tasks, _>(|reply| tasks::Request::List {
        caller_app: String::new(),
        app_id: String::new(),
        reply,
    }))
    .await;
    let helpers = match listed {
        Ok(list) => list.helpers,
        Err(e) => {
            return warn(
                "helpers",
                format!("task control does not answer: {e}"),
                "see `p2pctl status` for the tasks service",
            );
        }
    };
    let name = |h: &HelperStatus| {
        let spec = h.spec.as_ref();
        let (app, name) = spec.map_or(("", ""), |s| (s.app_id.as_str(), s.name.as_str()));
        match app {
            "" => name.to_owned(),
            app => format!("{app}/{name}"),
        }
    };
    let looping: Vec<&HelperStatus> = helpers
        .iter()
        .filter(|h| {
            let state = h.state();
            (state == HelperState::Backoff && h.restarts >= CRASH_LOOP)
                || (state == HelperState::Failed && h.restarts > 0)
        })
        .collect();
    let evidence: Vec<String> = looping
        .iter()
        .map(|h| {
            format!(
                "{}: {}, restarted {} times: {}",
                name(h),
                h.state()
                    .as_str_name()
                    .trim_start_matches("HELPER_STATE_")
                    .to_lowercase(),
                h.restarts,
                h.reason
            )
        })
        .collect();
    match looping.first() {
        None => ok(
            "helpers",
            format!("{}, none crashing", count(helpers.len(), "helper")),
        ),
        Some(first) => {
            let spec = first.spec.as_ref();
            let helper = spec.map_or("", |s| s.name.as_str());
            let app = spec.map_or("", |s| s.app_id.as_str());
            let app_flag = match app {
                "" => String::new(),
                app => format!(" --app {app}"),
            };
            fail(
                "helpers",
                format!(
                    "{} in a crash loop: {} (restarted {} times)",
                    if looping.len() == 1 { "a helper is" } else { "helpers are" },
                    looping.iter().map(|h| name(h)).collect::<Vec<_>>().join(", "),
                    first.restarts
                ),
                format!(
                    "read what it printed before it exited (`p2pctl helpers logs {helper}{app_flag}`), \
                     fix its program or spec, then `p2pctl helpers restart {helper}{app_flag}` \
                     (or stop it: `p2pctl helpers stop {helper}{app_flag}`)"
                ),
            )
            .evidence(evidence)
        }
    }
}

/// The computer has memory and CPU to spare.
pub(crate) async fn resources(ctx: &ServiceContext) -> Check {
    let inventory = ask(ctx
        .registry
        .ask::<Resources, _>(|reply| resources::Request::GetInventory { reply }))
    .await;
    let inventory = match inventory {
        Ok(inventory) => inventory,
        Err(e) => {
            return warn(
                "resources",
                format!("the resource manager does not answer: {e}"),
                "see `p2pctl status` for the resources service",
            );
        }
    };
    let memory = inventory.memory.unwrap_or_default();
    let cpu = inventory.cpu.unwrap_or_default();
    let node = inventory.node.unwrap_or_default();
    let evidence = vec![
        format!(
            "memory: {} available of {}",
            bytes(memory.available_bytes),
            bytes(memory.total_bytes)
        ),
        format!(
            "CPU: {:.0}% busy over {} cores, load {:.2}",
            cpu.usage_percent, cpu.logical_cores, cpu.load_1
        ),
        format!(
            "p2posd: {} resident, {:.0}% CPU",
            bytes(node.memory_bytes),
            node.cpu_percent
        ),
    ];
    let low_memory = memory.total_bytes > 0
        && (memory.available_bytes as f64) < MEMORY_WARN * memory.total_bytes as f64;
    let check = if low_memory {
        warn(
            "resources",
            format!(
                "memory is short: {} available",
                bytes(memory.available_bytes)
            ),
            "close programs or stop helpers (`p2pctl helpers list`); the kernel may kill \
             processes when memory runs out",
        )
    } else if cpu.logical_cores > 0 && cpu.load_15 > LOAD_WARN * f64::from(cpu.logical_cores) {
        warn(
            "resources",
            format!(
                "the computer is overloaded (load {:.1} over 15 minutes, {} cores)",
                cpu.load_15, cpu.logical_cores
            ),
            "the node and its helpers answer slowly while it is: see `top` for what uses it",
        )
    } else {
        ok("resources", "memory and CPU to spare")
    };
    check.evidence(evidence)
}
