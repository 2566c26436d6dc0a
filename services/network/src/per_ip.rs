//! Inbound connections counted per source: a behaviour that refuses a connection from a source
//! that already has [`Config::max_connections_per_ip`](crate::Config) inbound connections
//! (established or being set up), so that one host cannot take every inbound slot with many
//! identities. libp2p's `connection_limits` counts per peer id and in all, not per address.
//! A source is an IPv4 address, an IPv6 /64 (what one host or one LAN is given: a host has
//! the whole of it to pick addresses from), or, for a relayed connection, which has no IP of its
//! own, the relay (counted against [`Config::max_connections_per_relay`](crate::Config), so that
//! one relay cannot fill every inbound slot). Loopback addresses are counted only when
//! `limit_loopback` is set (processes on this machine are its user's: tests, labs, several nodes
//! of one user); relayed connections always are, whatever the relay's address.
//!
//! For an inbound relayed connection libp2p-relay gives the remote address as `/p2p/<source>`
//! only; the relay is in the local address, `<address of the relay>/p2p/<relay>/p2p-circuit`
//! (the `/p2p/<relay>` is there when this node dialed the relay, which is how it makes its
//! reservation; when it is missing, the relay's IP address stands for it).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr},
    task::{Context, Poll},
};

use crate::scope::{self, ip_of, is_relayed};
use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure,
        NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
    },
};

/// Refuses inbound connections past a number per remote IP address or relay.
pub(crate) struct Behaviour {
    /// Most inbound connections (pending and established) from one address.
    max_per_ip: u32,
    /// Most inbound relayed connections (pending and established) through one relay.
    max_per_relay: u32,
    /// Whether loopback addresses are counted too.
    limit_loopback: bool,
    /// The source of each inbound connection counted, pending or established.
    connections: HashMap<ConnectionId, Source>,
    /// Inbound connections per source.
    per_ip: HashMap<Source, u32>,
}

/// Where an inbound connection comes from, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// The /64 an IPv6 address is in (its first 64 bits).
    V6(u64),
    /// The relay a relayed connection comes through.
    Relay(PeerId),
    /// The relay a relayed connection comes through, known by its IP address only.
    RelayAt(IpAddr),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::V4(ip) => write!(f, "{ip}"),
            Source::V6(net) => {
                let ip = std::net::Ipv6Addr::from(u128::from(*net) << 64);
                write!(f, "{ip}/64")
            }
            Source::Relay(relay) => write!(f, "relay {relay}"),
            Source::RelayAt(ip) => write!(f, "the relay at {ip}"),
        }
    }
}

/// An inbound connection refused because its source has as many as it may.
#[derive(Debug)]
pub(crate) struct TooManyFromIp {
    source: Source,
    limit: u32,
}

impl std::fmt::Display for TooManyFromIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} inbound connections from {} already (the limit per source)",
            self.limit, self.source
        )
    }
}

impl std::error::Error for TooManyFromIp {}

/// The relay of a relayed address: the last peer id before `/p2p-circuit`, or else the IP
/// address it starts with.
fn relay_of(addr: &Multiaddr) -> Option<Source> {
    scope::relay_of(addr)
        .map(Source::Relay)
        .or_else(|| ip_of(addr).map(Source::RelayAt))
}

/// What an inbound connection on `local_addr` from `remote_addr` is counted under, and whether
/// it is exempt as a loopback address (`None`: nothing to count by). A relayed connection's
/// relay is in its local address (libp2p-relay's listener gives `<relay>/p2p-circuit` there and
/// `/p2p/<source>` as the remote address); an address that names the circuit on the remote
/// side is read the same way.
fn source_of(local_addr: &Multiaddr, remote_addr: &Multiaddr) -> Option<(Source, bool)> {
    if is_relayed(local_addr) {
        return relay_of(local_addr).map(|r| (r, false));
    }
    if is_relayed(remote_addr) {
        return relay_of(remote_addr).map(|r| (r, false));
    }
    match ip_of(remote_addr)? {
        IpAddr::V4(ip) => Some((Source::V4(ip), ip.is_loopback())),
        IpAddr::V6(ip) => {
            let net = u64::try_from(u128::from(ip) >> 64).unwrap_or(u64::MAX);
            Some((Source::V6(net), ip.is_loopback()))
        }
    }
}

impl Behaviour {
    /// Counts inbound connections, at most `max_per_ip` from one address (loopback ones only
    /// when `limit_loopback`) and `max_per_relay` through one relay.
    pub(crate) fn new(max_per_ip: u32, max_per_relay: u32, limit_loopback: bool) -> Self {
        Self {
            max_per_ip,
            max_per_relay,
            limit_loopback,
            connections: HashMap::new(),
            per_ip: HashMap::new(),
        }
    }

