//! Services in-process (`p2pos.service.v1` on real kernels, see `common`): registering, finding
//! providers here and through the DHT, unary calls with their deadlines and errors, channels to
//! services, and what a provider's session ending does.

use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pos_kernel::ErrorCode;
use p2pos_proto::service::v1::{ExposeRequest, ReplyError, WithdrawRequest, reply_request};
use p2pos_protocols::{forwarding::Request as Forwarding, wire};
use p2pos_tests::wait_for;
use tonic::Code;

use crate::common::{
    Node, T, channel, next_call, next_channel,
    services::{carries, code, echo_one, echoes, framed, outcome},
};

const ECHO: &str = "echo/1";

#[actix_rt::test]
async fn a_local_provider_is_registered_called_and_answers() {
    let node = Node::boot().await;
    let mut session = node.session("provider").await;
    let info = node.register("provider", ECHO).await.expect("registered");
    assert_eq!(
        (info.service.as_str(), info.app_id.as_str(), info.local),
        (ECHO, "provider", true)
    );
    assert_eq!(info.peer_id, node.peer_id());
    let listed = node.list().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].description, "echo/1 by provider");
    let found = node.find(ECHO).await.expect("found here");
    assert!(found[0].local && found[0].app_id == "provider", "{found:?}");

    // A call from another app of this node: announced, answered, passed back.
    let call = node.call(ECHO, "", 0, b"hi");
    let incoming = next_call(&mut session).await;
    assert_eq!(
        (incoming.service.as_str(), incoming.from_app.as_str()),
        (ECHO, "client")
    );
    assert_eq!(incoming.from_peer, node.peer_id());
    assert_eq!(&incoming.payload[..], b"hi");
    assert!(incoming.deadline_ms > 0);
    // Only the provider may answer, and only once.
    let other = node
        .reply(
            "client",
            incoming.call_id,
            reply_request::Result::Payload(Bytes::new()),
        )
        .await;
    assert_eq!(code(other).0, Code::NotFound);
    let answer = reply_request::Result::Payload(Bytes::from_static(b"ho"));
    node.reply("provider", incoming.call_id, answer.clone())
        .await
        .expect("reply");
    let reply = outcome(call).await.expect("answered");
    assert_eq!(&reply.payload[..], b"ho");
    assert_eq!(reply.provider_app, "provider");
    assert_eq!(reply.peer_id, node.peer_id());
    let again = node.reply("provider", incoming.call_id, answer).await;
    assert_eq!(code(again).0, Code::NotFound);

    // The provider's error reaches the caller as its status.
    let call = node.call(ECHO, &node.peer_id(), 0, b"bad");
    let incoming = next_call(&mut session).await;
    let refusal = reply_request::Result::Error(ReplyError {
        code: 7,
        message: "not for you".into(),
    });
    node.reply("provider", incoming.call_id, refusal)
        .await
        .expect("reply");
    assert_eq!(
        code(outcome(call).await),
        (Code::PermissionDenied, "not for you".to_owned())
    );

    // A provider that never answers: DEADLINE_EXCEEDED at the call's time, and too late then.
    let started = Instant::now();
    let call = node.call(ECHO, "", 300, b"slow");
    let incoming = next_call(&mut session).await;
    let (status, message) = code(outcome(call).await);
    assert_eq!(status, Code::DeadlineExceeded, "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let late = reply_request::Result::Payload(Bytes::new());
    let late = node.reply("provider", incoming.call_id, late).await;
    assert_eq!(code(late).0, Code::NotFound);

    // The name is taken on this node; and a provider needs a session.
    let _other = node.session("other").await;
    let (status, message) = code(node.register("other", ECHO).await);
    assert_eq!(status, Code::AlreadyExists);
    assert!(message.contains("app 'provider'"), "{message}");
    assert_eq!(
        code(node.register("nobody", "x/1").await).0,
        Code::FailedPrecondition
    );
    // Registering again updates; unregistering ends it.
    node.register("provider", ECHO).await.expect("again");
    assert_eq!(code(node.unregister("other", ECHO).await).0, Code::NotFound);
    node.unregister("provider", ECHO)
        .await
        .expect("unregistered");
    assert!(node.list().await.is_empty());
    let (status, message) = code(outcome(node.call(ECHO, "", 0, b"x")).await);
    assert_eq!(status, Code::NotFound, "{message}");
}

