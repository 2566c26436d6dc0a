//! `p2pos.service.v1.Services` through the gateway: a real kernel (temporary data directory)
//! running the gateway and a stand-in services service that echoes what it was asked (and
//! echoes channel frames back), driven over the gateway's unix socket with the client SDK.

mod common;

use std::time::{Duration, Instant};

use actix::prelude::*;
use common::{Node, T, eventually};
use futures::{SinkExt, StreamExt};
use p2pos_kernel::Protocol;
use p2pos_kernel::{Call, DeathGuard, ErrorCode, InjectPanic, ServiceError, StopService};
use p2pos_proto::{
    app::v1::{ChannelOutput, channel_output},
    service::v1::{
        CallReply, CallRequest, CloseForwardRequest, ExposeRequest, Exposure, FindServiceReply,
        FindServiceRequest, Forward, ListExposuresReply, ListExposuresRequest, ListForwardsReply,
        ListForwardsRequest, ListServicesReply, ListServicesRequest, OpenForwardRequest,
        OpenServiceChannel, RegisterRequest, ReplyError, ReplyRequest, ServiceChannelInput,
        ServiceInfo, UnregisterRequest, WithdrawRequest, reply_request, service_channel_input,
    },
};
use p2pos_protocols::{
    Forwarding, Services, Tasks, answer,
    apps::ChannelStream,
    forwarding::Request as ForwardingCall,
    services::{OutgoingCall, Request as ServicesCall},
    tasks::Request as TasksCall,
    wire::{MAX_CHANNEL_FRAME, MAX_PAYLOAD, codec},
};
use tokio_util::codec::Framed;
use tonic::{Code, Status};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Stands in for the services service: answers each request with what it was asked. A call
/// answers with its payload, its app id as `provider_app` and the deadline it was given (ms
/// left, or `none`) as `peer_id`; a call to `fail/1` fails as a provider would, with
/// `INVALID_ARGUMENT`. A channel echoes every frame back until the opener half-closes.
struct FakeServices {
    _guard: DeathGuard,
}

impl Actor for FakeServices {
    type Context = Context<Self>;
}

