//! The forward service: its child spec, its actor (which owns the exposures and forwards and
//! answers the admin's port-forwarding requests) and its life as an ordinary provider app of the
//! service registry — a session as [`FORWARD_APP`], a registration per exposure, channels to
//! them accepted from that session — reached only through the apps and services protocols.
//! When the overlay restarts, the session ends; the service opens a new one and registers its
//! exposures again.

use std::{sync::Arc, time::Duration};
use tokio_util::task::AbortOnDropHandle;

use actix::prelude::*;
use futures::{FutureExt, future::BoxFuture};
use p2pos_kernel::{
    Call, ChildHandle, ChildSpec, DeathGuard, InjectPanic, Protocol, Registry, RestartType,
    ServiceContext, ServiceError, StopService, Uses,
};
use p2pos_proto::{
    app::v1::IncomingCall,
    service::v1::{
        CloseForwardRequest, ExposeRequest, Forward, OpenForwardRequest, ReplyError, ReplyRequest,
        WithdrawRequest, reply_request,
    },
};
use p2pos_protocols::{
    Apps, Forwarding as ForwardingProtocol, Groups, Services, answer,
    apps::{self, ChannelStream, Incoming},
    certs::{MAX_PINNED_KEYS, PublisherKey},
    forwarding::Request,
    ids::{AppId, PeerRef, ServiceName},
    services,
};
use tokio::{io::AsyncWriteExt, sync::watch};
use tracing::{debug, info, warn};

use crate::{
    Error,
    forwarding::{EXPOSURES_TREE, Forwarding, Opener, resets::Resets},
};

/// The service's name.
pub const NAME: &str = "forward";
/// The app id port forwarding acts as: the provider of exposures, the opener of forwards. A
/// node-wide helper's id (`p2pos_protocols::names`): no app gets a token for it, so no app can
/// pose as port forwarding.
pub const FORWARD_APP: &str = p2pos_protocols::forwarding::FORWARD_APP;
/// What the registry shows of an exposure.
const DESCRIPTION: &str = "a TCP service exposed by port forwarding";
/// The first wait before opening a session again, doubling up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(2);
/// How long `Expose` waits for port forwarding's session with the registry.
const SESSION_WAIT: Duration = Duration::from_secs(5);

/// What the service keeps in the store, in the words of a repair report (`p2posd --repair`).
pub const STORE_CONTENTS: &[p2pos_kernel::store::Contents] = &[p2pos_kernel::store::Contents {
    tree: EXPOSURES_TREE,
    prefix: None,
    what: "port forwarding exposures",
}];

/// The child spec the daemon hands to the kernel: a permanent service named `forward` that
/// answers port forwarding's requests and provides its exposures as an app would.
pub fn child_spec() -> ChildSpec {
    ChildSpec {
        name: NAME,
        restart: RestartType::Permanent,
        uses: Uses {
            trees: &[EXPOSURES_TREE],
            calls: &[Apps::NAME, Services::NAME, Groups::NAME],
            provides: &[ForwardingProtocol::NAME],
            ..Uses::default()
        },
        start: Box::new(|ctx, guard| start(ctx, guard).map_err(|e| e.to_string())),
    }
}

fn start(ctx: ServiceContext, guard: DeathGuard) -> Result<ChildHandle, Error> {
    let mut forwarding = Forwarding::load(ctx.store.clone())?;
    forwarding.resets = Resets::register(&ctx.metrics);
    let registry = ctx.registry.clone();
    let service = ForwardService {
        failpoint_panic: ctx.config.panics_on_start(NAME),
        registry: registry.clone(),
        _guard: guard,
        forwarding,
        online: watch::channel(false).0,
        provider: None,
    };
    let addr = service.start();
    registry
        .register::<ForwardingProtocol>(addr.clone().recipient())
        .map_err(Error::Registry)?;
    Ok(ChildHandle {
        stop: addr.clone().recipient(),
        panic: addr.recipient(),
    })
}

/// The forward actor: owns the exposures and forwards.
pub struct ForwardService {
    failpoint_panic: bool,
    registry: Registry,
    _guard: DeathGuard,
    forwarding: Forwarding,
    /// Whether port forwarding has a session with the registry now (its exposures are
    /// registered).
    online: watch::Sender<bool>,
    /// Keeps the session and serves what comes on it; aborted when the actor goes.
    provider: Option<AbortOnDropHandle<()>>,
}

