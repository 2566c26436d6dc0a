//! What the swarm task knows of this node's place behind NATs, kept in the
//! [`EventLoop`](crate::event_loop::EventLoop) and worked on by `relays` (reservations),
//! `direct` (hole punching, upgrades, why a peer is relayed), `peer_records` (the address
//! record put in the DHT) and `whois` (asks to connected peers).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::Duration,
};

use bytes::Bytes;
use libp2p::{
    Multiaddr, PeerId, core::transport::ListenerId, multiaddr::Protocol, swarm::ConnectionId,
};
use tokio::time::Instant;

use crate::scope::ip_of;

/// Most relays remembered this run, to reserve on again.
const MAX_KNOWN_RELAYS: usize = 16;
/// The first wait before trying a relay again after its reservation failed or ended.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The longest wait before trying a relay again.
const MAX_BACKOFF: Duration = Duration::from_secs(120);

/// The relays this node knows and the reservations it holds.
pub(crate) struct Relays {
    /// Relays seen this run (identify listed the relay protocol), newest last.
    pub(crate) known: Vec<PeerId>,
    /// A listener per relay reserved on (pending or accepted).
    pub(crate) listeners: HashMap<PeerId, ListenerId>,
    /// Relays whose reservation was accepted.
    pub(crate) held: HashMap<PeerId, Instant>,
    /// Relays not to be tried before the instant given, and the back-off after that.
    pub(crate) backoff: HashMap<PeerId, (Instant, Duration)>,
    /// When the node started, for the time its first reservation took.
    pub(crate) started: Instant,
    /// Whether a reservation was held yet this run.
    pub(crate) first_held: bool,
}

impl Default for Relays {
    fn default() -> Self {
        Self {
            known: Vec::new(),
            listeners: HashMap::new(),
            held: HashMap::new(),
            backoff: HashMap::new(),
            started: Instant::now(),
            first_held: false,
        }
    }
}

impl Relays {
    /// Notes that `peer` serves as a relay.
    /// Known ones keep their place (a relay that identifies again, or many times, does not
    /// move ahead of the others); past [`MAX_KNOWN_RELAYS`] the first known is forgotten, with
    /// its back-off.
    pub(crate) fn know(&mut self, peer: PeerId) {
        if self.known.contains(&peer) {
            return;
        }
        if self.known.len() >= MAX_KNOWN_RELAYS {
            let gone = self.known.remove(0);
            self.backoff.remove(&gone);
        }
        self.known.push(peer);
    }

    /// Whether `relay` may be tried now.
    pub(crate) fn ready(&self, relay: &PeerId, now: Instant) -> bool {
        self.backoff.get(relay).is_none_or(|(at, _)| *at <= now)
    }

    /// Holds `relay` back for longer each time it fails.
    pub(crate) fn back_off(&mut self, relay: PeerId) {
        let next = self
            .backoff
            .get(&relay)
            .map_or(FIRST_BACKOFF, |(_, d)| (*d * 2).min(MAX_BACKOFF));
        self.backoff.insert(relay, (Instant::now() + next, next));
    }

    /// Whether `peer` is a relay seen this run.
    pub(crate) fn is_known(&self, peer: &PeerId) -> bool {
        self.known.contains(peer)
    }

    /// The relays a reservation is held on.
    pub(crate) fn held(&self) -> impl Iterator<Item = &PeerId> {
        self.held.keys()
    }

    /// Whether `listener` is a relay reservation's.
    pub(crate) fn is_reservation(&self, listener: ListenerId) -> bool {
        self.listeners.values().any(|id| *id == listener)
    }
}

/// How hole punching went with a peer.
pub(crate) enum Punch {
    Succeeded,
    Failed(String),
}

