//! `p2pos.app.v1.Apps`: sessions, channels, messages. Every call checks that the caller may
//! act for the app id it names. A peer named `NAME@GROUP`, and a group named by a channel or a
//! session, are resolved here through the groups service.

use std::time::Duration;

use futures::StreamExt;
use p2pos_kernel::{Registry, ServiceContext, ServiceError};
use p2pos_proto::app::v1::{
    AckReply, AckRequest, ChannelInput, ChannelOutput, ListAppsReply, ListAppsRequest,
    ReceiveRequest, ReceivedMessage, SendReply, SendRequest, SessionEvent, SessionRequest,
    apps_server::Apps, channel_input, session_event,
};
use p2pos_protocols::{
    Apps as AppsProtocol, Groups as GroupsProtocol, Reply,
    apps::{Incoming, Request as AppsRequest},
    groups::{Request as GroupsRequest, Resolved},
    ids::{AppId, PeerArg, PeerRef},
    wire::{MAX_IDEMPOTENCY_KEY, MAX_PAYLOAD},
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    BoxStream,
    auth::{Scope, caller, require_helper_exists},
    cut_on_stop,
    data_socket::{DataSockets, over_tcp, transport},
    splice::OutputOptions,
    unavailable_at_end,
};

/// How long a client may take to send the first frame of a channel.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// The adapter.
pub struct AppsApi {
    ctx: ServiceContext,
    stop: CancellationToken,
    sockets: DataSockets,
}

impl AppsApi {
    /// For this node, with its data sockets.
    pub fn new(ctx: ServiceContext, stop: CancellationToken, sockets: DataSockets) -> Self {
        Self { ctx, stop, sockets }
    }

    /// Asks the service behind `p2pos.app.v1` (the overlay) and waits for its answer.
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> AppsRequest) -> Result<T, Status> {
        Ok(self.ctx.registry.ask::<AppsProtocol, T>(make).await?)
    }

    /// Asks the groups service and waits for its answer.
    async fn ask_groups<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> GroupsRequest,
    ) -> Result<T, Status> {
        Ok(self.ctx.registry.ask::<GroupsProtocol, T>(make).await?)
    }

    /// The peer a request names, and the group a `NAME@GROUP` puts it in (its id).
    async fn peer(&self, peer: &str) -> Result<(PeerRef, Option<String>), Status> {
        if peer.trim().is_empty() {
            return Err(Status::invalid_argument(
                "peer is empty: give a peer id, a ticket, a multiaddr ending in /p2p/<peer id>, \
                 or a group member's NAME@GROUP",
            ));
        }
        match PeerArg::parse(peer).map_err(ServiceError::from)? {
            PeerArg::Peer(peer) => Ok((peer, None)),
            PeerArg::Member { name, group } => {
                let Resolved { group, peer } = self
                    .ask_groups(|reply| GroupsRequest::Resolve {
                        group,
                        name: Some(name.clone()),
                        reply,
                    })
                    .await?;
                let peer = peer.ok_or_else(|| {
                    Status::internal(format!("the groups service resolved no member {name:?}"))
                })?;
                Ok((PeerRef::from(peer), Some(group)))
            }
        }
    }

    /// The id of the group a request names (its id or its name here); none when empty.
    async fn group(&self, group: &str) -> Result<Option<String>, Status> {
        let group = group.trim();
        if group.is_empty() {
            return Ok(None);
        }
        let group = group.to_owned();
        let resolved = self
            .ask_groups(|reply| GroupsRequest::Resolve {
                group,
                name: None,
                reply,
            })
            .await?;
        Ok(Some(resolved.group))
    }

    /// The group a channel opens in: the one `open.group` names, or the one a `NAME@GROUP`
    /// peer implies (both: the same). A channel in a group to this node itself needs this
    /// node to be a member (there is no hello to check it).
    async fn channel_group(
        &self,
        named: &str,
        implied: Option<String>,
        peer: &PeerRef,
    ) -> Result<Option<String>, Status> {
        let group = match (self.group(named).await?, implied) {
            (Some(named), Some(implied)) if named != implied => {
                return Err(Status::invalid_argument(format!(
                    "the channel's group {named} is not the group {implied} its peer was named in"
                )));
            }
            (named, implied) => named.or(implied),
        };
        if let Some(group) = &group
            && peer.peer == self.ctx.peer_id
        {
            let (group, peer) = (group.clone(), peer.peer);
            self.ask_groups(|reply| GroupsRequest::Admit { group, peer, reply })
                .await?;
        }
        Ok(group)
    }
}

/// The app id a request names, which the caller must cover (a helper's only while it exists),
/// checked here once.
async fn app(scope: &Scope, app_id: &str, registry: &Registry) -> Result<AppId, Status> {
    scope.require_app(app_id)?;
    require_helper_exists(scope, app_id, registry).await?;
    AppId::parse(app_id).map_err(Status::invalid_argument)
}

#[tonic::async_trait]
impl Apps for AppsApi {
    type SessionStream = BoxStream<SessionEvent>;

    async fn session(
        &self,
        req: Request<SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let scope = caller(&req)?;
        let SessionRequest { app_id, group } = req.into_inner();
        let app_id = app(&scope, &app_id, &self.ctx.registry).await?;
        let group = self.group(&group).await?;
        let session = self
            .ask(|reply| AppsRequest::OpenSession {
                app_id,
                group,
                reply,
            })
            .await?;
        let registered = SessionEvent {
            kind: Some(session_event::Kind::Registered(session.registered)),
        };
        let incoming = ReceiverStream::new(session.incoming).map(|incoming| {
            let kind = match incoming {
                Incoming::Channel(channel) => session_event::Kind::Incoming(channel),
                Incoming::Call(call) => session_event::Kind::Call(call),
            };
            Ok(SessionEvent { kind: Some(kind) })
        });
        let events = unavailable_at_end(
            Box::pin(futures::stream::once(async { Ok(registered) }).chain(incoming)),
            "the session ended: the overlay service restarted; open a new session",
        );
        Ok(Response::new(cut_on_stop(events, self.stop.clone())))
    }

