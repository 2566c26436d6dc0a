//! `p2pos.service.v1.Services`: services apps provide to other apps (register, find, call,
//! reply, channels) and port forwarding. Each method checks the caller's scope and the names it
//! is given, then hands the request to the service behind it: the overlay's registry, or port
//! forwarding (which checks its addresses). Payloads are bounded here, before they travel on,
//! as on `Apps.Send`; a call takes the caller's gRPC deadline along.
//!
//! Scopes: `Register`, `Unregister`, `Reply`, `Call` and `Channel`'s `open` act for an app id
//! the caller must cover; an app-scoped caller that leaves it empty acts for its own app, the
//! admin (which has no app of its own) must name one. `ListServices` and `FindService` are open
//! to every scope; port forwarding is the admin's alone.

use std::time::Duration;

use p2pos_kernel::{ServiceContext, ServiceError};
use p2pos_proto::{
    app::v1::ChannelOutput,
    service::v1::{
        CallReply, CallRequest, CloseForwardReply, CloseForwardRequest, ExposeRequest, Exposure,
        FindServiceReply, FindServiceRequest, Forward, ListExposuresReply, ListExposuresRequest,
        ListForwardsReply, ListForwardsRequest, ListServicesReply, ListServicesRequest,
        OpenForwardRequest, OpenServiceChannel, RegisterRequest, ReplyAck, ReplyRequest,
        ServiceChannelInput, ServiceInfo, UnregisterReply, UnregisterRequest, WithdrawReply,
        WithdrawRequest, reply_request, service_channel_input, services_server::Services,
    },
};
use p2pos_protocols::{
    Forwarding as ForwardingProtocol, Groups as GroupsProtocol, PeerId, Reply,
    Services as ServicesProtocol,
    certs::{Certificate, MAX_CERTIFICATES, MAX_PINNED_KEYS, PublisherKey},
    forwarding::Request as ForwardingCall,
    groups::Request as GroupsCall,
    ids::{AppId, PeerRef, ServiceName},
    services::{OutgoingCall, ProviderFilter, Request as ServicesCall},
    wire::MAX_PAYLOAD,
};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    BoxStream,
    auth::{Scope, caller, require_helper_exists},
    data_socket::{DataSockets, over_tcp, transport},
    deadline,
    splice::OutputOptions,
};

/// How long a client may take to send the first frame of a channel (as on `Apps.Channel`).
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// The adapter.
pub struct ServicesApi {
    ctx: ServiceContext,
    sockets: DataSockets,
}

impl ServicesApi {
    /// For this node, with its data sockets.
    pub fn new(ctx: ServiceContext, sockets: DataSockets) -> Self {
        Self { ctx, sockets }
    }

    /// Which providers a request accepts: among `peers` (peer ids) if any are named, and the
    /// members of `group` if one is named (both: those in both), holding a certificate signed
    /// by one of `keys` if any are pinned. A provider named (`peer`) must pass the peers.
    async fn filter(
        &self,
        (group, peers, keys): (&str, Vec<String>, Vec<String>),
        peer: Option<&PeerRef>,
    ) -> Result<ProviderFilter, Status> {
        let publisher_keys = publisher_keys(keys)?;
        let named = named_peers(peers)?;
        let members = self.only_members(group).await?;
        let only = match (named, members) {
            (None, None) => None,
            (Some(only), None) | (None, Some(only)) => Some(only),
            (Some(named), Some(members)) => Some(
                named
                    .into_iter()
                    .filter(|p| members.contains(p))
                    .collect::<Vec<_>>(),
            ),
        };
        if let (Some(peer), Some(only)) = (peer, &only)
            && !only.contains(&peer.peer)
        {
            let why = match group.trim() {
                "" => "among the `peers` named".to_owned(),
                group => format!("a member of group {group:?} (and among the `peers` named)"),
            };
            return Err(Status::failed_precondition(format!(
                "peer {} is not {why}",
                peer.peer
            )));
        }
        Ok(ProviderFilter {
            only,
            publisher_keys,
        })
    }

