//! `p2pctl` against real nodes: apps, send, events and shutdown (status, id, ticket, peers,
//! dial and ping are exercised in `monitor.rs` and `chat.rs`).

use std::{
    io::BufRead,
    process::{Command, Stdio},
    time::Duration,
};

use p2pos_tests::{Node, bin, p2pctl};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn send_apps_events_and_shutdown() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    a.client().await;
    let b_id = b.peer_id().await;
    let b_ticket = b.ticket().await;

    // Follow A's events while it dials B.
    let mut events = Command::new(bin("p2pctl"))
        .arg("--data-dir")
        .arg(&a.data_dir)
        .args(["events", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("p2pctl events");
    let mut stderr = std::io::BufReader::new(events.stderr.take().expect("stderr"));
    let mut attached = String::new();
    stderr
        .read_line(&mut attached)
        .expect("p2pctl events says it follows");
    assert!(attached.contains("following events"), "{attached}");
    let stdout = events.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let (ok, out, err) = p2pctl(&a, &["dial", &b_ticket]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&b_id), "{out}");
    let connected = loop {
        let line = rx.recv_timeout(T).expect("an event line");
        if line.contains("peer_connected") {
            break line;
        }
    };
    assert!(connected.contains(&b_id), "{connected}");
    let _ = events.kill();
    let _ = events.wait();

    // An app registered on B, then a message from A.
    let b_client = b.client().await;
    let mut session = b_client
        .apps()
        .session(p2pos_proto::app::v1::SessionRequest {
            app_id: "notes".into(),
        })
        .await
        .expect("session")
        .into_inner();
    futures::StreamExt::next(&mut session)
        .await
        .expect("registered")
        .expect("ok");
    let (ok, out, err) = p2pctl(&a, &["send", &b_id, "notes", "hello", "there"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("delivered"), "{out}");
    let (ok, apps, err) = p2pctl(&b, &["apps", "--json"]);
    assert!(ok, "{err}");
    assert!(apps.contains("\"app_id\":\"notes\""), "{apps}");
    assert!(apps.contains("\"inbox\":1"), "{apps}");
    let (ok, table, _) = p2pctl(&b, &["apps"]);
    assert!(ok);
    assert!(table.contains("notes"), "{table}");

    // Bad input: a one-line error and a non-zero exit.
    let (ok, _, err) = p2pctl(&a, &["send", "not-a-peer", "notes", "x"]);
    assert!(!ok);
    assert!(
        err.starts_with("error:") && err.trim().lines().count() == 1,
        "{err}"
    );
    let (ok, _, err) = p2pctl(&a, &["dial", "garbage"]);
    assert!(!ok);
    assert!(err.starts_with("error:"), "{err}");

    let (ok, out, err) = p2pctl(&a, &["shutdown"]);
    assert!(ok, "{out}{err}");
    assert!(a.wait_exit(T).await.success());
}
