//! The gateway in-process: a real kernel (temporary data directory) running the gateway and a
//! stand-in task-control service that echoes what it was asked (and knows one helper token),
//! driven over the gateway's unix
//! socket with the client SDK, as any app would.

mod common;

use actix::prelude::*;
use common::{Node, T, eventually};
use p2pos_kernel::{Call, DeathGuard, ErrorCode, InjectPanic, ServiceError, StopService};
use p2pos_proto::{
    node::v1::{CreateAppTokenRequest, GetInfoRequest},
    tasks::v1::{
        AddHelperRequest, HelperRef, HelperSpec, HelperStatus, ListHelpersReply,
        ListHelpersRequest, LogLine, LogStream, LogsRequest, RemoveHelperReply,
        SignalHelperRequest,
    },
};
use p2pos_protocols::{
    Tasks, answer,
    tasks::{HelperOp, Request as TasksCall},
};
use tokio::sync::mpsc;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

/// Stands in for the task-control service: answers every call with what it was asked (the
/// caller's app goes into `reason`), `Start` with `FAILED_PRECONDITION`, and `Logs` with three
/// lines.
struct FakeTasks {
    _guard: DeathGuard,
    /// Followed logs stay open while the service holds their senders.
    followers: Vec<mpsc::Sender<LogLine>>,
}

impl Actor for FakeTasks {
    type Context = Context<Self>;
}

