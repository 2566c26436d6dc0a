//! Service helpers of the harness: `p2pos.service.v1` requests as a test makes them, and
//! channel checks.

use std::time::Instant;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use p2pos_kernel::ServiceError;
use p2pos_proto::service::v1::{CallReply, ReplyRequest, ServiceInfo, reply_request};
use p2pos_protocols::{
    Reply, Services,
    apps::{self, ChannelStream, Session},
    ids::{PeerRef, ServiceName},
    services::{OutgoingCall, Request},
    wire,
};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;
use tonic::Code;

use super::{Node, T, app, next_call};

/// A channel's frames.
pub(crate) type Frames = Framed<Box<dyn apps::Duplex>, wire::FrameCodec>;

impl Node {
    /// Asks port forwarding.
    pub(crate) async fn forwarding<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> p2pos_protocols::forwarding::Request,
    ) -> Result<T, ServiceError> {
        self.ctx
            .registry
            .ask::<p2pos_protocols::Forwarding, T>(make)
            .await
    }

    /// Asks the overlay's services protocol.
    pub(crate) async fn services<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<T, ServiceError> {
        self.ctx.registry.ask::<Services, T>(make).await
    }

    pub(crate) async fn register(
        &self,
        app_id: &str,
        service: &str,
    ) -> Result<ServiceInfo, ServiceError> {
        self.register_with(app_id, service, format!("{service} by {app_id}"))
            .await
    }

    /// Registers `service` for `app_id` with `description`, names checked as the gateway
    /// checks them.
    pub(crate) async fn register_with(
        &self,
        app_id: &str,
        service: &str,
        description: String,
    ) -> Result<ServiceInfo, ServiceError> {
        let (app_id, service) = (app(app_id), service_name(service)?);
        self.services(|reply| Request::Register {
            app_id,
            service,
            description,
            certificates: Vec::new(),
            reply,
        })
        .await
    }

    pub(crate) async fn unregister(&self, app_id: &str, service: &str) -> Result<(), ServiceError> {
        let (app_id, service) = (app(app_id), service_name(service)?);
        self.services(|reply| Request::Unregister {
            app_id,
            service,
            reply,
        })
        .await
    }

    pub(crate) async fn find(&self, service: &str) -> Result<Vec<ServiceInfo>, ServiceError> {
        let service = service_name(service)?;
        let found = self
            .services(|reply| Request::Find {
                service,
                limit: 0,
                filter: Default::default(),
                reply,
            })
            .await?;
        Ok(found.providers)
    }

    pub(crate) async fn list(&self) -> Vec<ServiceInfo> {
        match self.services(|reply| Request::List { reply }).await {
            Ok(list) => list.services,
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
        let (service, peer) = (service.to_owned(), peer.to_owned());
        tokio::spawn(async move {
            let service = service_name(&service)?;
            let peer = provider(&peer)?;
            let deadline = Some(Instant::now() + T);
            registry
                .ask::<Services, _>(|reply| Request::Call {
                    call: OutgoingCall {
                        app_id: app("client"),
                        service,
                        payload,
                        peer,
                        timeout_ms,
                        deadline,
                        filter: Default::default(),
                    },
                    reply,
                })
                .await
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
        self.services(|reply| Request::Reply { request, reply })
            .await
    }

    /// Starts opening a channel from app `client` to `service` (on `peer`, if not empty).
    pub(crate) fn open_service(
        &self,
        service: &str,
        peer: &str,
    ) -> JoinHandle<Result<ChannelStream, ServiceError>> {
        let registry = self.ctx.registry.clone();
        let (service, peer) = (service.to_owned(), peer.to_owned());
        tokio::spawn(async move {
            let service = service_name(&service)?;
            let peer = provider(&peer)?;
            registry
                .ask::<Services, _>(|reply| Request::OpenChannel {
                    app_id: app("client"),
                    service,
                    peer,
                    filter: Default::default(),
                    reply,
                })
                .await
        })
    }
}

/// A service name as apps give it, checked as the gateway checks it.
pub(crate) fn service_name(input: &str) -> Result<ServiceName, ServiceError> {
    ServiceName::parse_explained(input).map_err(ServiceError::invalid)
}

/// The provider's node named in a request, if any, parsed as the gateway parses it.
fn provider(peer: &str) -> Result<Option<PeerRef>, ServiceError> {
    match peer.trim() {
        "" => Ok(None),
        peer => PeerRef::parse(peer).map(Some).map_err(ServiceError::from),
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
                let _ = registry
                    .ask::<Services, _>(|reply| Request::Reply { request, reply })
                    .await;
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
