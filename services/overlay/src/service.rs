//! The overlay service actor: its child spec and its life cycle (start on the network handle,
//! ordered stop, injected panics). The apps protocol is in `apps`; the services protocol is
//! the registry's (`registry`, an actor of its own), but for channels to services
//! (`service_channels`). The network itself is another service's: this one uses only its handle.

use std::{collections::HashMap, sync::Arc, time::Duration};
use tokio_util::task::AbortOnDropHandle;

use actix::prelude::*;
use futures::future::BoxFuture;
use p2pos_kernel::{
    Call, ChildHandle, ChildSpec, DeathGuard, InjectPanic, Protocol, RestartType, ServiceContext,
    ServiceError, StopService, Uses,
};
use p2pos_protocols::{
    Apps, Groups, Services, apps,
    network::{Accepting, Limits, NETWORK, NetEvent, Network},
    services, wire,
};
use tokio::sync::{Semaphore, broadcast};
use tracing::info;

use crate::{
    Config,
    channel::CHANNEL_PROTOCOL,
    delivery::{self, MESSAGE_PROTOCOL},
    inbound::{HELLO_TIMEOUT, MESSAGE_IDLE, serve_channel, serve_messages},
    mailbox::Mailbox,
    messages::Messages,
    registry::{
        CALL_PROTOCOL, CALL_STREAM_IDLE, MAX_CALL_FRAME,
        actor::{PartFailed, ServiceRegistry, StopOnDrop},
        refuse_call, serve_call,
        state::State,
    },
    sessions::SessionDirectory,
    state::OverlayService,
};

/// The service's name.
pub const NAME: &str = "overlay";
/// The store trees the overlay keeps: apps, outbox and inbox.
const STORE_TREES: &[&str] = &[
    crate::mailbox::APPS,
    crate::mailbox::OUTBOX,
    crate::mailbox::INBOX,
];
/// What the service keeps in the store, in the words of a repair report (`p2posd --repair`).
pub const STORE_CONTENTS: &[p2pos_kernel::store::Contents] = &[
    p2pos_kernel::store::Contents {
        tree: crate::mailbox::APPS,
        prefix: None,
        what: "registered apps",
    },
    p2pos_kernel::store::Contents {
        tree: crate::mailbox::OUTBOX,
        prefix: Some(b'q'),
        what: "queued outgoing messages",
    },
    p2pos_kernel::store::Contents {
        tree: crate::mailbox::OUTBOX,
        prefix: None,
        what: "outbox bookkeeping (counts, sequence numbers)",
    },
    p2pos_kernel::store::Contents {
        tree: crate::mailbox::INBOX,
        prefix: Some(b'i'),
        what: "received messages not yet acked by their app",
    },
    p2pos_kernel::store::Contents {
        tree: crate::mailbox::INBOX,
        prefix: None,
        what: "inbox bookkeeping (acks, repeat marks, quotas)",
    },
];

/// Inbound channel handshakes: at most so many at once, in all and from one peer; the hello
/// is a control frame, and must come within the hello time.
const CHANNEL_HANDSHAKES: Limits = Limits {
    total: 64,
    per_peer: 8,
    max_frame: wire::MAX_CONTROL_FRAME,
    idle: HELLO_TIMEOUT,
};
/// Inbound message streams (a sender uses one), each silent at most a minute.
const MESSAGE_STREAMS: Limits = Limits {
    total: 64,
    per_peer: 4,
    max_frame: wire::MAX_MESSAGE_FRAME,
    idle: MESSAGE_IDLE,
};
/// Inbound call streams (each lasts one call); past them a call is answered
/// `RESOURCE_EXHAUSTED` at once. Callers keep at most 32 calls in flight to one peer
/// (`registry::slots`), below the per-peer limit. Silent while the provider works: at most the
/// longest call and its grace.
const CALL_STREAMS: Limits = Limits {
    total: 512,
    per_peer: 64,
    max_frame: MAX_CALL_FRAME,
    idle: CALL_STREAM_IDLE,
};

/// The child spec the daemon hands to the kernel: a permanent service named `overlay` that
/// answers the apps protocol and the services protocol, on the network handle.
pub fn child_spec(config: Config) -> ChildSpec {
    let config = Arc::new(config);
    // One mailbox for every instance: a task of an instance that has gone may still be
    // finishing a store write, and its successor must serialise with it (one lock, one
    // sequence counter per peer).
    let mailbox = std::sync::OnceLock::new();
    ChildSpec {
        name: NAME,
        restart: RestartType::Permanent,
        uses: Uses {
            trees: STORE_TREES,
            needs: &[NETWORK],
            // Whether the two ends of a channel in a group are members.
            calls: &[Groups::NAME],
            provides: &[Apps::NAME, Services::NAME],
            ..Uses::default()
        },
        start: Box::new(move |ctx, guard| {
            start(ctx, guard, config.clone(), &mailbox).map_err(|e| e.to_string())
        }),
    }
}

