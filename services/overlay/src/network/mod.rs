//! The network: one tokio task owns the libp2p [`Swarm`](libp2p::Swarm) and takes
//! [`Command`]s on a bounded channel, answering each on its own oneshot (rust-libp2p's
//! `file-sharing` example shape). [`NetHandle`] is the cheap, cloneable client of that task.
//!
//! - [`behaviour`]: the transports and the combined behaviour.
//! - [`event_loop`]: the task, swarm events and persistence of what it learns.
//! - [`connect`]: dialing, DHT look-ups, pings.
//! - [`info`]: tickets, peer lists and the overlay status.
//! - [`metrics`]: what the swarm task records for Prometheus.
//! - [`peers`]: known peers and remembered listen ports in the store.
//! - [`providers`]: the services this node announces in the DHT, and look-ups of providers.
//! - [`provider_cache`]: providers found by recent look-ups, reused for a while.

mod behaviour;
mod connect;
mod event_loop;
mod info;
mod metrics;
pub(crate) mod peers;
mod provider_cache;
mod providers;

use std::{collections::BTreeSet, time::Duration};

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use libp2p_stream::{Control, IncomingStreams};
use p2pos_kernel::ServiceContext;
use p2pos_proto::overlay::v1::{OverlayStatus, PeerInfo, Ticket};
use p2pos_protocols::wire;
use tokio::{
    sync::{broadcast, mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::warn;

use crate::{Error, ticket::parse_target};

/// `/p2pos/channel/1`.
pub(crate) const CHANNEL_PROTOCOL: StreamProtocol = StreamProtocol::new(wire::CHANNEL_PROTOCOL);
/// `/p2pos/msg/1`.
pub(crate) const MESSAGE_PROTOCOL: StreamProtocol = StreamProtocol::new(wire::MESSAGE_PROTOCOL);
/// `/p2pos/call/2`: one unary service call per stream.
pub(crate) const CALL_PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pos/call/2");
/// Commands waiting for the swarm task; senders wait when it is full (back-pressure).
const COMMAND_BUFFER: usize = 64;
/// Connection events buffered for the delivery task; it catches up if it lags.
const NET_EVENT_BUFFER: usize = 256;

/// Where the swarm task answers a fallible request.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// A request to the swarm task; each carries its reply channel.
pub(crate) enum Command {
    /// Connect to `peer` (using `addrs`, known addresses, then the DHT); answers the address.
    Connect {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: Reply<Multiaddr>,
    },
    /// The round-trip time to a connected peer.
    Ping {
        peer: PeerId,
        reply: Reply<Duration>,
    },
    /// A DHT look-up of `peer`'s addresses.
    FindPeer {
        peer: PeerId,
        reply: Reply<Vec<Multiaddr>>,
    },
    /// The providers of `service` in the DHT, other than this node: at most `limit`, from a
    /// look-up less than 30 s old unless `fresh`, else answered when the look-up (shared with
    /// other callers) ends, `limit` are found or `wait` has passed.
    FindProviders {
        service: String,
        limit: usize,
        wait: Duration,
        fresh: bool,
        reply: Reply<Providers>,
    },
    /// `peer` turned out not to provide `service` (any more), or not to be reachable: recent
    /// look-ups stop offering it.
    ForgetProvider { service: String, peer: PeerId },
    /// Connected peers.
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    /// The overlay status.
    Status {
        reply: oneshot::Sender<OverlayStatus>,
    },
    /// This node's ticket.
    Ticket { reply: oneshot::Sender<Ticket> },
    /// Remember addresses a user gave for `peer` (from a ticket).
    Remember { peer: PeerId, addrs: Vec<Multiaddr> },
    /// Close the swarm; answered once it is dropped.
    Shutdown { reply: oneshot::Sender<()> },
}

/// Providers of a service found in the DHT, best first.
#[derive(Debug, Clone)]
pub(crate) struct Providers {
    /// The providers.
    pub(crate) providers: Vec<RemoteProvider>,
    /// Whether they come from an earlier look-up (a fresh one may find others).
    pub(crate) cached: bool,
}

/// A provider of a service found in the DHT.
#[derive(Debug, Clone)]
pub(crate) struct RemoteProvider {
    /// The provider's node.
    pub(crate) peer: PeerId,
    /// The addresses the DHT gave for it (also remembered in the address book).
    pub(crate) addrs: Vec<Multiaddr>,
    /// Whether this node is connected to it now.
    pub(crate) connected: bool,
    /// The last ping round-trip time, when connected and measured.
    pub(crate) rtt: Option<Duration>,
}

/// What the swarm task tells other overlay tasks.
#[derive(Debug, Clone)]
pub(crate) enum NetEvent {
    /// A first connection to the peer is open.
    Connected(PeerId),
}

/// A cheap, cloneable handle to the swarm task.
#[derive(Clone)]
pub(crate) struct NetHandle {
    tx: mpsc::Sender<Command>,
    local: PeerId,
    events: broadcast::Sender<NetEvent>,
}

/// A started network: the handle, the stream control and the task.
pub(crate) struct Network {
    /// Talks to the swarm task.
    pub(crate) handle: NetHandle,
    /// Opens `/p2pos/...` streams.
    pub(crate) control: Control,
    /// Inbound `/p2pos/channel/1` streams.
    pub(crate) channels: IncomingStreams,
    /// Inbound `/p2pos/msg/1` streams.
    pub(crate) messages: IncomingStreams,
    /// Inbound `/p2pos/call/2` streams.
    pub(crate) calls: IncomingStreams,
    /// The services to announce in the DHT: the swarm task provides exactly this set.
    pub(crate) provided: watch::Sender<BTreeSet<String>>,
    /// The swarm task.
    pub(crate) task: JoinHandle<()>,
}

/// Builds the swarm and spawns its task. The task starts listening (on remembered ports where
/// it can) and dials bootstrap and known peers.
pub(crate) fn start(ctx: &ServiceContext) -> Result<Network, Error> {
    let keypair = ctx.keypair().map_err(|e| Error::Setup(e.to_string()))?;
    let swarm = behaviour::build_swarm(keypair, &ctx.config)?;
    let mut control = swarm.behaviour().stream.new_control();
    let channels = control
        .accept(CHANNEL_PROTOCOL)
        .map_err(|e| Error::Setup(e.to_string()))?;
    let messages = control
        .accept(MESSAGE_PROTOCOL)
        .map_err(|e| Error::Setup(e.to_string()))?;
    let calls = control
        .accept(CALL_PROTOCOL)
        .map_err(|e| Error::Setup(e.to_string()))?;
    let (provided, provided_rx) = watch::channel(BTreeSet::new());
    let metrics = metrics::SwarmMetrics::register(ctx);

    let mut listen = Vec::new();
    for addr in &ctx.config.listen {
        match addr.parse::<Multiaddr>() {
            Ok(a) => listen.push(a),
            Err(e) => warn!("ignoring listen address {addr:?}: {e}"),
        }
    }
    let mut bootstrap = Vec::new();
    for target in &ctx.config.bootstrap {
        match parse_target(target) {
            Ok(t) => bootstrap.push(t),
            Err(e) => warn!("ignoring bootstrap peer: {e}"),
        }
    }
    let local = *swarm.local_peer_id();
    let (tx, rx) = mpsc::channel(COMMAND_BUFFER);
    let (events, _) = broadcast::channel(NET_EVENT_BUFFER);
    let event_loop = event_loop::EventLoop::new(
        swarm,
        rx,
        events.clone(),
        ctx.events.clone(),
        ctx.store.clone(),
        metrics,
        provided_rx,
    );
    let task = tokio::spawn(event_loop.run(listen, bootstrap));
    Ok(Network {
        handle: NetHandle { tx, local, events },
        control,
        channels,
        messages,
        calls,
        provided,
        task,
    })
}

impl NetHandle {
    /// This node's peer id.
    pub(crate) fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Follows connection events.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<NetEvent> {
        self.events.subscribe()
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| Error::NetworkStopped)?;
        rx.await.map_err(|_| Error::NetworkStopped)
    }

    /// Connects to `peer` within `limit`; answers the address of the connection.
    pub(crate) async fn connect(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        limit: Duration,
    ) -> Result<Multiaddr, Error> {
        if peer == self.local {
            return Err(Error::SelfTarget(peer));
        }
        let fut = self.request(|reply| Command::Connect { peer, addrs, reply });
        match tokio::time::timeout(limit, fut).await {
            Ok(result) => result?,
            Err(_) => Err(Error::Timeout {
                what: format!("a connection to {peer}"),
                after: limit,
            }),
        }
    }

    /// Connects if needed, then answers one ping round-trip time, all within `limit`.
    pub(crate) async fn ping(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        limit: Duration,
    ) -> Result<Duration, Error> {
        let started = tokio::time::Instant::now();
        self.connect(peer, addrs, limit).await?;
        let left = limit.saturating_sub(started.elapsed());
        let fut = self.request(|reply| Command::Ping { peer, reply });
        match tokio::time::timeout(left, fut).await {
            Ok(result) => result?,
            Err(_) => Err(Error::Timeout {
                what: format!("a ping of {peer}"),
                after: limit,
            }),
        }
    }

    /// Looks `peer` up in the DHT.
    pub(crate) async fn find_peer(&self, peer: PeerId) -> Result<Vec<Multiaddr>, Error> {
        self.request(|reply| Command::FindPeer { peer, reply })
            .await?
    }

    /// Providers of `service` in the DHT (this node excluded): connected ones first, by
    /// round-trip time, then the others; at most `limit`, within `wait`. Unless `fresh`, a
    /// look-up less than 30 s old answers.
    pub(crate) async fn find_providers(
        &self,
        service: String,
        limit: usize,
        wait: Duration,
        fresh: bool,
    ) -> Result<Providers, Error> {
        let fut = self.request(|reply| Command::FindProviders {
            service,
            limit,
            wait,
            fresh,
            reply,
        });
        // The swarm task answers by `wait`; this only guards against a stalled task.
        match tokio::time::timeout(wait + Duration::from_secs(2), fut).await {
            Ok(result) => result?,
            Err(_) => Err(Error::Timeout {
                what: "a DHT look-up of providers".into(),
                after: wait,
            }),
        }
    }

    /// Connected peers.
    pub(crate) async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        self.request(|reply| Command::Peers { reply }).await
    }

    /// The overlay status.
    pub(crate) async fn status(&self) -> Result<OverlayStatus, Error> {
        self.request(|reply| Command::Status { reply }).await
    }

    /// This node's ticket.
    pub(crate) async fn ticket(&self) -> Result<Ticket, Error> {
        self.request(|reply| Command::Ticket { reply }).await
    }

    /// `peer` did not take a call or channel to `service`: recent look-ups stop offering it.
    /// Dropped if the swarm task is busy (the entry then lasts its 30 s).
    pub(crate) fn forget_provider(&self, service: &str, peer: PeerId) {
        let _ = self.tx.try_send(Command::ForgetProvider {
            service: service.to_owned(),
            peer,
        });
    }

    /// Remembers addresses given for `peer`; dropped if the swarm task is busy.
    pub(crate) fn remember(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if !addrs.is_empty() {
            let _ = self.tx.try_send(Command::Remember { peer, addrs });
        }
    }

    /// Closes the swarm and waits until it is gone.
    pub(crate) async fn shutdown(&self) {
        let _ = self.request(|reply| Command::Shutdown { reply }).await;
    }
}
