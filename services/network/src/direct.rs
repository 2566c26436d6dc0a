//! Direct connections to peers first reached through a relay: how hole punching (DCUtR) went
//! with each, the upgrade once a direct connection opens (an event, a metric; new streams take
//! the direct connection, see `vendor/libp2p-stream`), and why a peer is still relayed — which
//! includes how this node's NAT maps ports, judged from the addresses peers observe it at.

use std::collections::HashMap;

use libp2p::{Multiaddr, PeerId, dcutr, multiaddr::Protocol};
use p2pos_proto::monitor::v1::{ConnectionUpgraded, event::Kind};
use tracing::{debug, info};

use crate::{
    connect::ip_of,
    event_loop::EventLoop,
    scope::{Scope, is_relayed, scope},
};

/// Most observations of this node's address kept (one per connected observer).
const MAX_OBSERVATIONS: usize = 64;
/// The longest reason kept for a failed hole punch.
const MAX_REASON: usize = 400;

/// How hole punching went with a peer.
enum Punch {
    Succeeded,
    Failed(String),
}

/// Hole punching per peer, and where peers see this node.
#[derive(Default)]
pub(crate) struct Direct {
    punches: HashMap<PeerId, Punch>,
    /// The address each directly connected peer observed this node at, when it differs from
    /// every address this node listens on (so a NAT mapped it).
    observed: HashMap<PeerId, Multiaddr>,
}

impl Direct {
    /// Forgets a peer that is gone.
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.punches.remove(peer);
        self.observed.remove(peer);
    }

    /// How this node's NAT maps ports: "endpoint-independent" when two observers on different
    /// IPs saw the same mapped port, "port-randomizing" when they saw different ports of one
    /// public IP (per transport), else "unknown".
    fn mapping(&self) -> &'static str {
        // (public IP, transport) → (observer IPs with the port each saw).
        let mut seen: HashMap<(std::net::IpAddr, bool), Vec<u16>> = HashMap::new();
        for addr in self.observed.values() {
            if let (Some(ip), Some((port, quic))) = (ip_of(addr), port_of(addr)) {
                seen.entry((ip, quic)).or_default().push(port);
            }
        }
        let mut verdict = "unknown";
        for ports in seen.values().filter(|p| p.len() >= 2) {
            if ports.iter().any(|p| *p != ports[0]) {
                return "port-randomizing";
            }
            verdict = "endpoint-independent";
        }
        verdict
    }
}

/// How DCUtR's failure reads (the start of it).
const GAVE_UP: &str = "Giving up";

/// `reason`, cut to [`MAX_REASON`] bytes.
fn capped(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// The port and whether it is QUIC (UDP), of a direct address.
fn port_of(addr: &Multiaddr) -> Option<(u16, bool)> {
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

impl EventLoop {
    /// A connection to `peer` at `addr` opened, after `before` others (their addresses).
    pub(crate) fn on_connection_added(
        &mut self,
        peer: PeerId,
        addr: &Multiaddr,
        before: &[Multiaddr],
    ) {
        let relayed_only = !before.is_empty() && before.iter().all(is_relayed);
        if is_relayed(addr) || !relayed_only {
            return;
        }
        info!(%peer, %addr, "connected directly to a peer reached through a relay");
        self.metrics.upgrades.inc();
        let _ = self
            .net_events
            .send(p2pos_protocols::network::NetEvent::Direct(peer));
        self.events
            .publish(Kind::ConnectionUpgraded(ConnectionUpgraded {
                peer_id: peer.to_string(),
                address: addr.to_string(),
            }));
    }

    /// A dial of `peer` failed: while it is reached only through relays, that was an attempt
    /// to go direct (hole punching's, or another), and its error says why it is not.
    pub(crate) fn direct_dial_failed(&mut self, peer: PeerId, error: &libp2p::swarm::DialError) {
        let relayed_only = self
            .connections
            .get(&peer)
            .is_some_and(|c| !c.is_empty() && c.iter().all(|(_, a)| is_relayed(a)));
        if !relayed_only || matches!(self.direct.punches.get(&peer), Some(Punch::Succeeded)) {
            return;
        }
        self.direct
            .punches
            .insert(peer, Punch::Failed(capped(error.to_string())));
    }

    /// DCUtR's outcome with a peer.
    pub(crate) fn on_dcutr(&mut self, event: dcutr::Event) {
        let dcutr::Event {
            remote_peer_id: peer,
            result,
        } = event;
        let punch = match result {
            Ok(_) => {
                self.metrics.hole_punch_successes.inc();
                Punch::Succeeded
            }
            Err(e) => {
                self.metrics.hole_punch_failures.inc();
                debug!(%peer, "hole punching failed: {e}");
                // The last dial's error says more than "giving up after 3 attempts".
                match self.direct.punches.get(&peer) {
                    Some(Punch::Failed(dial)) if !dial.starts_with(GAVE_UP) => {
                        Punch::Failed(capped(format!("{e}; the last: {dial}")))
                    }
                    _ => Punch::Failed(capped(e.to_string())),
                }
            }
        };
        // A success is not overwritten by a later attempt's failure.
        if !matches!(self.direct.punches.get(&peer), Some(Punch::Succeeded))
            || matches!(punch, Punch::Succeeded)
        {
            self.direct.punches.insert(peer, punch);
        }
    }

    /// `observer`, connected to this node, saw it at `observed`.
    pub(crate) fn observed_at(&mut self, observer: PeerId, observed: Multiaddr) {
        let direct = self
            .connections
            .get(&observer)
            .is_some_and(|c| c.iter().any(|(_, a)| !is_relayed(a)));
        // Only what observers elsewhere saw tells of a NAT: a LAN peer sees the LAN address.
        let mapped = !self.swarm.listeners().any(|l| ip_of(l) == ip_of(&observed));
        if !direct || !mapped || is_relayed(&observed) || scope(&observed) < Scope::Private {
            return;
        }
        if self.direct.observed.len() >= MAX_OBSERVATIONS
            && !self.direct.observed.contains_key(&observer)
        {
            return;
        }
        self.direct.observed.insert(observer, observed);
    }

    /// How this node's NAT maps ports: "none" when it is public.
    pub(crate) fn nat_mapping(&self) -> &'static str {
        match self.reachability {
            "public" => "none",
            _ => self.direct.mapping(),
        }
    }

    /// Why `peer`, connected only through relays, is not connected directly.
    pub(crate) fn why_relayed(&self, peer: &PeerId) -> String {
        if self.direct.mapping() == "port-randomizing" {
            return "this node's NAT gives each destination a new port (port-randomizing), so \
                    hole punching cannot work: only a relay gets through (forwarding a port on \
                    the router, or UPnP, would allow direct connections)"
                .to_owned();
        }
        match self.direct.punches.get(peer) {
            Some(Punch::Failed(e)) => format!(
                "hole punching failed ({e}): the peer's NAT may give each destination a new \
                 port, or drop the attempts"
            ),
            // Succeeded, but that connection has closed since.
            Some(Punch::Succeeded) => "the direct connection closed; no attempt since".to_owned(),
            None => {
                "no attempt yet (hole punching starts when the relayed connection opens)".to_owned()
            }
        }
    }
}