fn start(
    ctx: ServiceContext,
    guard: DeathGuard,
    config: Arc<Config>,
    mailbox: &std::sync::OnceLock<Arc<Mailbox>>,
) -> Result<ChildHandle, crate::Error> {
    let setup = |e: ServiceError| crate::Error::Setup(e.to_string());
    let net: Network = ctx.registry.take(NETWORK).map_err(setup)?;
    let mailbox = match mailbox.get() {
        Some(mailbox) => mailbox.clone(),
        None => {
            // Only the kernel's actor starts instances, one at a time: nobody sets it meanwhile.
            let made = Mailbox::new(ctx.store.clone(), config.quotas())?;
            mailbox.get_or_init(|| made).clone()
        }
    };
    let max_opens = config.max_opens as usize;
    let max_channels = usize::try_from(config.max_channels)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS);
    let announcer = net.announcer()?;
    let (delivery, delivery_task) = delivery::start(
        mailbox.clone(),
        net.clone(),
        ctx.events.clone(),
        Duration::from_secs(config.unreached_message_ttl_secs),
    );
    let (messages, messages_guard) = Messages::new(mailbox.clone(), delivery, net.clone());
    let directory = SessionDirectory::default();
    let channels_refused = register_metrics(&ctx);
    // Past `max_channels`, peers' first channels take a reserve of an eighth of it.
    let peer_channels = crate::counted::PeerChannels::new(
        usize::try_from(config.max_channels_per_peer).unwrap_or(usize::MAX),
        max_channels,
    );
    let kernel_registry = ctx.registry.clone();
    let mut parts = None;
    let addr = OverlayService::create(|octx| {
        // The registry is a part of its own; a panic in it fails this instance.
        let (registry, providers, stopped) = ServiceRegistry::new(
            State::new(announcer),
            net.clone(),
            ctx.store.clone(),
            directory.clone(),
            octx.address().recipient(),
        );
        let checker = registry.services.checker(&net);
        let registry = registry.start();
        parts = Some(registry.clone());
        OverlayService {
            tasks: vec![AbortOnDropHandle::new(delivery_task)],
            accepting: Vec::new(),
            ctx,
            config,
            guard,
            net,
            mailbox,
            messages: messages.clone(),
            _messages_guard: messages_guard,
            opens: Arc::new(Semaphore::new(max_opens)),
            channels: Arc::new(Semaphore::new(max_channels)),
            peer_channels,
            channels_refused,
            watchers: HashMap::new(),
            pending: HashMap::new(),
            next_session: 0,
            directory,
            registry: registry.clone(),
            _registry_stop: StopOnDrop(registry, stopped),
            providers,
            checker,
        }
    });
    let registry = parts.ok_or_else(|| crate::Error::Setup("the registry did not start".into()))?;
    kernel_registry
        .route::<Apps>(route_apps(addr.clone().recipient(), messages))
        .map_err(setup)?;
    kernel_registry
        .route::<Services>(route_services(
            addr.clone().recipient(),
            registry.recipient(),
        ))
        .map_err(setup)?;
    Ok(ChildHandle {
        stop: addr.clone().recipient(),
        panic: addr.recipient(),
    })
}

/// Registers the overlay's metrics with the node's (as service `overlay`): inbound channels
/// refused at a peer's limits, counted by the returned counter.
fn register_metrics(ctx: &ServiceContext) -> prometheus_client::metrics::counter::Counter {
    let refused = prometheus_client::metrics::counter::Counter::default();
    let mut registry = prometheus_client::registry::Registry::with_prefix("p2pos_overlay");
    registry.register(
        "inbound_channels_refused",
        "Inbound channels refused at a remote peer's limits (open or waiting per peer), or at \
         the node's once that peer had its reserved one",
        refused.clone(),
    );
    ctx.metrics.set(NAME, registry);
    refused
}

