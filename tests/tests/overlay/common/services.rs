//! Service helpers of the harness: `p2pos.service.v1` requests as a test makes them, and
//! channel checks.

use std::time::Instant;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use p2pos_kernel::ServiceError;
use p2pos_proto::service::v1::{
    CallReply, CallRequest, FindServiceRequest, OpenServiceChannel, RegisterRequest, ReplyRequest,
    ServiceInfo, reply_request,
};
use p2pos_protocols::{
    Services,
    apps::{self, ChannelStream, Session},
    services::{Request, Response},
    wire,
};
use tokio::task::JoinHandle;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tonic::Code;

use super::{Node, T, next_call};

/// A channel's frames.
pub(crate) type Frames = Framed<Box<dyn apps::Duplex>, LengthDelimitedCodec>;

impl Node {
    /// Sends one request of `p2pos.service.v1`.
    pub(crate) async fn services(&self, request: Request) -> Result<Response, ServiceError> {
        self.ctx.registry.call::<Services>(request).await
    }

    pub(crate) async fn register(
        &self,
        app_id: &str,
        service: &str,
    ) -> Result<ServiceInfo, ServiceError> {
        let request = RegisterRequest {
            app_id: app_id.into(),
            service: service.into(),
            description: format!("{service} by {app_id}"),
        };
        match self.services(Request::Register(request)).await? {
            Response::Registered(info) => Ok(info),
            other => panic!("register: {other:?}"),
        }
    }

    pub(crate) async fn find(&self, service: &str) -> Result<Vec<ServiceInfo>, ServiceError> {
        let request = FindServiceRequest {
            service: service.into(),
            limit: 0,
        };
        match self.services(Request::Find(request)).await? {
            Response::Providers(found) => Ok(found.providers),
            other => panic!("find: {other:?}"),
        }
    }

    pub(crate) async fn list(&self) -> Vec<ServiceInfo> {
        match self.services(Request::List).await {
            Ok(Response::Services(list)) => list.services,
            other => panic!("list: {other:?}"),
        }
    }

    /// Starts a call from app `client` to `service` (on `peer`, if not empty).
    pub(crate) fn call(
        &self,
        service: &str,
        peer: &str,
        timeout_ms: u32,
        payload: &'static [u8],
    ) -> JoinHandle<Result<CallReply, ServiceError>> {
        self.call_with(service, peer, timeout_ms, Bytes::from_static(payload))
    }

    /// [`Node::call`] with any payload.
    pub(crate) fn call_with(
        &self,
        service: &str,
        peer: &str,
        timeout_ms: u32,
        payload: Bytes,
    ) -> JoinHandle<Result<CallReply, ServiceError>> {
        let registry = self.ctx.registry.clone();
        let request = CallRequest {
            app_id: "client".into(),
            service: service.into(),
            payload,
            peer: peer.into(),
            timeout_ms,
        };
        tokio::spawn(async move {
            let deadline = Some(Instant::now() + T);
            let call = Request::Call { request, deadline };
            match registry.call::<Services>(call).await? {
                Response::Called(reply) => Ok(reply),
                other => panic!("call: {other:?}"),
            }
        })
    }

    pub(crate) async fn reply(
        &self,
        app_id: &str,
        call_id: u64,
        result: reply_request::Result,
    ) -> Result<(), ServiceError> {
        let request = ReplyRequest {
            app_id: app_id.into(),
            call_id,
            result: Some(result),
        };
        match self.services(Request::Reply(request)).await? {
            Response::Replied => Ok(()),
            other => panic!("reply: {other:?}"),
        }
    }

    /// Starts opening a channel from app `client` to `service` (on `peer`, if not empty).
    pub(crate) fn open_service(
        &self,
        service: &str,
        peer: &str,
    ) -> JoinHandle<Result<ChannelStream, ServiceError>> {
        let registry = self.ctx.registry.clone();
        let open = OpenServiceChannel {
            app_id: "client".into(),
            service: service.into(),
            peer: peer.into(),
            batch: false,
            half_close: false,
        };
        tokio::spawn(async move {
            match registry
                .call::<Services>(Request::OpenChannel(open))
                .await?
            {
                Response::Channel(stream) => Ok(stream),
                other => panic!("open: {other:?}"),
            }
        })
    }
}

/// Waits for a call started with [`Node::call`].
pub(crate) async fn outcome(
    call: JoinHandle<Result<CallReply, ServiceError>>,
) -> Result<CallReply, ServiceError> {
    tokio::time::timeout(T + T, call)
        .await
        .expect("the call ends in time")
        .expect("join")
}

/// Answers the next call on `session` of `app_id` with the payload it carried, prefixed.
pub(crate) async fn echo_one(node: &Node, app_id: &str, session: &mut Session) {
    let call = next_call(session).await;
    let mut payload = b"echo: ".to_vec();
    payload.extend_from_slice(&call.payload);
    let answer = reply_request::Result::Payload(Bytes::from(payload));
    node.reply(app_id, call.call_id, answer)
        .await
        .expect("reply taken");
}

/// Answers every call of `session` (a session of `app_id` on `node`) at once with its own
/// payload, until the session is dropped with the returned task.
pub(crate) fn serve_echo(node: &Node, app_id: &str, mut session: Session) -> JoinHandle<()> {
    let registry = node.ctx.registry.clone();
    let app_id = app_id.to_owned();
    tokio::spawn(async move {
        while let Some(event) = session.incoming.recv().await {
            let apps::Incoming::Call(call) = event else {
                continue;
            };
            let request = ReplyRequest {
                app_id: app_id.clone(),
                call_id: call.call_id,
                result: Some(reply_request::Result::Payload(call.payload)),
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let _ = registry.call::<Services>(Request::Reply(request)).await;
            });
        }
    })
}

/// The gRPC status a client would see (a provider's code is passed on as it is).
pub(crate) fn code(result: Result<impl std::fmt::Debug, ServiceError>) -> (Code, String) {
    let status = tonic::Status::from(result.expect_err("an error"));
    (status.code(), status.message().to_owned())
}

/// Sends `frame` on one end of a channel and reads it on the other.
pub(crate) async fn carries(from: &mut Frames, to: &mut Frames, frame: &'static [u8]) {
    from.send(Bytes::from_static(frame)).await.expect("send");
    let got = tokio::time::timeout(T, to.next()).await.expect("in time");
    assert_eq!(&got.expect("open").expect("frame")[..], frame);
}

pub(crate) fn framed(stream: ChannelStream) -> Frames {
    Framed::new(stream.io, wire::codec(wire::MAX_CHANNEL_FRAME))
}

/// Sends `bytes` as one frame and reads frames until as many bytes came back.
pub(crate) async fn echoes(channel: &mut Frames, bytes: &[u8]) {
    channel
        .send(Bytes::copy_from_slice(bytes))
        .await
        .expect("send");
    let mut back = Vec::new();
    while back.len() < bytes.len() {
        let frame = tokio::time::timeout(T, channel.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("frame");
        back.extend_from_slice(&frame);
    }
    assert_eq!(back, bytes);
}
