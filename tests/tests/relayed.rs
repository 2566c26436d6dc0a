//! Exploration (issue 17, point 4): what happens today over a relay-only pair.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use p2pos_client::Client;
use p2pos_proto::app::v1::{
    AcceptChannel, ChannelInput, ChannelOutput, OpenChannel, channel_input, channel_output,
};
use p2pos_tests::{
    Chat, Node, connected_peer, free_port, next_incoming, open_session, p2pctl, status_when,
    wait_for,
};

const T: Duration = Duration::from_secs(30);

struct Lab {
    relay: Node,
    metrics: String,
    a: Node,
    b: Node,
    a_id: String,
    b_id: String,
    ca: Client,
    cb: Client,
    _config: tempfile::TempDir,
}

impl Lab {
    async fn new(relay_config: &str) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p2posd.toml");
        std::fs::write(&path, format!("[network]\n{relay_config}\n")).expect("config");
        let metrics = format!("127.0.0.1:{}", free_port());
        let (relay, relay_addr) = Node::start_relay(&[
            "--config",
            path.to_str().expect("utf-8"),
            "--metrics",
            &metrics,
        ])
        .await;
        let mut a = Node::start_relayed(&relay_addr, &[]);
        let mut b = Node::start_relayed(&relay_addr, &[]);
        let ca = a.client().await;
        let cb = b.client().await;
        let a_id = a.peer_id().await;
        let b_id = b.peer_id().await;
        for c in [&ca, &cb] {
            status_when(c, "a relay reservation", |s| !s.relays.is_empty()).await;
        }
        wait_for("A to dial B by its peer id", T, || {
            let (ok, _, _) = p2pctl(&a, &["dial", &b_id]);
            async move { ok.then_some(()) }
        })
        .await;
        let info = connected_peer(&ca, &b_id, "A connected to B").await;
        assert!(!info.direct, "relayed only: {info:?}");
        Lab {
            relay,
            metrics,
            a,
            b,
            a_id,
            b_id,
            ca,
            cb,
            _config: dir,
        }
    }
}

fn data(bytes: impl Into<Bytes>) -> ChannelInput {
    ChannelInput {
        kind: Some(channel_input::Kind::Data(bytes.into())),
    }
}

/// A channel of `app` from A to B, accepted on B: both ends' inputs and outputs.
async fn channel(
    lab: &Lab,
    app: &str,
) -> (
    (
        futures::channel::mpsc::Sender<ChannelInput>,
        tonic::Streaming<ChannelOutput>,
    ),
    (
        futures::channel::mpsc::Sender<ChannelInput>,
        tonic::Streaming<ChannelOutput>,
    ),
) {
    let mut session = open_session(&lab.cb, app).await;
    let (mut a_tx, a_rx) = futures::channel::mpsc::channel::<ChannelInput>(8);
    a_tx.send(ChannelInput {
        kind: Some(channel_input::Kind::Open(OpenChannel {
            app_id: app.into(),
            peer: lab.b_id.clone(),
            ..Default::default()
        })),
    })
    .await
    .expect("queue open");
    let client = lab.ca.clone();
    let opening = tokio::spawn(async move { client.apps().channel(a_rx).await });
    let incoming = next_incoming(&mut session, T).await;
    let (mut b_tx, b_rx) = futures::channel::mpsc::channel::<ChannelInput>(8);
    b_tx.send(ChannelInput {
        kind: Some(channel_input::Kind::Accept(AcceptChannel {
            channel_id: incoming.channel_id,
            app_id: app.into(),
            ..Default::default()
        })),
    })
    .await
    .expect("queue accept");
    let mut b_out = lab
        .cb
        .apps()
        .channel(b_rx)
        .await
        .expect("accept")
        .into_inner();
    let mut a_out = opening.await.expect("join").expect("open").into_inner();
    for out in [&mut a_out, &mut b_out] {
        let opened = tokio::time::timeout(T, out.next())
            .await
            .expect("opened")
            .expect("open")
            .expect("ok");
        assert!(matches!(opened.kind, Some(channel_output::Kind::Opened(_))));
    }
    std::mem::forget(session);
    ((a_tx, a_out), (b_tx, b_rx_keep(b_out)))
}

fn b_rx_keep(s: tonic::Streaming<ChannelOutput>) -> tonic::Streaming<ChannelOutput> {
    s
}

async fn explore_channel(relay_config: &str) {
    let lab = Lab::new(relay_config).await;
    let ((mut a_tx, mut a_out), (_b_tx, mut b_out)) = channel(&lab, "bulk").await;
    a_tx.send(data(vec![0xab; 1024 * 1024]))
        .await
        .expect("send");
    a_tx.send(data(&b"after"[..])).await.expect("send");
    for _ in 0..2 {
        let got = tokio::time::timeout(T, b_out.next()).await;
        eprintln!(
            "B got: {:?}",
            got.map(|o| o.map(|r| r.map(|m| match m.kind {
                Some(channel_output::Kind::Data(d)) => format!("data {} bytes", d.len()),
                other => format!("{other:?}"),
            })))
        );
    }
    let got = tokio::time::timeout(Duration::from_secs(5), a_out.next()).await;
    eprintln!("A out: {got:?}");
    let _ = &lab.relay;
    let _ = &lab.metrics;
    let _ = (&lab.a, &lab.b, &lab.a_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn explore_channel_default() {
    explore_channel("").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn explore_channel_small() {
    explore_channel("relay_circuit_bytes = 131072").await;
}

async fn explore_chat(relay_config: &str) {
    let lab = Lab::new(relay_config).await;
    let mut chat_b = Chat::start(&lab.b, None);
    chat_b.expect_line("* waiting for a chat", T);
    let mut chat_a = Chat::start(&lab.a, Some(&lab.b_id));
    chat_a.expect_line("* connected to", T);
    chat_b.expect_line("* connected to", T);
    chat_a.type_line("first");
    chat_b.expect_line("first", T);
    let big = "x".repeat(200 * 1024);
    chat_a.type_line(&big);
    for i in 0..5 {
        chat_a.type_line(&format!("small {i}"));
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        chat_b.expect_line("small 4", Duration::from_secs(40));
    }));
    let seen: Vec<String> = chat_b
        .printed()
        .iter()
        .map(|l| {
            if l.len() > 100 {
                format!("<{} bytes>", l.len())
            } else {
                l.clone()
            }
        })
        .collect();
    eprintln!("B printed: {seen:#?} (ok: {})", r.is_ok());
    let seen: Vec<String> = chat_a
        .printed()
        .iter()
        .map(|l| {
            if l.len() > 100 {
                format!("<{} bytes>", l.len())
            } else {
                l.clone()
            }
        })
        .collect();
    eprintln!("A printed: {seen:#?}");
    let (_, apps, _) = p2pctl(&lab.a, &["apps"]);
    eprintln!("A apps: {apps}");
}

#[tokio::test(flavor = "multi_thread")]
async fn explore_chat_default() {
    explore_chat("").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn explore_chat_small() {
    explore_chat("relay_circuit_bytes = 131072").await;
}
