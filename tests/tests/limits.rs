//! Helpers' resource limits, enforced by a real node on real helper processes
//! (`p2pos-test-helper`): the app quota refuses a start, a helper over its memory limit is
//! killed by the kernel and reported so, a fork bomb stops at its process limit, and nothing a
//! helper starts (even in a session of its own) outlives its stop or the node.
//!
//! The tests that need cgroups are ignored by default: run them as root on a machine with
//! writable cgroups (`cargo test --test limits -- --include-ignored`, as CI does).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use futures::StreamExt;
use p2pos_client::Client;
use p2pos_proto::{
    monitor::v1::{EventsRequest, event},
    tasks::v1::{HelperSpec, HelperState, HelperStatus, Limits, LogsRequest, RestartPolicy},
};
use p2pos_tests::{
    Node,
    tasks::{add, alive, get, helper_ref, in_state, start, stop},
    wait_for,
};

const T: Duration = Duration::from_secs(30);
const PROGRAM: &str = "p2pos-test-helper";
const MIB: u64 = 1 << 20;

fn spec(name: &str, args: &[&str], limits: Option<Limits>) -> HelperSpec {
    HelperSpec {
        name: name.into(),
        program: PROGRAM.into(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        restart: RestartPolicy::Never as i32,
        limits,
        ..HelperSpec::default()
    }
}

fn memory(bytes: u64) -> Option<Limits> {
    Some(Limits {
        memory_bytes: bytes,
        ..Limits::default()
    })
}

/// The first kept output line of `name` starting with `prefix`, once there is one.
async fn line_starting(client: &Client, name: &str, prefix: &str) -> String {
    wait_for(&format!("{name} to print {prefix:?}"), T, || async move {
        let mut stream = client
            .tasks()
            .logs(LogsRequest {
                helper: Some(helper_ref("", name)),
                follow: false,
                tail: 0,
            })
            .await
            .expect("logs")
            .into_inner();
        while let Some(line) = stream.next().await {
            let text = line.expect("log line").text;
            if text.starts_with(prefix) {
                return Some(text);
            }
        }
        None
    })
    .await
}

fn procs(cgroup: &Path) -> Vec<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// The CFS quota and period of `pid`'s cgroup: v2 `cpu.max`, or v1's two files alike.
fn cpu_quota(pid: u32) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("its cgroups");
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path:?}: {e}"))
            .trim()
            .to_owned()
    };
    let v1 = cgroups.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "cpu")
            .then(|| Path::new("/sys/fs/cgroup/cpu").join(path.trim_start_matches('/')))
    });
    match v1 {
        Some(dir) => format!(
            "{} {}",
            read(dir.join("cpu.cfs_quota_us")),
            read(dir.join("cpu.cfs_period_us"))
        ),
        None => {
            let path = cgroups
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .expect("a v2 cgroup");
            read(
                Path::new("/sys/fs/cgroup")
                    .join(path.trim_start_matches('/'))
                    .join("cpu.max"),
            )
        }
    }
}

/// Fails the test clearly when it cannot have cgroups here.
fn require_cgroups() {
    let root = nix::unistd::geteuid().is_root();
    let mounted = Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        || Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists();
    assert!(
        root && mounted,
        "this test needs root and writable cgroups (v1 memory/pids/cpu or v2); root: {root}, \
         cgroups mounted: {mounted}"
    );
}

/// A node with `config` as its `p2posd.toml`, the test helper installed, and a client.
async fn node_with(config: &str) -> (Node, Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p2posd.toml");
    std::fs::write(&path, config).expect("config");
    let mut node = Node::start(&["--config", path.to_str().expect("utf-8")]);
    node.install_plugin(PROGRAM);
    let client = node.client().await;
    (node, client, dir)
}

