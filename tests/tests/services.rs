//! Services: apps on one node provide named services that apps on other nodes find through
//! the DHT and use by unary calls and channels; providers that go away, deadlines, provider
//! errors and bad names. Real daemons on loopback, providers and clients over gRPC.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use p2pos_client::Client;
use p2pos_proto::{
    app::v1::{AcceptChannel, channel_output},
    service::v1::{
        CallRequest, FindServiceRequest, ListServicesRequest, OpenServiceChannel, RegisterRequest,
        ServiceChannelInput, service_channel_input,
    },
};
use p2pos_tests::{Node, full_mesh, p2pctl, provide, star, wait_for};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;

const T: Duration = Duration::from_secs(30);
const UPPER: &str = "upper/1";

/// A provider of `upper/1` as app `app` on `client`'s node: answers calls with the payload in
/// upper case, `fail` with FAILED_PRECONDITION, never answers `slow`; upper-cases every frame
/// of channels opened to it. Runs until aborted (its session then ends).
async fn provide_upper(client: Client, app: &str) -> JoinHandle<()> {
    let (channels, app_id) = (client.clone(), app.to_owned());
    provide(
        client,
        app,
        UPPER,
        "upper-cases text",
        |payload| match payload.as_ref() {
            b"slow" => None,
            b"fail" => Some(Err((
                tonic::Code::FailedPrecondition,
                "cannot upper-case that".into(),
            ))),
            text => Some(Ok(Bytes::from(text.to_ascii_uppercase()))),
        },
        move |incoming| {
            assert_eq!(incoming.service, UPPER);
            tokio::spawn(upper_channel(
                channels.clone(),
                app_id.clone(),
                incoming.channel_id,
            ));
        },
    )
    .await
}

/// Upper-cases every frame of an announced channel, through the SDK's batching channel (the
/// opener below uses plain `data` frames: the two ends choose independently).
async fn upper_channel(client: Client, app_id: String, channel_id: u64) {
    let accept = AcceptChannel {
        channel_id,
        app_id,
        batch: true,
        half_close: false,
        transport: 0,
    };
    let Ok(mut channel) = client.accept_channel(accept).await else {
        return;
    };
    while let Ok(Some(frame)) = channel.receiver.message().await {
        let upper = Bytes::from(frame.to_ascii_uppercase());
        if channel.sender.send(upper).await.is_err() {
            return;
        }
    }
}

fn call(payload: &str) -> CallRequest {
    CallRequest {
        app_id: "caller".into(),
        service: UPPER.into(),
        payload: Bytes::from(payload.to_owned()),
        peer: String::new(),
        timeout_ms: 0,
        ..CallRequest::default()
    }
}