#[actix_rt::test]
async fn bad_input_gets_clear_statuses() {
    let node = Node::boot_config(|c| c.kademlia = false, |_| {}).await;
    let _session = node.session("provider").await;
    for (name, rule) in [
        ("", "the name is empty"),
        (&*format!("{}/1", "x".repeat(49)), "longer than 48"),
        ("translate", "no version"),
        ("a b/1", "character"),
        ("a/1.0", "version"),
    ] {
        let (status, message) = code(node.register("provider", name).await);
        assert_eq!(status, Code::InvalidArgument, "{name:?}: {message}");
        assert!(message.contains(rule), "{name:?}: {message}");
        let (status, _) = code(outcome(node.call(name, "", 0, b"")).await);
        assert_eq!(status, Code::InvalidArgument, "{name:?}");
    }
    let (status, message) = code(node.register_with("provider", ECHO, "d".repeat(257)).await);
    assert_eq!(status, Code::InvalidArgument);
    assert!(message.contains("256"), "{message}");
    // Too large a payload.
    let big = Bytes::from(vec![0u8; wire::MAX_PAYLOAD + 1]);
    let err = outcome(node.call_with(ECHO, "", 0, big))
        .await
        .expect_err("too large");
    assert_eq!(err.code, ErrorCode::ResourceExhausted, "{err:?}");
    // Nobody provides it; with the DHT off only this node is asked.
    let (status, message) = code(node.find("nobody/1").await);
    assert_eq!(status, Code::NotFound);
    assert!(message.contains("DHT is off"), "{message}");
    let (status, message) = code(outcome(node.call("nobody/1", "", 0, b"")).await);
    assert_eq!(status, Code::NotFound, "{message}");
    let (status, _) = code(
        tokio::time::timeout(T, node.open_service("nobody/1", ""))
            .await
            .expect("in time")
            .expect("join"),
    );
    assert_eq!(status, Code::NotFound);
}

#[actix_rt::test]
async fn a_provider_session_ending_ends_its_services_and_calls() {
    let node = Node::boot().await;
    let mut session = node.session("provider").await;
    node.register("provider", ECHO).await.expect("registered");
    let call = node.call(ECHO, "", 0, b"pending");
    let _incoming = next_call(&mut session).await;
    drop(session);
    let (status, message) = code(outcome(call).await);
    assert_eq!(status, Code::Unavailable, "{message}");
    assert!(message.contains("the provider went away"), "{message}");
    wait_for("the registration to end", T, || async {
        node.list().await.is_empty().then_some(())
    })
    .await;
    let (status, message) = code(outcome(node.call(ECHO, "", 0, b"x")).await);
    assert_eq!(status, Code::NotFound, "{message}");
    // The name is free again.
    let _session = node.session("other").await;
    node.register("other", ECHO).await.expect("free again");
}

#[actix_rt::test]
async fn a_service_channel_to_a_local_provider() {
    let node = Node::boot().await;
    let mut session = node.session("provider").await;
    node.register("provider", ECHO).await.expect("registered");
    let opening = node.open_service(ECHO, "");
    let incoming = next_channel(&mut session).await;
    assert_eq!(
        (
            incoming.app_id.as_str(),
            incoming.service.as_str(),
            incoming.from_app.as_str()
        ),
        ("provider", ECHO, "client")
    );
    assert_eq!(incoming.peer_id, node.peer_id());
    let accepted = channel(node.accept_channel("provider", incoming.channel_id).await);
    let opened = opening.await.expect("join").expect("opened");
    assert_eq!(opened.app_id, "provider");
    assert!(!opened.inbound && accepted.inbound);
    let (mut a, mut b) = (framed(opened), framed(accepted));
    carries(&mut a, &mut b, b"request").await;
    carries(&mut b, &mut a, b"response").await;
}

