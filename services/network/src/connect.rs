//! Reaching peers from the swarm task: connect (given addresses and known ones, then look-ups
//! in the DHT and of connected peers, whose answers are dialled beside any dial in flight;
//! answering once a connection is established or every way has failed), DHT look-ups for
//! `FindPeer`, and pings.

use std::{collections::HashSet, net::IpAddr, time::Duration};

use libp2p::{
    Multiaddr, PeerId, kad, ping,
    swarm::{
        ConnectionId, DialError,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::time::Instant;
use tracing::debug;

use p2pos_protocols::network::{Error, Reply};

use crate::{
    behaviour::PING_INTERVAL,
    event_loop::EventLoop,
    peers::{MAX_ADDRS_PER_PEER, MAX_HEARD_PEERS},
    scope::{ip_of, is_relayed},
    waiting::PendingConnect,
};

/// Most callers waiting on one peer at once.
const MAX_WAITERS_PER_PEER: usize = 64;
/// Most peers being connected to or looked up at once.
const MAX_PENDING_PEERS: usize = 256;
/// Most checks of claimed listen addresses in flight.
const MAX_PROBES: usize = 16;

impl EventLoop {
    /// Starts connecting to `peer`, or joins an attempt in progress.
    pub(crate) fn connect(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, reply: Reply<Multiaddr>) {
        if let Some(addr) = self.connection_addr(&peer) {
            let _ = reply.send(Ok(addr));
            return;
        }
        // Given for this dial (by a user, or from a DHT answer): stored once it connects.
        self.book.hear(peer, addrs.clone());
        if let Some(pending) = self.connects.get_mut(&peer) {
            if pending.waiters.len() >= MAX_WAITERS_PER_PEER {
                let _ = reply.send(Err(busy(
                    "callers waiting to connect to one peer",
                    MAX_WAITERS_PER_PEER,
                )));
                return;
            }
            pending.waiters.push(reply);
            if !addrs.is_empty() {
                // Dialled too, not only remembered: once the dial in flight ends (or now, if
                // none is), the attempt goes on with these rather than failing with the old
                // addresses' errors.
                pending.addrs.extend(addrs);
                pending.dialed = false;
                self.advance(peer);
            }
            return;
        }
        if self.connects.len() >= MAX_PENDING_PEERS {
            let _ = reply.send(Err(busy(
                "connection attempts in progress",
                MAX_PENDING_PEERS,
            )));
            return;
        }
        self.connects.insert(
            peer,
            PendingConnect {
                waiters: vec![reply],
                addrs,
                dialed: false,
                dials: HashSet::new(),
                looked_up: false,
                last_error: None,
            },
        );
        self.advance(peer);
    }

    /// Takes the next step for a pending connection: dial, look up, or give up.
    pub(crate) fn advance(&mut self, peer: PeerId) {
        let kad_on = self.swarm.behaviour().kad.is_enabled();
        let Some(pending) = self.connects.get_mut(&peer) else {
            return;
        };
        if !pending.dialed {
            pending.dialed = true;
            let given = std::mem::take(&mut pending.addrs);
            // Beside any dial in flight (one that waits out a dead address's timeout must not
            // hold back the addresses a look-up just found).
            match self.dial_known(peer, given.clone(), PeerCondition::Disconnected) {
                Ok(id) => {
                    if let Some(p) = self.connects.get_mut(&peer) {
                        p.dials.insert(id);
                    }
                }
                Err(DialError::DialPeerConditionFalse(_)) => {
                    // Connected already (a probe connection being closed, say): once it is
                    // gone this goes on, with these addresses.
                    if let Some(p) = self.connects.get_mut(&peer) {
                        p.dialed = false;
                        p.addrs.extend(given);
                    }
                    return;
                }
                Err(DialError::NoAddresses) => {}
                Err(e) => {
                    if let Some(p) = self.connects.get_mut(&peer) {
                        p.last_error = Some(e.to_string());
                    }
                }
            }
        }
        let Some(pending) = self.connects.get_mut(&peer) else {
            return;
        };
        if !pending.dials.is_empty() {
            // Their outcome moves this on.
            return;
        }
        if !pending.looked_up {
            pending.looked_up = true;
            self.start_lookup(peer);
            if self.searching(&peer) {
                return;
            }
        }
        if self.searching(&peer) {
            // A look-up still running may find addresses: it moves this on.
            return;
        }
        let Some(pending) = self.connects.remove(&peer) else {
            return;
        };
        let PendingConnect {
            waiters,
            last_error,
            ..
        } = pending;
        let failure = || match &last_error {
            Some(reason) => Error::Unreachable {
                peer,
                reason: reason.clone(),
            },
            None if kad_on => Error::PeerNotFound(peer),
            None => Error::DhtDisabled,
        };
        for w in waiters {
            let _ = w.send(Err(failure()));
        }
    }

    /// Dials `peer` at `addrs` and every address known for it, unless connected or dialling.
    pub(crate) fn dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), DialError> {
        self.dial_known(peer, addrs, PeerCondition::DisconnectedAndNotDialing)
            .map(|_| ())
    }

    /// Dials `peer` at `addrs`, then every other address known for it (the book's, the
    /// routing table's), on `condition`; answers the dial's connection.
    fn dial_known(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        condition: PeerCondition,
    ) -> Result<ConnectionId, DialError> {
        let mut all = addrs;
        for a in self
            .book
            .addresses(&peer)
            .into_iter()
            .chain(self.kad_addresses(&peer))
        {
            if !all.contains(&a) {
                all.push(a);
            }
        }
        if all.is_empty() {
            return Err(DialError::NoAddresses);
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(all)
            .condition(condition)
            .build();
        let id = opts.connection_id();
        self.swarm.dial(opts).map(|()| id)
    }

    /// Checks the listen addresses `peer` claimed (through identify) by dialing them once, when
    /// it reached this node only inbound (no address of it is confirmed): a connection that
    /// succeeds confirms its address, which is then stored and redialled at the next start (so
    /// that a node dialled by a friend redials the friend after a restart), and closed at once
    /// unless this node asked to connect to the peer meanwhile (it holds room kept for this
    /// node's own dials only while it is set up). Only addresses on
    /// an IP the peer connected from are tried, and each peer once per run: a peer cannot make
    /// the node dial addresses of someone else.
    pub(crate) fn probe(&mut self, peer: PeerId, claimed: &[Multiaddr]) {
        if self.probes.len() >= MAX_PROBES
            || self.probed.contains(&peer)
            || !self.book.confirmed(&peer).is_empty()
        {
            return;
        }
        let Some(conns) = self.connections.get(&peer) else {
            return;
        };
        // (A relayed connection's address is the relay's.)
        let from: Vec<IpAddr> = conns
            .iter()
            .filter(|(_, a)| !is_relayed(a))
            .filter_map(|(_, a)| ip_of(a))
            .collect();
        let candidates: Vec<Multiaddr> = claimed
            .iter()
            .filter(|a| !is_relayed(a))
            .filter(|a| ip_of(a).is_some_and(|ip| from.contains(&ip)))
            .take(MAX_ADDRS_PER_PEER)
            .cloned()
            .collect();
        if candidates.is_empty() {
            return;
        }
        if self.probed.len() >= MAX_HEARD_PEERS {
            self.probed.clear();
        }
        self.probed.insert(peer);
        let opts = DialOpts::peer_id(peer)
            .addresses(candidates)
            .condition(PeerCondition::Always)
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.probes.insert(id);
            }
            Err(e) => debug!(%peer, "cannot check its claimed listen addresses: {e}"),
        }
    }

    /// Addresses of `peer` in the Kademlia routing table.
    pub(crate) fn kad_addresses(&mut self, peer: &PeerId) -> Vec<Multiaddr> {
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return Vec::new();
        };
        let Some(bucket) = kad.kbucket(*peer) else {
            return Vec::new();
        };
        bucket
            .iter()
            .find(|e| e.node.key.preimage() == peer)
            .map(|e| e.node.value.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Ends Kademlia query `id` if it still runs.
    pub(crate) fn finish_query(&mut self, id: kad::QueryId) {
        if let Some(mut query) = self
            .swarm
            .behaviour_mut()
            .kad
            .as_mut()
            .and_then(|k| k.query_mut(&id))
        {
            query.finish();
        }
    }

    /// The addresses of the open connections to `peer` (a relayed one's is the relayed
    /// address).
    pub(crate) fn connection_addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.connections
            .get(peer)
            .map(|c| c.iter().map(|(_, a)| a.clone()).collect())
            .unwrap_or_default()
    }

    /// The remote address of an open connection to `peer`.
    fn connection_addr(&self, peer: &PeerId) -> Option<Multiaddr> {
        self.connections
            .get(peer)
            .and_then(|c| c.first())
            .map(|(_, a)| a.clone())
    }

    /// A connection to `peer` is open: answers everyone waiting for one.
    pub(crate) fn on_connected(&mut self, peer: PeerId, addr: Multiaddr) {
        if let Some(pending) = self.connects.remove(&peer) {
            for w in pending.waiters {
                let _ = w.send(Ok(addr.clone()));
            }
        }
    }

    /// Dial `connection` of `peer` failed (this node's connect's, or another's).
    pub(crate) fn on_dial_failed(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        reason: String,
    ) {
        if self.swarm.is_connected(&peer) {
            return;
        }
        debug!(%peer, "dial failed: {reason}");
        let Some(pending) = self.connects.get_mut(&peer) else {
            return;
        };
        pending.dials.remove(&connection);
        pending.last_error = Some(reason);
        self.advance(peer);
    }

    /// Whether a look-up of `peer` (its routing-table entry or its address record) is running.
    pub(crate) fn searching(&self, peer: &PeerId) -> bool {
        self.lookup_of.contains_key(peer)
            || self.peer_record_of.contains_key(peer)
            || self.whois_pending.contains_key(peer)
    }

    /// Looks `peer` up three ways at once: the Kademlia look-up (finds peers that serve the
    /// DHT, so public ones), a get of its address record (finds NATed ones), and asks to the
    /// connected peers (`whois`: its relay knows it).
    fn start_lookup(&mut self, peer: PeerId) {
        self.ask_around(peer);
        if self.lookup_of.contains_key(&peer) {
            return;
        }
        self.seed_routing_table();
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            let id = kad.get_closest_peers(peer);
            self.lookups.insert(id, peer);
            self.lookup_of.insert(peer, id);
        }
        self.find_peer_record(peer);
    }

    /// Seeds a routing table still empty right after connecting (identify has not answered
    /// yet) with the connected peers, so that a look-up has somewhere to start.
    pub(crate) fn seed_routing_table(&mut self) {
        let seeds: Vec<(PeerId, Vec<Multiaddr>)> = self
            .connections
            .keys()
            .map(|p| (*p, self.book.addresses(p)))
            .collect();
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
            && kad.kbuckets().next().is_none()
        {
            for (seed, addrs) in seeds {
                for addr in addrs {
                    kad.add_address(&seed, addr);
                }
            }
        }
    }

    /// Kademlia events that answer look-ups (of peers here, of providers in `providers`).
    pub(crate) fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetClosestPeers(result),
                step,
                ..
            } => {
                let Some(peer) = self.lookups.get(&id).copied() else {
                    return;
                };
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let found = peers.into_iter().find(|p| p.peer_id == peer);
                if found.is_some() || step.last {
                    self.end_lookup(id, peer, found.map(|p| p.addrs).unwrap_or_default());
                }
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetRecord(ref result),
                ref step,
                ..
            } if self.peer_record_queries.contains_key(&id) => {
                self.on_peer_record_event(id, result, step.last);
            }
            kad::Event::RoutingUpdated {
                peer,
                addresses,
                is_new_peer,
                ..
            } => {
                if is_new_peer {
                    self.on_new_routing_peer();
                }
                if let Some(id) = self.lookup_of.get(&peer).copied() {
                    self.end_lookup(id, peer, addresses.into_vec());
                }
            }
            other => self.on_provider_event(other),
        }
    }

    fn end_lookup(&mut self, id: kad::QueryId, peer: PeerId, mut addrs: Vec<Multiaddr>) {
        self.lookups.remove(&id);
        self.lookup_of.remove(&peer);
        self.finish_query(id);
        if addrs.is_empty() {
            addrs = self.kad_addresses(&peer);
        }
        debug!(%peer, found = addrs.len(), "DHT look-up done");
        self.looked_up(peer, addrs);
    }

    /// A look-up of `peer` (Kademlia's or its address record's) found `addrs`: answers those
    /// waiting for it and dials them — unless it found nothing while the other look-up runs.
    pub(crate) fn looked_up(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if addrs.is_empty() && self.searching(&peer) {
            return;
        }
        if let Some(waiters) = self.finds.remove(&peer) {
            for w in waiters {
                let answer = match addrs.is_empty() {
                    true => Err(Error::PeerNotFound(peer)),
                    false => Ok(addrs.clone()),
                };
                let _ = w.send(answer);
            }
        }
        if let Some(pending) = self.connects.get_mut(&peer) {
            if !addrs.is_empty() {
                pending.addrs.extend(addrs);
                pending.dialed = false;
            }
            if !self.swarm.is_connected(&peer) {
                self.advance(peer);
            }
        }
    }

    /// Starts (or joins) a DHT look-up of `peer`.
    pub(crate) fn find_peer(&mut self, peer: PeerId, reply: Reply<Vec<Multiaddr>>) {
        if !self.swarm.behaviour().kad.is_enabled() {
            let _ = reply.send(Err(Error::DhtDisabled));
            return;
        }
        if peer == *self.swarm.local_peer_id() {
            let _ = reply.send(Ok(self.swarm.listeners().cloned().collect()));
            return;
        }
        let waiters = self.finds.entry(peer).or_default();
        if waiters.len() >= MAX_WAITERS_PER_PEER {
            let _ = reply.send(Err(busy(
                "look-ups of one peer in progress",
                MAX_WAITERS_PER_PEER,
            )));
            return;
        }
        waiters.push(reply);
        self.start_lookup(peer);
    }

    /// Answers the last round-trip time, or the next one if none is recent.
    pub(crate) fn ping(&mut self, peer: PeerId, reply: Reply<Duration>) {
        if !self.swarm.is_connected(&peer) {
            let _ = reply.send(Err(Error::Unreachable {
                peer,
                reason: "not connected".into(),
            }));
            return;
        }
        if let Some((rtt, at)) = self.rtt.get(&peer)
            && at.elapsed() < PING_INTERVAL * 2
        {
            let _ = reply.send(Ok(*rtt));
            return;
        }
        let waiters = self.pings.entry(peer).or_default();
        if waiters.len() < MAX_WAITERS_PER_PEER {
            waiters.push(reply);
        } else {
            let _ = reply.send(Err(busy(
                "pings of one peer in progress",
                MAX_WAITERS_PER_PEER,
            )));
        }
    }

    /// A ping finished.
    pub(crate) fn on_ping(&mut self, event: ping::Event) {
        let ping::Event { peer, result, .. } = event;
        match result {
            Ok(rtt) => {
                self.rtt.insert(peer, (rtt, Instant::now()));
                for w in self.pings.remove(&peer).unwrap_or_default() {
                    let _ = w.send(Ok(rtt));
                }
            }
            Err(e) => self.fail_pings(peer, &format!("ping failed: {e}")),
        }
    }

    /// Answers everyone waiting for a ping of `peer` with an error.
    pub(crate) fn fail_pings(&mut self, peer: PeerId, reason: &str) {
        for w in self.pings.remove(&peer).unwrap_or_default() {
            let _ = w.send(Err(Error::Unreachable {
                peer,
                reason: reason.to_owned(),
            }));
        }
    }
}

fn busy(what: &'static str, limit: usize) -> Error {
    Error::Busy { what, limit }
}
