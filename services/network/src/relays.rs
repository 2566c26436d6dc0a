//! Relay reservations: a node that is not known to be public (AutoNAT has no verdict yet, or
//! says private) holds a slot on up to [`MAX_RELAYS`] relays, each a different peer, so that
//! others reach it through them (its relayed addresses are in its ticket and in the DHT). It
//! reserves as soon as a relay is connected — not after AutoNAT's verdict, which takes tens of
//! seconds — drops its reservations once it turns out public, and reserves again, on another
//! relay or the same one redialled, when a relay goes away.
//!
//! The relayed address a reservation gets (and the node advertises) is built from the relay's
//! widest-reaching address known (a global one before a private, loopback or link-local one),
//! so that peers elsewhere can dial it.

use libp2p::{Multiaddr, PeerId, core::transport::ListenerId, multiaddr::Protocol};
use p2pos_proto::monitor::v1::{RelayReserved, event::Kind};
use tokio::time::{Duration, Instant};
use tracing::{debug, info};

use crate::{
    event_loop::EventLoop,
    scope::{is_relayed, scope},
};

/// Most relays this node holds a reservation on at once.
pub(crate) const MAX_RELAYS: usize = 2;
/// How long a reservation must have lasted for its relay's back-off to start afresh.
const LASTED: Duration = Duration::from_secs(60);

impl EventLoop {
    /// `peer` serves as a relay (identify said so): reserves on it if this node needs one.
    pub(crate) fn relay_found(&mut self, peer: PeerId) {
        self.relays.know(peer);
        self.reserve_relays();
    }

    /// Unless this node is public, reserves on relays until it holds [`MAX_RELAYS`]: connected
    /// ones first, then known ones, which are dialled for it.
    pub(crate) fn reserve_relays(&mut self) {
        if self.reachability == "public" {
            return;
        }
        let now = Instant::now();
        let mut order: Vec<PeerId> = self
            .relays
            .known
            .iter()
            .rev()
            .filter(|p| !self.relays.listeners.contains_key(p) && self.relays.ready(p, now))
            .copied()
            .collect();
        // Connected relays first: a reservation on them takes one round trip.
        order.sort_by_key(|p| !self.swarm.is_connected(p));
        for relay in order {
            if self.relays.listeners.len() >= MAX_RELAYS {
                return;
            }
            let Some(addr) = self.relay_address(&relay) else {
                continue;
            };
            let circuit = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    debug!(%circuit, "reserving a slot on a relay");
                    self.relays.listeners.insert(relay, id);
                }
                Err(e) => {
                    debug!(%circuit, "cannot listen through the relay: {e}");
                    self.relays.back_off(relay);
                }
            }
        }
    }

    /// The relay's widest-reaching direct address known: where peers elsewhere can dial it.
    fn relay_address(&self, relay: &PeerId) -> Option<Multiaddr> {
        let connected = self.connection_addrs(relay);
        self.book
            .addresses(relay)
            .into_iter()
            .filter(|a| !is_relayed(a))
            .max_by_key(|a| (scope(a), connected.contains(a)))
    }

    /// A relay accepted this node's reservation.
    pub(crate) fn relay_reserved(&mut self, relay: PeerId, renewal: bool) {
        // Only one asked for and not dropped since (the node turned public meanwhile, say).
        if renewal
            || !self.relays.listeners.contains_key(&relay)
            || self.relays.held.contains_key(&relay)
        {
            return;
        }
        self.relays.held.insert(relay, Instant::now());
        let after = self.relays.started.elapsed();
        if !self.relays.first_held {
            self.relays.first_held = true;
            self.metrics.first_reservation(after);
        }
        self.metrics.relay_reservation();
        info!(%relay, after_ms = after.as_millis(), "holding a relay reservation");
        self.events.publish(Kind::RelayReserved(RelayReserved {
            relay_peer_id: relay.to_string(),
        }));
        self.publish_peer_record();
    }

    /// A listener closed: if it was a relay reservation, reserves again (elsewhere, or on the
    /// same relay after a back-off).
    pub(crate) fn relay_listener_closed(&mut self, listener: ListenerId) {
        let Some(relay) = self
            .relays
            .listeners
            .iter()
            .find(|(_, id)| **id == listener)
            .map(|(p, _)| *p)
        else {
            return;
        };
        self.relays.listeners.remove(&relay);
        if let Some(since) = self.relays.held.remove(&relay) {
            info!(%relay, "a relay reservation ended");
            self.publish_peer_record();
            // A reservation that lasted starts the back-off afresh; one that ended soon after
            // it was accepted (a relay that keeps dropping it) does not.
            if since.elapsed() >= LASTED {
                self.relays.backoff.remove(&relay);
            }
        }
        self.relays.back_off(relay);
        self.reserve_relays();
    }

    /// The connection to `relay` closed: its reservation ends with it.
    pub(crate) fn relay_disconnected(&mut self, relay: PeerId) {
        if let Some(id) = self.relays.listeners.get(&relay).copied() {
            // Closing the listener reports `ListenerClosed`, which reserves elsewhere.
            self.swarm.remove_listener(id);
        }
    }

    /// The node turned out public: others dial it directly, so its reservations go.
    pub(crate) fn drop_reservations(&mut self) {
        for (relay, id) in std::mem::take(&mut self.relays.listeners) {
            debug!(%relay, "dropping a relay reservation: this node is public");
            self.swarm.remove_listener(id);
        }
        self.relays.held.clear();
    }
}