/// Hole punching per peer, and where peers see this node.
#[derive(Default)]
pub(crate) struct Direct {
    pub(crate) punches: HashMap<PeerId, Punch>,
    /// The addresses each directly connected peer observed this node at, one per transport
    /// (TCP, QUIC: an identify over one does not replace what was seen over the other), when
    /// they differ from every address this node listens on (so a NAT mapped them).
    pub(crate) observed: HashMap<(PeerId, bool), Multiaddr>,
    /// Observers dialled over a transport to judge the NAT's mapping (`probe_mapping`), each
    /// with that transport (whether QUIC); forgotten with the observer.
    pub(crate) mapping_probed: HashSet<(PeerId, bool)>,
    /// Hole punching tried again per peer (`punch_again`).
    pub(crate) again: HashMap<PeerId, Again>,
    /// Peers this node dialled through a relay (so DCUtR has it dial them as itself when
    /// hole punching; the other side dials in the listener's role), and peers that reached it
    /// through a relay.
    pub(crate) dialled_through_relay: HashSet<PeerId>,
    pub(crate) accepted_through_relay: HashSet<PeerId>,
    /// Refused hole punches being dialled again, per peer.
    pub(crate) sprays: HashMap<PeerId, Spray>,
    /// The hole-punch attempts with each connected peer, oldest first (at most
    /// [`MAX_PUNCHES_KEPT`] each): each direct dial that failed while the peer was reached only
    /// through relays (DCUtR's, not its dials again), and how each DCUtR run ended; when (ms
    /// since the Unix epoch) and how.
    pub(crate) history: HashMap<PeerId, VecDeque<Attempt>>,
}

/// Hole punching with a peer tried again after a failure: how often, when next, and the
/// relayed dial of the latest try.
#[derive(Default)]
pub(crate) struct Again {
    pub(crate) tries: u32,
    pub(crate) due: Option<Instant>,
    pub(crate) dialling: Option<ConnectionId>,
}

/// A hole-punch attempt: when it ended (ms since the Unix epoch), and its error if it failed.
pub(crate) type Attempt = (u64, Result<(), String>);

/// Hole punches remembered per peer, for diagnosis.
pub(crate) const MAX_PUNCHES_KEPT: usize = 8;

/// The dials again of a peer's refused hole punches.
pub(crate) struct Spray {
    /// When the current window opened.
    pub(crate) opened: Instant,
    /// Dials again in the current window.
    pub(crate) dials: u32,
    /// Windows opened for the peer while it is connected.
    pub(crate) windows: u32,
    /// The dials again in flight: their failures go on within their window, never open one.
    pub(crate) in_flight: HashSet<ConnectionId>,
}

impl Direct {
    /// Forgets a peer that is gone.
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.punches.remove(peer);
        self.observed.retain(|(observer, _), _| observer != peer);
        self.mapping_probed.retain(|(observer, _)| observer != peer);
        self.again.remove(peer);
        self.dialled_through_relay.remove(peer);
        self.accepted_through_relay.remove(peer);
        self.sprays.remove(peer);
        self.history.remove(peer);
    }

    /// Notes how a hole punch with `peer` ended.
    pub(crate) fn record(&mut self, peer: PeerId, outcome: Result<(), String>) {
        let kept = self.history.entry(peer).or_default();
        if kept.len() >= MAX_PUNCHES_KEPT {
            kept.pop_front();
        }
        kept.push_back((p2pos_kernel::events::now_ms(), outcome));
    }

    /// How this node's NAT maps ports, given the ports it listens on (each with whether it is
    /// QUIC's): "endpoint-independent" when an observer saw it at the port it listens on (a
    /// connection from that port kept it through the NAT) or two observers saw the same
    /// port; "port-randomizing" when two observers saw different ports of one public IP and
    /// none saw a listening port (a dial from another port, one made before the node
    /// listened, is seen elsewhere too); else "unknown". Per transport.
    pub(crate) fn mapping(&self, listening: &[(u16, bool)]) -> &'static str {
        // (public IP, transport) → the port each observer saw.
        let mut seen: HashMap<(std::net::IpAddr, bool), Vec<u16>> = HashMap::new();
        for addr in self.observed.values() {
            if let (Some(ip), Some((port, quic))) = (ip_of(addr), port_of(addr)) {
                seen.entry((ip, quic)).or_default().push(port);
            }
        }
        let mut verdict = "unknown";
        for ((_, quic), ports) in &seen {
            if ports.iter().any(|p| listening.contains(&(*p, *quic))) {
                verdict = "endpoint-independent";
            } else if ports.len() >= 2 {
                if ports.iter().any(|p| *p != ports[0]) {
                    return "port-randomizing";
                }
                verdict = "endpoint-independent";
            }
        }
        verdict
    }
}