    /// The peers of group `group` (id or name), when one is named.
    async fn only_members(&self, group: &str) -> Result<Option<Vec<PeerId>>, Status> {
        if group.trim().is_empty() {
            return Ok(None);
        }
        let group = group.trim();
        let asked = group.to_owned();
        let members = self
            .ctx
            .registry
            .ask::<GroupsProtocol, _>(|reply| GroupsCall::Members {
                group: asked,
                reply,
            })
            .await?;
        let peers = members
            .members
            .iter()
            .filter_map(|m| PeerRef::parse(&m.peer_id).ok().map(|p| p.peer))
            .collect::<Vec<_>>();
        Ok(Some(peers))
    }

    /// [`acting_app`], a helper's app id only while the helper exists.
    async fn acting(&self, scope: &Scope, app_id: String) -> Result<AppId, Status> {
        let app_id = acting_app(scope, app_id)?;
        require_helper_exists(scope, app_id.as_str(), &self.ctx.registry).await?;
        Ok(app_id)
    }

    /// Asks the service behind `p2pos.service.v1` (the overlay) and waits for its answer.
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> ServicesCall) -> Result<T, Status> {
        Ok(self.ctx.registry.ask::<ServicesProtocol, T>(make).await?)
    }

    /// Asks port forwarding and waits for its answer.
    async fn forwarding<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> ForwardingCall,
    ) -> Result<T, Status> {
        Ok(self.ctx.registry.ask::<ForwardingProtocol, T>(make).await?)
    }
}

/// The app a call acts for: the one named, which the caller must cover; empty: the caller's
/// own app (the admin has none: `INVALID_ARGUMENT`).
fn acting_app(scope: &Scope, app_id: String) -> Result<AppId, Status> {
    let app_id = match (app_id.is_empty(), scope) {
        (true, Scope::App(own)) => own.clone(),
        (true, Scope::Admin) => {
            return Err(Status::invalid_argument(
                "app_id is required: the admin scope has no app of its own; name the app to act for",
            ));
        }
        (false, _) => {
            scope.require_app(&app_id)?;
            app_id
        }
    };
    AppId::parse(&app_id).map_err(Status::invalid_argument)
}

/// A service name as apps give it (`name/version`), checked here once.
fn service_name(input: &str) -> Result<ServiceName, Status> {
    ServiceName::parse_explained(input).map_err(Status::invalid_argument)
}

/// The provider's node, if one is named: a peer id, a ticket or a multiaddr.
fn provider(peer: &str) -> Result<Option<PeerRef>, Status> {
    match peer.trim() {
        "" => Ok(None),
        peer => PeerRef::parse(peer)
            .map(Some)
            .map_err(|e| ServiceError::from(e).into()),
    }
}

/// Most peer ids one request names in `peers`.
const MAX_NAMED_PEERS: usize = 256;

