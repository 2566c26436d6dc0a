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
use p2pos_tests::{Node, free_port, full_mesh, http_get, p2pctl, wait_for};
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
        .session(SessionRequest {
            app_id: app.into(),
            group: String::new(),
        })
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

/// `p2pctl` on `node` with `args`; its stdout, parsed as JSON when asked for. Fails the test
/// if it fails.
fn ctl(node: &Node, args: &[&str]) -> String {
    let (ok, out, err) = p2pctl(node, args);
    assert!(ok, "p2pctl {args:?}: {out}{err}");
    out
}

fn peer_ids(found: &Value, list: &str) -> Vec<String> {
    found[list]
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| {
            m["offer"]["peer_id"]
                .as_str()
                .or_else(|| m["peer_id"].as_str())
                .expect("peer id")
                .to_owned()
        })
        .collect()
}

fn reason_of(found: &Value, peer: &str) -> Option<String> {
    found["others"]
        .as_array()?
        .iter()
        .find(|o| o["peer_id"] == peer)
        .and_then(|o| o["reason"].as_str())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_lenders_are_found_ranked_and_leased_and_the_third_explained() {
    let (nodes, ids) = full_mesh(4).await;
    let (a, b, c, d) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    // B lends a core and 1 GiB to A; C half a core and 2 GiB; D lends, but not to A.
    let shared = ctl(
        &nodes[1],
        &[
            "resources",
            "share",
            "--cpu",
            "1",
            "--memory",
            "1GiB",
            "--to",
            a,
        ],
    );
    assert!(shared.contains("lends at most 1 cores"), "{shared}");
    ctl(
        &nodes[2],
        &[
            "resources",
            "share",
            "--cpu",
            "0.5",
            "--memory",
            "2GiB",
            "--to",
            a,
        ],
    );
    let stranger = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    ctl(
        &nodes[3],
        &["resources", "share", "--cpu", "1", "--to", &stranger],
    );

    // Found through the DHT, the freest CPU first.
    let found = wait_for("A to find both lenders", T, || {
        let a_node = &nodes[0];
        async move {
            let out = ctl(
                a_node,
                &[
                    "resources",
                    "find",
                    "--cpu",
                    "0.25",
                    "--memory",
                    "128MiB",
                    "--json",
                ],
            );
            let found: Value = serde_json::from_str(&out).expect("json");
            (peer_ids(&found, "matches").len() == 2).then_some(found)
        }
    })
    .await;
    assert_eq!(peer_ids(&found, "matches"), [b.clone(), c.clone()]);
    // Asked by name, with reasons for those that do not match.
    let out = ctl(
        &nodes[0],
        &[
            "resources",
            "find",
            "--memory",
            "1536MiB",
            "--peer",
            b,
            "--peer",
            c,
            "--peer",
            d,
            "--explain",
            "--json",
        ],
    );
    let found: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(peer_ids(&found, "matches"), std::slice::from_ref(c));
    assert_eq!(reason_of(&found, b).as_deref(), Some("INSUFFICIENT_MEMORY"));
    assert_eq!(reason_of(&found, d).as_deref(), Some("NOT_ALLOWED"));
    let text = ctl(
        &nodes[0],
        &[
            "resources",
            "find",
            "--memory",
            "1536MiB",
            "--peer",
            d,
            "--explain",
        ],
    );
    assert!(text.contains("NOT_ALLOWED"), "{text}");

    // A lease is granted and counted; one beyond the offer is refused.
    let out = ctl(
        &nodes[0],
        &[
            "resources",
            "lease",
            b,
            "--cpu",
            "0.75",
            "--memory",
            "512MiB",
            "--ttl",
            "10",
            "--json",
        ],
    );
    let lease: Value = serde_json::from_str(&out).expect("json");
    let lease_id = lease["lease_id"].as_str().expect("lease id").to_owned();
    assert_eq!(lease["lender"].as_str(), Some(b.as_str()));
    let (ok, _, err) = p2pctl(&nodes[0], &["resources", "lease", b, "--cpu", "0.5"]);
    assert!(!ok && err.contains("INSUFFICIENT_CPU"), "{err}");
    let granted: Value =
        serde_json::from_str(&ctl(&nodes[1], &["resources", "leases", "--json"])).expect("json");
    assert_eq!(
        granted["granted"][0]["lease_id"].as_str(),
        Some(lease_id.as_str())
    );
    assert_eq!(granted["granted"][0]["holder"].as_str(), Some(a.as_str()));
    let held: Value =
        serde_json::from_str(&ctl(&nodes[0], &["resources", "leases", "--json"])).expect("json");
    let first_end = held["held"][0]["expires_at_ms"].as_u64().expect("end");

    // Renewed, it ends later; given back, it is gone on both sides.
    let renewed = ctl(&nodes[0], &["resources", "renew", &lease_id, "--ttl", "60"]);
    assert!(renewed.contains(&lease_id), "{renewed}");
    let held: Value =
        serde_json::from_str(&ctl(&nodes[0], &["resources", "leases", "--json"])).expect("json");
    assert!(held["held"][0]["expires_at_ms"].as_u64().expect("end") > first_end + 20_000);
    ctl(&nodes[0], &["resources", "release", &lease_id]);
    let granted: Value =
        serde_json::from_str(&ctl(&nodes[1], &["resources", "leases", "--json"])).expect("json");
    assert_eq!(
        granted["granted"].as_array().map(Vec::len),
        Some(0),
        "{granted}"
    );

    // A lease left alone ends by itself, and its amounts are free again.
    ctl(
        &nodes[0],
        &["resources", "lease", b, "--cpu", "1", "--ttl", "10"],
    );
    let (ok, _, err) = p2pctl(&nodes[0], &["resources", "lease", b, "--cpu", "0.25"]);
    assert!(!ok && err.contains("INSUFFICIENT_CPU"), "{err}");
    wait_for("the lease to end by itself", T, || {
        let b_node = &nodes[1];
        async move {
            let granted: Value =
                serde_json::from_str(&ctl(b_node, &["resources", "leases", "--json"])).ok()?;
            (granted["granted"].as_array()?.is_empty()).then_some(())
        }
    })
    .await;
    ctl(&nodes[0], &["resources", "lease", b, "--cpu", "0.25"]);

    // Unshared, B refuses and leaves the DHT's list of lenders.
    ctl(&nodes[1], &["resources", "unshare"]);
    let (ok, _, err) = p2pctl(&nodes[0], &["resources", "lease", b, "--cpu", "0.25"]);
    assert!(!ok && err.contains("NOT_SHARED"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_is_checked_kept_across_restarts_and_only_the_admins() {
    let mut node = Node::start(&[]);
    let admin = node.client().await;
    let friend = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    for bad in [
        vec!["--cpu", "1000", "--to", friend.as_str()],
        vec!["--cpu", "1", "--to", "nobody"],
        vec!["--cpu", "1", "--to", friend.as_str(), "--when", "sometimes"],
        vec!["--memory", "1000TiB", "--to", friend.as_str()],
    ] {
        let mut args = vec!["resources", "share"];
        args.extend(bad.iter().copied());
        let (ok, _, err) = p2pctl(&node, &args);
        assert!(!ok, "{args:?} was taken");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let app = node.app_client("someapp").await;
    let err = app
        .resources()
        .share(p2pos_proto::resources::v1::Sharing::default())
        .await
        .expect_err("an app cannot set the policy");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = app
        .resources()
        .lease(p2pos_proto::resources::v1::LeaseRequest {
            peer: "not a peer".into(),
            ..Default::default()
        })
        .await
        .expect_err("a bad peer");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    ctl(
        &node,
        &[
            "resources",
            "share",
            "--cpu",
            "1",
            "--memory",
            "64MiB",
            "--to",
            &friend,
            "--when",
            "idle",
            "--idle-below",
            "80",
        ],
    );
    let before = admin
        .resources()
        .get_sharing(p2pos_proto::resources::v1::GetSharingRequest {})
        .await
        .expect("sharing")
        .into_inner();
    assert!(node.stop().await.success());
    node.restart();
    let admin = node.client().await;
    let after = admin
        .resources()
        .get_sharing(p2pos_proto::resources::v1::GetSharingRequest {})
        .await
        .expect("sharing")
        .into_inner();
    assert_eq!(before, after);
    assert_eq!(after.peers, [friend]);
    let text = ctl(&node, &["resources", "sharing"]);
    assert!(
        text.contains("only while the owner is idle: busy below 80%"),
        "{text}"
    );
}

/// Starts a CPU hog per core; they stop when dropped.
struct Hogs(Vec<std::process::Child>);

impl Hogs {
    fn start() -> Hogs {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Hogs(
            (0..cores)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("a CPU hog")
                })
                .collect(),
        )
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for hog in &mut self.0 {
            let _ = hog.kill();
            let _ = hog.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measures the owner's CPU use: needs a machine that no other load keeps busy"]
async fn only_when_idle_refuses_while_the_owner_is_busy_and_lends_after() {
    let config_dir = tempfile::tempdir().expect("tempdir");
    let config = config_dir.path().join("p2posd.toml");
    std::fs::write(&config, "[resources]\nrefresh_secs = 1\n").expect("config");
    let mut a = Node::start(&[]);
    let mut b = Node::start(&["--config", config.to_str().expect("utf-8")]);
    let a_id = a.peer_id().await;
    let b_id = b.peer_id().await;
    ctl(&a, &["dial", &b.ticket().await]);
    ctl(
        &b,
        &[
            "resources",
            "share",
            "--cpu",
            "0.5",
            "--to",
            &a_id,
            "--when",
            "idle",
            "--idle-below",
            "90",
        ],
    );

    let hogs = Hogs::start();
    // Asking for the offer takes nothing (a lease granted before the hogs count would).
    wait_for("B to say its owner is busy", T, || {
        let (a, b_id) = (&a, &b_id);
        async move {
            let out = ctl(
                a,
                &[
                    "resources",
                    "find",
                    "--cpu",
                    "0.25",
                    "--peer",
                    b_id,
                    "--explain",
                    "--json",
                ],
            );
            let found: Value = serde_json::from_str(&out).ok()?;
            (reason_of(&found, b_id).as_deref() == Some("OWNER_BUSY")).then_some(())
        }
    })
    .await;
    let (ok, _, err) = p2pctl(&a, &["resources", "lease", &b_id, "--cpu", "0.25"]);
    assert!(!ok && err.contains("OWNER_BUSY"), "{err}");
    drop(hogs);
    wait_for(
        "B to lend once its owner is idle",
        Duration::from_secs(60),
        || {
            let (a, b_id) = (&a, &b_id);
            async move {
                let (ok, _, _) = p2pctl(a, &["resources", "lease", b_id, "--cpu", "0.25"]);
                ok.then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lending_to_a_group_serves_its_members_and_find_asks_them() {
    let (nodes, ids) = full_mesh(5).await;
    let (b, c, d) = (&ids[1], &ids[2], &ids[3]);
    // A founds `friends`; B, C and D join; E stays out.
    ctl(&nodes[0], &["groups", "create", "friends"]);
    for i in 1..=3 {
        let invite = ctl(&nodes[0], &["groups", "invite", "friends"])
            .trim()
            .to_owned();
        ctl(&nodes[i], &["groups", "join", &invite]);
    }
    // B and C lend to the group, with different amounts; D lends nothing.
    wait_for("B and C to lend to the group they joined", T, || {
        let nodes = &nodes;
        async move {
            let b_ok = p2pctl(
                &nodes[1],
                &[
                    "resources",
                    "share",
                    "--cpu",
                    "1",
                    "--memory",
                    "1GiB",
                    "--to-group",
                    "friends",
                ],
            )
            .0;
            let c_ok = b_ok
                && p2pctl(
                    &nodes[2],
                    &[
                        "resources",
                        "share",
                        "--cpu",
                        "0.5",
                        "--memory",
                        "2GiB",
                        "--to-group",
                        "friends",
                    ],
                )
                .0;
            c_ok.then_some(())
        }
    })
    .await;
    let sharing = ctl(&nodes[1], &["resources", "sharing"]);
    assert!(sharing.contains("to group "), "{sharing}");

    // A asks the group's members: the two lenders ranked, D explained.
    let found = wait_for("A to find both lenders in the group", T, || {
        let a = &nodes[0];
        async move {
            let out = ctl(
                a,
                &[
                    "resources",
                    "find",
                    "--cpu",
                    "0.25",
                    "--group",
                    "friends",
                    "--explain",
                    "--json",
                ],
            );
            let found: Value = serde_json::from_str(&out).ok()?;
            (peer_ids(&found, "matches").len() == 2).then_some(found)
        }
    })
    .await;
    assert_eq!(peer_ids(&found, "matches"), [b.clone(), c.clone()]);
    assert_eq!(reason_of(&found, d).as_deref(), Some("NOT_SHARED"));

    // A member leases; a stranger is not lent to.
    ctl(&nodes[0], &["resources", "lease", b, "--cpu", "0.5"]);
    let (ok, _, err) = p2pctl(&nodes[4], &["resources", "lease", b, "--cpu", "0.25"]);
    assert!(!ok && err.contains("NOT_ALLOWED"), "{err}");
    let (ok, _, err) = p2pctl(
        &nodes[1],
        &["resources", "share", "--cpu", "1", "--to-group", "nosuch"],
    );
    assert!(!ok && err.contains("nosuch"), "{err}");
}