/// The cgroup a running helper reports, checked to be a real one.
fn cgroup_of(status: &HelperStatus) -> PathBuf {
    assert!(
        status.enforcement.starts_with("cgroup"),
        "the node should enforce limits with cgroups here (root, writable cgroups), but says \
         {:?}",
        status.enforcement
    );
    let dir = PathBuf::from(&status.cgroup);
    assert!(dir.is_dir(), "cgroup {dir:?} exists");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_over_the_app_quota_is_refused_and_bad_limits_are_invalid() {
    let (_node, client, _dir) = node_with("[tasks]\napp_memory_bytes = 134217728\n").await;

    add(&client, spec("big", &["run"], memory(100 * MIB)))
        .await
        .expect("add big");
    add(&client, spec("more", &["run"], memory(64 * MIB)))
        .await
        .expect("add more");
    add(&client, spec("free", &["run"], None))
        .await
        .expect("add free");
    let big = start(&client, "", "big").await.expect("start big");
    let limits = big.limits.expect("limits shown");
    assert_eq!(limits.memory_bytes, 100 * MIB);
    assert_eq!(limits.cpu, 1.0, "the default app quota: one core");
    assert_eq!(limits.pids, 256, "the default app quota: 256");

    let refused = start(&client, "", "more")
        .await
        .expect_err("over the quota");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        refused.message(),
        "helper \"more\" asks for 64 MiB but app \"_node\"'s memory quota ([tasks] \
         app_memory_bytes) is 128 MiB, and its running helpers already reserve 100 MiB"
    );
    assert_eq!(
        get(&client, "", "more").await.state,
        HelperState::Stopped as i32
    );
    // A helper without limits of its own reserves nothing: it shares the app's quota.
    let free = start(&client, "", "free").await.expect("start free");
    assert_eq!(free.limits.expect("limits").memory_bytes, 128 * MIB);
    // Once the big one stops, there is room.
    stop(&client, "", "big").await;
    start(&client, "", "more").await.expect("room now");

    for (limits, says) in [
        (memory(1), "limits.memory_bytes 1 is out of range"),
        (
            Some(Limits {
                cpu: -0.5,
                ..Limits::default()
            }),
            "limits.cpu -0.5 is not a share of cores",
        ),
        (
            Some(Limits {
                cpu: f64::NAN,
                ..Limits::default()
            }),
            "limits.cpu NaN",
        ),
        (
            Some(Limits {
                pids: 2_000_000,
                ..Limits::default()
            }),
            "limits.pids 2000000 is over 1000000",
        ),
    ] {
        let err = add(&client, spec("bad", &["run"], limits))
            .await
            .expect_err("bad limits");
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{}",
            err.message()
        );
        assert!(err.message().contains(says), "{}", err.message());
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and writable cgroups"]
async fn a_helper_over_its_memory_limit_is_killed_and_the_others_keep_running() {
    require_cgroups();
    let (_node, client, _dir) = node_with("").await;
    let mut events = client
        .monitor()
        .events(EventsRequest {})
        .await
        .expect("events")
        .into_inner();

    add(&client, spec("keeper", &["run"], None))
        .await
        .expect("add");
    let keeper = start(&client, "", "keeper").await.expect("start keeper");
    add(&client, spec("hog", &["alloc", "256"], memory(64 * MIB)))
        .await
        .expect("add");
    let hog = start(&client, "", "hog").await.expect("start hog");
    let cgroup = cgroup_of(&hog);
    assert_eq!(hog.limits.expect("limits").memory_bytes, 64 * MIB);

    let exited = in_state(&client, "", "hog", HelperState::Exited).await;
    assert_eq!(exited.reason, "killed: over its memory limit (64 MiB)");
    assert_eq!(
        exited.last_exit.expect("last exit").signal,
        "SIGKILL",
        "the kernel's OOM killer"
    );
    assert!(!cgroup.exists(), "its cgroup {cgroup:?} is removed");
    // An event said so.
    tokio::time::timeout(T, async {
        while let Some(event) = events.next().await {
            if let Some(event::Kind::Helper(changed)) = event.expect("event").kind
                && changed.name == "hog"
                && changed.state == "exited"
            {
                assert_eq!(changed.reason, "killed: over its memory limit (64 MiB)");
                return;
            }
        }
        panic!("the event stream ended");
    })
    .await
    .expect("an event for the hog's exit");

    let now = get(&client, "", "keeper").await;
    assert_eq!(now.state, HelperState::Running as i32);
    assert_eq!(now.pid, keeper.pid);
    assert!(alive(keeper.pid), "the other helper runs on");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and writable cgroups"]
async fn a_fork_bomb_stops_at_its_process_limit() {
    require_cgroups();
    let (_node, client, _dir) = node_with("").await;
    let limits = Limits {
        pids: 20,
        cpu: 0.5,
        ..Limits::default()
    };
    add(&client, spec("forker", &["spawn", "200"], Some(limits)))
        .await
        .expect("add");
    let forker = start(&client, "", "forker").await.expect("start");
    let cgroup = cgroup_of(&forker);

    let started = line_starting(&client, "forker", "started ").await;
    let count: u32 = started
        .split(' ')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("started K of 200");
    assert!(count < 20, "it could not pass its limit: {started}");
    let failed = line_starting(&client, "forker", "spawn failed after").await;
    assert!(
        failed.contains("Resource temporarily unavailable"),
        "{failed}"
    );
    let inside = procs(&cgroup);
    assert!(
        inside.len() <= 21,
        "at most 20 processes and the shim in its cgroup: {inside:?}"
    );
    assert_eq!(
        get(&client, "", "forker").await.state,
        HelperState::Running as i32
    );
    assert_eq!(cpu_quota(forker.pid), "50000 100000", "half a core");

    stop(&client, "", "forker").await;
    assert!(
        inside.iter().all(|pid| !alive(*pid)),
        "every process of it is gone"
    );
    assert!(!cgroup.exists(), "its cgroup is removed");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and writable cgroups"]
async fn what_a_helper_starts_in_a_session_of_its_own_goes_with_it() {
    require_cgroups();
    let (mut node, client, _dir) = node_with("").await;
    add(&client, spec("escaper", &["run", "--escape"], None))
        .await
        .expect("add");

    // Stopped through the API.
    let status = start(&client, "", "escaper").await.expect("start");
    let cgroup = cgroup_of(&status);
    let escaped = escaped_pid(&client).await;
    assert!(alive(escaped), "the escaped sleep runs");
    assert!(
        procs(&cgroup).contains(&escaped),
        "and is in the helper's cgroup"
    );
    stop(&client, "", "escaper").await;
    assert!(
        !alive(escaped),
        "the escaped process {escaped} was killed with the helper"
    );

    // The node dies: the shim empties the cgroup, and the next start removes what is left.
    let status = start(&client, "", "escaper").await.expect("start again");
    let cgroup = cgroup_of(&status);
    let escaped = wait_for("a new escaped pid", T, || {
        let client = client.clone();
        async move {
            let pid = escaped_pid(&client).await;
            (pid != escaped).then_some(pid)
        }
    })
    .await;
    node.kill();
    wait_for(
        "the escaped process to die with the node",
        T,
        || async move { (!alive(escaped)).then_some(()) },
    )
    .await;
    node.restart();
    let _client = node.client().await;
    wait_for("the restarted node to remove the old cgroup", T, || {
        let gone = !cgroup.exists();
        async move { gone.then_some(()) }
    })
    .await;
}

/// The newest `escaped pid=` the helper printed.
async fn escaped_pid(client: &Client) -> u32 {
    let mut stream = client
        .tasks()
        .logs(LogsRequest {
            helper: Some(helper_ref("", "escaper")),
            follow: false,
            tail: 0,
        })
        .await
        .expect("logs")
        .into_inner();
    let mut last = None;
    while let Some(line) = stream.next().await {
        if let Some(pid) = line.expect("line").text.strip_prefix("escaped pid=") {
            last = pid.parse().ok();
        }
    }
    match last {
        Some(pid) => pid,
        None => line_starting(client, "escaper", "escaped pid=")
            .await
            .trim_start_matches("escaped pid=")
            .parse()
            .expect("a pid"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_cgroups_the_node_falls_back_to_rlimits_and_says_so_once() {
    let (node, client, _dir) = node_with("[tasks]\ncgroups = false\n").await;
    add(&client, spec("hog", &["alloc", "256"], memory(64 * MIB)))
        .await
        .expect("add");
    let hog = start(&client, "", "hog").await.expect("start");
    assert_eq!(hog.enforcement, "rlimits");
    assert_eq!(hog.cgroup, "", "no cgroup");
    // Its address space cannot grow past 64 MiB: the allocation fails inside it.
    let ended = wait_for("the hog to end", T, || {
        let client = client.clone();
        async move {
            let status = get(&client, "", "hog").await;
            (status.state != HelperState::Running as i32).then_some(status)
        }
    })
    .await;
    assert_eq!(ended.state, HelperState::Exited as i32, "{}", ended.reason);
    assert_eq!(ended.enforcement, "rlimits");
    start(&client, "", "hog").await.expect("start again");
    let said = node.log().matches("falling back to rlimits").count();
    assert_eq!(said, 1, "said once in the log:\n{}", node.log());
}
