//! The libp2p stack: transports (TCP and QUIC, noise, yamux, relay client) and the combined
//! [`Behaviour`] (limits, identify, ping, Kademlia, mDNS, AutoNAT, relay, DCUtR, streams,
//! gossip).

use std::{num::NonZeroUsize, time::Duration};

use libp2p::{
    StreamProtocol, Swarm, SwarmBuilder, autonat, connection_limits, dcutr, identify,
    identity::Keypair,
    kad, mdns, memory_connection_limits, noise, ping, relay,
    swarm::{NetworkBehaviour, behaviour::toggle::Toggle},
    tcp, yamux,
};
use tracing::warn;

use p2pos_protocols::network::Error;

use crate::Config;

/// The identify protocol version string this node announces.
pub(crate) const PROTOCOL_VERSION: &str = "/p2pos/1.0.0";
/// How often connected peers are pinged.
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long a connection without streams stays open.
pub(crate) const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a Kademlia query may run.
pub(crate) const KAD_QUERY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long another node keeps a service provider record after its last publication.
pub(crate) const PROVIDER_RECORD_TTL: Duration = Duration::from_secs(5 * 60);
/// How often this node republishes the provider records of its services.
pub(crate) const PROVIDER_PUBLICATION_INTERVAL: Duration = Duration::from_secs(60);
/// Most circuits this node, as a relay, carries at once, and from or to one peer.
const MAX_CIRCUITS: usize = 64;
const MAX_CIRCUITS_PER_PEER: usize = 8;
/// How long after start AutoNAT first tests reachability.
const AUTONAT_BOOT_DELAY: Duration = Duration::from_secs(3);
/// Pending (not yet established) connections allowed in each direction.
const MAX_PENDING: u32 = 64;
/// Fraction of the machine's memory above which new connections are refused.
const MAX_MEMORY_FRACTION: f64 = 0.9;

/// Most DHT records this node stores for others and itself (each at most [`MAX_RECORD_VALUE`]).
const MAX_KAD_RECORDS: usize = 1024;
/// The largest DHT record value stored: a signed envelope of the largest record a service puts
/// (`MAX_RECORD`), its key (at most `MAX_KEY`), the signer's public key and the signature.
const MAX_RECORD_VALUE: usize =
    p2pos_protocols::network::MAX_RECORD + p2pos_protocols::network::MAX_KEY + 1024;
/// Most keys with provider records stored (this node's services and those others put here).
const MAX_PROVIDER_KEYS: usize = 1024;
/// Most providers stored per key: the replication factor, as libp2p advises.
const MAX_PROVIDERS_PER_KEY: usize = 20;

/// The Kademlia store's bounds, sized to what nodes put in it: signed records of at most
/// [`MAX_RECORD_VALUE`] bytes (not libp2p's 65 KiB), and provider records of services. At most
/// about 10 MiB of records and 4096 remote provider records of at most 4 short addresses each
/// (`kad_store`, which also keeps a quarter of records and keys for this node's own): about
/// 14 MiB in all.
fn kad_store_config() -> kad::store::MemoryStoreConfig {
    kad::store::MemoryStoreConfig {
        max_records: MAX_KAD_RECORDS,
        max_value_bytes: MAX_RECORD_VALUE,
        max_provided_keys: MAX_PROVIDER_KEYS,
        max_providers_per_key: MAX_PROVIDERS_PER_KEY,
    }
}

/// The agent version this node announces through identify.
pub(crate) fn agent_version() -> String {
    format!("p2posd/{}", env!("CARGO_PKG_VERSION"))
}

/// Every protocol the overlay speaks, in one behaviour.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Connection counts from the configuration.
    pub(crate) limits: connection_limits::Behaviour,
    /// Inbound connections per remote IP address.
    pub(crate) per_ip: crate::per_ip::Behaviour,
    /// Refuses connections when memory runs short.
    pub(crate) memory: memory_connection_limits::Behaviour,
    /// `/ipfs/id/1.0.0`: agent, listen addresses, observed address.
    pub(crate) identify: identify::Behaviour,
    /// `/ipfs/ping/1.0.0`: liveness and round-trip time.
    pub(crate) ping: ping::Behaviour,
    /// The DHT, off with `--no-kademlia`.
    pub(crate) kad: Toggle<kad::Behaviour<crate::kad_store::Store>>,
    /// LAN discovery, off with `--no-mdns`.
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    /// Whether this node is publicly reachable.
    pub(crate) autonat: autonat::Behaviour,
    /// Serves as a circuit relay (only once a direct external address is confirmed).
    pub(crate) relay: Toggle<crate::relay_server::RelayServer>,
    /// Reserves slots on relays and dials through them.
    pub(crate) relay_client: relay::client::Behaviour,
    /// Hole punching through relayed connections.
    pub(crate) dcutr: dcutr::Behaviour,
    /// The `/p2pos/...` protocols, served outside the swarm task.
    pub(crate) stream: libp2p_stream::Behaviour,
    /// Group pubsub: gossipsub confined to each group's members.
    pub(crate) gossip: crate::gossip::ScopedGossip,
}

