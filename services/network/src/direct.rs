//! Direct connections to peers first reached through a relay: how hole punching (DCUtR) went
//! with each, the upgrade once a direct connection opens (an event, a metric; new streams take
//! the direct connection, see `vendor/libp2p-stream`), and why a peer is still relayed — which
//! includes how this node's NAT maps ports, judged from the addresses peers observe it at.

use std::{collections::HashSet, num::NonZeroU8};

use libp2p::{
    Multiaddr, PeerId, TransportError, dcutr,
    multiaddr::Protocol,
    swarm::{
        ConnectionId, DialError,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use p2pos_proto::monitor::v1::{ConnectionUpgraded, event::Kind};
use tokio::time::{Duration, Instant};
use tracing::{debug, info};

use crate::{
    event_loop::EventLoop,
    nat::{Punch, Spray, port_of},
    scope::{Scope, ip_of, is_relayed, relay_of, scope},
};

/// Most observations of this node's address kept (one per connected observer and transport).
const MAX_OBSERVATIONS: usize = 64;
/// How long after a failed hole punch it is tried again: longer than a router keeps the
/// conntrack entry of an unanswered UDP flow (30 s on Linux), which may be what made it fail.
const PUNCH_AGAIN_AFTER: Duration = Duration::from_secs(35);
/// Most tries again per peer while it is connected.
const PUNCH_AGAIN_TIMES: u32 = 2;
/// Most addresses of a peer dialled to judge the NAT's mapping, or of a relay to punch again.
const MAX_PROBE_ADDRS: usize = 4;
/// Most relayed addresses a try again dials.
const MAX_RELAYED_ADDRS: usize = 4;
/// The longest reason kept for a failed hole punch.
const MAX_REASON: usize = 400;

/// How long after a refused hole punch its addresses are dialled again.
const SPRAY_WINDOW: Duration = Duration::from_millis(400);
/// Most dials again in that window.
const SPRAY_DIALS: u32 = 24;
/// Most windows per peer while connected (DCUtR makes 3 attempts per relayed connection).
const SPRAY_WINDOWS: u32 = 3;
/// Most addresses dialled again.
const SPRAY_ADDRS: usize = 4;

/// Whether a transport error is a refused connection (a TCP reset), wherever it is in the
/// chain of sources.
fn refused(error: &TransportError<std::io::Error>) -> bool {
    let TransportError::Other(e) = error else {
        return false;
    };
    // Transports wrap the socket's error in theirs (`io::Error`s and `Either`s, whose
    // `source` skips what they wrap): the kind shows in the whole chain's debug form.
    e.kind() == std::io::ErrorKind::ConnectionRefused
        || format!("{e:?}").contains("ConnectionRefused")
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
        self.direct.sprays.remove(&peer);
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
    pub(crate) fn direct_dial_failed(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        error: &DialError,
    ) {
        if let Some(again) = self.direct.again.get_mut(&peer)
            && again.dialling == Some(connection)
        {
            // The relayed dial of a try again: not a hole punch. Tried once more later.
            debug!(%peer, "cannot dial through a relay to punch again: {error}");
            again.dialling = None;
            self.punch_again_later(peer);
            return;
        }
        if !self.relayed_only(&peer)
            || matches!(self.direct.punches.get(&peer), Some(Punch::Succeeded))
        {
            return;
        }
        self.punch_again_later(peer);
        let error_text = capped(error.to_string());
        self.direct
            .punches
            .insert(peer, Punch::Failed(error_text.clone()));
        // A dial again of a refused punch is part of the attempt it follows.
        let again = self
            .direct
            .sprays
            .get(&peer)
            .is_some_and(|s| s.in_flight.contains(&connection));
        if !again {
            self.direct.record(peer, Err(error_text));
        }
        self.dial_refused_again(peer, connection, error);
    }

    /// A TCP hole punch was refused: this side's SYN reached the peer's router before the
    /// peer's own had left, and a router that rejects unsolicited packets (or whose own stack
    /// answers them) reset it — while one that drops them lets the SYN be sent again a second
    /// later, by when the peer's SYN has opened the way. A reset ends the attempt at once, and
    /// DCUtR's synchronisation is not fine enough to make up for it when the peers are near
    /// each other and their relay far (the side that dials on the peer's `Sync` is early by
    /// what the relay's round trip overstates). So the refused addresses (at most
    /// [`SPRAY_ADDRS`]) are dialled again at once, in the same role as DCUtR's dial, for up to
    /// [`SPRAY_WINDOW`]: a SYN sent after the peer's has left its router meets it (a
    /// simultaneous open). A window opens on the failure of a dial that was not one of these
    /// (DCUtR's own, once per attempt), at most [`SPRAY_WINDOWS`] while the peer is connected,
    /// with at most [`SPRAY_DIALS`] dials each: a peer that hands DCUtR addresses of someone
    /// else cannot make this node dial them more than that. A peer reached through relays both
    /// ways (each side dialled the other) is not dialled again: which role DCUtR gave this
    /// side is not known.
    fn dial_refused_again(&mut self, peer: PeerId, connection: ConnectionId, error: &DialError) {
        let DialError::Transport(errors) = error else {
            return;
        };
        // The cheap test first: the errors' chains are read only for a side that knows its role.
        let dialled = self.direct.dialled_through_relay.contains(&peer);
        let accepted = self.direct.accepted_through_relay.contains(&peer);
        if dialled == accepted {
            return;
        }
        let refused: Vec<Multiaddr> = errors
            .iter()
            .filter(|(addr, e)| !is_relayed(addr) && refused(e))
            .map(|(addr, _)| addr.clone())
            .take(SPRAY_ADDRS)
            .collect();
        if refused.is_empty() {
            return;
        }
        let now = Instant::now();
        let spray = self.direct.sprays.entry(peer).or_insert(Spray {
            opened: now,
            dials: 0,
            windows: 0,
            in_flight: HashSet::new(),
        });
        if !spray.in_flight.remove(&connection) {
            // Another dial (DCUtR's attempt): a window of its own, if any is left.
            if spray.windows >= SPRAY_WINDOWS {
                return;
            }
            spray.windows += 1;
            spray.opened = now;
            spray.dials = 0;
        }
        if now.duration_since(spray.opened) >= SPRAY_WINDOW || spray.dials >= SPRAY_DIALS {
            return;
        }
        spray.dials += 1;
        let opts = DialOpts::peer_id(peer)
            .addresses(refused)
            .condition(PeerCondition::Always);
        // As DCUtR dials: as itself on the side that dialled through the relay, in the
        // listener's role on the other.
        let opts = match dialled {
            true => opts.build(),
            false => opts.override_role().build(),
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                spray.in_flight.insert(id);
            }
            Err(e) => debug!(%peer, "cannot dial a refused hole punch again: {e}"),
        }
    }

    /// DCUtR's outcome with a peer.
    pub(crate) fn on_dcutr(&mut self, event: dcutr::Event) {
        let dcutr::Event {
            remote_peer_id: peer,
            result,
        } = event;
        if !self.connections.contains_key(&peer) {
            // Its last dial failed after the relayed connection closed: nothing to tell.
            return;
        }
        self.direct.record(
            peer,
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| capped(e.to_string())),
        );
        let punch = match result {
            Ok(_) => {
                self.metrics.hole_punch_successes.inc();
                Punch::Succeeded
            }
            Err(e) => {
                self.metrics.hole_punch_failures.inc();
                debug!(%peer, "hole punching failed: {e}");
                // Its dials failed (not: the peer does not speak DCUtR).
                if e.to_string().contains(GAVE_UP) {
                    self.punch_again_later(peer);
                }
                // The last dial's error says more than "giving up after 3 attempts".
                match self.direct.punches.get(&peer) {
                    Some(Punch::Failed(dial)) if !dial.contains(GAVE_UP) => {
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

    /// Whether `peer` is connected, through relays only.
    fn relayed_only(&self, peer: &PeerId) -> bool {
        self.connections
            .get(peer)
            .is_some_and(|c| !c.is_empty() && c.iter().all(|(_, a)| is_relayed(a)))
    }

    /// Hole punching with `peer` failed (DCUtR gave up, or one of its dials failed: each side
    /// hears of its own): another try is due [`PUNCH_AGAIN_AFTER`] after the last failure, at
    /// most [`PUNCH_AGAIN_TIMES`] while it is connected. Only the side with the smaller peer id
    /// tries again, so that two tries never cross. A router that accepts unsolicited datagrams
    /// (its own stack answers them) keeps a conntrack entry for each: when the peer's first
    /// datagram reached it before this side's own had left, that entry gives this side's flow
    /// another port, and every try within the entry's life (30 s after the last datagram: the
    /// Linux kernel's default for unanswered UDP) fails the same way. Once it has expired, a
    /// try starts afresh. (No try is possible when this side is connected to none of the
    /// relays the peer holds a reservation on.)
    fn punch_again_later(&mut self, peer: PeerId) {
        if *self.swarm.local_peer_id() > peer || self.nat_mapping() == "port-randomizing" {
            return;
        }
        let again = self.direct.again.entry(peer).or_default();
        if again.tries < PUNCH_AGAIN_TIMES {
            again.due = Some(Instant::now() + PUNCH_AGAIN_AFTER);
        }
    }

    /// Tries hole punching again with the peers whose try is due and that are still reached
    /// only through relays: this node dials the peer through a relay the peer holds a
    /// reservation on and this node is connected to directly (at that relay's address it knows,
    /// never one the peer claims), and the peer, accepting that relayed connection, starts
    /// DCUtR on it.
    pub(crate) fn punch_again(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .direct
            .again
            .iter()
            .filter(|(_, a)| a.due.is_some_and(|at| at <= now))
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            let through = match self.relayed_only(&peer) {
                true => self.relayed_addrs_of(&peer),
                false => Vec::new(),
            };
            let Some(again) = self.direct.again.get_mut(&peer) else {
                continue;
            };
            again.due = None;
            if through.is_empty() {
                debug!(%peer, "not punching again: not relayed only, or no relay of it known");
                continue;
            }
            again.tries += 1;
            // One circuit at a time: the next address only if the one before failed.
            let opts = DialOpts::peer_id(peer)
                .addresses(through)
                .condition(PeerCondition::Always)
                .override_dial_concurrency_factor(NonZeroU8::MIN)
                .build();
            again.dialling = Some(opts.connection_id());
            match self.swarm.dial(opts) {
                Ok(()) => info!(%peer, "hole punching again, through a new relayed connection"),
                Err(e) => {
                    debug!(%peer, "cannot dial through a relay to punch again: {e}");
                    again.dialling = None;
                    self.punch_again_later(peer);
                }
            }
        }
    }

    /// Addresses of `peer` through the relays it lists in identify that this node is connected
    /// to directly: each such relay's own listen addresses at the IPs of this node's connections
    /// to it, then `/p2p/<relay>/p2p-circuit` (at most [`MAX_RELAYED_ADDRS`]).
    fn relayed_addrs_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let relays: HashSet<PeerId> = self
            .identified
            .get(peer)
            .map(|i| i.listen.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(relay_of)
            .collect();
        relays
            .into_iter()
            .flat_map(|relay| {
                self.claimed_at_connected_ips(&relay, |_| true)
                    .into_iter()
                    .map(move |a| {
                        a.with(Protocol::P2p(relay))
                            .with(Protocol::P2pCircuit)
                            .with(Protocol::P2p(*peer))
                    })
            })
            .take(MAX_RELAYED_ADDRS)
            .collect()
    }

    /// The direct listen addresses `peer` claims in identify at the IPs this node is connected
    /// to it from directly, those that `keep` keeps: a peer cannot make this node dial
    /// someone else's address.
    fn claimed_at_connected_ips(
        &self,
        peer: &PeerId,
        keep: impl Fn(&Multiaddr) -> bool,
    ) -> Vec<Multiaddr> {
        let from: Vec<_> = self
            .connection_addrs(peer)
            .iter()
            .filter(|a| !is_relayed(a))
            .filter_map(ip_of)
            .collect();
        self.identified
            .get(peer)
            .map(|i| i.listen.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|a| !is_relayed(a) && keep(a))
            .filter(|a| ip_of(a).is_some_and(|ip| from.contains(&ip)))
            .take(MAX_PROBE_ADDRS)
            .cloned()
            .collect()
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
        let key = (observer, port_of(&observed).is_some_and(|(_, quic)| quic));
        if self.direct.observed.len() >= MAX_OBSERVATIONS
            && !self.direct.observed.contains_key(&key)
        {
            return;
        }
        debug!(%observer, %observed, "a peer elsewhere sees this node at a mapped address");
        self.direct.observed.insert(key, observed);
        self.probe_mapping();
    }

    /// Asks a second observer to see this node over a transport only one has seen it over, when
    /// that is why its NAT's mapping cannot be judged: a node dials each peer over whichever
    /// transport answers first, so one relay may see it over TCP and another over QUIC, and
    /// ports of different transports say nothing about each other. An observer seen over the
    /// other transport only is dialled over this one (a second connection to it, whose
    /// identify tells where it saw this node), one per transport: once per observer and
    /// transport while it is connected, only at an address it claims at the IP it is connected from (a peer cannot
    /// make this node dial someone else), and only while this node is not public.
    fn probe_mapping(&mut self) {
        if self.reachability == "public" || self.nat_mapping() != "unknown" {
            return;
        }
        for quic in [false, true] {
            let seen_over: Vec<PeerId> = self
                .direct
                .observed
                .keys()
                .filter(|(_, q)| *q == quic)
                .map(|(p, _)| *p)
                .collect();
            if seen_over.len() != 1 {
                continue;
            }
            let others: Vec<PeerId> = self
                .direct
                .observed
                .keys()
                .filter(|(p, q)| *q != quic && !seen_over.contains(p))
                .filter(|(p, _)| !self.direct.mapping_probed.contains(&(*p, quic)))
                .map(|(p, _)| *p)
                .collect();
            for other in others {
                let addrs = self.claimed_at_connected_ips(&other, |a| {
                    port_of(a).is_some_and(|(_, q)| q == quic)
                });
                if addrs.is_empty() {
                    continue;
                }
                self.direct.mapping_probed.insert((other, quic));
                let opts = DialOpts::peer_id(other)
                    .addresses(addrs)
                    .condition(PeerCondition::Always)
                    .build();
                match self.swarm.dial(opts) {
                    Ok(()) => info!(
                        peer = %other,
                        quic,
                        "dialling an observer over the other transport to judge the NAT's mapping"
                    ),
                    Err(e) => debug!(
                        peer = %other,
                        "cannot dial an observer over the other transport: {e}"
                    ),
                }
                // One observer per transport: when one was seen over each, both are dialled
                // over the other's, so that either answer judges the mapping.
                break;
            }
        }
    }

    /// How this node's NAT maps ports: "none" when it is public.
    pub(crate) fn nat_mapping(&self) -> &'static str {
        match self.reachability {
            "public" => "none",
            _ => self.direct.mapping(&self.listening_ports()),
        }
    }

    /// The ports this node listens on directly, each with whether it is QUIC's.
    fn listening_ports(&self) -> Vec<(u16, bool)> {
        self.swarm
            .listeners()
            .filter(|a| !is_relayed(a))
            .filter_map(port_of)
            .collect()
    }

    /// Why `peer`, connected only through relays, is not connected directly.
    /// `mapping` is [`Self::nat_mapping`]'s verdict (worked out once for every peer asked about).
    pub(crate) fn why_relayed(&self, peer: &PeerId, mapping: &str) -> String {
        if mapping == "port-randomizing" {
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

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn a_refused_connection_is_found_however_deep_it_is_wrapped() {
        let reset = || io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(refused(&TransportError::Other(reset())));
        let wrapped = io::Error::other(io::Error::other(reset()));
        assert!(refused(&TransportError::Other(wrapped)));
        assert!(!refused(&TransportError::Other(io::Error::from(
            io::ErrorKind::TimedOut
        ))));
        assert!(!refused(&TransportError::MultiaddrNotSupported(
            "/memory/1".parse().expect("addr")
        )));
    }
}