#[actix_rt::test]
async fn a_remote_provider_is_found_through_the_dht_called_and_replaced() {
    let (a, b, c) = (Node::boot().await, Node::boot().await, Node::boot().await);
    let (b_ticket, _) = b.ticket().await;
    a.dial(&b_ticket).await.expect("A dials B");
    c.dial(&b_ticket).await.expect("C dials B");
    for node in [&a, &c] {
        wait_for("a routing table with B", T, || async {
            (node.routing_table_size().await >= 1).then_some(())
        })
        .await;
    }
    // A provides the service; C knows only B, and finds A through the DHT.
    let mut provider_a = a.session("provider").await;
    a.register("provider", ECHO).await.expect("registered on A");
    let found = wait_for("C to find A's service", T, || async {
        c.find(ECHO).await.ok()
    })
    .await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].peer_id, a.peer_id());
    assert!(!found[0].local);

    // A call by name, answered on A.
    let call = c.call(ECHO, "", 0, b"over the network");
    let incoming = next_call(&mut provider_a).await;
    assert_eq!(incoming.from_peer, c.peer_id());
    assert_eq!(incoming.from_app, "client");
    let answer = reply_request::Result::Payload(Bytes::from_static(b"back"));
    a.reply("provider", incoming.call_id, answer)
        .await
        .expect("reply");
    let reply = outcome(call).await.expect("answered");
    assert_eq!(
        (
            &reply.payload[..],
            reply.peer_id.as_str(),
            reply.provider_app.as_str()
        ),
        (&b"back"[..], a.peer_id().as_str(), "provider")
    );

    // The provider's error code crosses the network; so does a deadline.
    let call = c.call(ECHO, &a.peer_id(), 0, b"bad");
    let incoming = next_call(&mut provider_a).await;
    let refusal = reply_request::Result::Error(ReplyError {
        code: 3,
        message: "malformed".into(),
    });
    a.reply("provider", incoming.call_id, refusal)
        .await
        .expect("reply");
    assert_eq!(
        code(outcome(call).await),
        (Code::InvalidArgument, "malformed".to_owned())
    );
    let started = Instant::now();
    let call = c.call(ECHO, "", 400, b"never answered");
    let _ignored = next_call(&mut provider_a).await;
    let (status, message) = code(outcome(call).await);
    assert_eq!(status, Code::DeadlineExceeded, "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A channel to the service: announced on A's session, accepted as any channel.
    let opening = c.open_service(ECHO, "");
    let incoming = next_channel(&mut provider_a).await;
    assert_eq!(
        (incoming.service.as_str(), incoming.from_app.as_str()),
        (ECHO, "client")
    );
    assert_eq!(incoming.peer_id, c.peer_id());
    let accepted = channel(a.accept_channel("provider", incoming.channel_id).await);
    let opened = opening.await.expect("join").expect("opened");
    assert_eq!(opened.app_id, "provider");
    assert_eq!(opened.peer_id, a.peer_id());
    let (mut to_a, mut at_a) = (framed(opened), framed(accepted));
    carries(&mut to_a, &mut at_a, b"request").await;
    carries(&mut at_a, &mut to_a, b"response").await;

    // B provides it too; A's provider goes away: calls by name reach B.
    let mut provider_b = b.session("provider").await;
    b.register("provider", ECHO).await.expect("registered on B");
    wait_for("C to find both providers", T, || async {
        c.find(ECHO).await.ok().filter(|found| found.len() == 2)
    })
    .await;
    drop(provider_a);
    wait_for("A's registration to end", T, || async {
        a.list().await.is_empty().then_some(())
    })
    .await;
    for _ in 0..2 {
        let call = c.call(ECHO, "", 0, b"who?");
        echo_one(&b, "provider", &mut provider_b).await;
        let reply = outcome(call).await.expect("answered by B");
        assert_eq!(reply.peer_id, b.peer_id());
        assert_eq!(&reply.payload[..], b"echo: who?");
    }
    // A named provider that no longer provides it: NOT_FOUND.
    let (status, message) = code(outcome(c.call(ECHO, &a.peer_id(), 0, b"x")).await);
    assert_eq!(status, Code::NotFound, "{message}");
}

