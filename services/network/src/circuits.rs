//! The limits of relayed connections: a relay announces how many bytes and seconds its circuits
//! last when it accepts a reservation or a circuit (`relay::client::Event`); each relayed
//! connection is matched with its relay's, so that services can ask how a peer is reached
//! ([`Command::Path`](p2pos_protocols::network::Command::Path)) before they send something a
//! circuit could not carry.

use std::{collections::HashMap, time::Duration};

use libp2p::{Multiaddr, PeerId, relay, swarm::ConnectionId};
use p2pos_protocols::network::{Circuit, Path};
use tokio::time::Instant;

use crate::scope::{is_relayed, relay_of};

/// Most relays whose limits are remembered (a relay's are kept while it is within the bound).
const MAX_RELAYS: usize = 64;
/// Most inbound circuits waiting for their connection.
const MAX_INBOUND: usize = 64;

/// What a relay said of its circuits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Limits {
    data: Option<u64>,
    duration: Option<Duration>,
}

/// Relays' limits, and the relayed connections they apply to.
#[derive(Default)]
pub(crate) struct Circuits {
    /// The limits each relay announced last.
    by_relay: HashMap<PeerId, Limits>,
    /// Inbound circuits whose connection is not established yet, by the peer they come from.
    inbound: HashMap<PeerId, Limits>,
    /// Open relayed connections: their circuit's limits, ends counted from when they opened.
    open: HashMap<ConnectionId, Circuit>,
}

impl Circuits {
    /// What the relay client says: a relay accepted a reservation or a circuit, and its limits.
    pub(crate) fn on_relay_client(&mut self, event: &relay::client::Event) {
        let (peer, limit, inbound) = match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                limit,
                ..
            }
            | relay::client::Event::OutboundCircuitEstablished {
                relay_peer_id,
                limit,
            } => (*relay_peer_id, limit, false),
            relay::client::Event::InboundCircuitEstablished { src_peer_id, limit } => {
                (*src_peer_id, limit, true)
            }
        };
        let limits = limit
            .as_ref()
            .map(|l| Limits {
                data: l.data_in_bytes().filter(|b| *b > 0),
                duration: l.duration().filter(|d| !d.is_zero()),
            })
            .unwrap_or_default();
        let (map, bound) = match inbound {
            true => (&mut self.inbound, MAX_INBOUND),
            false => (&mut self.by_relay, MAX_RELAYS),
        };
        if map.len() >= bound && !map.contains_key(&peer) {
            map.clear();
        }
        map.insert(peer, limits);
    }

    /// A connection to `peer` at `addr` opened: if it is relayed, its circuit's limits run
    /// from now.
    pub(crate) fn opened(&mut self, peer: PeerId, id: ConnectionId, addr: &Multiaddr) {
        let Some(relay) = relay_of(addr) else {
            return;
        };
        let limits = self
            .inbound
            .remove(&peer)
            .or_else(|| self.by_relay.get(&relay).copied())
            .unwrap_or_default();
        self.open.insert(
            id,
            Circuit {
                relay,
                data_limit: limits.data,
                ends_at: limits.duration.map(|d| Instant::now() + d),
                duration: limits.duration,
            },
        );
    }

    /// A connection closed.
    pub(crate) fn closed(&mut self, id: ConnectionId) {
        self.open.remove(&id);
    }
}

impl Circuits {
    /// How `peer` is reached now (see [`Path`]), over `conns`, its open connections.
    pub(crate) fn path(
        &self,
        peer: &PeerId,
        conns: Option<&Vec<(ConnectionId, Multiaddr)>>,
    ) -> Path {
        let Some(conns) = conns.filter(|c| !c.is_empty()) else {
            return Path::NotConnected;
        };
        if conns.iter().any(|(_, a)| !is_relayed(a)) {
            return Path::Direct;
        }
        // The tightest: a new stream may take any of them.
        let circuits = conns.iter().filter_map(|(id, _)| self.open.get(id));
        let tightest = circuits.fold(None::<Circuit>, |tightest, c| {
            let Some(t) = tightest else {
                return Some(*c);
            };
            // The relay named is the one whose data limit is named (an unknown limit is not
            // a tighter one).
            let tighter = match (c.data_limit, t.data_limit) {
                (Some(c), Some(t)) => c < t,
                (Some(_), None) => true,
                (None, _) => false,
            };
            Some(Circuit {
                relay: match tighter {
                    true => c.relay,
                    false => t.relay,
                },
                data_limit: min_known(t.data_limit, c.data_limit),
                ends_at: min_known(t.ends_at, c.ends_at),
                duration: min_known(t.duration, c.duration),
            })
        });
        match tightest {
            Some(circuit) => Path::Relayed(circuit),
            // Relayed, limits unknown (a connection that opened before its relay said).
            None => Path::Relayed(Circuit {
                relay: conns.iter().find_map(|(_, a)| relay_of(a)).unwrap_or(*peer),
                data_limit: None,
                ends_at: None,
                duration: None,
            }),
        }
    }
}

/// The smaller of two limits, either of which may be unknown.
fn min_known<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_is_the_peer_before_the_circuit() {
        let relay = PeerId::random();
        let peer = PeerId::random();
        let addr: Multiaddr = format!("/ip4/1.2.3.4/tcp/1/p2p/{relay}/p2p-circuit/p2p/{peer}")
            .parse()
            .expect("addr");
        assert_eq!(relay_of(&addr), Some(relay));
        let inbound: Multiaddr = format!("/ip4/1.2.3.4/tcp/1/p2p/{relay}/p2p-circuit")
            .parse()
            .expect("addr");
        assert_eq!(relay_of(&inbound), Some(relay));
        let direct: Multiaddr = format!("/ip4/1.2.3.4/tcp/1/p2p/{peer}")
            .parse()
            .expect("addr");
        assert_eq!(relay_of(&direct), None);
    }

    #[test]
    fn the_relay_named_is_the_one_whose_limit_is_named() {
        let (peer, known, unknown) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut circuits = Circuits::default();
        let at = |relay: PeerId| -> Multiaddr {
            format!("/ip4/1.2.3.4/tcp/1/p2p/{relay}/p2p-circuit/p2p/{peer}")
                .parse()
                .expect("addr")
        };
        let (a, b) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        circuits.opened(peer, a, &at(known));
        circuits.opened(peer, b, &at(unknown));
        circuits.open.get_mut(&a).expect("a").data_limit = Some(1024);
        let conns = vec![(b, at(unknown)), (a, at(known))];
        let Path::Relayed(circuit) = circuits.path(&peer, Some(&conns)) else {
            panic!("relayed");
        };
        assert_eq!((circuit.relay, circuit.data_limit), (known, Some(1024)));
    }

    #[test]
    fn unknown_limits_never_win_over_known_ones() {
        assert_eq!(min_known(Some(3), None), Some(3));
        assert_eq!(min_known(None, Some(2)), Some(2));
        assert_eq!(min_known(Some(3), Some(2)), Some(2));
        assert_eq!(min_known::<u64>(None, None), None);
    }
}
