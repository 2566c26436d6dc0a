//! The P2P OS network service: this node's place in the peer-to-peer network (rust-libp2p:
//! TCP and QUIC, noise, yamux, identify, ping, Kademlia, mDNS, AutoNAT, circuit relay v2,
//! DCUtR, connection and memory limits, gossipsub confined to groups), behind the narrow handle
//! [`Network`](p2pos_protocols::network::Network) that it provides to the services started
//! after it, and answering `p2pos.overlay.v1` (tickets, dialing, peers, ping, DHT look-ups).
//!
//! One actor, [`service::NetworkService`], owns the life cycle; one tokio task owns the swarm
//! and takes commands from every handle on a bounded channel. Only this service holds the
//! node's secret key: records it puts in the DHT are signed here.
//!
//! # Layout
//! - [`config`]: the `[network]` table of the node's configuration.
//! - [`service`]: the actor, its [`child_spec`], life cycle and the overlay protocol.
//! - [`overlay_api`]: `p2pos.overlay.v1` requests, one exhaustive `match`.
//! - `behaviour`: the transports and the combined behaviour.
//! - `event_loop`: the swarm task, swarm events and persistence of what it learns.
//! - `gossip`: gossipsub confined to each scope's (group's) members.
//! - `gossip_loop`: the swarm task's gossip commands, and the messages it validates.
//! - `connect`: dialing, DHT look-ups of peers (routing table and address records), pings.
//! - `info`: tickets, peer lists and the overlay status.
//! - `kad_store`: Kademlia's record store, within bounds sized to what nodes put in it.
//! - `metrics`: what the swarm task records for Prometheus.
//! - `per_ip`: inbound connections counted per remote IP address.
//! - `peers`: known peers and remembered listen ports in the store.
//! - `announce`: the keys this node announces in the DHT, and how each announcement went.
//! - `providers`: look-ups of providers in the DHT.
//! - `provider_cache`: providers found by recent look-ups, reused for a while.
//! - `reach`: how providers fared (said "not here", not reached) and when peers were last
//!   connected, for ranking providers.
//! - `records`: records signed by this node, put in and got from the DHT.
//! - `peer_records`: this node's signed address record in the DHT, and look-ups of peers'.
//! - `nat`: what the swarm task knows of this node's place behind NATs (relays, hole
//!   punching, the address record published, whois answers).
//! - `relays`: relay reservations while the node is not known to be public.
//! - `relay_server`: the relay server, serving only with a direct external address.
//! - `direct`: hole punching, upgrades to direct connections, and why a peer is relayed.
//! - `circuits`: the limits relays announce for their circuits, and how a peer is reached.
//! - `scope`: how far an address reaches, and which addresses to keep and advertise.
//! - `whois`: `/p2pos/whois/1`, finding a peer through the peers connected to it.
//! - `waiting`: what the swarm task waits on (connects, look-ups, record queries), and who.

mod announce;
mod behaviour;
mod circuits;
pub mod config;
mod connect;
mod direct;
mod event_loop;
mod gossip;
mod gossip_loop;
mod info;
mod kad_store;
mod metrics;
mod nat;
pub mod overlay_api;
mod peer_records;
mod peers;
mod per_ip;
mod provider_cache;
mod providers;
mod reach;
mod records;
mod relay_server;
mod relays;
mod scope;
pub mod service;
mod waiting;
mod whois;

pub use config::Config;
pub use service::{NAME, STORE_CONTENTS, child_spec};

/// The peers `store` remembers, with their addresses: what the node redials at its next start
/// (only addresses it connected to, or that its user gave). For diagnosis and tests; the node
/// itself reads them once, at start.
pub fn stored_peers(
    store: &dyn p2pos_kernel::Store,
) -> Vec<(libp2p::PeerId, Vec<libp2p::Multiaddr>)> {
    peers::stored(store)
}
