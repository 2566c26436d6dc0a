//! Store-and-forward: messages to an offline peer wait in the sender's outbox and arrive once
//! each, in order, when it is back; the app gets each message until it acknowledges it; a
//! restarted node keeps its peer id and redials its peers.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use p2pos_proto::{
    app::v1::{DeliveryState, ReceivedMessage},
    overlay::v1::DialRequest,
};
use p2pos_tests::{
    Node, connected_peer,
    messages::{ack, counts, next_message, node_with_config, receive, send},
    open_session, repair_store, wait_for,
};

const T: Duration = Duration::from_secs(60);

async fn register_app(node: &mut Node, app: &str) {
    open_session(&node.client().await, app).await;
}

/// Connects `client`'s node to `target` (a ticket).
async fn dial(client: &p2pos_client::Client, target: String) {
    client
        .overlay()
        .dial(DialRequest {
            target,
            timeout_ms: 0,
        })
        .await
        .expect("dial");
}

/// Sends `payload` to the app `chat` on `peer`; answers the delivery state.
async fn send_chat(
    client: &p2pos_client::Client,
    peer: &str,
    payload: impl Into<Bytes>,
) -> DeliveryState {
    send(client, "chat", peer, payload).await
}

/// Messages of app `chat` waiting in the outbox of `client`'s node.
async fn outbox(client: &p2pos_client::Client) -> u64 {
    counts(client, "chat").await.1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_messages_wait_for_an_offline_peer_and_arrive_once_in_order() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    register_app(&mut b, "chat").await;
    let b_id = b.peer_id().await;
    let b_ticket = b.ticket().await;
    let client_a = a.client().await;
    dial(&client_a, b_ticket).await;

    assert!(b.stop().await.success(), "B stops cleanly");
    for i in 0..100 {
        let state = send_chat(&client_a, &b_id, format!("message {i}")).await;
        assert_eq!(state, DeliveryState::Queued, "message {i}");
    }
    assert_eq!(outbox(&client_a).await, 100);
    let a_id = a.peer_id().await;

    b.restart();
    let client_b = b.client().await;
    let (mut inbox, got) = receive_chat(&client_b, 100).await;
    for (i, msg) in (0u64..).zip(&got) {
        assert_eq!(msg.payload, Bytes::from(format!("message {i}")));
        assert_eq!(msg.from_peer, a_id);
        assert_eq!(msg.sequence, i + 1);
    }
    // Every message was acknowledged: nothing is left to resend.
    outbox_drained(&client_a).await;
    // The next message is the next one to arrive: nothing was delivered twice.
    let state = send_chat(&client_a, &b_id, Bytes::from_static(b"the last one")).await;
    assert_eq!(state, DeliveryState::Delivered);
    let msg = tokio::time::timeout(T, inbox.next())
        .await
        .expect("arrives")
        .expect("open")
        .expect("message");
    assert_eq!(msg.payload, Bytes::from_static(b"the last one"));
    assert_eq!(msg.sequence, 101);
}

/// Messages waiting in the inbox of `app` (received, not acknowledged).
async fn inbox(client: &p2pos_client::Client, app: &str) -> u64 {
    counts(client, app).await.0
}

/// Starts `Receive` for `chat` and reads `n` messages from it.
async fn receive_chat(
    client: &p2pos_client::Client,
    n: usize,
) -> (tonic::Streaming<ReceivedMessage>, Vec<ReceivedMessage>) {
    let mut stream = receive(client, "chat").await;
    let mut got = Vec::new();
    for i in 0..n {
        got.push(next_message(&mut stream, &format!("message {i}")).await);
    }
    (stream, got)
}

/// Acknowledges every message of app `chat` up to `msg`.
async fn ack_chat(client: &p2pos_client::Client, msg: &ReceivedMessage) {
    ack(client, "chat", msg).await;
}

/// Waits until every message `client`'s node sent was acknowledged by its receiver.
async fn outbox_drained(client: &p2pos_client::Client) {
    wait_for("the outbox to drain", T, || {
        let client = client.clone();
        async move { (outbox(&client).await == 0).then_some(()) }
    })
    .await;
}