    fn forget(&mut self, connection: ConnectionId) {
        let Some(source) = self.connections.remove(&connection) else {
            return;
        };
        if let Some(n) = self.per_ip.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&source);
            }
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some((source, loopback)) = source_of(local_addr, remote_addr) else {
            return Ok(());
        };
        if loopback && !self.limit_loopback {
            return Ok(());
        }
        let limit = match source {
            Source::V4(_) | Source::V6(_) => self.max_per_ip,
            Source::Relay(_) | Source::RelayAt(_) => self.max_per_relay,
        };
        let n = self.per_ip.entry(source).or_default();
        if *n >= limit {
            return Err(ConnectionDenied::new(TooManyFromIp { source, limit }));
        }
        *n += 1;
        self.connections.insert(connection_id, source);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.forget(connection_id)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    #[test]
    fn one_address_gets_at_most_its_share() {
        let mut b = Behaviour::new(2, 2, false);
        let local = addr("/ip4/10.0.0.1/tcp/4001");
        let from = addr("/ip4/203.0.113.7/tcp/5000");
        let other = addr("/ip4/203.0.113.8/tcp/5000");
        let (c1, c2, c3, c4) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
            ConnectionId::new_unchecked(4),
        );
        assert!(
            b.handle_pending_inbound_connection(c1, &local, &from)
                .is_ok()
        );
        assert!(
            b.handle_pending_inbound_connection(c2, &local, &from)
                .is_ok()
        );
        let refused = b
            .handle_pending_inbound_connection(c3, &local, &from)
            .expect_err("a third from one address");
        let why = refused
            .downcast_ref::<TooManyFromIp>()
            .expect("refused per address");
        assert!(why.to_string().contains("203.0.113.7"), "{why}");
        assert!(
            b.handle_pending_inbound_connection(c4, &local, &other)
                .is_ok()
        );
        // One goes (a failed handshake, or a closed connection): room for another.
        b.forget(c1);
        assert!(
            b.handle_pending_inbound_connection(c3, &local, &from)
                .is_ok()
        );
    }

    #[test]
    fn an_ipv6_64_counts_as_one_address() {
        let mut b = Behaviour::new(2, 2, false);
        let local = addr("/ip6/2001:db8:1::1/tcp/4001");
        let mut id = 0;
        let mut next = |b: &mut Behaviour, from: &str| {
            id += 1;
            b.handle_pending_inbound_connection(
                ConnectionId::new_unchecked(id),
                &local,
                &addr(from),
            )
        };
        // Two addresses of one /64, then a third of it: refused; another /64 is not.
        assert!(next(&mut b, "/ip6/2001:db8:aa:bb::1/tcp/5000").is_ok());
        assert!(next(&mut b, "/ip6/2001:db8:aa:bb:ffff::2/tcp/5000").is_ok());
        let refused = next(&mut b, "/ip6/2001:db8:aa:bb:1234:5678:9abc:def0/tcp/5000")
            .expect_err("a third from one /64");
        let why = refused.downcast_ref::<TooManyFromIp>().expect("per source");
        assert!(why.to_string().contains("2001:db8:aa:bb::/64"), "{why}");
        assert!(next(&mut b, "/ip6/2001:db8:aa:bc::1/tcp/5000").is_ok());
    }

    #[test]
    fn relayed_connections_count_per_relay_as_libp2p_relay_gives_them() {
        // The shapes libp2p-relay 0.22's client listener gives an inbound circuit: the local
        // address is the relay connection's address with `/p2p-circuit`, the remote one names
        // the source only.
        let relay = PeerId::random().to_string();
        let other_relay = PeerId::random().to_string();
        let sources = [PeerId::random(), PeerId::random(), PeerId::random()];
        let from = |i: usize| addr(&format!("/p2p/{}", sources[i]));
        let via = |ip: &str, r: &str| addr(&format!("/ip4/{ip}/tcp/4001/p2p/{r}/p2p-circuit"));
        let mut b = Behaviour::new(16, 2, false);
        let mut id = 0;
        let mut next = |b: &mut Behaviour, local: &Multiaddr, remote: &Multiaddr| {
            id += 1;
            b.handle_pending_inbound_connection(ConnectionId::new_unchecked(id), local, remote)
        };
        // Two circuits through one relay, each from its own source: the third is refused,
        // though the per-IP limit is far.
        assert!(next(&mut b, &via("203.0.113.7", &relay), &from(0)).is_ok());
        assert!(next(&mut b, &via("203.0.113.7", &relay), &from(1)).is_ok());
        let refused = next(&mut b, &via("203.0.113.7", &relay), &from(2))
            .expect_err("a third through one relay");
        let why = refused.downcast_ref::<TooManyFromIp>().expect("per source");
        assert!(why.to_string().contains(&relay), "{why}");
        // Another relay has its own count; a relay on loopback is counted all the same.
        assert!(next(&mut b, &via("127.0.0.1", &other_relay), &from(0)).is_ok());
        assert!(next(&mut b, &via("127.0.0.1", &other_relay), &from(1)).is_ok());
        assert!(next(&mut b, &via("127.0.0.1", &other_relay), &from(2)).is_err());
        // A relay connection known without its peer id: counted by the relay's address.
        let bare = addr("/ip4/198.51.100.1/tcp/4001/p2p-circuit");
        assert!(next(&mut b, &bare, &from(0)).is_ok());
        assert!(next(&mut b, &bare, &from(1)).is_ok());
        let refused = next(&mut b, &bare, &from(2)).expect_err("a third through that relay");
        let why = refused.downcast_ref::<TooManyFromIp>().expect("per source");
        assert!(why.to_string().contains("198.51.100.1"), "{why}");
        // Direct connections from a relay's IP address are counted apart from its circuits.
        let direct = addr("/ip4/198.51.100.1/tcp/5000");
        let local = addr("/ip4/10.0.0.1/tcp/4001");
        assert!(next(&mut b, &local, &direct).is_ok());
    }

    #[test]
    fn loopback_connections_are_counted_only_when_asked() {
        let local = addr("/ip4/127.0.0.1/tcp/4001");
        let from = addr("/ip4/127.0.0.1/tcp/5000");
        let mut free = Behaviour::new(1, 1, false);
        let mut strict = Behaviour::new(1, 1, true);
        for i in 0..3 {
            let id = ConnectionId::new_unchecked(i);
            assert!(
                free.handle_pending_inbound_connection(id, &local, &from)
                    .is_ok()
            );
        }
        assert!(
            strict
                .handle_pending_inbound_connection(ConnectionId::new_unchecked(1), &local, &from)
                .is_ok()
        );
        assert!(
            strict
                .handle_pending_inbound_connection(ConnectionId::new_unchecked(2), &local, &from)
                .is_err()
        );
    }
}
