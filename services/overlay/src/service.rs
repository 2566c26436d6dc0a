//! The overlay service actor: its child spec, its life cycle (start, failure of the swarm task,
//! ordered stop, injected panics) and the `p2pos.overlay.v1` protocol. The apps protocol is in
//! `apps`, the services protocol in `registry`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use actix::prelude::*;
use libp2p_stream::{Control, IncomingStreams};
use p2pos_kernel::{
    Call, ChildHandle, ChildSpec, DeathGuard, InjectPanic, Protocol, RestartType, ServiceContext,
    ServiceError, StopService, Uses,
};
use p2pos_proto::overlay::v1::{OverlayRequest, OverlayResponse};
use p2pos_protocols::{Apps, Overlay, Services};
use tokio::{sync::Semaphore, task::JoinHandle};
use tracing::{error, info, warn};

use crate::{
    apps::AppState,
    delivery::{self, Delivery},
    forward::Forwarding,
    inbound::{Limits, accept_loop, drop_stream, serve_channel, serve_messages},
    mailbox::Mailbox,
    network::{self, NetHandle},
    overlay_api,
    pending::PendingChannel,
    registry::{self, refuse_call, serve_call},
    task::AbortOnDrop,
};

/// The service's name.
pub const NAME: &str = "overlay";
/// The store trees the overlay keeps: known peers and listen ports, apps, outbox and inbox,
/// exposures.
const STORE_TREES: &[&str] = &[
    network::peers::PEERS_TREE,
    network::peers::OVERLAY_TREE,
    crate::mailbox::APPS,
    crate::mailbox::OUTBOX,
    crate::mailbox::INBOX,
    crate::forward::EXPOSURES_TREE,
];
/// How long a stop waits for the swarm task to close.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// Most inbound channel handshakes at once, in all and from one peer.
const MAX_HANDSHAKES: Limits = Limits {
    total: 64,
    per_peer: 8,
};
/// Most inbound message streams at once, in all and from one peer (a sender uses one).
const MAX_MESSAGE_STREAMS: Limits = Limits {
    total: 64,
    per_peer: 4,
};
/// Most inbound call streams at once, in all and from one peer (each lasts one call); past
/// them a call is answered `RESOURCE_EXHAUSTED` at once. Callers keep at most 32 calls in
/// flight to one peer (`registry::slots`), below the per-peer limit.
const MAX_CALL_STREAMS: Limits = Limits {
    total: 512,
    per_peer: 64,
};
/// Most outbound channel opens at once.
pub(crate) const MAX_OPENS: usize = 32;

/// The child spec the daemon hands to the kernel: a permanent service named `overlay` that
/// answers `p2pos.overlay.v1`, the apps protocol and the services protocol.
pub fn child_spec() -> ChildSpec {
    ChildSpec {
        name: NAME,
        restart: RestartType::Permanent,
        uses: Uses {
            // The swarm signs with the node's key.
            keypair: true,
            trees: STORE_TREES,
            provides: &[Overlay::NAME, Apps::NAME, Services::NAME],
            ..Uses::default()
        },
        start: Box::new(|ctx, guard| start(ctx, guard).map_err(|e| e.to_string())),
    }
}

fn start(ctx: ServiceContext, guard: DeathGuard) -> Result<ChildHandle, crate::Error> {
    let mailbox = Mailbox::new(ctx.store.clone(), ctx.config.max_inbox_messages)?;
    let max_channels = usize::try_from(ctx.config.max_channels)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS);
    let forwarding = Forwarding::load(ctx.store.clone())?;
    let network = network::start(&ctx)?;
    let (delivery, delivery_task) = delivery::start(
        mailbox.clone(),
        network.handle.clone(),
        network.control.clone(),
        ctx.events.clone(),
    );
    let service = OverlayService {
        tasks: vec![
            AbortOnDrop::new(&network.task),
            AbortOnDrop::new(&delivery_task),
        ],
        ctx,
        guard,
        net: network.handle,
        control: network.control,
        mailbox,
        delivery,
        startup: Some(Startup {
            swarm_task: network.task,
            channels: network.channels,
            messages: network.messages,
            calls: network.calls,
        }),
        stopping: false,
        opens: Arc::new(Semaphore::new(MAX_OPENS)),
        channels: Arc::new(Semaphore::new(max_channels)),
        apps: HashMap::new(),
        pending: HashMap::new(),
        receivers: HashMap::new(),
        next_session: 0,
        services: registry::State::new(network.provided),
        forwarding,
    };
    let registry = service.ctx.registry.clone();
    let addr = service.start();
    let setup = |e: ServiceError| crate::Error::Setup(e.to_string());
    registry
        .register::<Overlay>(addr.clone().recipient())
        .map_err(setup)?;
    registry
        .register::<Apps>(addr.clone().recipient())
        .map_err(setup)?;
    registry
        .register::<Services>(addr.clone().recipient())
        .map_err(setup)?;
    Ok(ChildHandle {
        stop: addr.clone().recipient(),
        panic: addr.recipient(),
    })
}

