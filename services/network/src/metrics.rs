//! Swarm metrics: libp2p's own (`libp2p::metrics`) and the overlay's, in a fresh registry per
//! start handed to the kernel as `overlay`.
//! libp2p's are named `libp2p_*`, the overlay's `p2pos_overlay_*`.

use libp2p::{metrics::Recorder, swarm::SwarmEvent};
use p2pos_kernel::ServiceContext;
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge, histogram::Histogram},
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
    /// Relay reservations accepted (renewals not counted).
    relay_reservations: Counter,
    /// Seconds from start to the first relay reservation.
    first_reservation: Histogram,
    /// Peers reached through a relay that got a direct connection, by hole punching.
    pub(crate) hole_punch_successes: Counter,
    /// Hole punches that failed (every attempt through one relayed connection).
    pub(crate) hole_punch_failures: Counter,
    /// Connections to a peer reached through a relay that went direct.
    pub(crate) upgrades: Counter,
}

impl SwarmMetrics {
    /// New metrics, registered in `root` (which holds the transport's byte counters already)
    /// and handed to the kernel under the service's name.
    pub(crate) fn register(
        ctx: &ServiceContext,
        mut root: Registry,
        streams_refused: p2pos_protocols::network::StreamsRefused,
    ) -> Self {
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
        let relay_reservations = Counter::default();
        registry.register(
            "relay_reservations",
            "Relay reservations this node got (renewals not counted)",
            relay_reservations.clone(),
        );
        let first_reservation = Histogram::new([0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]);
        registry.register(
            "first_relay_reservation_seconds",
            "Time from start until this node held its first relay reservation",
            first_reservation.clone(),
        );
        let hole_punch_successes = Counter::default();
        registry.register(
            "hole_punch_successes",
            "Hole punches (DCUtR) that reached a direct connection",
            hole_punch_successes.clone(),
        );
        let hole_punch_failures = Counter::default();
        registry.register(
            "hole_punch_failures",
            "Hole punches (DCUtR) that failed after every attempt",
            hole_punch_failures.clone(),
        );
        let upgrades = Counter::default();
        registry.register(
            "direct_upgrades",
            "Peers reached only through a relay that got a direct connection (hole punch or dial)",
            upgrades.clone(),
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
            relay_reservations,
            first_reservation,
            hole_punch_successes,
            hole_punch_failures,
            upgrades,
        }
    }

    /// A relay accepted a reservation.
    pub(crate) fn relay_reservation(&self) {
        self.relay_reservations.inc();
    }

    /// The first reservation of this run came `after` the start.
    pub(crate) fn first_reservation(&self, after: std::time::Duration) {
        self.first_reservation.observe(after.as_secs_f64());
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
