//! Store-and-forward: messages to an offline peer wait in the sender's outbox and arrive once
//! each, in order, when it is back; a restarted node keeps its peer id and redials its peers.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use p2pos_proto::{
    app::v1::{DeliveryState, ListAppsRequest, ReceiveRequest, SendRequest, SessionRequest},
    overlay::v1::{DialRequest, ListPeersRequest},
};
use p2pos_tests::{Node, wait_for};

const T: Duration = Duration::from_secs(60);

async fn register_app(node: &mut Node, app: &str) {
    let client = node.client().await;
    let mut session = client
        .apps()
        .session(SessionRequest { app_id: app.into() })
        .await
        .expect("session")
        .into_inner();
    session
        .next()
        .await
        .expect("registered")
        .expect("registered");
}

async fn outbox(client: &p2pos_client::Client) -> u64 {
    let apps = client
        .apps()
        .list_apps(ListAppsRequest {})
        .await
        .expect("list_apps")
        .into_inner();
    apps.apps.iter().map(|a| a.outbox).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_messages_wait_for_an_offline_peer_and_arrive_once_in_order() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    register_app(&mut b, "chat").await;
    let b_id = b.peer_id().await;
    let b_ticket = b.ticket().await;
    let client_a = a.client().await;
    client_a
        .overlay()
        .dial(DialRequest {
            target: b_ticket,
            timeout_ms: 0,
        })
        .await
        .expect("dial");

    assert!(b.stop().await.success(), "B stops cleanly");
    for i in 0..100 {
        let reply = client_a
            .apps()
            .send(SendRequest {
                app_id: "chat".into(),
                peer: b_id.clone(),
                payload: Bytes::from(format!("message {i}")),
            })
            .await
            .expect("send while B is offline")
            .into_inner();
        assert_eq!(reply.state(), DeliveryState::Queued, "message {i}");
    }
    assert_eq!(outbox(&client_a).await, 100);
    let a_id = a.peer_id().await;

    b.restart();
    let client_b = b.client().await;
    let mut inbox = client_b
        .apps()
        .receive(ReceiveRequest {
            app_id: "chat".into(),
        })
        .await
        .expect("receive")
        .into_inner();
    for i in 0..100 {
        let msg = tokio::time::timeout(T, inbox.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} did not arrive"))
            .expect("stream open")
            .expect("message");
        assert_eq!(msg.payload, Bytes::from(format!("message {i}")));
        assert_eq!(msg.from_peer, a_id);
        assert_eq!(msg.sequence, i + 1);
    }
    // Every message was acknowledged: nothing is left to resend.
    wait_for("A's outbox to drain", T, || {
        let client = client_a.clone();
        async move { (outbox(&client).await == 0).then_some(()) }
    })
    .await;
    // The next message is the next one to arrive: nothing was delivered twice.
    let reply = client_a
        .apps()
        .send(SendRequest {
            app_id: "chat".into(),
            peer: b_id.clone(),
            payload: Bytes::from_static(b"the last one"),
        })
        .await
        .expect("send")
        .into_inner();
    assert_eq!(reply.state(), DeliveryState::Delivered);
    let msg = tokio::time::timeout(T, inbox.next())
        .await
        .expect("arrives")
        .expect("open")
        .expect("message");
    assert_eq!(msg.payload, Bytes::from_static(b"the last one"));
    assert_eq!(msg.sequence, 101);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_keeps_its_peer_id_and_redials_its_peers() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    let a_id = a.peer_id().await;
    let b_id = b.peer_id().await;
    let b_ticket = b.ticket().await;
    a.client()
        .await
        .overlay()
        .dial(DialRequest {
            target: b_ticket,
            timeout_ms: 0,
        })
        .await
        .expect("dial");

    assert!(a.stop().await.success());
    a.restart();
    assert_eq!(a.peer_id().await, a_id, "same identity after a restart");
    let client = a.client().await;
    wait_for("A to redial B by itself", T, || {
        let client = client.clone();
        let b_id = b_id.clone();
        async move {
            let peers = client
                .overlay()
                .list_peers(ListPeersRequest {})
                .await
                .ok()?
                .into_inner();
            peers.peers.iter().any(|p| p.peer_id == b_id).then_some(())
        }
    })
    .await;
}
