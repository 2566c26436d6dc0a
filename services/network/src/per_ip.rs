//! Inbound connections counted per source: a behaviour that refuses a connection from a source
//! that already has [`Config::max_connections_per_ip`](crate::Config) inbound connections
//! (established or being set up), so that one host cannot take every inbound slot with many
//! identities. libp2p's `connection_limits` counts per peer id and in all, not per address.
//! A source is an IPv4 address, an IPv6 /64 (what one host or one LAN is given: a host has
//! the whole of it to pick addresses from), or, for a relayed connection, which has no IP of its
//! own, the relay's peer id (so that one relay cannot fill every inbound slot). Loopback
//! addresses are counted only when `limit_loopback` is set (processes on this machine are its
//! user's: tests, labs, several nodes of one user).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr},
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, multiaddr::Protocol, transport::PortUse},
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure,
        NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
    },
};

/// Refuses inbound connections past a number per remote IP address.
pub(crate) struct Behaviour {
    /// Most inbound connections (pending and established) from one address.
    max_per_ip: u32,
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
            "{} inbound connections from {} already (the limit per address)",
            self.limit, self.source
        )
    }
}

impl std::error::Error for TooManyFromIp {}

/// The IP address a multiaddr starts with, if any (a relayed address has none of its own).
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return None;
    }
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// What an inbound connection from `addr` is counted under, and whether that is a loopback
/// address (`None`: nothing to count by).
fn source_of(addr: &Multiaddr) -> Option<(Source, bool)> {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        // The relay is the last peer id before the circuit.
        let mut relay = None;
        for p in addr.iter() {
            match p {
                Protocol::P2p(peer) => relay = Some(peer),
                Protocol::P2pCircuit => break,
                _ => {}
            }
        }
        return relay.map(|r| (Source::Relay(r), false));
    }
    match ip_of(addr)? {
        IpAddr::V4(ip) => Some((Source::V4(ip), ip.is_loopback())),
        IpAddr::V6(ip) => {
            let net = u64::try_from(u128::from(ip) >> 64).unwrap_or(u64::MAX);
            Some((Source::V6(net), ip.is_loopback()))
        }
    }
}

impl Behaviour {
    /// Counts inbound connections, at most `max_per_ip` from one address (loopback ones only
    /// when `limit_loopback`).
    pub(crate) fn new(max_per_ip: u32, limit_loopback: bool) -> Self {
        Self {
            max_per_ip,
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
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some((source, loopback)) = source_of(remote_addr) else {
            return Ok(());
        };
        if loopback && !self.limit_loopback {
            return Ok(());
        }
        let n = self.per_ip.entry(source).or_default();
        if *n >= self.max_per_ip {
            return Err(ConnectionDenied::new(TooManyFromIp {
                source,
                limit: self.max_per_ip,
            }));
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
        let mut b = Behaviour::new(2, false);
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
    fn an_ipv6_64_counts_as_one_address_and_a_relay_as_one_source() {
        let mut b = Behaviour::new(2, false);
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
        // Relayed connections: counted per relay, whatever the relay's own address.
        let relay = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        let via = |ip: &str| format!("/ip4/{ip}/tcp/4001/p2p/{relay}/p2p-circuit");
        assert!(next(&mut b, &via("203.0.113.7")).is_ok());
        assert!(next(&mut b, &via("203.0.113.8")).is_ok());
        let refused = next(&mut b, &via("127.0.0.1")).expect_err("a third through one relay");
        let why = refused.downcast_ref::<TooManyFromIp>().expect("per source");
        assert!(why.to_string().contains(relay), "{why}");
    }

    #[test]
    fn loopback_connections_are_counted_only_when_asked() {
        let local = addr("/ip4/127.0.0.1/tcp/4001");
        let from = addr("/ip4/127.0.0.1/tcp/5000");
        let mut free = Behaviour::new(1, false);
        let mut strict = Behaviour::new(1, true);
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