/// Builds the swarm from the node's identity and configuration; the bytes its connections
/// carry are counted in `registry` (`libp2p_bandwidth_bytes_total`, by direction).
pub(crate) fn build_swarm(
    keypair: &Keypair,
    config: &Config,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<Swarm<Behaviour>, Error> {
    let setup = |e: &dyn std::fmt::Display| Error::Setup(e.to_string());
    let swarm = SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| setup(&e))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key, relay_client| behaviour(key, relay_client, config))
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}

fn behaviour(
    key: &Keypair,
    relay_client: relay::client::Behaviour,
    config: &Config,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer_id = key.public().to_peer_id();
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        // The rest is kept for this node's own dials: peers that connect cannot take it all.
        .with_max_established_incoming(Some(config.inbound_limit()))
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_pending_incoming(Some(MAX_PENDING))
        .with_max_pending_outgoing(Some(MAX_PENDING));
    let identify = identify::Behaviour::new(
        // Signed peer records: a peer asked about this node (`whois`) hands on one it can
        // prove came from this node.
        identify::Config::new_with_signed_peer_record(PROTOCOL_VERSION.to_owned(), key)
            .with_agent_version(agent_version())
            .with_push_listen_addr_updates(true),
    );
    let kad = config.kademlia.then(|| {
        let mut kad_config = kad::Config::new(kad::PROTOCOL_NAME);
        kad_config.set_query_timeout(KAD_QUERY_TIMEOUT);
        // Service providers (`/p2pos/service/<name>`) come and go with app sessions: their
        // records live 5 minutes on other nodes and a live provider republishes them every
        // minute, so a provider that vanished is forgotten within minutes, not the default
        // 48 hours.
        kad_config.set_provider_record_ttl(Some(PROVIDER_RECORD_TTL));
        kad_config.set_provider_publication_interval(Some(PROVIDER_PUBLICATION_INTERVAL));
        if let Some(k) = NonZeroUsize::new(MAX_PROVIDERS_PER_KEY) {
            kad_config.set_replication_factor(k);
        }
        let store = crate::kad_store::Store::new(peer_id, kad_store_config());
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
        // Serve the DHT from the start: AutoNAT moves it to client mode if it finds the node
        // private. Without this, nodes on a LAN or loopback never enter routing tables.
        kad.set_mode(Some(kad::Mode::Server));
        kad
    });
    let mdns = match config.mdns {
        true => match mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id) {
            Ok(mdns) => Some(mdns),
            Err(e) => {
                // No multicast here (a container, say): the node works without LAN discovery.
                warn!("mDNS is off: {e}");
                None
            }
        },
        false => None,
    };
    let relay = config.relay_server.then(|| {
        crate::relay_server::RelayServer::new(relay::Behaviour::new(
            peer_id,
            relay::Config {
                max_reservations: 128,
                max_reservations_per_peer: 4,
                // Circuits carry the traffic of peers that only a relay gets through, and one
                // of a peer that vanished stays until its connection times out: room for more
                // than libp2p's 16 / 4.
                max_circuits: MAX_CIRCUITS,
                max_circuits_per_peer: MAX_CIRCUITS_PER_PEER,
                // Peers behind NATs that map ports per destination are reached only through
                // relays, so a circuit carries their traffic, not only a hole punch's
                // handshake (libp2p's defaults: 2 minutes, 128 KiB): when it ends, the
                // channels on it end with an error and messages are sent again.
                // (`relay_circuit_secs`, `relay_circuit_bytes`.)
                max_circuit_duration: Duration::from_secs(config.relay_circuit_secs),
                max_circuit_bytes: config.relay_circuit_bytes,
                ..relay::Config::default()
            },
        ))
    });
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        per_ip: crate::per_ip::Behaviour::new(
            config.max_connections_per_ip,
            config.max_connections_per_relay,
            config.limit_loopback_per_ip,
        ),
        memory: memory_connection_limits::Behaviour::with_max_percentage(MAX_MEMORY_FRACTION),
        identify,
        ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
        kad: Toggle::from(kad),
        mdns: Toggle::from(mdns),
        autonat: autonat::Behaviour::new(
            peer_id,
            autonat::Config {
                // A first verdict within seconds rather than after 15 s: reservations do not
                // wait for it (`relays`), but dropping them once public does.
                boot_delay: AUTONAT_BOOT_DELAY,
                // On a private "internet", its addresses are the ones to test.
                only_global_ips: !config.trust_private_addresses,
                ..autonat::Config::default()
            },
        ),
        relay: Toggle::from(relay),
        relay_client,
        dcutr: dcutr::Behaviour::new(peer_id),
        stream: libp2p_stream::Behaviour::new(),
        gossip: crate::gossip::behaviour(key)?,
    })
}

/// The protocol id of the circuit relay server (hop), as identify reports it.
pub(crate) fn is_relay_hop(protocol: &StreamProtocol) -> bool {
    *protocol == relay::HOP_PROTOCOL_NAME
}