/// What `started` takes over from the start function.
struct Startup {
    swarm_task: JoinHandle<()>,
    channels: IncomingStreams,
    messages: IncomingStreams,
    calls: IncomingStreams,
}

/// The overlay actor: holds the handles of the swarm task and the other overlay tasks, the
/// app sessions, the pending inbound channels, the service registry and port forwarding.
pub struct OverlayService {
    /// Aborted when the actor goes, in this order: swarm, delivery, accept loops.
    tasks: Vec<AbortOnDrop>,
    pub(crate) ctx: ServiceContext,
    guard: DeathGuard,
    pub(crate) net: NetHandle,
    pub(crate) control: Control,
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) delivery: Delivery,
    startup: Option<Startup>,
    stopping: bool,
    /// Bounds concurrent outbound channel opens.
    pub(crate) opens: Arc<Semaphore>,
    /// One permit per channel open or waiting to be accepted, in either direction
    /// (`Config::max_channels`); a channel's byte stream holds its permit.
    pub(crate) channels: Arc<Semaphore>,
    /// Live sessions per app.
    pub(crate) apps: HashMap<String, AppState>,
    /// Inbound channels announced but not yet accepted.
    pub(crate) pending: HashMap<u64, PendingChannel>,
    /// The live `Receive` feeder per app.
    pub(crate) receivers: HashMap<String, AbortOnDrop>,
    pub(crate) next_session: u64,
    /// Services provided here, and calls waiting for their providers.
    pub(crate) services: registry::State,
    /// Exposures and forwards.
    pub(crate) forwarding: Forwarding,
}

impl Actor for OverlayService {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.ctx.config.panics_on_start(NAME) {
            panic!("injected fault in overlay: panic-on-start failpoint");
        }
        let Some(startup) = self.startup.take() else {
            return;
        };
        let Startup {
            swarm_task,
            channels,
            messages,
            calls,
        } = startup;
        ctx.spawn(
            swarm_task
                .into_actor(self)
                .map(|result, act, ctx| act.swarm_ended(result, ctx)),
        );
        let actor = ctx.address().recipient();
        self.tasks.push(AbortOnDrop::spawn(accept_loop(
            channels,
            MAX_HANDSHAKES,
            "channel",
            move |peer, stream| serve_channel(peer, stream, actor.clone()),
            drop_stream,
        )));
        let mailbox = self.mailbox.clone();
        let events = self.ctx.events.clone();
        self.tasks.push(AbortOnDrop::spawn(accept_loop(
            messages,
            MAX_MESSAGE_STREAMS,
            "message",
            move |peer, stream| serve_messages(peer, stream, mailbox.clone(), events.clone()),
            drop_stream,
        )));
        let actor = ctx.address().recipient();
        self.tasks.push(AbortOnDrop::spawn(accept_loop(
            calls,
            MAX_CALL_STREAMS,
            "call",
            move |peer, stream| serve_call(peer, stream, actor.clone()),
            |peer, stream, overflow| {
                let why = format!("too many calls in progress: {overflow}; try again later");
                Some(refuse_call(peer, stream, why))
            },
        )));
        // Exposures kept from before are services from the start.
        self.publish_services();
        info!(peer_id = %self.net.local_peer_id(), "overlay started");
    }
}

impl OverlayService {
    fn swarm_ended(&mut self, result: Result<(), tokio::task::JoinError>, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let why = match result {
            Ok(()) => "the network task ended unexpectedly".to_owned(),
            Err(e) if e.is_panic() => "the network task panicked".to_owned(),
            Err(e) => format!("the network task was cancelled: {e}"),
        };
        error!("{why}");
        self.guard.fail(why);
        ctx.stop();
    }
}

impl Handler<StopService> for OverlayService {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopService, _: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        let net = self.net.clone();
        Box::pin(
            async move {
                if tokio::time::timeout(SHUTDOWN_TIMEOUT, net.shutdown())
                    .await
                    .is_err()
                {
                    warn!("the network did not close within {SHUTDOWN_TIMEOUT:?}; aborting it");
                }
            }
            .into_actor(self)
            .map(|(), act, ctx| {
                act.tasks.clear();
                info!("overlay stopped");
                ctx.stop();
            }),
        )
    }
}

impl Handler<InjectPanic> for OverlayService {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected fault in overlay");
    }
}

impl Handler<Call<Overlay>> for OverlayService {
    type Result = ResponseFuture<Result<OverlayResponse, ServiceError>>;

    fn handle(&mut self, Call(request): Call<Overlay>, _: &mut Self::Context) -> Self::Result {
        let net = self.net.clone();
        let request: OverlayRequest = request;
        Box::pin(async move {
            overlay_api::handle(net, request)
                .await
                .map_err(ServiceError::from)
        })
    }
}
