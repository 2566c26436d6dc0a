//! Providers under load and going away (in-process, see `common`): many calls at once to one
//! remote provider, a provider whose session ends before it accepts a channel, a provider too
//! busy to take a call, and the limit on one app's registrations.

use std::time::{Duration, Instant};

use bytes::Bytes;

use p2pos_tests::wait_for;
use tonic::Code;

use crate::common::{
    Node, T, channel, next_channel, open_channel,
    services::{code, outcome, serve_echo},
};

const ECHO: &str = "echo/1";

/// Boots `n` nodes, each dialled by the others through the first, with the first in every
/// routing table.
async fn network(n: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Node::boot().await);
    }
    let (hub, _) = nodes[0].ticket().await;
    for node in &nodes[1..] {
        node.dial(&hub).await.expect("dial the first node");
        wait_for("a routing table with the first node", T, || async {
            (node.routing_table_size().await >= 1).then_some(())
        })
        .await;
    }
    nodes
}

#[actix_rt::test]
async fn two_hundred_calls_at_once_to_one_remote_provider_all_succeed() {
    let nodes = network(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let session = b.session("provider").await;
    b.register("provider", ECHO).await.expect("registered on B");
    let _serving = serve_echo(b, "provider", session);
    wait_for("A to find B's service", T, || async {
        a.find(ECHO).await.ok()
    })
    .await;

    // By name (one look-up for them all, more calls than a provider's node serves from one
    // peer at once), then to the named peer.
    let b_id = b.peer_id();
    for peer in ["", b_id.as_str()] {
        let calls: Vec<_> = (0..200)
            .map(|i| a.call_with(ECHO, peer, 0, Bytes::from(format!("call {i}"))))
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let reply = outcome(call)
                .await
                .unwrap_or_else(|e| panic!("call {i} to {peer:?}: {e:?}"));
            assert_eq!(reply.payload, format!("call {i}").as_bytes());
            assert_eq!(reply.peer_id, b_id);
            assert_eq!(reply.provider_app, "provider");
        }
    }
}

#[actix_rt::test]
async fn a_channel_announced_to_a_session_that_ends_is_refused_at_once() {
    let node = Node::boot().await;
    // A service channel to a provider on this node: no other provider, UNAVAILABLE.
    let mut session = node.session("provider").await;
    node.register("provider", ECHO).await.expect("registered");
    let opening = node.open_service(ECHO, "");
    let _announced = next_channel(&mut session).await;
    let ended = Instant::now();
    drop(session);
    let refused = tokio::time::timeout(T, opening).await.expect("in time");
    let (status, message) = code(refused.expect("join"));
    assert_eq!(status, Code::Unavailable, "{message}");
    assert!(message.contains("does not provide"), "{message}");
    assert!(
        ended.elapsed() < Duration::from_secs(2),
        "{:?}",
        ended.elapsed()
    );

    // A channel between two sessions of this node: the opener hears the app is gone.
    let mut session = node.session("chat").await;
    let registry = node.ctx.registry.clone();
    let to_self = node.peer_id();
    let opening = tokio::spawn(async move { open_channel(&registry, "chat", &to_self).await });
    let _announced = next_channel(&mut session).await;
    let ended = Instant::now();
    drop(session);
    let refused = tokio::time::timeout(T, opening).await.expect("in time");
    let (status, message) = code(refused.expect("join"));
    assert_eq!(status, Code::FailedPrecondition, "{message}");
    assert!(
        ended.elapsed() < Duration::from_secs(2),
        "{:?}",
        ended.elapsed()
    );
}

#[actix_rt::test]
async fn a_remote_provider_whose_session_ends_before_accepting_passes_to_another() {
    let nodes = network(3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut on_a = a.session("provider").await;
    let mut on_b = b.session("provider").await;
    a.register("provider", ECHO).await.expect("registered on A");
    b.register("provider", ECHO).await.expect("registered on B");
    wait_for("C to find both providers", T, || async {
        c.find(ECHO).await.ok().filter(|found| found.len() == 2)
    })
    .await;

    // Whichever provider is asked first ends its session before accepting.
    let opening = c.open_service(ECHO, "");
    let first_is_a = tokio::select! {
        _ = next_channel(&mut on_a) => true,
        _ = next_channel(&mut on_b) => false,
    };
    let started = Instant::now();
    let (other, mut on_other) = match first_is_a {
        true => {
            drop(on_a);
            (b, on_b)
        }
        false => {
            drop(on_b);
            (a, on_a)
        }
    };
    let announced = next_channel(&mut on_other).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let _accepted = channel(other.accept_channel("provider", announced.channel_id).await);
    let opened = tokio::time::timeout(T, opening)
        .await
        .expect("in time")
        .expect("join")
        .expect("opened to the other provider");
    assert_eq!(opened.peer_id, other.peer_id());
    assert_eq!(opened.app_id, "provider");
}

#[actix_rt::test]
async fn a_provider_too_busy_to_take_a_call_is_resource_exhausted() {
    let node = Node::boot().await;
    // The provider never reads its session: its announcements pile up to the session's limit.
    let _session = node.session("provider").await;
    node.register("provider", ECHO).await.expect("registered");
    let _waiting: Vec<_> = (0..64).map(|_| node.call(ECHO, "", 10_000, b"x")).collect();
    let (status, message) = wait_for("a call to be refused as busy", T, || async {
        let result = outcome(node.call(ECHO, "", 300, b"one too many")).await;
        let (status, message) = code(result);
        (status != Code::DeadlineExceeded).then_some((status, message))
    })
    .await;
    assert_eq!(status, Code::ResourceExhausted, "{message}");
    assert!(message.contains("busy"), "{message}");
}

#[actix_rt::test]
async fn one_app_registers_at_most_thirty_two_services() {
    let node = Node::boot().await;
    let _many = node.session("many").await;
    for i in 0..32 {
        node.register("many", &format!("s{i}/1"))
            .await
            .expect("within the app's share");
    }
    let (status, message) = code(node.register("many", "s32/1").await);
    assert_eq!(status, Code::ResourceExhausted, "{message}");
    // Its own registrations can still be updated, and other apps still register.
    node.register("many", "s0/1").await.expect("an update");
    let _other = node.session("other").await;
    node.register("other", "s32/1").await.expect("another app");
}
