//! Three nodes on loopback: A dials B by ticket; C, knowing only B, finds A through the DHT and
//! chats with it using the real `p2p-chat` program on both ends.

use std::time::Duration;

use p2pos_proto::app::v1::SendRequest;
use p2pos_tests::{Chat, Node, p2pctl};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn c_finds_a_through_the_dht_and_two_chats_talk() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    let mut c = Node::start(&[]);
    let b_ticket = b.ticket().await;
    let a_id = a.peer_id().await;
    let c_id = c.peer_id().await;

    let (ok, out, err) = p2pctl(&a, &["dial", &b_ticket]);
    assert!(ok, "A dials B: {out}{err}");
    let (ok, out, err) = p2pctl(&c, &["dial", &b_ticket]);
    assert!(ok, "C dials B: {out}{err}");

    // C has never been told A's addresses.
    let (ok, peers, err) = p2pctl(&c, &["peers", "--json"]);
    assert!(ok, "{err}");
    assert!(!peers.contains(&a_id), "C should not know A yet: {peers}");

    let mut chat_a = Chat::start(&a, None);
    chat_a.expect_line("* waiting for a chat", T);
    let mut chat_c = Chat::start(&c, Some(&a_id));
    chat_c.expect_line(&format!("* connected to {a_id}"), T);
    chat_a.expect_line(&format!("* connected to {c_id}"), T);

    chat_c.type_line("hello from C");
    let line = chat_a.expect_line("hello from C", T);
    assert!(
        line.starts_with(&format!("{}> ", &c_id[c_id.len() - 8..])),
        "sender prefix in {line:?}"
    );
    chat_a.type_line("hi C, A here");
    let line = chat_c.expect_line("hi C, A here", T);
    assert!(
        line.starts_with(&format!("{}> ", &a_id[a_id.len() - 8..])),
        "sender prefix in {line:?}"
    );

    // Both directions, several lines, in order.
    for i in 0..20 {
        chat_c.type_line(&format!("line {i}"));
    }
    for i in 0..20 {
        chat_a.expect_line(&format!("line {i}"), T);
    }

    // C is now connected to A directly.
    let (ok, peers, err) = p2pctl(&c, &["peers", "--json"]);
    assert!(ok, "{err}");
    assert!(peers.contains(&a_id), "C is connected to A: {peers}");

    assert!(chat_c.finish(T).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn lines_typed_while_the_peer_is_offline_arrive_when_it_returns() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    a.client().await;
    let b_id = b.peer_id().await;
    let b_ticket = b.ticket().await;
    let (ok, out, err) = p2pctl(&a, &["dial", &b_ticket]);
    assert!(ok, "{out}{err}");
    // Bob has used the chat before, so his node knows the app.
    let mut chat_b = Chat::start(&b, None);
    chat_b.expect_line("* waiting for a chat", T);
    drop(chat_b);
    assert!(b.stop().await.success());

    let mut chat_a = Chat::start(&a, Some(&b_ticket));
    chat_a.expect_line("is offline", T);
    chat_a.type_line("are you there?");
    chat_a.type_line("second line");
    p2pos_tests::wait_for("two lines queued in A's outbox", T, || {
        let (_, apps, _) = p2pctl(&a, &["apps", "--json"]);
        async move { apps.contains("\"outbox\":2").then_some(()) }
    })
    .await;

    b.restart();
    b.client().await;
    let mut chat_b = Chat::start(&b, None);
    chat_b.expect_line("are you there?", T);
    chat_b.expect_line("second line", T);
    // A's chat notices B is back and opens a channel.
    chat_a.expect_line(&format!("* connected to {b_id}"), T);
    chat_a.type_line("live now");
    chat_b.expect_line("live now", T);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_copies_of_the_chat_on_one_node_each_get_every_stored_line() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    // Both gateways answer before p2pctl and the chats use them.
    let client = a.client().await;
    let b_id = b.peer_id().await;
    let (ok, out, err) = p2pctl(&a, &["dial", &b.ticket().await]);
    assert!(ok, "{out}{err}");
    let mut first = Chat::start(&b, None);
    first.expect_line("* waiting for a chat", T);
    let mut second = Chat::start(&b, None);
    second.expect_line("* waiting for a chat", T);

    // Lines sent as stored messages (what a chat sends while the peer's chat is away).
    for i in 1..=3 {
        client
            .apps()
            .send(SendRequest {
                app_id: "chat".into(),
                peer: b_id.clone(),
                payload: format!("stored line {i}").into(),
                idempotency_key: Default::default(),
            })
            .await
            .expect("send");
    }
    for chat in [&mut first, &mut second] {
        for i in 1..=3 {
            chat.expect_line(&format!("stored line {i}"), T);
        }
    }
    for chat in [&first, &second] {
        assert!(
            !chat
                .printed()
                .iter()
                .any(|l| l.contains("stopped receiving")),
            "a copy lost its stored messages: {:?}",
            chat.printed()
        );
    }
}

#[test]
fn without_a_node_the_chat_says_so_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(p2pos_tests::bin("p2p-chat"))
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run p2p-chat");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: cannot reach the node"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_with_an_unknown_peer_says_so_and_one_with_itself_is_refused() {
    let mut a = Node::start(&[]);
    let a_id = a.peer_id().await;
    let stranger = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    let mut chat = Chat::start(&a, Some(&stranger));
    let line = chat.expect_line("is unknown to your node", T);
    assert!(line.contains("ticket"), "{line}");
    chat.type_line("are you there?");
    p2pos_tests::wait_for("the line to wait in A's outbox", T, || {
        let (_, apps, _) = p2pctl(&a, &["apps", "--json"]);
        async move { apps.contains("\"outbox\":1").then_some(()) }
    })
    .await;
    drop(chat);

    // Stdin stays open (the chat would finish at its end), as a person's terminal does.
    let mut child = std::process::Command::new(p2pos_tests::bin("p2p-chat"))
        .arg("--data-dir")
        .arg(&a.data_dir)
        .arg(&a_id)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run p2p-chat");
    let _stdin = child.stdin.take();
    let out = tokio::time::timeout(
        T,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("the chat ends by itself")
    .expect("join")
    .expect("output");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("own peer id"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
