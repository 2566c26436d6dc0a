//! Inbound connections counted per remote IP address: a behaviour that refuses a connection
//! from an address that already has [`Config::max_connections_per_ip`](crate::Config) inbound
//! connections (established or being set up), so that one host cannot take every inbound slot
//! with many identities. libp2p's `connection_limits` counts per peer id and in all, not per
//! address. Loopback addresses are counted only when `limit_loopback` is set (processes on this
//! machine are its user's: tests, labs, several nodes of one user); relayed connections have no
//! IP of their own and are bounded by the relay's limits.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::IpAddr,
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
    /// The address of each inbound connection counted, pending or established.
    connections: HashMap<ConnectionId, IpAddr>,
    /// Inbound connections per address.
    per_ip: HashMap<IpAddr, u32>,
}

/// An inbound connection refused because its address has as many as it may.
#[derive(Debug)]
pub(crate) struct TooManyFromIp {
    ip: IpAddr,
    limit: u32,
}

impl std::fmt::Display for TooManyFromIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} inbound connections from {} already (the limit per address)",
            self.limit, self.ip
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
        let Some(ip) = self.connections.remove(&connection) else {
            return;
        };
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
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
        let Some(ip) = ip_of(remote_addr) else {
            return Ok(());
        };
        if ip.is_loopback() && !self.limit_loopback {
            return Ok(());
        }
        let n = self.per_ip.entry(ip).or_default();
        if *n >= self.max_per_ip {
            return Err(ConnectionDenied::new(TooManyFromIp {
                ip,
                limit: self.max_per_ip,
            }));
        }
        *n += 1;
        self.connections.insert(connection_id, ip);
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
    fn loopback_and_relayed_connections_are_counted_only_when_asked() {
        let local = addr("/ip4/127.0.0.1/tcp/4001");
        let from = addr("/ip4/127.0.0.1/tcp/5000");
        let relayed = addr(
            "/ip4/203.0.113.7/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
        );
        let mut free = Behaviour::new(1, false);
        let mut strict = Behaviour::new(1, true);
        for i in 0..3 {
            let id = ConnectionId::new_unchecked(i);
            assert!(
                free.handle_pending_inbound_connection(id, &local, &from)
                    .is_ok()
            );
            assert!(
                free.handle_pending_inbound_connection(id, &local, &relayed)
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
