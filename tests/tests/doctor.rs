//! The doctor (`Monitor.Doctor`, `p2pctl doctor`) with real nodes: a healthy pair passes every
//! check; a read-only store, a nearly full disk and a crash-looping helper each fail the right
//! check with a remedy; `doctor PEER` uses the peer's own view only when the peer allows it;
//! `doctor GROUP` gives the member × member matrix. (The relayed pair's verdict, which needs
//! NAT routers, is in `nat.rs`.)

use std::{path::Path, process::Command};

use p2pos_client::Client;
use p2pos_proto::{
    monitor::v1::{Check, DoctorReport, DoctorRequest, Verdict},
    tasks::v1::{HelperSpec, HelperState, RestartPolicy},
};
use p2pos_tests::{
    Node, connected_peer, p2pctl, status_when,
    tasks::{add, in_state, start},
};

const PROGRAM: &str = "p2pos-test-helper";

async fn doctor(client: &Client, request: DoctorRequest) -> DoctorReport {
    client
        .monitor()
        .doctor(request)
        .await
        .expect("the doctor answers")
        .into_inner()
}

fn check<'a>(report: &'a DoctorReport, name: &str) -> &'a Check {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#?}"))
}

/// Every check's name and verdict, for assertion messages.
fn verdicts(report: &DoctorReport) -> String {
    report
        .checks
        .iter()
        .map(|c| {
            format!(
                "{} {:?}: {} {:?} {}",
                c.name,
                c.verdict(),
                c.summary,
                c.evidence,
                c.remedy
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Two nodes connected, each in the other's routing table.
async fn pair(a_flags: &[&str], b_flags: &[&str]) -> (Node, Node, Client, String) {
    let mut a = Node::start(a_flags);
    let mut b = Node::start(b_flags);
    let client = a.client().await;
    let b_id = b.peer_id().await;
    let ticket = b.ticket().await;
    let (ok, out, err) = p2pctl(&a, &["dial", &ticket]);
    assert!(ok, "{out}{err}");
    connected_peer(&client, &b_id, "A connected to B").await;
    status_when(&client, "B in A's routing table", |s| {
        s.routing_table_size > 0
    })
    .await;
    (a, b, client, b_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_pair_passes_every_check_and_each_sees_the_other() {
    let mut a = Node::start(&[]);
    let a_id = a.peer_id().await;
    let allow = format!("--allow-diagnosis={a_id}");
    let mut b = Node::start(&[&allow]);
    let client = a.client().await;
    let b_id = b.peer_id().await;
    let (ok, out, err) = p2pctl(&a, &["dial", &b.ticket().await]);
    assert!(ok, "{out}{err}");
    connected_peer(&client, &b_id, "A connected to B").await;
    status_when(&client, "B in A's routing table", |s| {
        s.routing_table_size > 0
    })
    .await;

    let report = doctor(&client, DoctorRequest::default()).await;
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "services",
            "gateway",
            "store",
            "listeners",
            "reachability",
            "relays",
            "dht",
            "peers",
            "clock",
            "disk",
            "helpers",
            "resources",
            "log"
        ]
    );
    // Everything the pair itself decides passes; what depends on the machine the test runs on
    // (free space where the temporary directory is, the load of a busy CI runner) must not fail.
    for c in &report.checks {
        let machine = matches!(c.name.as_str(), "disk" | "resources");
        let good = match machine {
            true => c.verdict() != Verdict::Fail,
            false => c.verdict() == Verdict::Ok,
        };
        assert!(good, "{}", verdicts(&report));
    }
    assert!(
        check(&report, "clock").summary.contains("of 1 peer"),
        "{}",
        verdicts(&report)
    );

    // The pair: direct, and B's side is seen because B allows A.
    let report = doctor(
        &client,
        DoctorRequest {
            peer: b_id.clone(),
            ..DoctorRequest::default()
        },
    )
    .await;
    assert!(
        report.checks.iter().all(|c| c.verdict() == Verdict::Ok),
        "{}",
        verdicts(&report)
    );
    assert!(
        check(&report, "connection")
            .summary
            .starts_with("direct over tcp")
    );
    let view = check(&report, "peer-view");
    assert!(
        view.summary.contains("sees this node as direct (tcp)"),
        "{}",
        view.summary
    );
    assert!(
        view.evidence
            .iter()
            .any(|e| e.starts_with("listens on /ip4/127.0.0.1/tcp/"))
    );

    // B does not allow A's diagnosis the other way round: A's side stays private.
    let b_client = b.client().await;
    let report = doctor(
        &b_client,
        DoctorRequest {
            peer: a_id.clone(),
            ..DoctorRequest::default()
        },
    )
    .await;
    let view = check(&report, "peer-view");
    assert_eq!(view.verdict(), Verdict::Warn, "{}", verdicts(&report));
    assert!(
        view.remedy.contains(&format!("--allow-diagnosis {b_id}")),
        "{}",
        view.remedy
    );

    // p2pctl prints a line per check; --json has the same checks.
    let (_, out, _) = p2pctl(&a, &["doctor"]);
    assert!(out.lines().any(|l| l.starts_with("ok    store")), "{out}");
    let (ok, out, err) = p2pctl(&a, &["doctor", &b_id, "--json"]);
    assert!(ok, "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["ok"], true);
    assert_eq!(json["checks"][0]["name"], "reach");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_store_fails_the_store_check_with_its_remedy() {
    let (mut a, _b, client, _) = pair(&[], &[]).await;
    let store = a.data_dir.join("store");
    // Root writes through permissions: a read-only bind mount stops it; anyone else, a mode.
    let root = nix::unistd::geteuid().is_root();
    let _undo = ReadOnly::make(&store, root);

    let report = doctor(&client, DoctorRequest::default()).await;
    let store_check = check(&report, "store");
    assert_eq!(
        store_check.verdict(),
        Verdict::Fail,
        "{}",
        verdicts(&report)
    );
    assert!(
        store_check.summary.contains("cannot write a file in"),
        "{}",
        store_check.summary
    );
    assert!(
        store_check.remedy.contains("chmod u+w"),
        "{}",
        store_check.remedy
    );
    // The other checks still run and pass.
    assert_eq!(check(&report, "peers").verdict(), Verdict::Ok);

    let (ok, out, err) = p2pctl(&a, &["doctor"]);
    assert!(!ok, "a failing check fails the command: {out}");
    assert!(out.lines().any(|l| l.starts_with("FAIL  store")), "{out}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("failed: ") && err.contains("store"), "{err}");
    drop(_undo);
    let report = doctor(&client, DoctorRequest::default()).await;
    assert_eq!(
        check(&report, "store").verdict(),
        Verdict::Ok,
        "{}",
        verdicts(&report)
    );
    a.client().await;
}

/// A directory made read-only for as long as it lives.
struct ReadOnly {
    dir: std::path::PathBuf,
    mounted: bool,
}

impl ReadOnly {
    fn make(dir: &Path, root: bool) -> ReadOnly {
        let run = |args: &[&str]| {
            let status = Command::new(args[0])
                .args(&args[1..])
                .status()
                .expect("run");
            assert!(status.success(), "{args:?}");
        };
        let shown = dir.to_str().expect("utf-8");
        if root {
            run(&["mount", "--bind", shown, shown]);
            run(&["mount", "-o", "remount,ro,bind", shown]);
        } else {
            run(&["chmod", "0500", shown]);
        }
        ReadOnly {
            dir: dir.to_owned(),
            mounted: root,
        }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let shown = self.dir.to_str().unwrap_or_default();
        let _ = match self.mounted {
            true => Command::new("umount").arg(shown).status(),
            false => Command::new("chmod").args(["0700", shown]).status(),
        };
        self.mounted = false;
        // Once only.
        self.dir = std::path::PathBuf::new();
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (mounts a small tmpfs): run by .ci/run (tools/run-tests --include-ignored)"]
async fn a_nearly_full_disk_fails_the_disk_check() {
    let mount = tempfile::tempdir().expect("temp dir");
    let shown = mount.path().to_str().expect("utf-8").to_owned();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=400m", "tmpfs", &shown])
        .status()
        .expect("mount");
    assert!(status.success(), "mount a tmpfs");
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").args(["-l", &self.0]).status();
        }
    }
    let _unmount = Unmount(shown.clone());
    let mut node = Node::start_at(&mount.path().join("node"), &[]);
    let client = node.client().await;
    let report = doctor(&client, DoctorRequest::default()).await;
    assert_eq!(
        check(&report, "disk").verdict(),
        Verdict::Ok,
        "{}",
        verdicts(&report)
    );

    // Fill it to within 30 MiB.
    let free = nix::sys::statvfs::statvfs(mount.path()).expect("statvfs");
    let room = free.blocks_available() as u64 * free.fragment_size() as u64;
    let filler = std::fs::File::create(mount.path().join("filler")).expect("filler");
    filler.set_len(0).expect("empty");
    let chunk = vec![0x5a_u8; 1024 * 1024];
    let mut filler = std::io::BufWriter::new(filler);
    for _ in 0..(room / chunk.len() as u64).saturating_sub(30) {
        std::io::Write::write_all(&mut filler, &chunk).expect("fill");
    }
    std::io::Write::flush(&mut filler).expect("fill");

    let report = doctor(&client, DoctorRequest::default()).await;
    let disk = check(&report, "disk");
    assert_eq!(disk.verdict(), Verdict::Fail, "{}", verdicts(&report));
    assert!(disk.summary.contains("is nearly full"), "{}", disk.summary);
    assert!(disk.remedy.starts_with("free space on"), "{}", disk.remedy);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_helper_fails_the_helpers_check() {
    let mut node = Node::start(&[]);
    node.install_plugin(PROGRAM);
    let client = node.client().await;
    let crasher = HelperSpec {
        name: "crasher".into(),
        program: PROGRAM.into(),
        args: vec!["exit".into(), "7".into()],
        restart: RestartPolicy::OnFailure as i32,
        max_restarts: 3,
        restart_period_secs: 60,
        ..HelperSpec::default()
    };
    add(&client, crasher).await.expect("add");
    start(&client, "", "crasher").await.expect("start");
    in_state(&client, "", "crasher", HelperState::Failed).await;

    let report = doctor(&client, DoctorRequest::default()).await;
    let helpers = check(&report, "helpers");
    assert_eq!(helpers.verdict(), Verdict::Fail, "{}", verdicts(&report));
    assert!(
        helpers.summary.contains("crasher (restarted 3 times)"),
        "{}",
        helpers.summary
    );
    assert!(
        helpers.remedy.contains("p2pctl helpers logs crasher"),
        "{}",
        helpers.remedy
    );
    assert!(
        helpers.evidence[0].contains("exited with code 7")
            || helpers.evidence[0].contains("giving up"),
        "{:?}",
        helpers.evidence
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_refuses_bad_targets_and_app_tokens() {
    let mut node = Node::start(&[]);
    let client = node.client().await;
    let own = node.peer_id().await;
    let refused = |request: DoctorRequest| {
        let client = client.clone();
        async move { client.monitor().doctor(request).await.expect_err("refused") }
    };
    let both = refused(DoctorRequest {
        peer: own.clone(),
        group: "g".into(),
    })
    .await;
    assert_eq!(both.code(), tonic::Code::InvalidArgument);
    let itself = refused(DoctorRequest {
        peer: own,
        ..DoctorRequest::default()
    })
    .await;
    assert!(
        itself.message().contains("is this node"),
        "{}",
        itself.message()
    );
    let no_group = refused(DoctorRequest {
        group: "no-such-group".into(),
        ..DoctorRequest::default()
    })
    .await;
    assert_eq!(no_group.code(), tonic::Code::NotFound, "{no_group:?}");
    let app = node.app_client("chat").await;
    let denied = app
        .monitor()
        .doctor(DoctorRequest::default())
        .await
        .expect_err("admin only");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let (ok, _, err) = p2pctl(&node, &["doctor", "--group", "no-such-group"]);
    assert!(!ok);
    assert!(err.starts_with("error: cannot run the doctor: "), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_group_gives_every_members_links() {
    // Three members allow the group's members to diagnose them; the fourth allows nobody.
    let mut nodes: Vec<Node> = (0..4)
        .map(|i| match i {
            3 => Node::start(&[]),
            _ => Node::start(&["--allow-diagnosis=group:lab"]),
        })
        .collect();
    for node in &mut nodes {
        node.client().await;
    }
    let group = p2pos_tests::groups::form_group(&mut nodes, "lab").await;
    let client = nodes[0].client().await;
    let mut ids = Vec::new();
    for node in &mut nodes {
        ids.push(node.peer_id().await);
    }
    // Every member reaches every other (a group keeps its members connected).
    for (i, node) in nodes.iter_mut().enumerate() {
        let c = node.client().await;
        for (j, id) in ids.iter().enumerate() {
            if i != j {
                connected_peer(&c, id, "members connected").await;
            }
        }
    }
    let report = doctor(
        &client,
        DoctorRequest {
            group: group.clone(),
            ..DoctorRequest::default()
        },
    )
    .await;
    assert_eq!(report.members[0], ids[0], "this node first");
    let mut members = report.members.clone();
    members.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(members, want);
    for (i, row) in report.matrix.iter().enumerate() {
        assert_eq!(row.peer_id, report.members[i]);
        let private = row.peer_id == ids[3];
        assert_eq!(row.error.is_empty(), !private, "{row:?}");
        for (j, link) in row.links.iter().enumerate() {
            let want = match (i == j, private) {
                (true, _) => "self",
                (false, true) => "unknown",
                (false, false) => "direct",
            };
            assert_eq!(link, want, "{row:?}");
        }
        if private {
            assert!(row.error.contains("does not allow"), "{row:?}");
            assert!(row.error.contains(&ids[0]), "names the asker: {row:?}");
        }
    }
    let links = check(&report, "links");
    assert_eq!(links.verdict(), Verdict::Warn, "{}", verdicts(&report));
    assert!(
        links
            .summary
            .contains("9 links direct, 0 relayed, 0 none, 3 unknown"),
        "{}",
        links.summary
    );

    // p2pctl by the group's name: the matrix as a table.
    let (ok, out, err) = p2pctl(&nodes[0], &["doctor", "lab"]);
    assert!(ok, "a warning is not a failure: {out}{err}");
    let table = out.split_once("MEMBER").map(|(_, t)| t).expect("a table");
    assert_eq!(table.matches("direct").count(), 9, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_known_peer_is_gone_fails_the_peers_check_and_says_who() {
    let (mut a, mut b, client, b_id) = pair(&[], &[]).await;
    b.stop().await;
    status_when(&client, "A to see B gone", |s| s.peers.is_empty()).await;

    let report = doctor(&client, DoctorRequest::default()).await;
    let peers = check(&report, "peers");
    assert_eq!(peers.verdict(), Verdict::Fail, "{}", verdicts(&report));
    assert!(
        peers
            .summary
            .contains("none of the 1 remembered peers dialled answers"),
        "{}",
        peers.summary
    );
    assert!(
        peers
            .evidence
            .iter()
            .any(|e| e.starts_with(&format!("remembered {b_id}: "))),
        "the evidence names the peer and why: {:?}",
        peers.evidence
    );
    assert!(!peers.remedy.is_empty());
    // Its routing table still lists B, but nobody there answers a look-up: a warning saying so.
    let dht = check(&report, "dht");
    assert_eq!(dht.verdict(), Verdict::Warn, "{}", verdicts(&report));
    assert!(
        dht.summary
            .starts_with("no peer of the routing table answered"),
        "{}",
        dht.summary
    );
    assert!(dht.remedy.contains("p2pctl dial TICKET"), "{}", dht.remedy);
    a.client().await;
}