/// The port and whether it is QUIC (UDP), of a direct address.
pub(crate) fn port_of(addr: &Multiaddr) -> Option<(u16, bool)> {
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Tcp(n) => port = Some((n, false)),
            Protocol::Udp(n) => port = Some((n, true)),
            _ => {}
        }
    }
    port
}

/// What this node last put in the DHT about itself, and when.
#[derive(Default)]
pub(crate) struct Published {
    pub(crate) addrs: Vec<Multiaddr>,
    pub(crate) at: Option<Instant>,
    /// Whether the addresses may have changed since.
    pub(crate) dirty: bool,
    /// This node's record as whois answers it: when signed, for which addresses, and the
    /// envelope.
    pub(crate) own: Option<(Instant, Vec<Multiaddr>, Bytes)>,
}

/// What an asked peer answered: the peer asked about, who answered, and the record's bytes.
pub(crate) struct Answer {
    pub(crate) about: PeerId,
    pub(crate) from: PeerId,
    pub(crate) record: Option<Bytes>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(direct: &mut Direct, port: u16) {
        direct.observed.insert(
            (PeerId::random(), false),
            format!("/ip4/5.0.0.14/tcp/{port}").parse().expect("addr"),
        );
    }

    #[test]
    fn the_nat_mapping_is_judged_from_the_ports_peers_see() {
        let listening = [(4001, false)];
        let mut direct = Direct::default();
        assert_eq!(direct.mapping(&listening), "unknown");
        seen(&mut direct, 50_000);
        assert_eq!(direct.mapping(&listening), "unknown", "one observer");
        seen(&mut direct, 50_001);
        assert_eq!(direct.mapping(&listening), "port-randomizing");
        // A third saw the listening port: the NAT keeps ports (the others were dials from
        // ephemeral ports).
        seen(&mut direct, 4001);
        assert_eq!(direct.mapping(&listening), "endpoint-independent");
        let mut same = Direct::default();
        seen(&mut same, 50_000);
        seen(&mut same, 50_000);
        assert_eq!(same.mapping(&listening), "endpoint-independent");
        // QUIC's port says nothing of TCP's.
        assert_eq!(same.mapping(&[(50_000, true)]), "endpoint-independent");
    }

    #[test]
    fn what_an_observer_saw_over_one_transport_stays_when_it_sees_the_other() {
        let mut direct = Direct::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let at = |s: &str| -> Multiaddr { s.parse().expect("addr") };
        let mut saw = |peer, addr: &str| {
            let addr = at(addr);
            let quic = port_of(&addr).is_some_and(|(_, quic)| quic);
            direct.observed.insert((peer, quic), addr);
        };
        saw(a, "/ip4/5.0.0.14/udp/40000/quic-v1");
        saw(b, "/ip4/5.0.0.14/udp/40001/quic-v1");
        // A's identify over TCP later: its QUIC observation stays.
        saw(a, "/ip4/5.0.0.14/tcp/41000");
        assert_eq!(direct.mapping(&[(4001, true)]), "port-randomizing");
        direct.forget(&a);
        assert_eq!(
            direct.observed.len(),
            1,
            "every observation of a peer gone is forgotten"
        );
    }
}