impl Handler<StopService> for FakeServices {
    type Result = ();
    fn handle(&mut self, _: StopService, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<InjectPanic> for FakeServices {
    type Result = ();
    fn handle(&mut self, _: InjectPanic, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Call<Services>> for FakeServices {
    type Result = ();

    fn handle(&mut self, Call(request): Call<Services>, _: &mut Self::Context) {
        match request {
            // A provider that never answers: the call ends at the deadline it was given.
            ServicesCall::Call {
                call: OutgoingCall {
                    service, deadline, ..
                },
                reply,
            } if service.as_str() == "slow/1" => {
                tokio::spawn(async move {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                    answer(
                        reply,
                        Err::<CallReply, _>(ServiceError::new(
                            ErrorCode::DeadlineExceeded,
                            "the provider did not answer in time",
                        )),
                    );
                });
            }
            request => echo(request),
        }
    }
}

/// A successful answer.
fn done<T>(value: T) -> Result<T, ServiceError> {
    Ok(value)
}

/// Answers `request` with what it asked.
fn echo(request: ServicesCall) {
    match request {
        ServicesCall::Register {
            app_id,
            service,
            description,
            certificates: _,
            reply,
        } => answer(
            reply,
            done(ServiceInfo {
                service: service.into_string(),
                app_id: app_id.into_string(),
                description,
                local: true,
                ..ServiceInfo::default()
            }),
        ),
        ServicesCall::Unregister { reply, .. } => answer(reply, done(())),
        ServicesCall::List { reply } => answer(reply, done(ListServicesReply::default())),
        ServicesCall::Find {
            service,
            limit,
            reply,
            ..
        } => answer(
            reply,
            done(FindServiceReply {
                providers: vec![ServiceInfo {
                    service: service.into_string(),
                    rtt_us: limit,
                    ..ServiceInfo::default()
                }],
            }),
        ),
        ServicesCall::Call {
            call:
                OutgoingCall {
                    app_id,
                    service,
                    payload,
                    deadline,
                    ..
                },
            reply,
        } => {
            if service.as_str() == "fail/1" {
                return answer(
                    reply,
                    Err::<CallReply, _>(ServiceError::new(ErrorCode::Passed(3), "no such word")),
                );
            }
            let left = deadline.map_or_else(
                || "none".to_owned(),
                |at| {
                    at.saturating_duration_since(Instant::now())
                        .as_millis()
                        .to_string()
                },
            );
            answer(
                reply,
                done(CallReply {
                    payload,
                    peer_id: left,
                    provider_app: app_id.into_string(),
                }),
            );
        }
        ServicesCall::Reply {
            request: ReplyRequest { app_id, .. },
            reply,
        } => {
            if app_id == "chat" {
                answer(reply, done(()));
            } else {
                answer(
                    reply,
                    Err::<(), _>(ServiceError::not_found(format!("no call for {app_id}"))),
                );
            }
        }
        ServicesCall::OpenChannel {
            app_id,
            service,
            reply,
            ..
        } => {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let mut frames = Framed::new(theirs, codec(MAX_CHANNEL_FRAME));
                while let Some(Ok(frame)) = frames.next().await {
                    if frames.send(frame.freeze()).await.is_err() {
                        return;
                    }
                }
                let _ = SinkExt::<bytes::Bytes>::close(&mut frames).await;
            });
            answer(
                reply,
                done(ChannelStream {
                    channel_id: 7,
                    peer_id: service.into_string(),
                    app_id: app_id.into_string(),
                    inbound: false,
                    io: Box::new(ours),
                    group: String::new(),
                    circuit: None,
                }),
            );
        }
    }
}

impl Handler<Call<Forwarding>> for FakeServices {
    type Result = ();

    fn handle(&mut self, Call(request): Call<Forwarding>, _: &mut Self::Context) {
        match request {
            ForwardingCall::Expose {
                request: ExposeRequest { target, service },
                reply,
            } => answer(
                reply,
                done(Exposure {
                    service,
                    target,
                    ..Exposure::default()
                }),
            ),
            ForwardingCall::Withdraw { reply, .. } => answer(reply, done(())),
            ForwardingCall::ListExposures { reply } => {
                answer(reply, done(ListExposuresReply::default()));
            }
            ForwardingCall::OpenForward {
                request:
                    OpenForwardRequest {
                        service,
                        peer,
                        listen,
                        peers: _,
                        publisher_keys: _,
                        group: _,
                    },
                reply,
            } => answer(
                reply,
                done(Forward {
                    forward_id: 1,
                    service,
                    peer,
                    listen,
                    ..Forward::default()
                }),
            ),
            ForwardingCall::CloseForward { reply, .. } => answer(reply, done(())),
            ForwardingCall::ListForwards { reply } => {
                answer(reply, done(ListForwardsReply::default()))
            }
        }
    }
}

/// Boots a kernel with the fake services service (named `overlay`, as the real one) and the
/// gateway.
/// Task control's part: one helper exists, `chat:voice`.
impl Handler<Call<Tasks>> for FakeServices {
    type Result = ();

    fn handle(&mut self, Call(request): Call<Tasks>, _: &mut Self::Context) {
        match request {
            TasksCall::HelperExists { app_id, reply } => {
                answer::<_, ServiceError>(reply, Ok(app_id == "chat:voice"));
            }
            other => panic!("not asked in these tests: {other:?}"),
        }
    }
}

async fn boot() -> Node {
    const PROVIDES: &[&str] = &[Services::NAME, Forwarding::NAME, Tasks::NAME];
    Node::boot_routes(
        "overlay",
        PROVIDES,
        |guard| FakeServices { _guard: guard },
        |registry, addr: Addr<FakeServices>| {
            registry.register::<Services>(addr.clone().recipient())?;
            registry.register::<Forwarding>(addr.clone().recipient())?;
            registry.register::<Tasks>(addr.recipient())
        },
    )
    .await
}

fn code<T: std::fmt::Debug>(result: Result<T, Status>) -> Code {
    result.expect_err("refused").code()
}

fn register(app_id: &str, service: &str) -> RegisterRequest {
    RegisterRequest {
        app_id: app_id.into(),
        service: service.into(),
        description: "a test".into(),
        certificates: Vec::new(),
    }
}

fn call(app_id: &str, service: &str, payload: &[u8]) -> CallRequest {
    CallRequest {
        app_id: app_id.into(),
        service: service.into(),
        payload: payload.to_vec().into(),
        ..CallRequest::default()
    }
}

#[actix_rt::test]
async fn calls_act_for_an_app_the_caller_covers() {
    let node = boot().await;
    let (chat, admin) = node.chat_and_admin().await;

    // An app acts for itself (an empty app id) or its helpers; the admin names the app.
    let info = chat
        .services()
        .register(register("", "translate/1"))
        .await
        .expect("register")
        .into_inner();
    assert_eq!(
        (info.app_id.as_str(), info.service.as_str()),
        ("chat", "translate/1")
    );
    let info = chat
        .services()
        .register(register("chat:voice", "voice/2"))
        .await
        .expect("for a helper")
        .into_inner();
    assert_eq!(info.app_id, "chat:voice");
    let info = admin
        .services()
        .register(register("mail", "translate/1"))
        .await
        .expect("admin")
        .into_inner();
    assert_eq!(info.app_id, "mail");
    let err = admin
        .services()
        .register(register("", "translate/1"))
        .await
        .expect_err("the admin has no app");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("app_id is required"), "{err:?}");
    let reply = admin
        .services()
        .call(call("p2pctl", "translate/1", b"hello"))
        .await
        .expect("admin call")
        .into_inner();
    assert_eq!(reply.provider_app, "p2pctl");
    let reply = chat
        .services()
        .call(call("", "translate/1", b"hello"))
        .await
        .expect("app call")
        .into_inner();
    assert_eq!(
        (reply.provider_app.as_str(), &reply.payload[..]),
        ("chat", &b"hello"[..])
    );
    chat.services()
        .unregister(UnregisterRequest {
            app_id: String::new(),
            service: "translate/1".into(),
        })
        .await
        .expect("unregister");

    // Another app is out of reach.
    assert_eq!(
        code(chat.services().register(register("mail", "x/1")).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(chat.services().call(call("mail", "x/1", b"")).await),
        Code::PermissionDenied
    );
    let reply = |app_id: &str| ReplyRequest {
        app_id: app_id.into(),
        call_id: 1,
        result: Some(reply_request::Result::Error(ReplyError {
            code: 5,
            message: "nope".into(),
        })),
    };
    chat.services().reply(reply("")).await.expect("reply");
    assert_eq!(
        code(chat.services().reply(reply("mail")).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(admin.services().reply(reply("mail")).await),
        Code::NotFound,
        "the service's own answer"
    );

    // Listing and finding are open to every scope.
    chat.services()
        .list_services(ListServicesRequest {})
        .await
        .expect("list");
    let found = chat
        .services()
        .find_service(FindServiceRequest {
            service: "translate/1".into(),
            limit: 3,
            ..FindServiceRequest::default()
        })
        .await
        .expect("find")
        .into_inner();
    assert_eq!(found.providers[0].rtt_us, 3, "the limit is passed on");
}

#[actix_rt::test]
async fn port_forwarding_is_the_admins() {
    let node = boot().await;
    let (chat, admin) = node.chat_and_admin().await;
    let expose = ExposeRequest {
        target: "127.0.0.1:8080".into(),
        service: "web".into(),
    };
    let open = OpenForwardRequest {
        service: "web/2".into(),
        peer: String::new(),
        listen: "127.0.0.1:0".into(),
        ..OpenForwardRequest::default()
    };
    let mut services = chat.services();
    for denied in [
        services.expose(expose.clone()).await.err(),
        services
            .withdraw(WithdrawRequest {
                service: "web".into(),
            })
            .await
            .err(),
        services.list_exposures(ListExposuresRequest {}).await.err(),
        services.open_forward(open.clone()).await.err(),
        services
            .close_forward(CloseForwardRequest { forward_id: 1 })
            .await
            .err(),
        services.list_forwards(ListForwardsRequest {}).await.err(),
    ] {
        assert_eq!(denied.expect("denied").code(), Code::PermissionDenied);
    }

    let mut services = admin.services();
    let exposure = services.expose(expose).await.expect("expose").into_inner();
    assert_eq!(
        (exposure.service.as_str(), exposure.target.as_str()),
        ("web", "127.0.0.1:8080")
    );
    let forward = services
        .open_forward(open)
        .await
        .expect("forward")
        .into_inner();
    assert_eq!(forward.service, "web/2");
    services
        .withdraw(WithdrawRequest {
            service: "web".into(),
        })
        .await
        .expect("withdraw");
    services
        .list_exposures(ListExposuresRequest {})
        .await
        .expect("exposures");
    services
        .list_forwards(ListForwardsRequest {})
        .await
        .expect("forwards");
    services
        .close_forward(CloseForwardRequest { forward_id: 1 })
        .await
        .expect("close");
}

#[actix_rt::test]
async fn oversized_payloads_are_refused_and_provider_errors_pass() {
    let node = boot().await;
    let (chat, _admin) = node.chat_and_admin().await;
    let mut services = chat.services();
    let big = vec![0u8; MAX_PAYLOAD + 1];
    assert_eq!(
        code(services.call(call("", "translate/1", &big)).await),
        Code::ResourceExhausted
    );
    let big_reply = ReplyRequest {
        app_id: String::new(),
        call_id: 1,
        result: Some(reply_request::Result::Payload(big.into())),
    };
    assert_eq!(
        code(services.reply(big_reply).await),
        Code::ResourceExhausted
    );
    // A provider's refusal comes through as its own code.
    let err = services
        .call(call("", "fail/1", b"x"))
        .await
        .expect_err("the provider says no");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "no such word");
}

#[actix_rt::test]
async fn calls_carry_the_callers_grpc_deadline() {
    let node = boot().await;
    let (chat, _admin) = node.chat_and_admin().await;
    let reply = chat
        .services()
        .call(call("", "translate/1", b"x"))
        .await
        .expect("no deadline")
        .into_inner();
    assert_eq!(reply.peer_id, "none");

    let mut request = tonic::Request::new(call("", "translate/1", b"x"));
    request.set_timeout(Duration::from_secs(20));
    let reply = chat
        .services()
        .call(request)
        .await
        .expect("with a deadline")
        .into_inner();
    let left: u64 = reply.peer_id.parse().expect("ms left");
    assert!((1..=20_000).contains(&left), "{left} ms left of 20 s");
    assert!(
        left > 10_000,
        "the deadline is the caller's, not a default: {left}"
    );

    // A provider that does not answer in time: the caller's deadline passes.
    let mut slow = tonic::Request::new(call("", "slow/1", b"x"));
    slow.set_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let err = chat.services().call(slow).await.expect_err("too slow");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn data(bytes: &[u8]) -> ServiceChannelInput {
    ServiceChannelInput {
        kind: Some(service_channel_input::Kind::Data(bytes.to_vec().into())),
    }
}

fn open(app_id: &str) -> ServiceChannelInput {
    ServiceChannelInput {
        kind: Some(service_channel_input::Kind::Open(OpenServiceChannel {
            app_id: app_id.into(),
            service: "echo/1".into(),
            peer: String::new(),
            batch: false,
            half_close: false,
            group: String::new(),
            transport: 0,
            peers: Vec::new(),
            publisher_keys: Vec::new(),
        })),
    }
}

#[actix_rt::test]
async fn a_service_channel_is_spliced_like_an_app_channel() {
    let node = boot().await;
    let (chat, admin) = node.chat_and_admin().await;

    // opened, then every frame echoed back in order (an empty one too), then the end once the
    // input has ended.
    let input = futures::stream::iter(vec![
        open(""),
        data(b"hello"),
        data(b""),
        data(&vec![7u8; MAX_PAYLOAD]),
    ]);
    let mut output = chat
        .services()
        .channel(input)
        .await
        .expect("channel")
        .into_inner();
    let mut outputs = Vec::new();
    while let Some(out) = tokio::time::timeout(T, output.message())
        .await
        .expect("in time")
        .expect("no error")
    {
        outputs.push(out);
    }
    let Some(ChannelOutput {
        kind: Some(channel_output::Kind::Opened(opened)),
    }) = outputs.first()
    else {
        panic!("first output is opened: {outputs:?}");
    };
    assert_eq!(
        (opened.channel_id, opened.app_id.as_str()),
        (7, "chat"),
        "the caller's own app"
    );
    let echoed: Vec<Vec<u8>> = outputs[1..]
        .iter()
        .map(|out| match &out.kind {
            Some(channel_output::Kind::Data(data)) => data.to_vec(),
            other => panic!("data expected, got {other:?}"),
        })
        .collect();
    assert_eq!(
        echoed,
        [b"hello".to_vec(), Vec::new(), vec![7u8; MAX_PAYLOAD]]
    );

    // The first frame must be `open` (for an app the caller covers); `open` comes only first.
    let err = chat
        .services()
        .channel(futures::stream::iter(vec![data(b"x")]))
        .await
        .expect_err("data first");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        code(
            admin
                .services()
                .channel(futures::stream::iter(vec![open("")]))
                .await
        ),
        Code::InvalidArgument,
        "the admin names its app"
    );
    assert_eq!(
        code(
            chat.services()
                .channel(futures::stream::iter(vec![open("mail")]))
                .await
        ),
        Code::PermissionDenied
    );
    let mut output = chat
        .services()
        .channel(futures::stream::iter(vec![
            open("chat"),
            data(b"a"),
            open("chat"),
        ]))
        .await
        .expect("opened")
        .into_inner();
    let mut end = None;
    while end.is_none() {
        match tokio::time::timeout(T, output.message())
            .await
            .expect("in time")
        {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the channel must fail, not end"),
            Err(status) => end = Some(status),
        }
    }
    assert_eq!(end.expect("status").code(), Code::InvalidArgument);
}

#[actix_rt::test]
async fn health_knows_the_services_service() {
    let node = boot().await;
    let admin = node.client(None).await;
    let health = HealthClient::new(admin.channel());
    eventually("p2pos.service.v1.Services to be SERVING", || {
        let mut health = health.clone();
        async move {
            let reply = health
                .check(HealthCheckRequest {
                    service: "p2pos.service.v1.Services".into(),
                })
                .await
                .ok()?
                .into_inner();
            (reply.status() == ServingStatus::Serving).then_some(())
        }
    })
    .await;
}