impl Actor for ForwardService {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.failpoint_panic {
            panic!("injected fault in {NAME}: panic-on-start failpoint");
        }
        let provider = provide(self.registry.clone(), ctx.address());
        self.provider = Some(AbortOnDropHandle::new(tokio::spawn(provider)));
        info!(
            exposures = self.forwarding.exposed_services().len(),
            "port forwarding started"
        );
    }
}

/// The session with the registry is up: register every exposure.
#[derive(Message)]
#[rtype(result = "()")]
struct SessionUp;

/// The session ended (the overlay is restarting): wait for the next.
#[derive(Message)]
#[rtype(result = "()")]
struct SessionDown;

/// A channel to an exposure, accepted: splice it onto the exposure's target.
#[derive(Message)]
#[rtype(result = "()")]
struct Serve {
    service: String,
    channel: ChannelStream,
}

/// An exposure the registry took: keep it, durably, and answer.
#[derive(Message)]
#[rtype(result = "()")]
struct Keep {
    request: ExposeRequest,
    reply: p2pos_protocols::Reply<p2pos_proto::service::v1::Exposure>,
}

impl Handler<SessionUp> for ForwardService {
    type Result = ();

    fn handle(&mut self, _: SessionUp, _: &mut Self::Context) {
        self.online.send_replace(true);
        for service in self.forwarding.exposed_services() {
            let registry = self.registry.clone();
            tokio::spawn(async move {
                if let Err(e) = register(&registry, &service).await {
                    warn!(%service, "the exposure is not provided: {e}");
                }
            });
        }
    }
}

impl Handler<SessionDown> for ForwardService {
    type Result = ();

    fn handle(&mut self, _: SessionDown, _: &mut Self::Context) {
        self.online.send_replace(false);
    }
}

impl Handler<Serve> for ForwardService {
    type Result = ();

    fn handle(&mut self, Serve { service, channel }: Serve, _: &mut Self::Context) {
        let peer = channel.peer_id.clone();
        if let Err(e) = self.forwarding.serve(&service, channel.io) {
            warn!(%peer, %service, "cannot serve a forwarded channel: {e}");
        }
    }
}

impl Handler<Keep> for ForwardService {
    type Result = ();

    fn handle(&mut self, Keep { request, reply }: Keep, ctx: &mut Self::Context) {
        let service = request.service.clone();
        let keeping = self.forwarding.expose(request);
        // Refused after all (the exposures filled up while the registry was asked): the
        // registry must not go on providing it.
        let refused = ServiceName::parse_or_first(&service)
            .ok()
            .filter(|name| !self.forwarding.is_exposed(name.as_str()));
        let (registry, addr) = (self.registry.clone(), ctx.address());
        tokio::spawn(async move {
            if let Some(name) = refused {
                let canonical = name.as_str().to_owned();
                if let Err(e) = unregister(&registry, name).await {
                    debug!(%service, "the registry did not forget a refused exposure: {e}");
                }
                // An `Expose` of the same name may have been kept meanwhile.
                addr.do_send(Recheck { service: canonical });
            }
            answer(reply, keeping.await);
        });
    }
}

/// After the registry forgot `service`: provide it again if it is exposed after all.
#[derive(Message)]
#[rtype(result = "()")]
struct Recheck {
    service: String,
}

impl Handler<Recheck> for ForwardService {
    type Result = ();

    fn handle(&mut self, Recheck { service }: Recheck, _: &mut Self::Context) {
        if self.forwarding.is_exposed(&service) {
            let registry = self.registry.clone();
            tokio::spawn(async move {
                if let Err(e) = register(&registry, &service).await {
                    warn!(%service, "the exposure is not provided: {e}");
                }
            });
        }
    }
}

impl Handler<Call<ForwardingProtocol>> for ForwardService {
    type Result = ();