impl Handler<StopService> for FakeTasks {
    type Result = ();
    fn handle(&mut self, _: StopService, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<InjectPanic> for FakeTasks {
    type Result = ();
    fn handle(&mut self, _: InjectPanic, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

fn echo(caller_app: &str, helper: HelperRef) -> HelperStatus {
    let HelperRef { app_id, name } = helper;
    HelperStatus {
        spec: Some(HelperSpec {
            name,
            app_id,
            ..HelperSpec::default()
        }),
        reason: format!("caller {caller_app:?}"),
        ..HelperStatus::default()
    }
}

impl Handler<Call<Tasks>> for FakeTasks {
    type Result = ();

    fn handle(&mut self, Call(request): Call<Tasks>, _: &mut Self::Context) {
        match request {
            // One helper runs: `chat:voice`, with this token.
            TasksCall::HelperToken { token, reply } => answer::<_, ServiceError>(
                reply,
                Ok((token == "helper-token").then(|| "chat:voice".to_owned())),
            ),
            // ... and it is the only helper there is.
            TasksCall::HelperExists { app_id, reply } => {
                answer::<_, ServiceError>(reply, Ok(app_id == "chat:voice"));
            }
            TasksCall::Add {
                caller_app,
                spec,
                reply,
            } => {
                let HelperSpec { name, app_id, .. } = spec;
                answer::<_, ServiceError>(reply, Ok(echo(&caller_app, HelperRef { app_id, name })));
            }
            TasksCall::Helper {
                caller_app,
                helper,
                op,
                reply,
            } => {
                let status = match op {
                    HelperOp::Get | HelperOp::Stop | HelperOp::Restart => {
                        Ok(echo(&caller_app, helper))
                    }
                    HelperOp::Signal(signal) => {
                        let mut status = echo(&caller_app, helper);
                        status.reason = signal;
                        Ok(status)
                    }
                    HelperOp::Start => Err(ServiceError::new(
                        ErrorCode::FailedPrecondition,
                        "the app has no live session",
                    )),
                };
                answer(reply, status);
            }
            TasksCall::List {
                caller_app,
                app_id,
                reply,
            } => answer::<_, ServiceError>(
                reply,
                Ok(ListHelpersReply {
                    helpers: vec![echo(
                        &caller_app,
                        HelperRef {
                            app_id,
                            name: "listed".into(),
                        },
                    )],
                }),
            ),
            TasksCall::Remove { reply, .. } => {
                answer::<_, ServiceError>(reply, Ok(RemoveHelperReply {}));
            }
            TasksCall::Logs {
                caller_app,
                request,
                reply,
            } => {
                let (tx, rx) = mpsc::channel(4);
                let name = request.helper.unwrap_or_default().name;
                for (seq, text) in [name, caller_app, "last".to_owned()]
                    .into_iter()
                    .enumerate()
                {
                    let line = LogLine {
                        seq: seq as u64 + 1,
                        at_ms: 1,
                        stream: LogStream::Stdout.into(),
                        text,
                    };
                    tx.try_send(line).expect("room");
                }
                if request.follow {
                    self.followers.push(tx);
                }
                answer::<_, ServiceError>(reply, Ok(rx));
            }
        }
    }
}

/// Boots a kernel with the fake task-control service and the gateway.
async fn boot() -> Node {
    Node::boot::<Tasks, _>("tasks", |guard| FakeTasks {
        _guard: guard,
        followers: Vec::new(),
    })
    .await
}

fn helper(app_id: &str, name: &str) -> HelperRef {
    HelperRef {
        app_id: app_id.into(),
        name: name.into(),
    }
}

#[actix_rt::test]
async fn tasks_calls_carry_the_callers_app() {
    let node = boot().await;
    let (chat, admin) = node.chat_and_admin().await;

    // The admin calls with an empty caller app; an app with its own id.
    let status = admin
        .tasks()
        .get_helper(helper("", "indexer"))
        .await
        .expect("admin get")
        .into_inner();
    assert_eq!(status.reason, "caller \"\"");
    let status = chat
        .tasks()
        .get_helper(helper("chat:voice", "codec"))
        .await
        .expect("app get")
        .into_inner();
    assert_eq!(status.reason, "caller \"chat\"");
    assert_eq!(status.spec.expect("spec").app_id, "chat:voice");
    let status = chat
        .tasks()
        .add_helper(AddHelperRequest {
            spec: Some(HelperSpec {
                name: "voice".into(),
                program: "voice".into(),
                ..HelperSpec::default()
            }),
        })
        .await
        .expect("add")
        .into_inner();
    assert_eq!(status.spec.expect("spec").name, "voice");
    let list = chat
        .tasks()
        .list_helpers(ListHelpersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.helpers.len(), 1);
    assert_eq!(list.helpers[0].reason, "caller \"chat\"");
    chat.tasks()
        .remove_helper(helper("", "voice"))
        .await
        .expect("remove");
    let status = chat
        .tasks()
        .signal_helper(SignalHelperRequest {
            helper: Some(helper("chat", "voice")),
            signal: "SIGHUP".into(),
        })
        .await
        .expect("signal")
        .into_inner();
    assert_eq!(status.reason, "SIGHUP");

    // Another app's helpers are out of reach, and the service's errors come through.
    for denied in [
        chat.tasks().get_helper(helper("mail", "x")).await.err(),
        chat.tasks()
            .list_helpers(ListHelpersRequest {
                app_id: "mail".into(),
            })
            .await
            .err(),
        chat.tasks()
            .add_helper(AddHelperRequest {
                spec: Some(HelperSpec {
                    name: "x".into(),
                    app_id: "chatty".into(),
                    ..HelperSpec::default()
                }),
            })
            .await
            .err(),
    ] {
        assert_eq!(denied.expect("denied").code(), Code::PermissionDenied);
    }
    let err = chat
        .tasks()
        .start_helper(helper("", "voice"))
        .await
        .expect_err("the service says no");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("live session"), "{err:?}");
    let err = admin
        .tasks()
        .signal_helper(SignalHelperRequest {
            helper: None,
            signal: "SIGHUP".into(),
        })
        .await
        .expect_err("no helper");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Logs: the kept lines, then the end of the stream (not following).
    let mut logs = chat
        .tasks()
        .logs(LogsRequest {
            helper: Some(helper("", "voice")),
            follow: false,
            tail: 0,
        })
        .await
        .expect("logs")
        .into_inner();
    let mut texts = Vec::new();
    while let Some(line) = tokio::time::timeout(T, logs.message())
        .await
        .expect("in time")
        .expect("line")
    {
        texts.push(line.text);
    }
    assert_eq!(texts, ["voice", "chat", "last"]);
}

#[actix_rt::test]
async fn a_helper_token_acts_as_the_helpers_app_id() {
    let node = boot().await;
    // The (stand-in) task-control service knows the running helper's token.
    let voice = node.client(Some("helper-token")).await;
    let info = voice
        .node()
        .get_info(GetInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.caller_scope, "app:chat:voice");
    let status = voice
        .tasks()
        .get_helper(helper("chat:voice", "x"))
        .await
        .expect("own app id")
        .into_inner();
    assert_eq!(status.reason, "caller \"chat:voice\"");
    let err = voice
        .tasks()
        .get_helper(helper("chat", "voice"))
        .await
        .expect_err("not its app's");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = voice
        .node()
        .create_app_token(CreateAppTokenRequest {
            app_id: "chat".into(),
            ttl_secs: 0,
        })
        .await
        .expect_err("not admin");
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[actix_rt::test]
async fn reflection_and_health_know_the_tasks_service() {
    let node = boot().await;
    let admin = node.client(None).await;

    let mut reflection = ServerReflectionClient::new(admin.channel());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.message().await.expect("ok").expect("answer");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "p2pos.node.v1.Node",
        "p2pos.overlay.v1.Overlay",
        "p2pos.app.v1.Apps",
        "p2pos.tasks.v1.Tasks",
        "p2pos.service.v1.Services",
        "p2pos.monitor.v1.Monitor",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }

    let health = HealthClient::new(admin.channel());
    eventually("the tasks service to be SERVING", || {
        let mut health = health.clone();
        async move {
            let reply = health
                .check(HealthCheckRequest {
                    service: "p2pos.tasks.v1.Tasks".into(),
                })
                .await
                .ok()?
                .into_inner();
            (reply.status() == ServingStatus::Serving).then_some(())
        }
    })
    .await;
    // Following logs ends with UNAVAILABLE when the gateway stops.
    let mut logs = admin
        .tasks()
        .logs(LogsRequest {
            helper: Some(helper("", "x")),
            follow: true,
            tail: 0,
        })
        .await
        .expect("logs")
        .into_inner();
    for _ in 0..3 {
        logs.message().await.expect("line").expect("open");
    }
    node.ctx.kernel.shutdown(0);
    let end = tokio::time::timeout(T, logs.message())
        .await
        .expect("cut in time");
    assert_eq!(end.expect_err("cut").code(), Code::Unavailable);
}
