//! What the network knows of one peer, for diagnosis: more than [`PeerInfo`] lists, and only
//! asked for one peer at a time (the doctor's `doctor PEER`).

use libp2p::{Multiaddr, PeerId};
use p2pos_proto::overlay::v1::PeerInfo;

/// Most protocols kept of what a peer's identify listed.
pub const MAX_PROTOCOLS: usize = 64;
/// Most listen addresses kept of what a peer's identify listed.
pub const MAX_LISTEN: usize = 16;
/// Longest protocol name kept.
pub const MAX_PROTOCOL_NAME: usize = 128;

/// How hole punching went with a peer while it is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolePunch {
    /// No attempt (the peer is connected directly, or hole punching has not started).
    NotTried,
    /// A direct connection came of it.
    Succeeded,
    /// It failed: the error.
    Failed(String),
}

/// What the network knows of `peer` now.
#[derive(Debug, Clone)]
pub struct PeerDetail {
    /// The peer.
    pub peer: PeerId,
    /// Its entry among the connected peers, when connected.
    pub info: Option<PeerInfo>,
    /// The protocols its identify listed (at most [`MAX_PROTOCOLS`]), while connected.
    pub protocols: Vec<String>,
    /// The addresses its identify said it listens on (at most [`MAX_LISTEN`], unfiltered: a
    /// peer behind a NAT lists its private ones), while connected.
    pub listen_addrs: Vec<Multiaddr>,
    /// The addresses this node's peer book holds for it: confirmed ones first.
    pub known_addrs: Vec<Multiaddr>,
    /// How hole punching went, while it is connected only through relays.
    pub hole_punch: HolePunch,
    /// The hole-punch attempts with it while connected, oldest first (the last 8): each failed
    /// direct dial while it was reached only through relays, and how each hole punch ended;
    /// when (ms since the Unix epoch) and the error if it failed.
    pub hole_punches: Vec<(u64, Result<(), String>)>,
    /// Where it sees this node, when a NAT mapped that address.
    pub observed_us: Option<Multiaddr>,
}