    fn handle(&mut self, Call(request): Call<ForwardingProtocol>, ctx: &mut Self::Context) {
        match request {
            Request::Expose { request, reply } => self.expose(request, reply, ctx),
            Request::Withdraw {
                request: WithdrawRequest { service },
                reply,
            } => {
                // Forgotten at once; the future makes it durable, then the registry forgets it.
                let withdrawing = self.forwarding.withdraw(&service);
                let registry = self.registry.clone();
                tokio::spawn(async move {
                    let withdrawn = withdrawing.await;
                    if withdrawn.is_ok()
                        && let Ok(name) = ServiceName::parse_or_first(&service)
                        && let Err(e) = unregister(&registry, name).await
                    {
                        debug!(%service, "the registry did not forget the exposure: {e}");
                    }
                    answer(reply, withdrawn);
                });
            }
            Request::ListExposures { reply } => {
                answer::<_, Error>(reply, Ok(self.forwarding.exposures()));
            }
            Request::OpenForward { request, reply } => {
                let group = Some(request.group.trim().to_owned()).filter(|g| !g.is_empty());
                let opened = provider_filter(&request).and_then(|filter| {
                    let opener = opener(self.registry.clone(), filter.clone(), group.clone());
                    let forward = self.forwarding.open_forward(request, opener)?;
                    Ok((forward, filter))
                });
                match opened {
                    Err(e) => answer(reply, Err::<Forward, _>(e)),
                    Ok((mut forward, filter)) => {
                        let registry = self.registry.clone();
                        tokio::spawn(async move {
                            forward.warning = match within_group(&registry, filter, group).await {
                                Ok(filter) => check_provided(&registry, &forward, filter).await,
                                Err(e) => format!("the group's members cannot be had now: {e}"),
                            };
                            answer::<_, Error>(reply, Ok(forward));
                        });
                    }
                }
            }
            Request::CloseForward {
                request: CloseForwardRequest { forward_id },
                reply,
            } => answer(reply, self.forwarding.close_forward(forward_id)),
            Request::ListForwards { reply } => {
                answer::<_, Error>(reply, Ok(self.forwarding.forwards()));
            }
        }
    }
}

impl ForwardService {
    /// `Expose`: checked here, provided through the registry (which refuses a name an app
    /// provides), then kept.
    fn expose(
        &mut self,
        request: ExposeRequest,
        reply: p2pos_protocols::Reply<p2pos_proto::service::v1::Exposure>,
        ctx: &mut Context<Self>,
    ) {
        let service = match self.forwarding.check_exposure(&request) {
            Ok((service, _)) => service,
            Err(e) => return answer(reply, Err::<p2pos_proto::service::v1::Exposure, _>(e)),
        };
        let (registry, addr) = (self.registry.clone(), ctx.address());
        let mut online = self.online.subscribe();
        tokio::spawn(async move {
            // Right after the node starts (or the overlay restarts), the session may be a
            // moment away.
            let up = matches!(
                tokio::time::timeout(SESSION_WAIT, online.wait_for(|up| *up)).await,
                Ok(Ok(_))
            );
            if !up {
                let offline = Error::NoSession(format!("no session within {SESSION_WAIT:?}"));
                return answer(reply, Err::<p2pos_proto::service::v1::Exposure, _>(offline));
            }
            match register(&registry, &service).await {
                Ok(()) => addr.do_send(Keep { request, reply }),
                Err(e) => answer(reply, Err::<p2pos_proto::service::v1::Exposure, _>(e)),
            }
        });
    }
}

impl Handler<StopService> for ForwardService {
    type Result = ();

    fn handle(&mut self, _: StopService, ctx: &mut Self::Context) {
        self.provider = None;
        info!("port forwarding stopped");
        ctx.stop();
    }
}

impl Handler<InjectPanic> for ForwardService {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected fault in {NAME}");
    }
}

fn forward_app() -> AppId {
    // A node-wide helper's id: valid by construction.
    AppId::parse(FORWARD_APP).unwrap_or_else(|e| unreachable!("{FORWARD_APP}: {e}"))
}

/// Registers `service` (canonical) as provided by port forwarding.
async fn register(registry: &Registry, service: &str) -> Result<(), Error> {
    let name = ServiceName::parse(service).map_err(|reason| {
        Error::InvalidServiceName(p2pos_protocols::ids::invalid_service_name(service, reason))
    })?;
    registry
        .ask::<Services, _>(|reply| services::Request::Register {
            app_id: forward_app(),
            service: name,
            description: DESCRIPTION.to_owned(),
            certificates: Vec::new(),
            reply,
        })
        .await?;
    Ok(())
}

/// Unregisters `service`.
async fn unregister(registry: &Registry, service: ServiceName) -> Result<(), ServiceError> {
    registry
        .ask::<Services, _>(|reply| services::Request::Unregister {
            app_id: forward_app(),
            service,
            reply,
        })
        .await
}

/// How long opening a forward waits to learn whether anyone provides its service.
const CHECK_TIME: Duration = Duration::from_secs(3);

/// Most peers a forward names in `peers`.
const MAX_NAMED_PEERS: usize = 256;

