//! The control plane stays responsive under load: while 100 channel opens wait on peers that
//! never answer and a flood of `Send`s goes to a peer that is offline, 100 `ListPeers` and 100
//! `GetInfo` calls each answer within a 1 s deadline.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt;
use p2pos_client::Client;
use p2pos_proto::{
    app::v1::{ChannelInput, OpenChannel, SendRequest, channel_input},
    node::v1::GetInfoRequest,
    overlay::v1::ListPeersRequest,
};
use p2pos_tests::{Node, open_session, wait_for};
use tokio::net::TcpListener;

/// How long each control call may take.
const DEADLINE: Duration = Duration::from_secs(1);
/// Channel opens waiting at once.
const OPENS: usize = 100;
/// Tasks sending messages, and messages each sends.
const SENDERS: usize = 8;
const SENDS_EACH: usize = 60;

/// A peer id nobody has: a fresh key's.
fn stranger() -> String {
    libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string()
}

/// One control call timed: `GetInfo` or `ListPeers`, within [`DEADLINE`].
async fn timed(client: &Client, peers: bool) -> Result<Duration, String> {
    let started = Instant::now();
    let call = async {
        if peers {
            let mut request = tonic::Request::new(ListPeersRequest {});
            request.set_timeout(DEADLINE);
            client.overlay().list_peers(request).await.map(|_| ())
        } else {
            let mut request = tonic::Request::new(GetInfoRequest {});
            request.set_timeout(DEADLINE);
            client.node().get_info(request).await.map(|_| ())
        }
    };
    match tokio::time::timeout(DEADLINE, call).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(status)) => Err(format!("{status:?}")),
        Err(_) => Err(format!("no answer within {DEADLINE:?}")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn list_peers_and_get_info_answer_within_a_second_under_load() {
    // The node takes 128 opens at once, so that all 100 wait rather than 68 being refused.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("p2posd.toml");
    std::fs::write(&config, "[overlay]\nmax_opens = 128\n").expect("config");
    let mut node = Node::start(&["--config", config.to_str().expect("utf-8")]);
    let admin = node.client().await;
    let mut load = Vec::new();
    for _ in 0..4 {
        load.push(node.client().await);
    }
    let _session = open_session(&admin, "load").await;

    // A peer that never answers: it takes TCP connections and says nothing.
    let blackhole = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = blackhole.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counting = accepted.clone();
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = blackhole.accept().await {
            counting.fetch_add(1, Ordering::SeqCst);
            if held.len() < 64 {
                held.push(socket);
            }
        }
    });
    // Four peer ids behind it: a node lets 64 callers wait on one peer.
    let silent: Vec<String> = (0..4)
        .map(|_| format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", stranger()))
        .collect();

    let mut opens = Vec::new();
    for i in 0..OPENS {
        let client = load[i % load.len()].clone();
        let peer = silent[i % silent.len()].clone();
        opens.push(tokio::spawn(async move {
            let open = ChannelInput {
                kind: Some(channel_input::Kind::Open(OpenChannel {
                    app_id: "load".into(),
                    peer,
                    batch: false,
                    half_close: false,
                    group: String::new(),
                    transport: 0,
                })),
            };
            let (tx, rx) = futures::channel::mpsc::channel::<ChannelInput>(1);
            let mut tx = tx;
            futures::SinkExt::send(&mut tx, open).await.ok();
            let answer = match client.apps().channel(rx).await {
                Ok(response) => response.into_inner().next().await.map(|r| r.map(|_| ())),
                Err(status) => Some(Err(status)),
            };
            drop(tx);
            answer
        }));
    }
    // A flood of messages to a peer that is offline (nobody has its id).
    let offline = stranger();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let client = load[i % load.len()].clone();
        let (offline, stop) = (offline.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut sent = 0;
            for n in 0..SENDS_EACH {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let request = SendRequest {
                    app_id: "load".into(),
                    peer: offline.clone(),
                    payload: Bytes::from(format!("message {n}")),
                    idempotency_key: Default::default(),
                };
                if client.apps().send(request).await.is_ok() {
                    sent += 1;
                }
            }
            sent
        }));
    }
    // The opens are waiting once the node has reached the silent peer.
    wait_for(
        "the node to reach the silent peer",
        Duration::from_secs(10),
        || async { (accepted.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;

    let mut slowest = Duration::ZERO;
    let mut failures = Vec::new();
    for i in 0..200 {
        match timed(&admin, i % 2 == 0).await {
            Ok(took) => slowest = slowest.max(took),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} calls failed: {failures:?}",
        failures.len()
    );
    assert!(slowest < DEADLINE, "slowest call {slowest:?}");

    // The load was real: the opens waited (none was refused at once) and messages were sent.
    stop.store(true, Ordering::SeqCst);
    let mut refused = 0;
    for open in opens {
        if let Ok(Some(Err(status))) = open.await
            && status.code() == tonic::Code::ResourceExhausted
        {
            refused += 1;
        }
    }
    assert_eq!(refused, 0, "every open waited for the silent peer");
    let mut sent = 0;
    for sender in senders {
        sent += sender.await.expect("join");
    }
    assert!(sent > 0, "messages were queued for the offline peer");
    holding.abort();
    node.stop().await;
}
