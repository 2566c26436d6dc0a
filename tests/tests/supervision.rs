//! Supervision: a service that panics is restarted and health shows it going down and up; a
//! crash loop past the restart intensity stops the node with a non-zero exit.

use std::time::Duration;

use futures::StreamExt;
use p2pos_proto::{
    monitor::v1::{EventsRequest, GetStatusRequest, event},
    node::v1::{InjectPanicRequest, ShutdownRequest},
};
use p2pos_tests::Node;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const T: Duration = Duration::from_secs(30);

/// Asks the node to make `service` panic (refused unless it runs with `--allow-fault-injection`).
async fn inject_panic(client: &p2pos_client::Client, service: &str) -> Result<(), tonic::Status> {
    client
        .node()
        .inject_panic(InjectPanicRequest {
            service: service.into(),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_service_is_restarted_and_health_follows() {
    let mut node = Node::start(&["--allow-fault-injection"]);
    let client = node.client().await;
    let mut health = HealthClient::new(client.channel());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "p2pos.monitor.v1.Monitor".into(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = watch.next().await.expect("first").expect("first");
    assert_eq!(first.status(), ServingStatus::Serving);
    let mut events = client
        .monitor()
        .events(EventsRequest {})
        .await
        .expect("events")
        .into_inner();

    inject_panic(&client, "monitor")
        .await
        .expect("inject panic");

    let down = tokio::time::timeout(T, watch.next())
        .await
        .expect("update")
        .expect("open")
        .expect("ok");
    assert_eq!(down.status(), ServingStatus::NotServing);
    let up = tokio::time::timeout(T, watch.next())
        .await
        .expect("update")
        .expect("open")
        .expect("ok");
    assert_eq!(up.status(), ServingStatus::Serving);

    let restarted = tokio::time::timeout(T, async {
        while let Some(Ok(ev)) = events.next().await {
            if let Some(event::Kind::ServiceRestarted(r)) = ev.kind {
                return r;
            }
        }
        panic!("event stream ended");
    })
    .await
    .expect("a ServiceRestarted event");
    assert_eq!(restarted.service, "monitor");
    assert_eq!(restarted.reason, "panicked");

    // The restarted monitor answers, and counts the restart.
    let status = client
        .monitor()
        .get_status(GetStatusRequest {})
        .await
        .expect("status after restart")
        .into_inner();
    let monitor = status
        .services
        .iter()
        .find(|s| s.name == "monitor")
        .expect("monitor");
    assert_eq!(monitor.state, "running");
    assert_eq!(monitor.restarts, 1);
    assert!(
        node.log().contains("injected fault in monitor"),
        "the panic is logged"
    );

    // Without --allow-fault-injection the call is refused.
    client
        .node()
        .shutdown(ShutdownRequest {})
        .await
        .expect("shutdown");
    assert!(
        node.wait_exit(T).await.success(),
        "clean exit after Shutdown"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_injection_is_off_by_default() {
    let mut node = Node::start(&[]);
    let client = node.client().await;
    let err = inject_panic(&client, "monitor").await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_loop_past_the_intensity_stops_the_node() {
    let mut node = Node::start(&[
        "--failpoint",
        "monitor=panic-on-start",
        "--max-restarts",
        "3",
        "--restart-period",
        "60",
    ]);
    let status = node.wait_exit(T).await;
    assert!(!status.success(), "non-zero exit, got {status}");
    assert_eq!(status.code(), Some(1));
    let log = node.log();
    assert!(
        log.contains("restart intensity exceeded"),
        "clear log line; log:\n{log}"
    );
    assert!(
        log.contains("service=\"monitor\"") || log.contains("service=monitor"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_for_one_restarts_the_services_started_after_the_crashed_one() {
    let mut node = Node::start(&["--allow-fault-injection", "--strategy", "rest-for-one"]);
    let client = node.client().await;
    let peer_id = node.peer_id().await;
    let mut events = client
        .monitor()
        .events(EventsRequest {})
        .await
        .expect("events")
        .into_inner();
    inject_panic(&client, "overlay")
        .await
        .expect("inject panic");
    // The gateway was started after the overlay, so it is restarted too: this stream, served
    // by the old gateway, ends.
    tokio::time::timeout(T, async {
        loop {
            match events.next().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            }
        }
    })
    .await
    .expect("the old gateway's stream ends");
    // The new gateway, monitor and overlay all answer, with the same identity.
    let client = node.client().await;
    let status = p2pos_tests::status_when(&client, "every service running again", |s| {
        s.services.iter().all(|s| s.state == "running")
    })
    .await;
    assert_eq!(status.peer_id, peer_id);
    let overlay = status
        .services
        .iter()
        .find(|s| s.name == "overlay")
        .expect("overlay");
    assert_eq!(overlay.restarts, 1);
    assert_eq!(overlay.last_error, "panicked");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_gateway_is_restarted_and_clients_get_back_in() {
    let mut node = Node::start(&["--allow-fault-injection"]);
    let client = node.client().await;
    // The answer may be cut by the panic it causes; either way the gateway goes down.
    let _ = inject_panic(&client, "gateway").await;
    let status = p2pos_tests::status_when(&client, "the gateway to answer again", |s| {
        s.services
            .iter()
            .any(|s| s.name == "gateway" && s.restarts == 1 && s.state == "running")
    })
    .await;
    let overlay = status
        .services
        .iter()
        .find(|s| s.name == "overlay")
        .expect("overlay");
    assert_eq!(overlay.restarts, 0, "one_for_one leaves the others alone");
    assert!(node.try_exit().is_none(), "the node keeps running");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_of_a_grpc_service_follows_every_service_that_serves_it() {
    let mut node = Node::start(&["--allow-fault-injection"]);
    let client = node.client().await;
    let mut health = HealthClient::new(client.channel());
    let watch = |service: &str| {
        let mut health = health.clone();
        let service = service.to_owned();
        async move {
            health
                .watch(HealthCheckRequest { service })
                .await
                .expect("health watch")
                .into_inner()
        }
    };
    let mut services = watch("p2pos.service.v1.Services").await;
    let first = services.next().await.expect("first").expect("first");
    assert_eq!(first.status(), ServingStatus::Serving);

    // Port forwarding's calls are Services calls: while it restarts, Services is down, though
    // the overlay, which serves the rest of Services, runs on.
    inject_panic(&client, "forward")
        .await
        .expect("inject panic");
    let down = tokio::time::timeout(T, services.next())
        .await
        .expect("update")
        .expect("open")
        .expect("ok");
    assert_eq!(down.status(), ServingStatus::NotServing);
    let up = tokio::time::timeout(T, services.next())
        .await
        .expect("update")
        .expect("open")
        .expect("ok");
    assert_eq!(up.status(), ServingStatus::Serving);
    let apps = health
        .check(HealthCheckRequest {
            service: "p2pos.app.v1.Apps".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(apps.status(), ServingStatus::Serving);

    client
        .node()
        .shutdown(ShutdownRequest {})
        .await
        .expect("shutdown");
    assert!(node.wait_exit(T).await.success(), "clean exit");
}