/// The providers a forward's connections may reach: its `peers` and `publisher_keys`, checked
/// (a `peer` named outside its `peers` is refused).
fn provider_filter(request: &OpenForwardRequest) -> Result<services::ProviderFilter, Error> {
    let shown = |s: &str| s.chars().take(80).collect::<String>();
    if request.peers.len() > MAX_NAMED_PEERS {
        return Err(Error::InvalidFilter(format!(
            "{} peers named; at most {MAX_NAMED_PEERS}",
            request.peers.len()
        )));
    }
    if request.publisher_keys.len() > MAX_PINNED_KEYS {
        return Err(Error::InvalidFilter(format!(
            "{} publisher keys pinned; at most {MAX_PINNED_KEYS}",
            request.publisher_keys.len()
        )));
    }
    let peers = request
        .peers
        .iter()
        .map(|p| {
            PeerRef::parse(p).map(|r| r.peer).map_err(|_| {
                Error::InvalidFilter(format!("peers: {:?} is not a peer id", shown(p)))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let publisher_keys = request
        .publisher_keys
        .iter()
        .map(|k| {
            PublisherKey::parse(k).map_err(|e| Error::InvalidFilter(format!("publisher_keys: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // A provider named must be among the peers named, as for the services API.
    if !peers.is_empty()
        && let Ok(named) = PeerRef::parse(request.peer.trim())
        && !peers.contains(&named.peer)
    {
        return Err(Error::PeerNotAmong(named.peer.to_string()));
    }
    Ok(services::ProviderFilter {
        only: (!peers.is_empty()).then_some(peers),
        publisher_keys,
    })
}

/// Whether anyone (the peer named, if one is; among `filter`'s providers) provides the
/// service of a forward just opened: empty if so (or if the look-up did not answer in
/// [`CHECK_TIME`]), else a warning, also logged.
async fn check_provided(
    registry: &Registry,
    forward: &Forward,
    filter: services::ProviderFilter,
) -> String {
    let Ok(service) = ServiceName::parse_or_first(&forward.service) else {
        return String::new();
    };
    let finding = registry.ask::<Services, _>(|reply| services::Request::Find {
        service,
        limit: 0,
        filter,
        reply,
    });
    let warning = match tokio::time::timeout(CHECK_TIME, finding).await {
        Err(_) => return String::new(),
        Ok(Err(e)) if e.code == p2pos_kernel::ErrorCode::NotFound => format!(
            "nobody was found to provide '{}' (is the name right? `p2pctl services find {}`); \
             each connection to {} is closed until a provider appears",
            forward.service, forward.service, forward.listen
        ),
        Ok(Err(e)) => {
            debug!(service = %forward.service, "cannot check the forward's service: {e}");
            return String::new();
        }
        Ok(Ok(found)) => {
            let peer = PeerRef::parse(&forward.peer)
                .ok()
                .map(|p| p.peer.to_string());
            match peer {
                Some(peer) if !found.providers.iter().any(|p| p.peer_id == peer) => format!(
                    "peer {peer} was not found among the providers of '{}' ({} found); \
                     connections to {} fail unless it provides it",
                    forward.service,
                    found.providers.len(),
                    forward.listen
                ),
                _ => return String::new(),
            }
        }
    };
    warn!(forward_id = forward.forward_id, "{warning}");
    warning
}

/// `filter` narrowed to the members of `group` (if one is named), as this node knows them now.
async fn within_group(
    registry: &Registry,
    mut filter: services::ProviderFilter,
    group: Option<String>,
) -> Result<services::ProviderFilter, Error> {
    if let Some(group) = group {
        let members = registry
            .ask::<Groups, _>(|reply| p2pos_protocols::groups::Request::Members { group, reply })
            .await?;
        let members: Vec<_> = members
            .members
            .iter()
            .filter_map(|m| PeerRef::parse(&m.peer_id).ok().map(|p| p.peer))
            .filter(|p| filter.allows(p))
            .collect();
        filter.only = Some(members);
    }
    Ok(filter)
}

/// How a forward opens the channel of each connection: a service channel from
/// [`FORWARD_APP`], through the services protocol, as any app opens one, to a provider
/// `filter` allows (and, with `group`, one of its members as this node knows them then).
fn opener(registry: Registry, filter: services::ProviderFilter, group: Option<String>) -> Opener {
    Arc::new(
        move |service: String, peer: String| -> BoxFuture<'static, Result<ChannelStream, Error>> {
            let (registry, filter, group) = (registry.clone(), filter.clone(), group.clone());
            async move {
                let filter = within_group(&registry, filter, group).await?;
                let service = ServiceName::parse_or_first(&service).map_err(|reason| {
                    Error::InvalidServiceName(p2pos_protocols::ids::invalid_service_name(
                        &service, reason,
                    ))
                })?;
                let peer = match peer.trim() {
                    "" => None,
                    peer => Some(PeerRef::parse(peer).map_err(Error::InvalidPeer)?),
                };
                let channel = registry
                    .ask::<Services, _>(|reply| services::Request::OpenChannel {
                        app_id: forward_app(),
                        service,
                        peer,
                        filter,
                        reply,
                    })
                    .await?;
                Ok(channel)
            }
            .boxed()
        },
    )
}

/// Port forwarding as a provider app: keeps a session with the registry as [`FORWARD_APP`]
/// (a new one, after a growing pause, whenever it ends), tells the actor when it is up or down,
/// accepts the channels opened to its exposures and refuses calls to them.
async fn provide(registry: Registry, actor: Addr<ForwardService>) {
    let mut retry = FIRST_RETRY;
    loop {
        let opened = registry
            .ask::<Apps, _>(|reply| apps::Request::OpenSession {
                app_id: forward_app(),
                reply,
                group: None,
            })
            .await;
        match opened {
            Ok(mut session) => {
                retry = FIRST_RETRY;
                if actor.send(SessionUp).await.is_err() {
                    return;
                }
                while let Some(incoming) = session.incoming.recv().await {
                    match incoming {
                        Incoming::Channel(channel) if !channel.service.is_empty() => {
                            let (registry, actor) = (registry.clone(), actor.clone());
                            tokio::spawn(accept(
                                registry,
                                actor,
                                channel.channel_id,
                                channel.service,
                            ));
                        }
                        // A channel to app `_node:forward` itself, not to an exposure: closed
                        // at once, so that it holds none of the node's channels meanwhile.
                        Incoming::Channel(channel) => {
                            tokio::spawn(close(registry.clone(), channel.channel_id));
                        }
                        Incoming::Call(call) => {
                            tokio::spawn(refuse_call(registry.clone(), call));
                        }
                    }
                }
                debug!("port forwarding's session ended; opening another");
                if actor.send(SessionDown).await.is_err() {
                    return;
                }
            }
            Err(e) => debug!("port forwarding has no session yet: {e}"),
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// Accepts channel `channel_id`, announced to port forwarding's session.
async fn accept_channel(
    registry: &Registry,
    channel_id: u64,
) -> Result<ChannelStream, ServiceError> {
    registry
        .ask::<Apps, _>(|reply| apps::Request::AcceptChannel {
            app_id: forward_app(),
            channel_id,
            reply,
        })
        .await
}

/// Accepts channel `channel_id` to `service` and hands it to the actor to serve.
async fn accept(registry: Registry, actor: Addr<ForwardService>, channel_id: u64, service: String) {
    match accept_channel(&registry, channel_id).await {
        Ok(channel) => actor.do_send(Serve { service, channel }),
        Err(e) => debug!(%service, "a forwarded channel failed: {e}"),
    }
}

/// Accepts channel `channel_id`, opened to port forwarding itself rather than to one of its
/// exposures, and closes it: the opener sees it end at once.
async fn close(registry: Registry, channel_id: u64) {
    if let Ok(mut channel) = accept_channel(&registry, channel_id).await {
        // A clean end (the end mark, then the stream's end), not a reset: nothing was lost.
        let _ = tokio::time::timeout(CLOSE_WITHIN, channel.io.shutdown()).await;
        debug!(peer = %channel.peer_id, "closed a channel to port forwarding itself");
    }
}

/// How long closing a channel to port forwarding itself may take.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Answers a call to an exposure: it takes channels, not calls.
async fn refuse_call(registry: Registry, call: IncomingCall) {
    let IncomingCall {
        call_id, service, ..
    } = call;
    let request = ReplyRequest {
        app_id: FORWARD_APP.to_owned(),
        call_id,
        result: Some(reply_request::Result::Error(ReplyError {
            // FAILED_PRECONDITION
            code: 9,
            message: format!(
                "'{service}' is a TCP service exposed by port forwarding: open a channel to it \
                 (Services.Channel), not a call"
            ),
        })),
    };
    let _ = registry
        .ask::<Services, _>(|reply| services::Request::Reply { request, reply })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_forwarding_acts_as_a_node_helper_id() {
        assert_eq!(
            FORWARD_APP,
            p2pos_protocols::names::helper_app_id("", "forward")
        );
        assert!(AppId::parse(FORWARD_APP).is_ok());
        assert!(p2pos_protocols::names::check_plain_app_id(FORWARD_APP).is_err());
    }
}
