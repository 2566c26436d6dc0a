//! Monitoring: status shows services and peers, metrics are served in the Prometheus text
//! format on the opt-in port, and p2pctl's read commands print JSON.

use p2pos_tests::{Node, free_port, http_get, p2pctl, status_when};

#[tokio::test(flavor = "multi_thread")]
async fn status_metrics_and_json() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut a = Node::start(&["--metrics", &metrics]);
    let mut b = Node::start(&[]);
    a.client().await;
    let b_id = b.peer_id().await;
    let b_ticket = b.ticket().await;
    let (ok, out, err) = p2pctl(&a, &["dial", &b_ticket]);
    assert!(ok, "{out}{err}");

    let client = a.client().await;
    let status = status_when(&client, "B in A's status with a round-trip time", |s| {
        s.peers.iter().any(|p| p.peer_id == b_id && p.rtt_us > 0)
    })
    .await;
    for name in ["overlay", "monitor", "gateway"] {
        let s = status.services.iter().find(|s| s.name == name).expect(name);
        assert_eq!(s.state, "running", "{name}");
    }
    assert!(!status.listen_addresses.is_empty());
    assert_eq!(status.metrics_url, format!("http://{metrics}/metrics"));
    let peer = status.peers.iter().find(|p| p.peer_id == b_id).expect("B");
    assert_eq!(peer.transport, "tcp");

    let body = http_get(&metrics, "/metrics");
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    assert!(body.contains("p2pos_service_up"), "{body}");
    assert!(body.contains("libp2p_"), "libp2p's own metrics: {body}");
    assert!(body.trim_end().ends_with("# EOF"));
    assert!(http_get(&metrics, "/nope").contains("404"));

    // p2pctl: the id and ticket alone, JSON for reads.
    let (ok, id, _) = p2pctl(&b, &["id"]);
    assert!(ok);
    assert_eq!(id.trim(), b_id);
    let (ok, ticket, _) = p2pctl(&b, &["ticket"]);
    assert!(ok);
    assert_eq!(ticket.trim().lines().count(), 1);
    assert!(ticket.starts_with("p2pos"));
    let (ok, peers, err) = p2pctl(&a, &["peers", "--json"]);
    assert!(ok, "{err}");
    assert!(peers.contains(&b_id), "{peers}");
    let (ok, status_json, err) = p2pctl(&a, &["status", "--json"]);
    assert!(ok, "{err}");
    assert!(status_json.contains("\"services\""), "{status_json}");
    let (ok, _, err) = p2pctl(&a, &["ping", &b_id]);
    assert!(ok, "{err}");

    // A node that is not running: a one-line error and a non-zero exit.
    assert!(b.stop().await.success());
    let (ok, _, err) = p2pctl(&b, &["status"]);
    assert!(!ok);
    assert!(err.starts_with("error:"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_the_open_spec() {
    use futures::StreamExt;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut node = Node::start(&[]);
    let client = node.client().await;
    let mut reflection = ServerReflectionClient::new(client.channel());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("answer").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "p2pos.node.v1.Node",
        "p2pos.overlay.v1.Overlay",
        "p2pos.app.v1.Apps",
        "p2pos.monitor.v1.Monitor",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
}
