//! A damaged store never resets silently: the node refuses to start on it, with one line that
//! names the damage and the repair command, and leaves its files as found; `p2posd --repair`
//! moves it aside, salvages what reads, keeps the identity and says what was lost; the node
//! then starts as the same peer with what was salvaged. And the other side of it: neither clean
//! stops nor kill -9 mid-write ever look like damage, and every acknowledged write survives.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use p2pos_client::Client;
use p2pos_proto::{
    app::v1::DeliveryState,
    node::v1::{CreateAppTokenRequest, ListAppTokensRequest},
};
use p2pos_tests::{Node, messages::send, repair_store as repair, wait_for};

/// Every file of the store directory `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).expect("read store dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read store file");
                out.insert(path.strip_prefix(dir).expect("inside").to_owned(), bytes);
            }
        }
    }
    out
}

async fn create_token(admin: &Client, app: &str) -> String {
    admin
        .node()
        .create_app_token(CreateAppTokenRequest {
            app_id: app.into(),
            ttl_secs: 0,
        })
        .await
        .expect("create a token")
        .into_inner()
        .id
}

async fn token_ids(admin: &Client) -> Vec<String> {
    admin
        .node()
        .list_app_tokens(ListAppTokensRequest {
            app_id: String::new(),
        })
        .await
        .expect("list tokens")
        .into_inner()
        .tokens
        .into_iter()
        .map(|t| t.id)
        .collect()
}

/// The "recovered" figure of the report's row that starts with `what`.
fn recovered(report: &str, what: &str) -> u64 {
    let row = report
        .lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("no row {what:?} in the report:\n{report}"));
    row[what.len()..]
        .split("  ")
        .map(str::trim)
        .find(|field| !field.is_empty() && field.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure in {row:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_store_is_refused_then_repaired_keeping_the_identity() {
    let mut node = Node::start(&[]);
    let admin = node.client().await;
    let peer_id = node.peer_id().await;
    for i in 0..40 {
        create_token(&admin, &format!("app{i}")).await;
    }
    // A message to a peer that is nowhere waits in the outbox.
    let nowhere = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    assert_eq!(
        send(&admin, "chat", &nowhere, "hello").await,
        DeliveryState::Queued
    );
    // No repair under a running node.
    let busy = repair(&node.data_dir);
    assert_eq!(busy.status.code(), Some(2));
    let said = String::from_utf8_lossy(&busy.stderr);
    assert!(said.contains("stop it before repairing"), "{said}");
    assert!(node.stop().await.success());

    // The disk loses the second half of the store's log.
    let store = node.data_dir.join("store");
    let db = store.join("db");
    let len = std::fs::metadata(&db).expect("store/db").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("open store/db")
        .set_len(len / 2)
        .expect("truncate store/db");
    let damaged = files(&store);

    node.restart();
    let status = node.wait_exit(Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "the node must not start on a damaged store"
    );
    node.kill(); // reaps it, so that it can be started again
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("is damaged"))
        .unwrap_or_else(|| panic!("no line names the damage:\n{log}"));
    let command = format!("p2posd --repair --data-dir {}", node.data_dir.display());
    assert!(line.contains(&command), "{line}");
    assert!(!log.contains("panicked at"), "no backtrace:\n{log}");
    assert_eq!(files(&store), damaged, "a refused store is left as found");

    let out = repair(&node.data_dir);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "repair failed: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");
    assert!(report.contains("was damaged"), "{report}");
    assert!(
        report.contains(&peer_id),
        "the report names the kept identity:\n{report}"
    );
    let aside: Vec<PathBuf> = std::fs::read_dir(&node.data_dir)
        .expect("data dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("store.damaged-"))
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        files(&aside[0]),
        damaged,
        "the damaged store is kept as found"
    );
    assert!(report.contains(&aside[0].display().to_string()), "{report}");
    let tokens_recovered = recovered(&report, "app tokens");
    let queued_recovered = recovered(&report, "queued outgoing messages");

    node.restart();
    assert_eq!(node.peer_id().await, peer_id, "the identity is kept");
    let admin = node.client().await;
    assert_eq!(
        token_ids(&admin).await.len() as u64,
        tokens_recovered,
        "the node holds the tokens the report says were recovered:\n{report}"
    );
    let (_, outbox) = p2pos_tests::messages::counts(&admin, "chat").await;
    assert_eq!(outbox, queued_recovered, "{report}");
    // And the repaired store is an ordinary one: a clean stop and start.
    assert!(node.stop().await.success());
    node.restart();
    assert_eq!(node.peer_id().await, peer_id);
}

