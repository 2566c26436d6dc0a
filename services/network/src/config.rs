//! The network's configuration: the `[network]` table of `p2posd.toml`, set by the daemon's flags
//! too (`--listen`, `--bootstrap`, `--no-mdns`, `--no-kademlia`, `--no-relay-server`).

use serde::Deserialize;

/// How the node takes part in the network. Every field has a default that just works.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Multiaddrs to listen on. Default: TCP and QUIC on all IPv4 interfaces, ports chosen by
    /// the OS the first time and remembered in the store after that.
    pub listen: Vec<String>,
    /// Peers to dial at start (tickets or multiaddrs with `/p2p/`), besides those remembered.
    pub bootstrap: Vec<String>,
    /// mDNS discovery on the LAN. Default: on.
    pub mdns: bool,
    /// Kademlia DHT. Default: on.
    pub kademlia: bool,
    /// Serve as a circuit relay (v2) for others once AutoNAT says this node is public.
    /// Default: on.
    pub relay_server: bool,
    /// Most connections to one peer. Default: 4.
    pub max_connections_per_peer: u32,
    /// Most established connections in all. Default: 256.
    pub max_connections: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".to_owned(),
                "/ip4/0.0.0.0/udp/0/quic-v1".to_owned(),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            kademlia: true,
            relay_server: true,
            max_connections_per_peer: 4,
            max_connections: 256,
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
        if self.max_connections_per_peer == 0 || self.max_connections == 0 {
            return Err("connection limits must be > 0".into());
        }
        Ok(())
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
    }
}
