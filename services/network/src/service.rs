//! The network service actor: its child spec and its life cycle (start of the swarm task,
//! failure of that task, ordered stop, injected panics). It hands the [`Network`] handle to the
//! services that need it, through the kernel, and routes `p2pos.overlay.v1` straight to tasks
//! that answer on that handle.

use std::{sync::Arc, time::Duration};

use actix::prelude::*;
use libp2p::Multiaddr;
use p2pos_kernel::{
    ChildHandle, ChildSpec, DeathGuard, InjectPanic, Protocol, RestartType, ServiceContext,
    StopService, Uses, store::Writer,
};
use p2pos_protocols::{
    Overlay,
    network::{Error, NETWORK, Network, ticket::parse_target},
};
use tokio::{
    sync::{broadcast, mpsc},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use crate::{
    Config, behaviour,
    event_loop::{EventLoop, Parts},
    metrics::SwarmMetrics,
    overlay_api, peers,
};

/// The service's name.
pub const NAME: &str = "network";
/// How long a stop waits for the swarm task to close.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a stop waits for the peers' queued writes (within the kernel's 5 s for a stop).
const WRITER_TIMEOUT: Duration = Duration::from_secs(1);
/// Commands waiting for the swarm task; senders wait when it is full (back-pressure).
const COMMAND_BUFFER: usize = 64;
/// Connection events buffered for followers; a follower that lags catches up.
const NET_EVENT_BUFFER: usize = 256;
/// The store trees the network keeps: known peers, and what it remembers of itself.
const STORE_TREES: &[&str] = &[peers::PEERS_TREE, peers::OVERLAY_TREE];

/// What the service keeps in the store, in the words of a repair report (`p2posd --repair`).
pub const STORE_CONTENTS: &[p2pos_kernel::store::Contents] = &[
    p2pos_kernel::store::Contents {
        tree: peers::PEERS_TREE,
        prefix: None,
        what: "known peers and their addresses",
    },
    p2pos_kernel::store::Contents {
        tree: peers::OVERLAY_TREE,
        prefix: None,
        what: "remembered listen ports",
    },
];

/// The child spec the daemon hands to the kernel: a permanent service named `network` that
/// provides the network handle and answers `p2pos.overlay.v1`.
pub fn child_spec(config: Config) -> ChildSpec {
    let config = Arc::new(config);
    ChildSpec {
        name: NAME,
        restart: RestartType::Permanent,
        uses: Uses {
            // The swarm's identity, and the signatures of DHT records.
            keypair: true,
            trees: STORE_TREES,
            provides: &[NETWORK, Overlay::NAME],
            ..Uses::default()
        },
        start: Box::new(move |ctx, guard| start(ctx, guard, &config).map_err(|e| e.to_string())),
    }
}

fn start(ctx: ServiceContext, guard: DeathGuard, config: &Config) -> Result<ChildHandle, Error> {
    let setup = |e: &dyn std::fmt::Display| Error::Setup(e.to_string());
    let keypair = ctx.keypair().map_err(|e| setup(&e))?.clone();
    let mut metrics_root = prometheus_client::registry::Registry::default();
    let swarm = behaviour::build_swarm(&keypair, config, &mut metrics_root)?;
    let control = swarm.behaviour().stream.new_control();
    let whois_control = control.clone();
    let mut listen = Vec::new();
    for addr in &config.listen {
        match addr.parse::<Multiaddr>() {
            Ok(a) => listen.push(a),
            Err(e) => warn!("ignoring listen address {addr:?}: {e}"),
        }
    }
    // Checked by `Config::validate` at start.
    let external: Vec<Multiaddr> = config
        .external_addresses
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let mut bootstrap = Vec::new();
    for target in &config.bootstrap {
        match parse_target(target) {
            Ok(t) => bootstrap.push(t),
            Err(e) => warn!("ignoring bootstrap peer: {e}"),
        }
    }
    let (writer, writer_thread) = Writer::spawn(ctx.store.clone(), NAME).map_err(|e| setup(&e))?;
    let local = *swarm.local_peer_id();
    let (commands, rx) = mpsc::channel(COMMAND_BUFFER);
    let (events, _) = broadcast::channel(NET_EVENT_BUFFER);
    let network = Network::new(commands, control, local, events.clone());
    let metrics = SwarmMetrics::register(&ctx, metrics_root, network.streams_refused());
    let event_loop = EventLoop::new(Parts {
        swarm,
        keypair,
        commands: rx,
        net_events: events.clone(),
        events: ctx.events.clone(),
        store: ctx.store.clone(),
        writer,
        metrics,
        trust_private: config.trust_private_addresses,
    });
    let task = tokio::spawn(event_loop.run(listen, external, bootstrap));
    // (The writer thread ends with the event loop, which holds the last writer.)
    ctx.registry
        .provide(NETWORK, network.clone())
        .map_err(|e| setup(&e))?;
    let whois = crate::whois::serve(&network, whois_control).map_err(|e| setup(&e))?;
    let service = NetworkService {
        failpoint_panic: ctx.config.panics_on_start(NAME),
        abort: task.abort_handle(),
        swarm_task: Some(task),
        writer_thread: Some(writer_thread),
        guard,
        network: network.clone(),
        stopping: false,
        _whois: whois,
    };
    let registry = ctx.registry.clone();
    let addr = service.start();
    // Each request is answered by a task of its own, straight from the route: the handle is
    // all it needs, so no request waits for the actor's mailbox.
    registry
        .route::<Overlay>(move |request| {
            tokio::spawn(overlay_api::handle(network.clone(), request));
            Box::pin(std::future::ready(Ok(())))
        })
        .map_err(|e| setup(&e))?;
    Ok(ChildHandle {
        stop: addr.clone().recipient(),
        panic: addr.recipient(),
    })
}

/// The network actor: holds the swarm task (aborted when the actor goes, however it goes) and
/// answers the overlay protocol through its own handle.
pub struct NetworkService {
    failpoint_panic: bool,
    abort: tokio::task::AbortHandle,
    swarm_task: Option<JoinHandle<()>>,
    /// The store writer of the peers' addresses; it ends once the event loop has gone and
    /// its writes are done, which a stop waits for (the kernel flushes the store after).
    writer_thread: Option<std::thread::JoinHandle<()>>,
    guard: DeathGuard,
    network: Network,
    stopping: bool,
    /// Serves `/p2pos/whois/1` while the service runs.
    _whois: p2pos_protocols::network::Accepting,
}

impl Drop for NetworkService {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

impl Actor for NetworkService {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.failpoint_panic {
            panic!("injected fault in {NAME}: panic-on-start failpoint");
        }
        if let Some(task) = self.swarm_task.take() {
            ctx.spawn(
                task.into_actor(self)
                    .map(|result, act, ctx| act.swarm_ended(result, ctx)),
            );
        }
        info!(peer_id = %self.network.local_peer_id(), "network started");
    }
}

impl NetworkService {
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

impl Handler<StopService> for NetworkService {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopService, _: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        let network = self.network.clone();
        let abort = self.abort.clone();
        let writer_thread = self.writer_thread.take();
        Box::pin(
            async move {
                if tokio::time::timeout(SHUTDOWN_TIMEOUT, network.shutdown())
                    .await
                    .is_err()
                {
                    warn!("the network did not close within {SHUTDOWN_TIMEOUT:?}; aborting it");
                }
                abort.abort();
                if let Some(thread) = writer_thread {
                    let joined = tokio::task::spawn_blocking(move || thread.join());
                    if tokio::time::timeout(WRITER_TIMEOUT, joined).await.is_err() {
                        warn!("the peers' store writer did not finish within {WRITER_TIMEOUT:?}");
                    }
                }
            }
            .into_actor(self)
            .map(|(), _, ctx| {
                info!("network stopped");
                ctx.stop();
            }),
        )
    }
}

impl Handler<InjectPanic> for NetworkService {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected fault in {NAME}");
    }
}
