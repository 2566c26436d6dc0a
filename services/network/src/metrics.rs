//! Swarm metrics: libp2p's own (`libp2p::metrics`) and the overlay's, in a fresh registry per
//! start handed to the kernel as `overlay`.
//! libp2p's are named `libp2p_*`, the overlay's `p2pos_overlay_*`.

use libp2p::{metrics::Recorder, swarm::SwarmEvent};
use p2pos_kernel::ServiceContext;
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

/// What the swarm task records.
pub(crate) struct SwarmMetrics {
    libp2p: libp2p::metrics::Metrics,
    connected_peers: Gauge,
    connections: Counter,
    dial_failures: Counter,
    /// Group gossip messages accepted (their author is a member).
    pub(crate) gossip_accepted: Counter,
    /// Group gossip messages rejected (their author is not a member of the group).
    pub(crate) gossip_rejected: Counter,
}

impl SwarmMetrics {
    /// New metrics, registered with the kernel under the service's name.
    pub(crate) fn register(
        ctx: &ServiceContext,
        streams_refused: p2pos_protocols::network::StreamsRefused,
    ) -> Self {
        let mut root = Registry::default();
        let libp2p = libp2p::metrics::Metrics::new(&mut root);
        let registry = root.sub_registry_with_prefix("p2pos_overlay");
        let connected_peers = Gauge::default();
        let connections = Counter::default();
        let dial_failures = Counter::default();
        registry.register(
            "connected_peers",
            "Peers with at least one open connection",
            connected_peers.clone(),
        );
        registry.register(
            "connections_established",
            "Connections established, inbound and outbound",
            connections.clone(),
        );
        registry.register(
            "dial_failures",
            "Outbound connection attempts that failed",
            dial_failures.clone(),
        );
        let gossip_accepted = Counter::default();
        let gossip_rejected = Counter::default();
        registry.register(
            "gossip_accepted",
            "Group pubsub messages accepted: their author is a member of the group",
            gossip_accepted.clone(),
        );
        registry.register(
            "gossip_rejected",
            "Group pubsub messages rejected: their author is not a member of the group",
            gossip_rejected.clone(),
        );
        registry.register(
            "inbound_streams_refused",
            "Inbound node-to-node streams refused past a protocol's limits (in all, or from one \
             peer)",
            streams_refused,
        );
        ctx.metrics.set(crate::NAME, root);
        Self {
            libp2p,
            connected_peers,
            connections,
            dial_failures,
            gossip_accepted,
            gossip_rejected,
        }
    }

    /// Records a swarm event; `connected` is the number of connected peers after it.
    pub(crate) fn record_swarm<E>(&self, event: &SwarmEvent<E>, connected: usize) {
        self.libp2p.record(event);
        match event {
            SwarmEvent::ConnectionEstablished { .. } => {
                self.connections.inc();
            }
            SwarmEvent::OutgoingConnectionError { .. } => {
                self.dial_failures.inc();
            }
            _ => {}
        }
        self.connected_peers
            .set(i64::try_from(connected).unwrap_or(i64::MAX));
    }

    /// Records a behaviour event libp2p has metrics for.
    pub(crate) fn record<E>(&self, event: &E)
    where
        libp2p::metrics::Metrics: Recorder<E>,
    {
        self.libp2p.record(event);
    }
}
