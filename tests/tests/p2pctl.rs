//! `p2pctl` against real nodes: apps, send, events and shutdown (status, id, ticket, peers,
//! dial and ping are exercised in `monitor.rs` and `chat.rs`).

use std::{
    io::BufRead,
    process::{Command, Stdio},
    time::Duration,
};

use p2pos_tests::{Node, bin, open_session, p2pctl, provide};

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
            group: String::new(),
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

/// Runs `p2pctl --data-dir <node> <args>` with `stdin` as its standard input.
fn p2pctl_with_stdin(node: &Node, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(bin("p2pctl"))
        .arg("--data-dir")
        .arg(&node.data_dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run p2pctl");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("p2pctl ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn send_and_services_call_take_their_payload_from_stdin_or_a_file() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    a.client().await;
    let b_id = b.peer_id().await;
    let b_ticket = b.ticket().await;
    let (ok, out, err) = p2pctl(&a, &["dial", &b_ticket]);
    assert!(ok, "{out}{err}");
    let b_client = b.client().await;
    let _session = open_session(&b_client, "notes").await;

    // Bytes a command line could not carry: lines, a NUL, not UTF-8.
    let from_stdin = b"two\nlines\0and \xff bytes\n".to_vec();
    let (ok, out, err) = p2pctl_with_stdin(&a, &["send", &b_id, "notes", "-"], &from_stdin);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("delivered") || out.starts_with("queued"),
        "{out}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("message.bin");
    let from_file = vec![b'x'; 1024 * 1024];
    std::fs::write(&file, &from_file).expect("write the message file");
    let path = file.to_str().expect("utf-8 path");
    let (ok, out, err) = p2pctl(&a, &["send", &b_id, "notes", "--file", path, "--json"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"message_id\""), "{out}");
    let (ok, _, err) = p2pctl_with_stdin(&a, &["send", &b_id, "notes", "--file", "-"], b"third");
    assert!(ok, "{err}");

    let mut inbox = b_client
        .apps()
        .receive(p2pos_proto::app::v1::ReceiveRequest {
            app_id: "notes".into(),
        })
        .await
        .expect("receive")
        .into_inner();
    let mut got = Vec::new();
    while got.len() < 3 {
        let msg = tokio::time::timeout(T, futures::StreamExt::next(&mut inbox))
            .await
            .expect("the messages arrive")
            .expect("stream open")
            .expect("message");
        got.push(msg.payload.to_vec());
    }
    assert_eq!(got, [from_stdin, from_file, b"third".to_vec()]);

    // `services call` reads its request the same way.
    let provider = provide(
        b_client.clone(),
        "echo",
        "echo/1",
        "echoes",
        |payload| Some(Ok(payload)),
        |_| {},
    )
    .await;
    std::fs::write(&file, b"from a file").expect("write");
    let (ok, out, err) = p2pctl(&a, &["services", "call", "echo/1", "--file", path]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "from a file");
    let (ok, out, err) = p2pctl_with_stdin(&a, &["services", "call", "echo/1", "-"], b"stdin");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "stdin");
    provider.abort();

    // Too big, missing, or both text and a file: one line, non-zero exit, nothing sent.
    std::fs::write(&file, vec![b'x'; 1024 * 1024 + 1]).expect("write");
    let (ok, _, err) = p2pctl(&a, &["send", &b_id, "notes", "--file", path]);
    assert!(!ok);
    assert!(err.contains("over the 1 MiB limit"), "{err}");
    let missing = dir.path().join("missing");
    let (ok, _, err) = p2pctl(
        &a,
        &[
            "send",
            &b_id,
            "notes",
            "--file",
            missing.to_str().expect("utf-8"),
        ],
    );
    assert!(!ok);
    assert!(
        err.starts_with("error: cannot read the payload from") && err.trim().lines().count() == 1,
        "{err}"
    );
    let (ok, _, err) = p2pctl(&a, &["send", &b_id, "notes", "text", "--file", path]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}
