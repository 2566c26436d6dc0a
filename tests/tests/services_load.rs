//! Services under load, on real daemons over gRPC: many calls at once from one node to one
//! provider on another, by name (one DHT look-up shared by all of them) and to the named peer
//! (more calls than the provider's node serves from one peer at once: the caller's node makes
//! the rest wait their turn instead of failing).

use std::time::Duration;

use bytes::Bytes;
use p2pos_proto::service::v1::CallRequest;
use p2pos_tests::{Node, connected_peer, p2pctl, provide, wait_for};

const T: Duration = Duration::from_secs(30);
const ECHO: &str = "echo/1";
/// Calls made at once.
const CALLS: usize = 200;

fn call(payload: String, peer: &str) -> CallRequest {
    CallRequest {
        app_id: "caller".into(),
        service: ECHO.into(),
        payload: Bytes::from(payload),
        peer: peer.into(),
        timeout_ms: 0,
        ..CallRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_calls_at_once_to_one_provider_all_succeed() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    let (client_a, client_b) = (a.client().await, b.client().await);
    let b_id = b.peer_id().await;
    let (ok, _, err) = p2pctl(&a, &["dial", &b.ticket().await]);
    assert!(ok, "{err}");
    connected_peer(&client_a, &b_id, "A connected to B").await;
    // A provider of `echo/1` on B: answers every call at once with its payload.
    let _provider = provide(
        client_b,
        "echo-app",
        ECHO,
        "echoes",
        |payload| Some(Ok(payload)),
        |_| {},
    )
    .await;
    // The provider is found through the DHT.
    wait_for("a first answer by name", T, || {
        let client = client_a.clone();
        async move { client.services().call(call("first".into(), "")).await.ok() }
    })
    .await;

    for peer in ["", b_id.as_str()] {
        let calls: Vec<_> = (0..CALLS)
            .map(|i| {
                let client = client_a.clone();
                let request = call(format!("call {i}"), peer);
                tokio::spawn(async move { client.services().call(request).await })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let reply = tokio::time::timeout(T + T, call)
                .await
                .expect("in time")
                .expect("join")
                .unwrap_or_else(|status| panic!("call {i} to {peer:?}: {status:?}"))
                .into_inner();
            assert_eq!(reply.payload, format!("call {i}").as_bytes());
            assert_eq!(
                (reply.peer_id.as_str(), reply.provider_app.as_str()),
                (b_id.as_str(), "echo-app")
            );
        }
    }
}