/// Rounds of kill -9 while tokens are being created (each answered only once durable), with
/// a clean stop between some of them: every answered token is there at the next start, and
/// no start ever takes the store for damaged.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_write_loses_no_acknowledged_write_and_is_not_damage() {
    const ROUNDS: usize = 20;
    let mut node = Node::start(&[]);
    let mut answered: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        let admin = node.client().await;
        let held = token_ids(&admin).await;
        for id in &answered {
            assert!(
                held.contains(id),
                "round {round}: acknowledged token {id} is gone after kill -9"
            );
        }
        // Write for a while, then die mid-write.
        let writes = 5 + round * 3;
        for i in 0..writes {
            answered.push(create_token(&admin, &format!("r{round}w{i}")).await);
        }
        // Keep writing in the background; every token answered is acknowledged as durable.
        let late = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let writer = {
            let (admin, late) = (admin.clone(), late.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let Ok(reply) = admin
                        .node()
                        .create_app_token(CreateAppTokenRequest {
                            app_id: format!("late{round}x{i}"),
                            ttl_secs: 0,
                        })
                        .await
                    else {
                        break;
                    };
                    late.lock().expect("late").push(reply.into_inner().id);
                }
            })
        };
        wait_for("writes in flight", Duration::from_secs(10), || {
            let n = late.lock().expect("late").len();
            async move { (n >= 2).then_some(()) }
        })
        .await;
        if round % 3 == 2 {
            writer.abort();
            assert!(node.stop().await.success());
        } else {
            node.kill();
            let _ = writer.await;
        }
        answered.extend(late.lock().expect("late").drain(..));
        node.restart();
    }
    let admin = node.client().await;
    let held = token_ids(&admin).await;
    assert!(answered.iter().all(|id| held.contains(id)));
    assert!(
        !node.log().contains("is damaged"),
        "a clean stop or kill -9 was taken for damage:\n{}",
        node.log()
    );
}

/// Starts the node on its data directory expecting it to refuse; the line that says why,
/// which must name the repair command.
async fn refused(node: &mut Node, what: &str) -> String {
    node.restart();
    let status = node.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "the node must not start ({what})");
    node.kill(); // reaps it, so that it can be started again
    let log = node.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("p2posd: error:"))
        .unwrap_or_else(|| panic!("no error line ({what}):\n{log}"))
        .to_owned();
    let command = format!("p2posd --repair --data-dir {}", node.data_dir.display());
    assert!(line.contains(&command), "{what}: {line}");
    line
}

/// What a repair that was interrupted leaves, and a store that is gone while the identity is
/// there, stop the node (never a new, empty store); `--repair` then completes, and the node
/// starts as the same peer.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_repair_or_a_lost_store_stops_the_node_until_repaired() {
    let mut node = Node::start(&[]);
    let admin = node.client().await;
    let peer_id = node.peer_id().await;
    for i in 0..10 {
        create_token(&admin, &format!("app{i}")).await;
    }
    assert!(node.stop().await.success());

    // A repair killed while it built the new store.
    std::fs::create_dir(node.data_dir.join("store.new")).expect("store.new");
    std::fs::write(node.data_dir.join("store.repairing"), b"{\"swap\":null}").expect("marker");
    let line = refused(&mut node, "interrupted repair").await;
    assert!(line.contains("interrupted"), "{line}");
    let out = repair(&node.data_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!node.data_dir.join("store.new").exists());
    assert!(!node.data_dir.join("store.repairing").exists());
    node.restart();
    assert_eq!(node.peer_id().await, peer_id);
    assert_eq!(
        token_ids(&node.client().await).await.len(),
        10,
        "the store was whole"
    );
    assert!(node.stop().await.success());

    // The store is gone (as a repair that moved it aside first and then died left it).
    std::fs::rename(node.data_dir.join("store"), node.data_dir.join("elsewhere")).expect("mv");
    let line = refused(&mut node, "no store").await;
    assert!(line.contains("missing"), "{line}");
    assert!(
        !node.data_dir.join("store").exists(),
        "no new store was made"
    );
    let out = repair(&node.data_dir);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("missing") && report.contains(&peer_id),
        "{report}"
    );
    node.restart();
    assert_eq!(node.peer_id().await, peer_id, "the identity is kept");
}

/// After kill -9 the start compares what sled recovers with what the node last recorded: an
/// emptied `db` is refused, where a plain kill -9 starts as usual.
#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_an_emptied_store_is_refused_and_an_undamaged_one_starts() {
    let mut node = Node::start(&[]);
    let admin = node.client().await;
    let peer_id = node.peer_id().await;
    for i in 0..30 {
        create_token(&admin, &format!("app{i}")).await;
    }
    node.kill();
    node.restart();
    assert_eq!(node.peer_id().await, peer_id);
    assert_eq!(
        token_ids(&node.client().await).await.len(),
        30,
        "no false alarm"
    );
    node.kill();

    let db = node.data_dir.join("store").join("db");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("open store/db")
        .set_len(0)
        .expect("empty store/db");
    let store = node.data_dir.join("store");
    let found = files(&store);
    let line = refused(&mut node, "emptied db").await;
    assert!(line.contains("is damaged"), "{line}");
    assert_eq!(files(&store), found, "a refused store is left as found");
    let out = repair(&node.data_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.restart();
    assert_eq!(node.peer_id().await, peer_id);
}
