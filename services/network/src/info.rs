//! What the swarm task tells about itself: the ticket, connected peers and the overlay status.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol, swarm::ConnectionId};
use p2pos_proto::overlay::v1::{OverlayStatus, PeerInfo, Ticket};
use tokio::{sync::oneshot, time::Instant};

use p2pos_protocols::network::{
    HolePunch, PeerDetail,
    ticket::{encode_ticket, without_peer},
};

use crate::{
    event_loop::EventLoop,
    nat::Punch,
    peers::is_dialable,
    scope::{Scope, is_relayed, relay_of, scope},
};

/// How long a ticket request waits for a first listen address.
const TICKET_WAIT: Duration = Duration::from_secs(2);
/// Most ticket requests waiting at once.
const MAX_TICKET_WAITERS: usize = 64;

impl EventLoop {
    /// Answers now if the node listens somewhere, else once it does (or after a short wait).
    pub(crate) fn ticket_request(&mut self, reply: oneshot::Sender<Ticket>) {
        if self.swarm.listeners().next().is_some() || self.tickets.len() >= MAX_TICKET_WAITERS {
            let _ = reply.send(self.ticket());
        } else {
            self.tickets.push((Instant::now(), reply));
        }
    }

    /// Answers the waiting ticket requests once the node listens, or after [`TICKET_WAIT`].
    pub(crate) fn answer_tickets(&mut self) {
        if self.tickets.is_empty() {
            return;
        }
        let listening = self.swarm.listeners().next().is_some();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.tickets)
            .into_iter()
            .partition(|(since, _)| listening || since.elapsed() >= TICKET_WAIT);
        self.tickets = waiting;
        if !ready.is_empty() {
            let ticket = self.ticket();
            for (_, w) in ready {
                let _ = w.send(ticket.clone());
            }
        }
    }

    /// This node's ticket: its listen addresses (concrete, per interface) and confirmed
    /// external addresses (relayed ones among them), without duplicates or link-local ones
    /// (useless elsewhere, and without their interface's zone, even on the link), the widest
    /// reaching first.
    pub(crate) fn ticket(&self) -> Ticket {
        let local = *self.swarm.local_peer_id();
        let mut addrs: Vec<Multiaddr> = Vec::new();
        for a in self
            .swarm
            .listeners()
            .chain(self.swarm.external_addresses())
        {
            let a = without_peer(a.clone(), &local);
            if is_dialable(&a) && scope(&a) != Scope::LinkLocal && !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        // Stable: a scope's addresses keep their order.
        addrs.sort_by_key(|a| std::cmp::Reverse(scope(a)));
        Ticket {
            ticket: encode_ticket(&local, &addrs),
            peer_id: local.to_string(),
            addresses: addrs.iter().map(ToString::to_string).collect(),
        }
    }

    /// Connected peers, sorted by peer id.
    pub(crate) fn peer_infos(&self) -> Vec<PeerInfo> {
        let mapping = self.nat_mapping();
        let mut peers: Vec<PeerInfo> = self
            .connections
            .iter()
            .filter(|(_, conns)| !conns.is_empty())
            .map(|(peer, conns)| self.peer_info(peer, conns, mapping))
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        peers
    }

    /// What the connected peers list says of `peer`, open on `conns`; `mapping` is this node's
    /// NAT mapping.
    fn peer_info(
        &self,
        peer: &PeerId,
        conns: &[(ConnectionId, Multiaddr)],
        mapping: &str,
    ) -> PeerInfo {
        let direct = conns.iter().any(|(_, a)| !is_relayed(a));
        let mut relays: Vec<String> = Vec::new();
        for relay in conns.iter().filter_map(|(_, a)| relay_of(a)) {
            let relay = relay.to_string();
            if !relays.contains(&relay) {
                relays.push(relay);
            }
        }
        PeerInfo {
            peer_id: peer.to_string(),
            addresses: conns.iter().map(|(_, a)| a.to_string()).collect(),
            // The direct connection's, if any: new streams take it.
            transport: conns
                .iter()
                .find(|(_, a)| !is_relayed(a))
                .or(conns.first())
                .map(|(_, a)| transport_of(a))
                .unwrap_or("other")
                .to_owned(),
            rtt_us: self
                .rtt
                .get(peer)
                .map(|(rtt, _)| u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX))
                .unwrap_or(0),
            agent_version: self
                .identified
                .get(peer)
                .map(|i| i.agent.clone())
                .unwrap_or_default(),
            connections: u32::try_from(conns.len()).unwrap_or(u32::MAX),
            direct,
            relays,
            why_relayed: match direct {
                true => String::new(),
                false => self.why_relayed(peer, mapping),
            },
        }
    }

    /// What is known of `peer`, for diagnosis.
    pub(crate) fn peer_detail(&self, peer: PeerId) -> PeerDetail {
        let info = self
            .connections
            .get(&peer)
            .filter(|conns| !conns.is_empty())
            .map(|conns| self.peer_info(&peer, conns, self.nat_mapping()));
        let identified = self.identified.get(&peer);
        let relayed_only = info.as_ref().is_some_and(|i| !i.direct);
        PeerDetail {
            peer,
            info,
            protocols: identified.map(|i| i.protocols.clone()).unwrap_or_default(),
            listen_addrs: identified.map(|i| i.listen.clone()).unwrap_or_default(),
            known_addrs: self.book.addresses(&peer),
            hole_punch: match self.direct.punches.get(&peer) {
                Some(Punch::Succeeded) => HolePunch::Succeeded,
                Some(Punch::Failed(e)) if relayed_only => HolePunch::Failed(e.clone()),
                _ => HolePunch::NotTried,
            },
            observed_us: [true, false]
                .iter()
                .find_map(|quic| self.direct.observed.get(&(peer, *quic)))
                .cloned(),
            hole_punches: self
                .direct
                .history
                .get(&peer)
                .map(|h| h.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// The overlay status.
    pub(crate) fn status(&mut self) -> OverlayStatus {
        let routing_table_size = match self.swarm.behaviour_mut().kad.as_mut() {
            Some(kad) => kad.kbuckets().map(|b| b.num_entries()).sum::<usize>(),
            None => 0,
        };
        OverlayStatus {
            peer_id: self.swarm.local_peer_id().to_string(),
            listen_addresses: self.swarm.listeners().map(ToString::to_string).collect(),
            external_addresses: self
                .swarm
                .external_addresses()
                .map(ToString::to_string)
                .collect(),
            reachability: self.reachability.to_owned(),
            peers: self.peer_infos(),
            routing_table_size: u32::try_from(routing_table_size).unwrap_or(u32::MAX),
            remembered_peers: u32::try_from(self.book.peers().len()).unwrap_or(u32::MAX),
            relays: self.relays.held().map(ToString::to_string).collect(),
            nat_mapping: self.nat_mapping().to_owned(),
        }
    }
}

/// "relay", "quic", "tcp" or "other", from a connection's remote address.
pub(crate) fn transport_of(addr: &Multiaddr) -> &'static str {
    let mut transport = "other";
    for p in addr.iter() {
        match p {
            Protocol::P2pCircuit => return "relay",
            Protocol::QuicV1 | Protocol::Quic => transport = "quic",
            Protocol::Tcp(_) if transport == "other" => transport = "tcp",
            _ => {}
        }
    }
    transport
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_are_named_from_addresses() {
        let t = |s: &str| transport_of(&s.parse().expect("addr"));
        assert_eq!(t("/ip4/1.2.3.4/tcp/1"), "tcp");
        assert_eq!(t("/ip4/1.2.3.4/udp/1/quic-v1"), "quic");
        assert_eq!(
            t(
                "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit"
            ),
            "relay"
        );
        assert_eq!(t("/memory/5"), "other");
    }
}
