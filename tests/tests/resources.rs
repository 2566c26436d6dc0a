//! The resource manager on a real node: the inventory agrees with `/proc` and `statvfs`, counts
//! each running helper's process tree, shows an app only its own helpers, and is exported as
//! Prometheus gauges; `p2pctl resources` prints it.

use std::time::Duration;

use p2pos_client::Client;
use p2pos_proto::{
    app::v1::SessionRequest,
    resources::v1::{GetInventoryRequest, HelperUsage, Inventory},
    tasks::v1::{AddHelperRequest, HelperRef, HelperSpec, RestartPolicy},
};
use p2pos_tests::{Node, free_port, http_get, p2pctl, wait_for};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const PROGRAM: &str = "p2pos-test-helper";

async fn inventory(client: &Client) -> Inventory {
    client
        .resources()
        .get_inventory(GetInventoryRequest {})
        .await
        .expect("inventory")
        .into_inner()
}

/// Opens a session of `app` on `client` (kept open by the returned stream) and starts its
/// helper `name`, which forks a child of its own.
async fn start_helper(
    client: &Client,
    app: &str,
    name: &str,
) -> tonic::Streaming<p2pos_proto::app::v1::SessionEvent> {
    let mut session = client
        .apps()
        .session(SessionRequest { app_id: app.into() })
        .await
        .expect("session")
        .into_inner();
    session
        .message()
        .await
        .expect("registered")
        .expect("registered");
    let spec = HelperSpec {
        name: name.into(),
        app_id: app.into(),
        program: PROGRAM.into(),
        args: vec!["run".into(), "--fork".into()],
        restart: RestartPolicy::Never as i32,
        ..HelperSpec::default()
    };
    client
        .tasks()
        .add_helper(AddHelperRequest { spec: Some(spec) })
        .await
        .expect("add helper");
    client
        .tasks()
        .start_helper(HelperRef {
            app_id: app.into(),
            name: name.into(),
        })
        .await
        .expect("start helper");
    session
}

fn helper<'a>(inventory: &'a Inventory, app: &str, name: &str) -> Option<&'a HelperUsage> {
    inventory
        .helpers
        .iter()
        .find(|h| h.app_id == app && h.name == name)
}

/// A `/proc/meminfo` or `/proc/<pid>/status` field, in bytes.
fn proc_kib(file: &str, field: &str) -> u64 {
    std::fs::read_to_string(file)
        .expect("read /proc")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .unwrap_or_else(|| panic!("no {field} in {file}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_inventory_agrees_with_proc_and_counts_each_helper() {
    let config_dir = tempfile::tempdir().expect("tempdir");
    let config = config_dir.path().join("p2posd.toml");
    std::fs::write(&config, "[resources]\nrefresh_secs = 1\n").expect("config");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut node = Node::start(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--metrics",
        &metrics,
    ]);
    node.install_plugin(PROGRAM);
    let admin = node.client().await;

    // The machine, against /proc and statvfs.
    let (ok, out, err) = p2pctl(&node, &["resources", "--json"]);
    assert!(ok, "{err}");
    let json: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        json["memory"]["total_bytes"].as_u64(),
        Some(proc_kib("/proc/meminfo", "MemTotal:"))
    );
    let cores = std::thread::available_parallelism().expect("cores").get() as u64;
    assert_eq!(json["cpu"]["logical_cores"].as_u64(), Some(cores));
    let pid = node.pid().expect("node pid");
    assert_eq!(json["node"]["pid"].as_u64(), Some(u64::from(pid)));
    let rss = proc_kib(&format!("/proc/{pid}/status"), "VmRSS:");
    let reported = json["node"]["memory_bytes"].as_u64().expect("node memory");
    assert!(
        reported.abs_diff(rss) < rss / 2,
        "node RSS {reported} reported, {rss} in /proc"
    );
    let data_dir = node.data_dir.canonicalize().expect("canonical");
    assert_eq!(json["disk"]["path"].as_str(), data_dir.to_str());
    let fs = nix::sys::statvfs::statvfs(&data_dir).expect("statvfs");
    assert_eq!(
        json["disk"]["total_bytes"].as_u64(),
        Some(fs.blocks() * fs.fragment_size())
    );
    assert_eq!(json["interval_ms"].as_u64(), Some(1000));

    // Two apps' helpers, each a helper process and the child it forked.
    let demo = node.app_client("demoapp").await;
    let other = node.app_client("other").await;
    let _demo_session = start_helper(&demo, "demoapp", "worker").await;
    let _other_session = start_helper(&other, "other", "worker").await;
    let seen = wait_for(
        "both helpers in the inventory, with their children",
        T,
        || {
            let admin = admin.clone();
            async move {
                let inventory = inventory(&admin).await;
                let counted = ["demoapp", "other"].iter().all(|app| {
                    helper(&inventory, app, "worker")
                        .and_then(|h| h.usage.as_ref())
                        .is_some_and(|u| u.processes >= 2 && u.memory_bytes > 0)
                });
                counted.then_some(inventory)
            }
        },
    )
    .await;
    let usage = helper(&seen, "demoapp", "worker")
        .and_then(|h| h.usage)
        .expect("usage");
    let helper_rss = proc_kib(&format!("/proc/{}/status", usage.pid), "VmRSS:");
    assert!(
        usage.memory_bytes >= helper_rss / 2,
        "{usage:?} vs {helper_rss}"
    );

    // An app sees its own helpers only.
    let mine = inventory(&demo).await;
    assert!(helper(&mine, "demoapp", "worker").is_some(), "{mine:?}");
    assert!(
        mine.helpers.iter().all(|h| h.app_id == "demoapp"),
        "{:?}",
        mine.helpers
    );

    // Gauges, per helper.
    let body = http_get(&metrics, "/metrics");
    assert!(
        body.contains("p2pos_resources_memory_total_bytes "),
        "{body}"
    );
    assert!(
        body.contains(r#"p2pos_resources_helper_processes{app_id="demoapp",helper="worker"}"#),
        "{body}"
    );

    // For people.
    let (ok, text, err) = p2pctl(&node, &["resources"]);
    assert!(ok, "{err}");
    assert!(text.contains("helper demoapp:worker"), "{text}");
    assert!(text.contains("p2posd"), "{text}");

    // A helper that stops leaves the inventory.
    demo.tasks()
        .stop_helper(HelperRef {
            app_id: "demoapp".into(),
            name: "worker".into(),
        })
        .await
        .expect("stop");
    wait_for("the stopped helper to leave the inventory", T, || {
        let admin = admin.clone();
        async move {
            let inventory = inventory(&admin).await;
            helper(&inventory, "demoapp", "worker")
                .is_none()
                .then_some(())
        }
    })
    .await;
}
