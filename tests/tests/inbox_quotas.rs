//! Inbox quotas, tried with real processes: a peer (a bare libp2p peer speaking
//! `/p2pos/msg/1` itself, or a real node) that floods a node's inbox is refused at its quota
//! while the inbox stays within it and other peers' mail still arrives; an app that never
//! reads holds back no other app's mail from the same sender; an app id that does not exist
//! gets the answers one that exists gets; the dedupe marks stay bounded while a resend of a
//! delivered message is still not delivered twice.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use libp2p::{Multiaddr, PeerId, StreamProtocol, identity::Keypair};
use p2pos_kernel::{Store, store::SledStore};
use p2pos_proto::{
    app::v1::{DeliveryState, ReceivedMessage},
    overlay::v1::{DialRequest, GetTicketRequest},
    wire::v1::{MessageAck, MessageFrame, message_ack},
};
use p2pos_protocols::wire::{self, read_message, write_message};
use p2pos_tests::{
    Node, connected_peer,
    messages::{ack, counts, next_message, node_with_config, receive, send},
    open_session as register, wait_for,
};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

const T: Duration = Duration::from_secs(60);
const MSG: StreamProtocol = StreamProtocol::new(wire::MESSAGE_PROTOCOL);

/// A node whose `[overlay]` table is `overlay`.
fn node_with(overlay: &str) -> (Node, tempfile::TempDir) {
    node_with_config(&format!("[overlay]\n{overlay}\n"))
}

async fn next(stream: &mut tonic::Streaming<ReceivedMessage>, what: &str) -> ReceivedMessage {
    next_message(stream, what).await
}

fn text(msg: &ReceivedMessage) -> String {
    String::from_utf8_lossy(&msg.payload).into_owned()
}

/// A bare libp2p peer that speaks `/p2pos/msg/1` itself.
struct Bare {
    id: PeerId,
    control: libp2p_stream::Control,
    driver: tokio::task::JoinHandle<()>,
}

impl Bare {
    /// A new identity, connected to the node at `addr`.
    async fn connect(node: &p2pos_client::Client, addr: &Multiaddr) -> Bare {
        let key = Keypair::generate_ed25519();
        let id = key.public().to_peer_id();
        let mut swarm = p2pos_tests::bare_swarm(key, |_| libp2p_stream::Behaviour::new());
        let control = swarm.behaviour().new_control();
        swarm.dial(addr.clone()).expect("dial");
        let driver = tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        connected_peer(node, &id.to_string(), "the bare peer to connect").await;
        Bare {
            id,
            control,
            driver,
        }
    }