impl Actor for OverlayService {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.ctx.config.panics_on_start(NAME) {
            panic!("injected fault in overlay: panic-on-start failpoint");
        }
        match self.accept_inbound(ctx) {
            Ok(accepting) => self.accepting = accepting,
            Err(e) => {
                // Another instance still holds a protocol: let the kernel try again.
                self.guard
                    .fail(format!("cannot accept inbound streams: {e}"));
                ctx.stop();
                return;
            }
        }
        self.tasks
            .push(follow_disconnects(&self.net, ctx.address()));
        info!(peer_id = %self.net.local_peer_id(), "overlay started");
    }
}

/// Tells the actor when a remote peer's last connection closes, so that its pending channels
/// go with it; after missed events (a lagging follower), the actor checks every peer with
/// pending channels.
fn follow_disconnects(net: &Network, actor: Addr<OverlayService>) -> AbortOnDropHandle<()> {
    let mut events = net.subscribe();
    AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(NetEvent::Disconnected(peer)) => {
                    actor.do_send(crate::pending::PeerDisconnected(Some(peer)));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    actor.do_send(crate::pending::PeerDisconnected(None));
                }
                Ok(NetEvent::Connected(_) | NetEvent::Direct(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }))
}

/// How the apps protocol's requests reach their owner: messages (`Send`, `Receive`, `Ack`)
/// go to the messages part at once, in tasks of their own; sessions and channels to the actor.
fn route_apps(
    sessions: Recipient<Call<Apps>>,
    messages: Messages,
) -> impl Fn(apps::Request) -> BoxFuture<'static, Result<(), ServiceError>> + Send + Sync + 'static
{
    move |request| match request {
        request @ (apps::Request::Send { .. }
        | apps::Request::Receive { .. }
        | apps::Request::Ack { .. }) => {
            messages.handle(request);
            Box::pin(futures::future::ready(Ok(())))
        }
        request => {
            let sessions = sessions.clone();
            Box::pin(async move {
                sessions
                    .send(Call(request))
                    .await
                    .map_err(ServiceError::from)
            })
        }
    }
}

/// How the services protocol's requests reach their owner: channels to services go to the
/// sessions part (they are announced to sessions as any channel), the rest to the registry.
fn route_services(
    sessions: Recipient<Call<Services>>,
    registry: Recipient<Call<Services>>,
) -> impl Fn(services::Request) -> BoxFuture<'static, Result<(), ServiceError>> + Send + Sync + 'static
{
    move |request| {
        let owner = match request {
            services::Request::OpenChannel { .. } => sessions.clone(),
            _ => registry.clone(),
        };
        Box::pin(async move { owner.send(Call(request)).await.map_err(ServiceError::from) })
    }
}

impl Handler<PartFailed> for OverlayService {
    type Result = ();

    fn handle(&mut self, PartFailed(why): PartFailed, ctx: &mut Self::Context) {
        self.guard.fail(why);
        ctx.stop();
    }
}

impl OverlayService {
    /// Serves the overlay's inbound protocols: channels, messages and calls.
    fn accept_inbound(&self, ctx: &mut Context<Self>) -> Result<Vec<Accepting>, crate::Error> {
        let (actor, registry) = (ctx.address().recipient(), self.ctx.registry.clone());
        let channels = self.net.accept(
            CHANNEL_PROTOCOL,
            CHANNEL_HANDSHAKES,
            move |peer, stream| serve_channel(peer, stream, actor.clone(), registry.clone()),
            p2pos_protocols::network::accept::drop_stream,
        )?;
        let (mailbox, events) = (self.mailbox.clone(), self.ctx.events.clone());
        let messages = self.net.accept(
            MESSAGE_PROTOCOL,
            MESSAGE_STREAMS,
            move |peer, stream| serve_messages(peer, stream, mailbox.clone(), events.clone()),
            p2pos_protocols::network::accept::drop_stream,
        )?;
        let (actor, net) = (self.registry.clone(), self.net.clone());
        let calls = self.net.accept(
            CALL_PROTOCOL,
            CALL_STREAMS,
            move |peer, stream| serve_call(peer, stream, actor.clone(), net.clone()),
            |peer, stream, overflow| {
                let why = format!("too many calls in progress: {overflow}; try again later");
                Some(refuse_call(peer, stream, why))
            },
        )?;
        Ok(vec![channels, messages, calls])
    }
}

impl Handler<StopService> for OverlayService {
    type Result = ();

    fn handle(&mut self, _: StopService, ctx: &mut Self::Context) {
        self.accepting.clear();
        self.tasks.clear();
        info!("overlay stopped");
        ctx.stop();
    }
}

impl Handler<InjectPanic> for OverlayService {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected fault in overlay");
    }
}
