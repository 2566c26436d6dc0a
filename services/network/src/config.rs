//! The network's configuration: the `[network]` table of `p2posd.toml`, set by the daemon's flags
//! too (`--listen`, `--bootstrap`, `--external-address`, `--trust-private-addresses`,
//! `--no-mdns`, `--no-kademlia`, `--no-relay-server`).

use serde::{Deserialize, Serialize};

/// How the node takes part in the network. Every field has a default that just works.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Multiaddrs to listen on. Default: TCP and QUIC on all IPv4 interfaces, ports chosen by
    /// the OS the first time and remembered in the store after that.
    pub listen: Vec<String>,
    /// Peers to dial at start (tickets or multiaddrs with `/p2p/`), besides those remembered.
    pub bootstrap: Vec<String>,
    /// Addresses at which others reach this node, declared by its operator (a relay on a
    /// public address, a port forwarded on the router): confirmed from the start, so that the
    /// node serves as a relay and a DHT server at once rather than after AutoNAT's tests.
    /// Default: none (AutoNAT finds them).
    pub external_addresses: Vec<String>,
    /// Treats private IPv4 addresses (10/8, 172.16/12, 192.168/16, 100.64/10) as reachable
    /// from outside, for networks whose "internet" is private (a campus or carrier-grade NAT,
    /// a lab): AutoNAT tests and confirms such addresses, and they are advertised to peers
    /// that are not on the same network. Default: off.
    pub trust_private_addresses: bool,
    /// mDNS discovery on the LAN. Default: on.
    pub mdns: bool,
    /// Kademlia DHT. Default: on.
    pub kademlia: bool,
    /// Serve as a circuit relay (v2) for others once AutoNAT says this node is public.
    /// Default: on.
    pub relay_server: bool,
    /// As a relay, how long one circuit (a relayed connection between two peers) may stay
    /// open, in seconds. Peers behind NATs that change ports per destination are reached only
    /// through relays, so circuits carry their traffic. Default: 1800 (libp2p's: 120).
    pub relay_circuit_secs: u64,
    /// As a relay, how many bytes one circuit may carry (both ways together). Default: 64 MiB
    /// (libp2p's: 128 KiB).
    pub relay_circuit_bytes: u64,
    /// Most connections to one peer. Default: 4.
    pub max_connections_per_peer: u32,
    /// Most established connections in all. Default: 256.
    pub max_connections: u32,
    /// Most established connections that peers opened to this node, below `max_connections`
    /// so that the rest is always there for this node's own dials. Default: three quarters of
    /// `max_connections`, rounded up (192 of 256, 8 of 10); all of it when that leaves no
    /// inbound connection (a total of 1).
    pub max_inbound_connections: Option<u32>,
    /// Most inbound connections (established or being set up) from one IP address (an IPv6
    /// /64), so that one host cannot take every inbound slot with many identities. Default: 16.
    pub max_connections_per_ip: u32,
    /// Most inbound relayed connections (established or being set up) through one relay, so
    /// that one relay cannot take every inbound slot either. A node behind a NAT that is
    /// reachable only through one relay gets at most this many inbound peers through it.
    /// Default: 16.
    pub max_connections_per_relay: u32,
    /// Whether `max_connections_per_ip` counts loopback addresses too. Processes on this
    /// machine are its user's (several nodes of one user, tests, labs): by default they are
    /// not counted. Default: off.
    pub limit_loopback_per_ip: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".to_owned(),
                "/ip4/0.0.0.0/udp/0/quic-v1".to_owned(),
            ],
            bootstrap: Vec::new(),
            external_addresses: Vec::new(),
            trust_private_addresses: false,
            mdns: true,
            kademlia: true,
            relay_server: true,
            relay_circuit_secs: 30 * 60,
            relay_circuit_bytes: 64 << 20,
            max_connections_per_peer: 4,
            max_connections: 256,
            max_inbound_connections: None,
            max_connections_per_ip: 16,
            max_connections_per_relay: 16,
            limit_loopback_per_ip: false,
        }
    }
}

impl Config {
    /// Checks what the types alone do not: listen addresses parse, limits are positive.
    pub fn validate(&self) -> Result<(), String> {
        for addr in &self.listen {
            addr.parse::<libp2p::Multiaddr>()
                .map_err(|e| format!("listen address {addr:?}: {e}"))?;
        }
        for addr in &self.external_addresses {
            let parsed = addr
                .parse::<libp2p::Multiaddr>()
                .map_err(|e| format!("external address {addr:?}: {e}"))?;
            if !crate::peers::is_dialable(&parsed) {
                return Err(format!(
                    "external address {addr:?}: give the address and port others dial (not \
                     0.0.0.0 or port 0)"
                ));
            }
        }
        if self.max_connections_per_peer == 0
            || self.max_connections == 0
            || self.max_inbound_connections == Some(0)
            || self.max_connections_per_ip == 0
            || self.max_connections_per_relay == 0
            || self.relay_circuit_secs == 0
            || self.relay_circuit_bytes == 0
        {
            return Err("connection and relay circuit limits must be > 0".into());
        }
        if self
            .max_inbound_connections
            .is_some_and(|n| n >= self.max_connections)
        {
            return Err(format!(
                "max_inbound_connections ({}) must be below max_connections ({}), so that this \
                 node's own dials always have room",
                self.inbound_limit(),
                self.max_connections
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Most established inbound connections: `max_inbound_connections`, or three quarters of
    /// `max_connections` rounded up, leaving at least one for dials when that leaves at least
    /// one inbound (a total of 1 is all inbound).
    pub fn inbound_limit(&self) -> u32 {
        let total = self.max_connections;
        // ⌈¾·total⌉ = total − ⌊total/4⌋; a total of 1 ends at 1 through the `max`.
        let default = (total - total / 4).min(total.saturating_sub(1));
        self.max_inbound_connections.unwrap_or(default).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_listen_addresses_and_zero_limits_are_refused() {
        assert!(Config::default().validate().is_ok());
        let bad = Config {
            listen: vec!["tcp:4001".into()],
            ..Config::default()
        };
        assert!(bad.validate().expect_err("refused").contains("tcp:4001"));
        let zero = Config {
            max_connections: 0,
            ..Config::default()
        };
        assert!(zero.validate().is_err());
        let no_room_for_dials = Config {
            max_inbound_connections: Some(256),
            ..Config::default()
        };
        let why = no_room_for_dials.validate().expect_err("refused");
        assert!(why.contains("max_inbound_connections"), "{why}");
        let small = Config {
            max_connections: 8,
            ..Config::default()
        };
        assert_eq!(small.inbound_limit(), 6);
        assert!(small.validate().is_ok());
        // Small totals split sensibly, and a total of 1 starts (nothing kept for dials).
        for (total, inbound) in [(1, 1), (2, 1), (3, 2), (4, 3), (10, 8), (256, 192)] {
            let config = Config {
                max_connections: total,
                ..Config::default()
            };
            assert_eq!(config.inbound_limit(), inbound, "of {total}");
            assert!(config.validate().is_ok(), "a total of {total}");
        }
    }
}