/// Calls until one succeeds (the provider is being found), then returns its answer.
async fn first_answer(client: &Client, payload: &str) -> p2pos_proto::service::v1::CallReply {
    wait_for("a provider to answer", T, || {
        let client = client.clone();
        async move {
            client
                .services()
                .call(call(payload))
                .await
                .ok()
                .map(tonic::Response::into_inner)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_found_by_name_answers_calls_and_channels() {
    let (_nodes, clients, ids) = star(2).await;
    let (a, b) = (&clients[0], &clients[1]);
    let provider = provide_upper(b.clone(), "upper-app").await;

    // A knows only the name: the DHT tells it who provides it.
    let found = wait_for("the provider in the DHT", T, || async move {
        let reply = a
            .services()
            .find_service(FindServiceRequest {
                service: UPPER.into(),
                limit: 0,
                ..FindServiceRequest::default()
            })
            .await
            .ok()?
            .into_inner();
        (!reply.providers.is_empty()).then_some(reply)
    })
    .await;
    assert_eq!(found.providers[0].peer_id, ids[1]);
    assert!(!found.providers[0].local);

    let answer = first_answer(a, "hello").await;
    assert_eq!(answer.payload, Bytes::from("HELLO"));
    assert_eq!(answer.peer_id, ids[1]);
    assert_eq!(answer.provider_app, "upper-app");

    // The provider's error, as the caller's status.
    let err = a.services().call(call("fail")).await.expect_err("fails");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("cannot upper-case that"), "{err:?}");

    // A deadline that passes: the gRPC one, and `timeout_ms`.
    let mut slow = tonic::Request::new(call("slow"));
    slow.set_timeout(Duration::from_millis(500));
    let err = a.services().call(slow).await.expect_err("too slow");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    let mut slow = call("slow");
    slow.timeout_ms = 300;
    let err = a.services().call(slow).await.expect_err("too slow");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");

    // A channel to the service.
    let (tx, rx) = mpsc::channel(8);
    tx.send(ServiceChannelInput {
        kind: Some(service_channel_input::Kind::Open(OpenServiceChannel {
            app_id: "caller".into(),
            service: UPPER.into(),
            peer: String::new(),
            batch: false,
            half_close: false,
            group: String::new(),
            transport: 0,
            peers: Vec::new(),
            publisher_keys: Vec::new(),
        })),
    })
    .await
    .expect("open");
    let mut output = a
        .services()
        .channel(ReceiverStream::new(rx))
        .await
        .expect("channel")
        .into_inner();
    let opened = output.next().await.expect("opened").expect("opened");
    let Some(channel_output::Kind::Opened(opened)) = opened.kind else {
        panic!("first output is `opened`: {opened:?}");
    };
    assert_eq!(opened.peer_id, ids[1]);
    for text in ["abc", "", "x y z"] {
        tx.send(ServiceChannelInput {
            kind: Some(service_channel_input::Kind::Data(Bytes::from(text))),
        })
        .await
        .expect("send");
        let frame = tokio::time::timeout(T, output.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("frame");
        assert_eq!(
            frame.kind,
            Some(channel_output::Kind::Data(Bytes::from(text.to_uppercase())))
        );
    }

    drop(tx);

    // The same through the SDK, in batches both ways: three frames fed, one flush.
    let open = OpenServiceChannel {
        app_id: "caller".into(),
        service: UPPER.into(),
        peer: String::new(),
        batch: true,
        half_close: false,
        group: String::new(),
        transport: 0,
        peers: Vec::new(),
        publisher_keys: Vec::new(),
    };
    let mut channel = a.open_service_channel(open).await.expect("opens");
    assert_eq!(channel.opened.peer_id, ids[1]);
    for text in ["abc", "", "x y z"] {
        channel.sender.feed(Bytes::from(text)).await.expect("feed");
    }
    channel.sender.flush().await.expect("flush");
    for text in ["ABC", "", "X Y Z"] {
        let frame = tokio::time::timeout(T, channel.receiver.message())
            .await
            .expect("in time")
            .expect("open")
            .expect("frame");
        assert_eq!(frame, text);
    }

    // The provider goes away: a clear UNAVAILABLE or NOT_FOUND, never a hang.
    provider.abort();
    let err = wait_for(
        "calls to fail once the provider is gone",
        T,
        || async move { a.services().call(call("hello")).await.err() },
    )
    .await;
    assert!(
        matches!(err.code(), tonic::Code::Unavailable | tonic::Code::NotFound),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_go_to_another_provider_when_one_stops_and_a_local_one_first() {
    let (_nodes, clients, ids) = star(3).await;
    let a = &clients[0];
    let on_b = provide_upper(clients[1].clone(), "upper-app").await;
    let on_c = provide_upper(clients[2].clone(), "upper-app").await;
    wait_for("both providers in the DHT", T, || async move {
        let reply = a
            .services()
            .find_service(FindServiceRequest {
                service: UPPER.into(),
                limit: 0,
                ..FindServiceRequest::default()
            })
            .await
            .ok()?
            .into_inner();
        (reply.providers.len() == 2).then_some(())
    })
    .await;
    let first = first_answer(a, "one").await;
    let (gone, other, gone_node) = if first.peer_id == ids[1] {
        on_b.abort();
        (&ids[1], &ids[2], &clients[1])
    } else {
        on_c.abort();
        (&ids[2], &ids[1], &clients[2])
    };
    // The provider has stopped once its node has ended its registration. (Until then a call
    // may still be announced to the session its app just dropped; no node can tell whether
    // the app saw it, so that call is UNAVAILABLE rather than sent to a second provider.)
    wait_for(
        "the stopped provider's node to end its registration",
        T,
        || async move {
            let list = gone_node
                .services()
                .list_services(ListServicesRequest {})
                .await
                .ok()?
                .into_inner();
            list.services.is_empty().then_some(())
        },
    )
    .await;
    // Every call after that is answered by the other one.
    for i in 0..5 {
        let reply = a
            .services()
            .call(call(&format!("call {i}")))
            .await
            .expect("another provider answers")
            .into_inner();
        assert_eq!(&reply.peer_id, other, "not {gone}");
        assert_eq!(reply.payload, Bytes::from(format!("CALL {i}")));
    }
    // Naming the provider that went away: a clear error.
    let mut to_gone = call("hello");
    to_gone.peer = gone.clone();
    let err = a.services().call(to_gone).await.expect_err("gone");
    assert!(
        matches!(err.code(), tonic::Code::Unavailable | tonic::Code::NotFound),
        "{err:?}"
    );

    // A provider on the caller's own node is preferred.
    let _local = provide_upper(a.clone(), "upper-app").await;
    let reply = first_answer(a, "near").await;
    assert_eq!(reply.peer_id, ids[0], "the local provider answers");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_service_names_and_missing_providers_are_clear_errors() {
    let mut node = Node::start(&[]);
    let client = node.client().await;
    for (name, what) in [
        ("", "empty"),
        ("noversion", "no version"),
        ("x/y", "version not a number"),
        (&format!("{}/1", "n".repeat(49)), "too long"),
    ] {
        let mut request = call("x");
        request.service = name.to_owned();
        let err = client.services().call(request).await.expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        let err = client
            .services()
            .register(RegisterRequest {
                app_id: "app".into(),
                service: name.to_owned(),
                description: String::new(),
                certificates: Vec::new(),
            })
            .await
            .expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
    }
    // Nobody provides it.
    let err = client
        .services()
        .call(call("x"))
        .await
        .expect_err("no provider");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    // Registering needs a live session.
    let err = client
        .services()
        .register(RegisterRequest {
            app_id: "nosession".into(),
            service: UPPER.into(),
            description: String::new(),
            certificates: Vec::new(),
        })
        .await
        .expect_err("no session");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    // An app token registers only for its own app.
    let app = node.app_client("mine").await;
    let err = app
        .services()
        .register(RegisterRequest {
            app_id: "theirs".into(),
            service: UPPER.into(),
            description: String::new(),
            certificates: Vec::new(),
        })
        .await
        .expect_err("not its app");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn find_and_call_restricted_to_a_group_reach_only_its_members() {
    let (mut nodes, ids) = full_mesh(3).await;
    let (b, c) = (ids[1].clone(), ids[2].clone());
    // A founds `friends` with B; C stays out. B and C both provide the service.
    let (ok, _, err) = p2pctl(&nodes[0], &["groups", "create", "friends"]);
    assert!(ok, "{err}");
    let (ok, invite, err) = p2pctl(&nodes[0], &["groups", "invite", "friends"]);
    assert!(ok, "{err}");
    let (ok, _, err) = p2pctl(&nodes[1], &["groups", "join", invite.trim()]);
    assert!(ok, "{err}");
    let _b = provide_upper(nodes[1].client().await, "upper-b").await;
    let _c = provide_upper(nodes[2].client().await, "upper-c").await;
    let a = nodes[0].client().await;
    let find = |group: &str| FindServiceRequest {
        service: UPPER.into(),
        group: group.into(),
        ..FindServiceRequest::default()
    };
    wait_for("A to find both providers", T, || {
        let a = a.clone();
        async move {
            let found = a.services().find_service(find("")).await.ok()?.into_inner();
            (found.providers.len() == 2).then_some(())
        }
    })
    .await;

    // Within the group only B is found, and only B answers.
    let found = a
        .services()
        .find_service(find("friends"))
        .await
        .expect("find in the group")
        .into_inner();
    let peers: Vec<&str> = found.providers.iter().map(|p| p.peer_id.as_str()).collect();
    assert_eq!(peers, [b.as_str()]);
    for i in 0..5 {
        let reply = a
            .services()
            .call(CallRequest {
                group: "friends".into(),
                ..call(&format!("line {i}"))
            })
            .await
            .expect("a call in the group")
            .into_inner();
        assert_eq!(reply.peer_id, b, "call {i}");
    }
    // A channel within the group opens to B too.
    for _ in 0..3 {
        let open = OpenServiceChannel {
            app_id: "caller".into(),
            service: UPPER.into(),
            group: "friends".into(),
            ..OpenServiceChannel::default()
        };
        let channel = a.open_service_channel(open).await.expect("opens");
        assert_eq!(channel.opened.peer_id, b);
    }
    // Naming a provider outside the group, or a group this node does not hold, is refused.
    let err = a
        .services()
        .call(CallRequest {
            group: "friends".into(),
            peer: c.clone(),
            ..call("hi")
        })
        .await
        .expect_err("C is no member");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let err = a
        .services()
        .find_service(find("nosuch"))
        .await
        .expect_err("no such group");
    assert!(err.message().contains("nosuch"), "{err:?}");
}