#[actix_rt::test]
async fn exposed_tcp_services_are_services_too() {
    let (a, c) = (Node::boot().await, Node::boot().await);
    // A TCP echo server on A's computer, exposed as `web/1`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let expose = ExposeRequest {
        target,
        service: "web".into(),
    };
    match a
        .forwarding(|reply| Forwarding::Expose {
            request: expose,
            reply,
        })
        .await
    {
        Ok(exposure) => assert_eq!(exposure.service, "web/1"),
        other => panic!("expose: {other:?}"),
    }
    let listed = a.list().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].service.as_str(), listed[0].app_id.as_str()),
        ("web/1", "_node:forward")
    );

    // Exposures and registrations never share a name, either way.
    let _session = a.session("app").await;
    let (status, message) = code(a.register("app", "web/1").await);
    assert_eq!(status, Code::AlreadyExists, "{message}");
    a.register("app", "api/1").await.expect("another name");
    let expose = ExposeRequest {
        target: "127.0.0.1:9".into(),
        service: "api/1".into(),
    };
    let (status, message) = code(
        a.forwarding(|reply| Forwarding::Expose {
            request: expose,
            reply,
        })
        .await,
    );
    assert_eq!(status, Code::AlreadyExists, "{message}");

    // A channel to it from this node, and from another node that finds it by name.
    let mut here = framed(
        tokio::time::timeout(T, a.open_service("web/1", ""))
            .await
            .expect("in time")
            .expect("join")
            .expect("opened here"),
    );
    echoes(&mut here, b"from this node").await;
    let (a_ticket, _) = a.ticket().await;
    c.dial(&a_ticket).await.expect("C dials A");
    wait_for("C to find the exposure", T, || async {
        c.find("web/1").await.ok()
    })
    .await;
    let opened = tokio::time::timeout(T, c.open_service("web/1", ""))
        .await
        .expect("in time")
        .expect("join")
        .expect("opened from C");
    assert_eq!(
        (opened.app_id.as_str(), opened.peer_id.as_str()),
        ("_node:forward", a.peer_id().as_str())
    );
    let mut there = framed(opened);
    echoes(&mut there, b"from another node").await;

    // Withdrawn: no longer a service here.
    let withdraw = WithdrawRequest {
        service: "web/1".into(),
    };
    a.forwarding(|reply| Forwarding::Withdraw {
        request: withdraw,
        reply,
    })
    .await
    .expect("withdrawn");
    assert!(a.list().await.iter().all(|s| s.service != "web/1"));
    let (status, _) = code(
        tokio::time::timeout(T, c.open_service("web/1", &a.peer_id()))
            .await
            .expect("in time")
            .expect("join"),
    );
    assert_eq!(status, Code::NotFound);
}