/// The providers a request names in `peers` (peer ids): `None` when it names none.
fn named_peers(peers: Vec<String>) -> Result<Option<Vec<PeerId>>, Status> {
    if peers.is_empty() {
        return Ok(None);
    }
    if peers.len() > MAX_NAMED_PEERS {
        return Err(Status::invalid_argument(format!(
            "{} peers named; at most {MAX_NAMED_PEERS}",
            peers.len()
        )));
    }
    peers
        .iter()
        .map(|p| {
            p.trim().parse::<PeerId>().map_err(|_| {
                let shown: String = p.chars().take(80).collect();
                Status::invalid_argument(format!("peers: {shown:?} is not a peer id"))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The publisher keys a request pins (`p2pospub...`), at most [`MAX_PINNED_KEYS`].
fn publisher_keys(keys: Vec<String>) -> Result<Vec<PublisherKey>, Status> {
    if keys.len() > MAX_PINNED_KEYS {
        return Err(Status::invalid_argument(format!(
            "{} publisher keys pinned; at most {MAX_PINNED_KEYS}",
            keys.len()
        )));
    }
    keys.iter()
        .map(|k| {
            PublisherKey::parse(k)
                .map_err(|e| Status::invalid_argument(format!("publisher_keys: {e}")))
        })
        .collect()
}

/// The certificates a registration presents (`p2poscert...`), at most [`MAX_CERTIFICATES`],
/// each with a signature that verifies (what it names is the registry's to check).
fn certificates(certs: Vec<String>) -> Result<Vec<Certificate>, Status> {
    if certs.len() > MAX_CERTIFICATES {
        return Err(Status::invalid_argument(format!(
            "{} certificates; at most {MAX_CERTIFICATES}",
            certs.len()
        )));
    }
    certs
        .iter()
        .map(|c| {
            Certificate::parse(c)
                .map_err(|e| Status::invalid_argument(format!("certificates: {e}")))
        })
        .collect()
}

/// A payload of at most [`MAX_PAYLOAD`] bytes.
fn payload_size(what: &str, len: usize) -> Result<(), Status> {
    if len > MAX_PAYLOAD {
        return Err(Status::resource_exhausted(format!(
            "{what} of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Services for ServicesApi {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<ServiceInfo>, Status> {
        let scope = caller(&req)?;
        let RegisterRequest {
            app_id,
            service,
            description,
            certificates: certs,
        } = req.into_inner();
        let app_id = self.acting(&scope, app_id).await?;
        let service = service_name(&service)?;
        let certificates = certificates(certs)?;
        let info = self
            .ask(|reply| ServicesCall::Register {
                app_id,
                service,
                description,
                certificates,
                reply,
            })
            .await?;
        Ok(Response::new(info))
    }

    async fn unregister(
        &self,
        req: Request<UnregisterRequest>,
    ) -> Result<Response<UnregisterReply>, Status> {
        let scope = caller(&req)?;
        let UnregisterRequest { app_id, service } = req.into_inner();
        let app_id = self.acting(&scope, app_id).await?;
        let service = service_name(&service)?;
        self.ask(|reply| ServicesCall::Unregister {
            app_id,
            service,
            reply,
        })
        .await?;
        Ok(Response::new(UnregisterReply {}))
    }

    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesReply>, Status> {
        caller(&req)?;
        let ListServicesRequest {} = req.into_inner();
        let list = self.ask(|reply| ServicesCall::List { reply }).await?;
        Ok(Response::new(list))
    }

    async fn find_service(
        &self,
        req: Request<FindServiceRequest>,
    ) -> Result<Response<FindServiceReply>, Status> {
        caller(&req)?;
        let FindServiceRequest {
            service,
            limit,
            group,
            peers,
            publisher_keys,
        } = req.into_inner();
        let service = service_name(&service)?;
        let filter = self.filter((&group, peers, publisher_keys), None).await?;
        let found = self
            .ask(|reply| ServicesCall::Find {
                service,
                limit,
                filter,
                reply,
            })
            .await?;
        Ok(Response::new(found))
    }

    async fn call(&self, req: Request<CallRequest>) -> Result<Response<CallReply>, Status> {
        let scope = caller(&req)?;
        let deadline = deadline::from_metadata(req.metadata())?;
        let CallRequest {
            app_id,
            service,
            payload,
            peer,
            timeout_ms,
            group,
            peers,
            publisher_keys,
        } = req.into_inner();
        let app_id = self.acting(&scope, app_id).await?;
        payload_size("a call payload", payload.len())?;
        let service = service_name(&service)?;
        let peer = provider(&peer)?;
        let filter = self
            .filter((&group, peers, publisher_keys), peer.as_ref())
            .await?;
        let answer = self
            .ask(|reply| ServicesCall::Call {
                call: OutgoingCall {
                    app_id,
                    service,
                    payload,
                    peer,
                    timeout_ms,
                    deadline,
                    filter,
                },
                reply,
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn reply(&self, req: Request<ReplyRequest>) -> Result<Response<ReplyAck>, Status> {
        let scope = caller(&req)?;
        let ReplyRequest {
            app_id,
            call_id,
            result,
        } = req.into_inner();
        let app_id = self.acting(&scope, app_id).await?;
        if let Some(reply_request::Result::Payload(payload)) = &result {
            payload_size("a reply payload", payload.len())?;
        }
        let request = ReplyRequest {
            app_id: app_id.into_string(),
            call_id,
            result,
        };
        self.ask(|reply| ServicesCall::Reply { request, reply })
            .await?;
        Ok(Response::new(ReplyAck {}))
    }

    type ChannelStream = BoxStream<ChannelOutput>;

    async fn channel(
        &self,
        req: Request<Streaming<ServiceChannelInput>>,
    ) -> Result<Response<Self::ChannelStream>, Status> {
        let scope = caller(&req)?;
        let over_tcp = over_tcp(&req);
        let mut input = req.into_inner();
        let first = tokio::time::timeout(FIRST_FRAME_TIMEOUT, input.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no open frame within 30 s"))??
            .ok_or_else(|| Status::invalid_argument("the channel ended before its first frame"))?;
        let Some(service_channel_input::Kind::Open(open)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first frame of a service channel must be `open`",
            ));
        };
        let OpenServiceChannel {
            app_id,
            service,
            peer,
            batch,
            half_close,
            group,
            transport: wanted,
            peers,
            publisher_keys,
        } = open;
        let transport = transport(wanted)?;
        let app_id = self.acting(&scope, app_id).await?;
        let service = service_name(&service)?;
        let peer = provider(&peer)?;
        let filter = self
            .filter((&group, peers, publisher_keys), peer.as_ref())
            .await?;
        let options = OutputOptions { batch, half_close };
        let asked = self
            .sockets
            .ask(transport, options, app_id.as_str(), over_tcp)?;
        let channel = self
            .ask(|reply| ServicesCall::OpenChannel {
                app_id,
                service,
                peer,
                filter,
                reply,
            })
            .await?;
        let output = self.sockets.channel(channel, asked, input);
        Ok(Response::new(output))
    }

    async fn expose(&self, req: Request<ExposeRequest>) -> Result<Response<Exposure>, Status> {
        caller(&req)?.require_admin()?;
        let request = req.into_inner();
        let exposure = self
            .forwarding(|reply| ForwardingCall::Expose { request, reply })
            .await?;
        Ok(Response::new(exposure))
    }

    async fn withdraw(
        &self,
        req: Request<WithdrawRequest>,
    ) -> Result<Response<WithdrawReply>, Status> {
        caller(&req)?.require_admin()?;
        let request = req.into_inner();
        self.forwarding(|reply| ForwardingCall::Withdraw { request, reply })
            .await?;
        Ok(Response::new(WithdrawReply {}))
    }

    async fn list_exposures(
        &self,
        req: Request<ListExposuresRequest>,
    ) -> Result<Response<ListExposuresReply>, Status> {
        caller(&req)?.require_admin()?;
        let ListExposuresRequest {} = req.into_inner();
        let list = self
            .forwarding(|reply| ForwardingCall::ListExposures { reply })
            .await?;
        Ok(Response::new(list))
    }

    async fn open_forward(
        &self,
        req: Request<OpenForwardRequest>,
    ) -> Result<Response<Forward>, Status> {
        caller(&req)?.require_admin()?;
        let request = req.into_inner();
        if !request.group.trim().is_empty() {
            // The group must be known, and a provider named one of its members, now;
            // port forwarding asks for the members again at each connection.
            let peer = provider(&request.peer)?;
            self.filter((&request.group, Vec::new(), Vec::new()), peer.as_ref())
                .await?;
        }
        let forward = self
            .forwarding(|reply| ForwardingCall::OpenForward { request, reply })
            .await?;
        Ok(Response::new(forward))
    }

    async fn close_forward(
        &self,
        req: Request<CloseForwardRequest>,
    ) -> Result<Response<CloseForwardReply>, Status> {
        caller(&req)?.require_admin()?;
        let request = req.into_inner();
        self.forwarding(|reply| ForwardingCall::CloseForward { request, reply })
            .await?;
        Ok(Response::new(CloseForwardReply {}))
    }

    async fn list_forwards(
        &self,
        req: Request<ListForwardsRequest>,
    ) -> Result<Response<ListForwardsReply>, Status> {
        caller(&req)?.require_admin()?;
        let ListForwardsRequest {} = req.into_inner();
        let list = self
            .forwarding(|reply| ForwardingCall::ListForwards { reply })
            .await?;
        Ok(Response::new(list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code<T: std::fmt::Debug>(result: Result<T, Status>) -> tonic::Code {
        result.expect_err("refused").code()
    }

    #[test]
    fn an_empty_app_id_is_the_callers_own_app() {
        let chat = Scope::App("chat".into());
        assert_eq!(
            acting_app(&chat, String::new()).expect("own").as_str(),
            "chat"
        );
        assert_eq!(
            acting_app(&chat, "chat".into()).expect("own").as_str(),
            "chat"
        );
        assert_eq!(
            acting_app(&chat, "chat:voice".into())
                .expect("its helper's")
                .as_str(),
            "chat:voice"
        );
        assert_eq!(
            code(acting_app(&chat, "mail".into())),
            tonic::Code::PermissionDenied
        );
        let voice = Scope::App("chat:voice".into());
        assert_eq!(
            code(acting_app(&voice, "chat".into())),
            tonic::Code::PermissionDenied,
            "a helper does not act for its app"
        );
        assert_eq!(
            acting_app(&voice, String::new()).expect("own").as_str(),
            "chat:voice"
        );
    }

    #[test]
    fn the_admin_names_the_app_it_acts_for() {
        assert_eq!(
            acting_app(&Scope::Admin, "p2pctl".into())
                .expect("any app")
                .as_str(),
            "p2pctl"
        );
        let err = acting_app(&Scope::Admin, String::new()).expect_err("no app");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("app_id is required"), "{err:?}");
        assert_eq!(
            code(acting_app(&Scope::Admin, "a/b".into())),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn named_peers_keys_and_certificates_are_checked_and_bounded() {
        assert!(named_peers(Vec::new()).expect("none").is_none());
        let peer = PeerId::random();
        assert_eq!(
            named_peers(vec![format!(" {peer} ")]).expect("one"),
            Some(vec![peer])
        );
        assert_eq!(
            code(named_peers(vec!["not-a-peer".into()])),
            tonic::Code::InvalidArgument
        );
        let many = vec![peer.to_string(); MAX_NAMED_PEERS + 1];
        assert_eq!(code(named_peers(many)), tonic::Code::InvalidArgument);

        let secret = p2pos_protocols::certs::PublisherSecret::generate();
        let key = secret.public().to_text();
        assert_eq!(
            publisher_keys(vec![key.clone()]).expect("a key"),
            vec![secret.public()]
        );
        let err = publisher_keys(vec!["p2pospubzz".into()]).expect_err("damaged");
        assert!(err.message().starts_with("publisher_keys:"), "{err:?}");
        assert_eq!(
            code(publisher_keys(vec![key; MAX_PINNED_KEYS + 1])),
            tonic::Code::InvalidArgument
        );

        let cert = secret
            .certify("echo/1", ("app", peer), u64::MAX)
            .expect("certify")
            .to_text();
        assert_eq!(certificates(vec![cert.clone()]).expect("one").len(), 1);
        assert_eq!(
            code(certificates(vec![cert; MAX_CERTIFICATES + 1])),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(certificates(vec!["p2poscertzz".into()])),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn payloads_are_bounded() {
        assert!(payload_size("a call payload", MAX_PAYLOAD).is_ok());
        let err = payload_size("a call payload", MAX_PAYLOAD + 1).expect_err("too big");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().starts_with("a call payload of"), "{err:?}");
    }
}