fn texts(messages: &[ReceivedMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_stay_in_the_inbox_until_the_app_acknowledges_them() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    register_app(&mut b, "chat").await;
    let b_id = b.peer_id().await;
    let client_a = a.client().await;
    dial(&client_a, b.ticket().await).await;
    let sent: Vec<String> = (1..=12).map(|i| format!("message {i}")).collect();
    for text in &sent {
        send_chat(&client_a, &b_id, text.clone()).await;
    }
    let client_b = b.client().await;
    wait_for("B to store all 12", T, || {
        let client = client_b.clone();
        async move { (inbox(&client, "chat").await == 12).then_some(()) }
    })
    .await;

    // The app reads one message and goes away without acknowledging it.
    let (stream, first) = receive_chat(&client_b, 1).await;
    assert_eq!(texts(&first), sent[..1]);
    drop(stream);
    assert_eq!(
        inbox(&client_b, "chat").await,
        12,
        "reading removes nothing"
    );

    // The next `Receive` hands all 12 over again, oldest first, the first one included.
    let (_stream, all) = receive_chat(&client_b, 12).await;
    assert_eq!(texts(&all), sent);
    assert_eq!(all[0].inbox_id, first[0].inbox_id);
    assert!(all.windows(2).all(|w| w[0].inbox_id < w[1].inbox_id));
    assert_eq!(
        all.iter().map(|m| m.sequence).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<u64>>()
    );

    // Acknowledging the 5th takes the first five; the next `Receive` starts at the 6th.
    ack_chat(&client_b, &all[4]).await;
    let (_stream, rest) = receive_chat(&client_b, 7).await;
    assert_eq!(texts(&rest), sent[5..]);
    assert_eq!(inbox(&client_b, "chat").await, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_keeps_its_peer_id_and_redials_its_peers() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    let a_id = a.peer_id().await;
    let b_id = b.peer_id().await;
    let b_ticket = b.ticket().await;
    dial(&a.client().await, b_ticket).await;

    assert!(a.stop().await.success());
    a.restart();
    assert_eq!(a.peer_id().await, a_id, "same identity after a restart");
    let client = a.client().await;
    connected_peer(&client, &b_id, "A to redial B by itself").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_lost_its_store_but_kept_its_key_is_not_taken_for_a_duplicate() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    register_app(&mut b, "chat").await;
    let a_id = a.peer_id().await;
    let b_id = b.peer_id().await;
    let b_ticket = b.ticket().await;
    let client_a = a.client().await;
    dial(&client_a, b_ticket.clone()).await;
    send_chat(&client_a, &b_id, "before 1").await;
    send_chat(&client_a, &b_id, "before 2").await;
    let client_b = b.client().await;
    wait_for("B to store both", T, || {
        let client = client_b.clone();
        async move { (inbox(&client, "chat").await == 2).then_some(()) }
    })
    .await;

    // A loses its store but keeps identity.key: its sequence numbers start again at 1. (A node
    // refuses to start on a lost store; `p2posd --repair` is the way back: a new store, the
    // same identity.)
    assert!(a.stop().await.success());
    std::fs::remove_dir_all(a.data_dir.join("store")).expect("remove A's store");
    let repaired = repair_store(&a.data_dir);
    assert!(
        repaired.status.success(),
        "repair: {}",
        String::from_utf8_lossy(&repaired.stderr)
    );
    a.restart();
    assert_eq!(a.peer_id().await, a_id, "same identity");
    let client_a = a.client().await;
    dial(&client_a, b_ticket).await;
    send_chat(&client_a, &b_id, "after").await;

    let (_stream, got) = receive_chat(&client_b, 3).await;
    assert_eq!(texts(&got), ["before 1", "before 2", "after"]);
    assert_eq!(got[2].sequence, 1);
    assert_ne!(got[2].sender_epoch, got[0].sender_epoch);
    assert!(got.iter().all(|m| m.from_peer == a_id));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_inbox_asks_the_sender_to_retry_and_the_rest_arrives_once_the_app_reads() {
    let mut a = Node::start(&[]);
    let (mut b, _config) = node_with_config("[overlay]\nmax_inbox_messages = 3\n");
    register_app(&mut b, "chat").await;
    let b_id = b.peer_id().await;
    let b_ticket = b.ticket().await;
    let client_a = a.client().await;
    dial(&client_a, b_ticket).await;
    let mut states = Vec::new();
    for i in 0..5 {
        states.push(send_chat(&client_a, &b_id, format!("message {i}")).await);
    }
    use DeliveryState::{Delivered, Queued};
    assert_eq!(states, [Delivered, Delivered, Delivered, Queued, Queued]);

    // The app reads and acknowledges; the sender, told to retry later, delivers the rest.
    let client_b = b.client().await;
    let (mut inbox, mut got) = receive_chat(&client_b, 3).await;
    ack_chat(&client_b, &got[2]).await;
    for _ in 0..2 {
        let msg = tokio::time::timeout(T, inbox.next())
            .await
            .expect("the rest arrives")
            .expect("open")
            .expect("message");
        ack_chat(&client_b, &msg).await;
        got.push(msg);
    }
    let expected: Vec<String> = (0..5).map(|i| format!("message {i}")).collect();
    assert_eq!(texts(&got), expected);
    outbox_drained(&client_a).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_to_a_peer_never_reached_expires_and_the_sender_hears_why() {
    let (mut a, _config) = node_with_config("[overlay]\nunreached_message_ttl_secs = 1\n");
    let mut b = Node::start(&[]);
    register_app(&mut b, "chat").await;
    let b_id = b.peer_id().await;
    let client_a = a.client().await;
    let mut events = client_a
        .monitor()
        .events(p2pos_proto::monitor::v1::EventsRequest {})
        .await
        .expect("events")
        .into_inner();
    dial(&client_a, b.ticket().await).await;
    register_app(&mut a, "chat").await;

    // B was reached once; then it goes away, and a line for it waits, however long it takes.
    assert_eq!(
        send_chat(&client_a, &b_id, "hello").await,
        DeliveryState::Delivered
    );
    assert!(b.stop().await.success());
    assert_eq!(
        send_chat(&client_a, &b_id, "for later").await,
        DeliveryState::Queued
    );

    // A peer id nobody has seen: queued, then dropped once the time is up, with an event.
    let stranger = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    assert_eq!(
        send_chat(&client_a, &stranger, "anyone?").await,
        DeliveryState::Queued
    );
    let failed = tokio::time::timeout(T, async {
        loop {
            let event = events.next().await.expect("events open").expect("event");
            if let Some(p2pos_proto::monitor::v1::event::Kind::MessageFailed(failed)) = event.kind {
                break failed;
            }
        }
    })
    .await
    .expect("a MessageFailed event");
    assert_eq!(failed.peer_id, stranger);
    assert_eq!(failed.app_id, "chat");
    assert!(failed.reason.contains("never reached in 1 s"), "{failed:?}");
    assert!(failed.reason.contains("ticket"), "{failed:?}");
    assert_eq!(outbox(&client_a).await, 1, "the line for B still waits");
}