#[actix_rt::test]
async fn exposures_are_provided_again_after_the_overlay_restarts() {
    let node = Node::boot().await;
    let expose = ExposeRequest {
        target: "127.0.0.1:9".into(),
        service: "web".into(),
    };
    let provided = |list: Vec<p2pos_proto::service::v1::ServiceInfo>| {
        list.iter()
            .any(|s| s.service == "web/1" && s.app_id == "_node:forward")
    };
    // Port forwarding opens its session with the registry on its own, a moment after start.
    wait_for("port forwarding to take exposures", T, || async {
        let expose = expose.clone();
        node.forwarding(|reply| Forwarding::Expose {
            request: expose,
            reply,
        })
        .await
        .ok()
    })
    .await;
    assert!(provided(node.list().await), "exposed, as a registration");

    // The overlay restarts: its registrations are gone with it, and port forwarding, an
    // ordinary client, opens a new session and provides its exposures again.
    node.ctx
        .kernel
        .inject_panic("overlay")
        .await
        .expect("inject");
    wait_for("the exposure provided again", T, || async {
        let list = node
            .services(|reply| p2pos_protocols::services::Request::List { reply })
            .await
            .ok()?;
        let restarted = node
            .ctx
            .states
            .borrow()
            .iter()
            .any(|s| s.name == "overlay" && s.restarts == 1);
        (restarted && provided(list.services)).then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn a_node_takes_as_many_exposures_as_port_forwarding_allows() {
    let node = Node::boot().await;
    let expose = |i: usize| {
        let request = ExposeRequest {
            target: "127.0.0.1:9".into(),
            service: format!("port{i}"),
        };
        node.forwarding(|reply| Forwarding::Expose { request, reply })
    };
    // Port forwarding opens its session with the registry a moment after start.
    wait_for("port forwarding to take exposures", T, || async {
        expose(0).await.ok()
    })
    .await;
    // Each exposure is a registration of `_node:forward`: more than an app may have.
    let limit = p2pos_protocols::forwarding::MAX_EXPOSURES;
    for i in 1..limit {
        if let Err(e) = expose(i).await {
            panic!("exposure {i} of {limit}: {e}");
        }
    }
    let listed = node.list().await;
    assert_eq!(listed.len(), limit, "every exposure is provided");
    let (status, message) = code(expose(limit).await);
    assert_eq!(status, Code::ResourceExhausted, "{message}");
    assert!(message.contains("exposures"), "{message}");
}

#[actix_rt::test]
async fn a_channel_to_port_forwarding_itself_is_closed_at_once() {
    let (a, c) = (Node::boot().await, Node::boot().await);
    let (a_ticket, _) = a.ticket().await;
    c.dial(&a_ticket).await.expect("C dials A");
    // Port forwarding takes channels to its exposures only; one to the app itself would
    // otherwise hold one of A's channels until it expired (30 s).
    let opened = wait_for("port forwarding's session on A", T, || async {
        c.open_channel("_node:forward", &a_ticket).await.ok()
    });
    let channel = tokio::time::timeout(Duration::from_secs(10), opened)
        .await
        .expect("answered well before a channel expires");
    let mut io = framed(channel);
    let end = tokio::time::timeout(T, futures::StreamExt::next(&mut io))
        .await
        .expect("in time");
    assert!(end.is_none(), "closed, not served: {end:?}");
}

#[actix_rt::test]
async fn a_registration_racing_its_apps_last_session_never_outlives_it() {
    let node = Node::boot().await;
    // The registry is an actor of its own: it learns of sessions from the sessions part. A
    // `Register` sent as the app's last session ends either is refused or is undone.
    let mut taken = 0;
    for i in 0..50 {
        let session = node.session("racer").await;
        if i % 2 == 0 {
            // Taken, then the session ends at once: the registration goes with it.
            taken += usize::from(node.register("racer", ECHO).await.is_ok());
            drop(session);
        } else {
            // On its way to the registry as the session ends: refused.
            let (registered, ()) = futures::join!(node.register("racer", ECHO), async {
                drop(session);
            });
            assert!(
                registered.is_err(),
                "taken for an app whose session had ended"
            );
        }
        let _ = node.register("racer", ECHO).await;
    }
    assert_eq!(
        taken, 25,
        "every registration made with a live session was taken"
    );
    wait_for("no registration of an app without a session", T, || async {
        node.list().await.is_empty().then_some(())
    })
    .await;
    let (status, message) = code(node.register("racer", ECHO).await);
    assert_eq!(status, Code::FailedPrecondition, "{message}");
}