    async fn stream(&mut self, to: PeerId) -> Compat<libp2p::Stream> {
        self.control
            .open_stream(to, MSG)
            .await
            .expect("a /p2pos/msg/1 stream")
            .compat()
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Writes `frame` and reads its acknowledgement; `None` if the stream ended first.
async fn offer(io: &mut Compat<libp2p::Stream>, frame: &MessageFrame) -> Option<MessageAck> {
    write_message(io, frame, T).await.ok()?;
    let ack: MessageAck = read_message(io, wire::MAX_CONTROL_FRAME, T).await.ok()?;
    assert_eq!(ack.sequence, frame.sequence);
    Some(ack)
}

fn frame(sequence: u64, epoch: u64, app: &str, payload: &str) -> MessageFrame {
    MessageFrame {
        sequence,
        message_id: sequence,
        app_id: app.into(),
        payload: Bytes::from(payload.to_owned()),
        sent_at_ms: 0,
        epoch,
        answered_below: 0,
    }
}

fn result(ack: &MessageAck) -> message_ack::Result {
    message_ack::Result::try_from(ack.result).expect("a known result")
}

async fn first_address(client: &p2pos_client::Client) -> Multiaddr {
    let ticket = client
        .overlay()
        .get_ticket(GetTicketRequest {})
        .await
        .expect("ticket")
        .into_inner();
    ticket.addresses[0].parse().expect("an address")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_peer_is_refused_at_its_quotas_and_other_peers_mail_still_arrives() {
    let (mut b, _config) = node_with(
        "max_inbox_messages_per_peer_app = 20\nmax_inbox_messages_per_peer = 30\n\
         max_inbox_bytes_per_peer_app = 200000\nmax_inbox_bytes_per_peer = 300000",
    );
    let b_client = b.client().await;
    let b_id: PeerId = b.peer_id().await.parse().expect("peer id");
    let _chat = register(&b_client, "chat").await;
    let _other = register(&b_client, "other").await;
    let mut flooder = Bare::connect(&b_client, &first_address(&b_client).await).await;

    // 100 messages to chat as fast as the node answers: 20 are stored, the rest refused for
    // that app, with the reason, and the stream stays open.
    let mut io = flooder.stream(b_id).await;
    let mut results = Vec::new();
    for sequence in 1..=100 {
        let ack = offer(&mut io, &frame(sequence, 1, "chat", "flood"))
            .await
            .expect("an answer");
        if result(&ack) == message_ack::Result::AppFull {
            assert!(
                ack.reason
                    .contains("quota per sending peer and app is 20 messages"),
                "{ack:?}"
            );
        }
        results.push(result(&ack));
    }
    let stored = results
        .iter()
        .filter(|r| **r == message_ack::Result::Stored)
        .count();
    assert_eq!(stored, 20, "{results:?}");
    assert!(
        results[20..]
            .iter()
            .all(|r| *r == message_ack::Result::AppFull)
    );
    // Its mail to another app still goes in, up to its quota as a sender (30 in all); then it
    // is told to retry later, and the stream ends.
    let mut sequence = 100;
    let refusal = loop {
        sequence += 1;
        assert!(sequence < 200, "never refused");
        let ack = offer(&mut io, &frame(sequence, 1, "other", "flood"))
            .await
            .expect("an answer");
        if result(&ack) != message_ack::Result::Stored {
            break ack;
        }
    };
    assert_eq!(sequence, 111, "10 more stored for the other app");
    assert_eq!(
        result(&refusal),
        message_ack::Result::RetryLater,
        "{refusal:?}"
    );
    assert!(
        refusal
            .reason
            .contains("quota per sending peer is 30 messages"),
        "{refusal:?}"
    );
    assert!(
        offer(&mut io, &frame(200, 1, "other", "more"))
            .await
            .is_none(),
        "the stream ended"
    );

    // The inbox held no more than the quotas.
    assert_eq!(counts(&b_client, "chat").await.0, 20);
    assert_eq!(counts(&b_client, "other").await.0, 10);

    // Another peer's mail to the same app arrives, at once.
    let mut a = Node::start(&[]);
    let a_client = a.client().await;
    let b_ticket = b.ticket().await;
    a_client
        .overlay()
        .dial(DialRequest {
            target: b_ticket,
            timeout_ms: 0,
        })
        .await
        .expect("dial");
    let state = send(&a_client, "chat", &b_id.to_string(), "from an honest peer").await;
    assert_eq!(state, DeliveryState::Delivered);
    assert_eq!(counts(&b_client, "chat").await.0, 21);

    // Once the app has read the flood, the flooder may send again.
    let mut inbox = receive(&b_client, "chat").await;
    let mut last = None;
    for _ in 0..21 {
        last = Some(next(&mut inbox, "the flood").await);
    }
    ack(&b_client, "chat", &last.expect("read")).await;
    wait_for("the flood to leave the inbox", T, || {
        let client = b_client.clone();
        async move { (counts(&client, "chat").await.0 == 0).then_some(()) }
    })
    .await;
    let mut io = flooder.stream(b_id).await;
    let ack = offer(&mut io, &frame(300, 1, "chat", "again"))
        .await
        .expect("an answer");
    assert_eq!(result(&ack), message_ack::Result::Stored, "{ack:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_never_reads_holds_back_no_other_app_of_the_same_sender() {
    let (mut b, _config) = node_with("max_inbox_messages_per_peer_app = 5");
    let b_client = b.client().await;
    let b_id = b.peer_id().await;
    let _idle = register(&b_client, "idle").await;
    let _busy = register(&b_client, "busy").await;
    let mut a = Node::start(&[]);
    let a_client = a.client().await;
    let a_id = a.peer_id().await;
    a_client
        .overlay()
        .dial(DialRequest {
            target: b.ticket().await,
            timeout_ms: 0,
        })
        .await
        .expect("dial");

    // "idle" never reads: 5 of A's messages are held for it, the rest wait in A's outbox.
    for i in 0..8 {
        let state = send(&a_client, "idle", &b_id, format!("idle {i}")).await;
        let want = if i < 5 {
            DeliveryState::Delivered
        } else {
            DeliveryState::Queued
        };
        assert_eq!(state, want, "idle {i}");
    }
    assert_eq!(counts(&a_client, "idle").await.1, 3, "kept by the sender");
    // A's messages to "busy", sent after them, are delivered at once, and arrive in order.
    let mut busy = receive(&b_client, "busy").await;
    for i in 0..10 {
        let state = send(&a_client, "busy", &b_id, format!("busy {i}")).await;
        assert_eq!(state, DeliveryState::Delivered, "busy {i}");
        let msg = next(&mut busy, "a message to busy").await;
        assert_eq!(text(&msg), format!("busy {i}"));
        assert_eq!(msg.from_peer, a_id);
        ack(&b_client, "busy", &msg).await;
    }
    assert_eq!(
        counts(&b_client, "idle").await.0,
        5,
        "held within the quota"
    );

    // Once "idle" reads, the rest arrives, once each and in order.
    let mut idle = receive(&b_client, "idle").await;
    let mut got = Vec::new();
    let mut sequences = Vec::new();
    for _ in 0..8 {
        let msg = next(&mut idle, "a message to idle").await;
        ack(&b_client, "idle", &msg).await;
        got.push(text(&msg));
        sequences.push(msg.sequence);
    }
    let want: Vec<String> = (0..8).map(|i| format!("idle {i}")).collect();
    assert_eq!(got, want);
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    wait_for("A's outbox to drain", T, || {
        let client = a_client.clone();
        async move { (counts(&client, "idle").await.1 == 0).then_some(()) }
    })
    .await;
    // Nothing came twice: the next message is the next one to arrive.
    send(&a_client, "idle", &b_id, "last").await;
    assert_eq!(text(&next(&mut idle, "the last").await), "last");
}

#[tokio::test(flavor = "multi_thread")]
async fn probing_an_app_id_that_does_not_exist_gets_the_answers_one_that_exists_gets() {
    let (mut b, _config) = node_with("max_inbox_messages_per_peer_app = 3");
    let b_client = b.client().await;
    let b_id: PeerId = b.peer_id().await.parse().expect("peer id");
    let _real = register(&b_client, "real").await;
    let addr = first_address(&b_client).await;

    // Two probes, each its own identity, the same steps: a few messages, a repeat, past the
    // quota, and an app id that is no app id at all.
    let mut transcripts = Vec::new();
    for app in ["real", "ghost"] {
        let mut prober = Bare::connect(&b_client, &addr).await;
        let mut io = prober.stream(b_id).await;
        let mut transcript = Vec::new();
        for (sequence, app) in [
            (1, app),
            (2, app),
            (2, app),
            (3, app),
            (4, app),
            (5, "no such!"),
        ] {
            let ack = offer(&mut io, &frame(sequence, 9, app, "probe"))
                .await
                .expect("an answer");
            let reason = ack.reason.replace(app, "APP");
            transcript.push(format!("{sequence}:{:?}:{reason}", result(&ack)));
        }
        transcripts.push(transcript);
    }
    assert_eq!(transcripts[0], transcripts[1]);
    let kinds: Vec<&str> = transcripts[0]
        .iter()
        .map(|t| t.split(':').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        [
            "Stored",
            "Stored",
            "Stored",
            "Stored",
            "AppFull",
            "UnknownApp"
        ],
        "{transcripts:?}"
    );

    // What was held for "ghost" is its own if it ever registers.
    let _ghost = register(&b_client, "ghost").await;
    let mut inbox = receive(&b_client, "ghost").await;
    for _ in 0..3 {
        assert_eq!(text(&next(&mut inbox, "a held message").await), "probe");
    }
}

/// The dedupe marks kept in `node`'s (stopped) store: in all, and of `peer`.
fn stored_marks(node: &Node, peer: &PeerId) -> (usize, usize) {
    let store = SledStore::open(&node.data_dir.join("store")).expect("the stopped node's store");
    let all = store.scan_prefix("inbox", b"d", usize::MAX).expect("scan");
    let mut prefix = b"d".to_vec();
    prefix.extend_from_slice(&peer.to_bytes());
    let of_peer = all.iter().filter(|(k, _)| k.starts_with(&prefix)).count();
    (all.len(), of_peer)
}

#[tokio::test(flavor = "multi_thread")]
async fn dedupe_marks_stay_bounded_and_a_resend_is_still_not_delivered_twice() {
    let mut b = Node::start(&[]);
    let b_client = b.client().await;
    let b_id: PeerId = b.peer_id().await.parse().expect("peer id");
    let _session = register(&b_client, "chat").await;
    let addr = first_address(&b_client).await;
    let mut inbox = receive(&b_client, "chat").await;

    // An honest sender's 501 messages to three apps (two of them not registered), each frame
    // saying what was answered before it.
    let mut honest = Bare::connect(&b_client, &addr).await;
    let mut io = honest.stream(b_id).await;
    for sequence in 1..=501u64 {
        let app = ["chat", "one", "two"][(sequence % 3) as usize];
        let frame = MessageFrame {
            answered_below: sequence,
            ..frame(sequence, 5, app, &format!("m{sequence}"))
        };
        let ack = offer(&mut io, &frame).await.expect("an answer");
        assert_eq!(result(&ack), message_ack::Result::Stored, "{sequence}");
        if app == "chat" {
            let msg = next(&mut inbox, "a chat message").await;
            assert_eq!(text(&msg), format!("m{sequence}"));
            ack_msg(&b_client, &msg).await;
        }
    }
    // The last acknowledgement lost, it sends that message again, on a new stream: the node
    // acknowledges it again and stores it only once.
    let mut io = honest.stream(b_id).await;
    let resend = MessageFrame {
        answered_below: 501,
        ..frame(501, 5, "chat", "m501")
    };
    let ack = offer(&mut io, &resend).await.expect("an answer");
    assert_eq!(result(&ack), message_ack::Result::Stored);
    let sentinel = MessageFrame {
        answered_below: 502,
        ..frame(502, 5, "chat", "after the resend")
    };
    offer(&mut io, &sentinel).await.expect("an answer");
    assert_eq!(
        text(&next(&mut inbox, "the next message").await),
        "after the resend"
    );

    // A forger makes up a new epoch for every message.
    let mut forger = Bare::connect(&b_client, &addr).await;
    let mut io = forger.stream(b_id).await;
    for epoch in 1..=300u64 {
        let ack = offer(&mut io, &frame(1, epoch, "chat", "forged"))
            .await
            .expect("an answer");
        assert_eq!(result(&ack), message_ack::Result::Stored, "epoch {epoch}");
        let msg = next(&mut inbox, "a forged message").await;
        ack_msg(&b_client, &msg).await;
    }
    let (honest_id, forger_id) = (honest.id, forger.id);
    drop((honest, forger));
    assert!(b.stop().await.success());
    let (all, of_honest) = stored_marks(&b, &honest_id);
    let (_, of_forger) = stored_marks(&b, &forger_id);
    // Of the honest sender's marks, only those at or above what its last frame said was not
    // yet answered are kept: one, its last message's.
    assert_eq!(of_honest, 1, "the honest sender's marks");
    assert_eq!(of_forger, 64, "the forger's marks, bounded");
    assert_eq!(all, 65);
}

async fn ack_msg(client: &p2pos_client::Client, msg: &ReceivedMessage) {
    ack(client, "chat", msg).await;
}