    type ChannelStream = BoxStream<ChannelOutput>;

    async fn channel(
        &self,
        req: Request<Streaming<ChannelInput>>,
    ) -> Result<Response<Self::ChannelStream>, Status> {
        let scope = caller(&req)?;
        let over_tcp = over_tcp(&req);
        let mut input = req.into_inner();
        let first = tokio::time::timeout(FIRST_FRAME_TIMEOUT, input.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no open or accept frame within 30 s"))??
            .ok_or_else(|| Status::invalid_argument("the channel ended before its first frame"))?;
        let (channel, asked) = match first.kind {
            Some(channel_input::Kind::Open(open)) => {
                let transport = transport(open.transport)?;
                let app_id = app(&scope, &open.app_id, &self.ctx.registry).await?;
                let (peer, implied) = self.peer(&open.peer).await?;
                let group = self.channel_group(&open.group, implied, &peer).await?;
                let options = OutputOptions {
                    batch: open.batch,
                    half_close: open.half_close,
                };
                let asked = self
                    .sockets
                    .ask(transport, options, app_id.as_str(), over_tcp)?;
                let channel = self
                    .ask(|reply| AppsRequest::OpenChannel {
                        app_id,
                        peer,
                        group,
                        reply,
                    })
                    .await?;
                (channel, asked)
            }
            Some(channel_input::Kind::Accept(accept)) => {
                let transport = transport(accept.transport)?;
                let app_id = app(&scope, &accept.app_id, &self.ctx.registry).await?;
                let options = OutputOptions {
                    batch: accept.batch,
                    half_close: accept.half_close,
                };
                let asked = self
                    .sockets
                    .ask(transport, options, app_id.as_str(), over_tcp)?;
                let channel = self
                    .ask(|reply| AppsRequest::AcceptChannel {
                        app_id,
                        channel_id: accept.channel_id,
                        reply,
                    })
                    .await?;
                (channel, asked)
            }
            Some(channel_input::Kind::Data(_) | channel_input::Kind::Frames(_)) | None => {
                return Err(Status::invalid_argument(
                    "the first frame of a channel must be `open` or `accept`",
                ));
            }
        };
        let output = self.sockets.channel(channel, asked, input);
        Ok(Response::new(output))
    }

    async fn send(&self, req: Request<SendRequest>) -> Result<Response<SendReply>, Status> {
        let scope = caller(&req)?;
        let SendRequest {
            app_id,
            peer,
            payload,
            idempotency_key,
        } = req.into_inner();
        let app_id = app(&scope, &app_id, &self.ctx.registry).await?;
        if payload.len() > MAX_PAYLOAD {
            return Err(Status::resource_exhausted(format!(
                "a message of {} bytes exceeds the {MAX_PAYLOAD}-byte limit",
                payload.len()
            )));
        }
        if idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(Status::invalid_argument(format!(
                "an idempotency key of {} bytes: it must be 1 to {MAX_IDEMPOTENCY_KEY} bytes (or \
                 left empty for none)",
                idempotency_key.len()
            )));
        }
        let idempotency_key = (!idempotency_key.is_empty()).then_some(idempotency_key);
        let (peer, _group) = self.peer(&peer).await?;
        let sent = self
            .ask(|reply| AppsRequest::Send {
                app_id,
                peer,
                payload,
                idempotency_key,
                reply,
            })
            .await?;
        Ok(Response::new(sent))
    }

    type ReceiveStream = BoxStream<ReceivedMessage>;

    async fn receive(
        &self,
        req: Request<ReceiveRequest>,
    ) -> Result<Response<Self::ReceiveStream>, Status> {
        let scope = caller(&req)?;
        let ReceiveRequest { app_id } = req.into_inner();
        let app_id = app(&scope, &app_id, &self.ctx.registry).await?;
        let inbox = self
            .ask(|reply| AppsRequest::Receive { app_id, reply })
            .await?;
        let inbox = unavailable_at_end(
            Box::pin(ReceiverStream::new(inbox).map(Ok)),
            "the inbox closed: the overlay service restarted, or a newer Receive for this app replaced this one",
        );
        Ok(Response::new(cut_on_stop(inbox, self.stop.clone())))
    }

    async fn ack(&self, req: Request<AckRequest>) -> Result<Response<AckReply>, Status> {
        let scope = caller(&req)?;
        let AckRequest { app_id, inbox_id } = req.into_inner();
        let app_id = app(&scope, &app_id, &self.ctx.registry).await?;
        self.ask(|reply| AppsRequest::Ack {
            app_id,
            inbox_id,
            reply,
        })
        .await?;
        Ok(Response::new(AckReply {}))
    }

    async fn list_apps(
        &self,
        req: Request<ListAppsRequest>,
    ) -> Result<Response<ListAppsReply>, Status> {
        let scope = caller(&req)?;
        let ListAppsRequest {} = req.into_inner();
        let only = match scope {
            Scope::Admin => None,
            Scope::App(app) => Some(app),
        };
        let apps = self
            .ask(|reply| AppsRequest::ListApps { only, reply })
            .await?;
        Ok(Response::new(apps))
    }
}
