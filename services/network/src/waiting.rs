//! What the swarm task waits on, and who waits with it: connects in progress, look-ups of
//! providers, record puts and gets. The task's parts (`connect`, `providers`, `records`) keep
//! these in the [`EventLoop`](crate::event_loop::EventLoop) and answer their callers.

use std::collections::HashSet;

use libp2p::{Multiaddr, PeerId, swarm::ConnectionId};
use p2pos_protocols::network::{Providers, Reply, SignedRecord};
use tokio::time::Instant;

use crate::provider_cache::Found;

/// Callers waiting for a connection to one peer, and how far the attempt has got.
pub(crate) struct PendingConnect {
    pub(crate) waiters: Vec<Reply<Multiaddr>>,
    /// Addresses given by the caller or found in the DHT, not yet dialled.
    pub(crate) addrs: Vec<Multiaddr>,
    pub(crate) dialed: bool,
    /// This attempt's dials in flight: addresses that come while one is (an answer to a
    /// look-up, a caller's) are dialled beside it, and the attempt fails only once none is
    /// left.
    pub(crate) dials: HashSet<ConnectionId>,
    pub(crate) looked_up: bool,
    pub(crate) last_error: Option<String>,
}

/// A look-up of a key's providers in progress, and the callers waiting on it.
pub(crate) struct ProviderQuery {
    pub(crate) key: String,
    /// Providers found so far, in the order found, without this node.
    pub(crate) found: Vec<Found>,
    pub(crate) waiters: Vec<Waiter>,
}

/// A caller of `EventLoop::find_providers` waiting on a look-up.
pub(crate) struct Waiter {
    pub(crate) limit: usize,
    /// Only these providers count and are answered; `None`: any.
    pub(crate) among: Option<Vec<PeerId>>,
    pub(crate) deadline: Instant,
    pub(crate) reply: Reply<Providers>,
}

impl Waiter {
    /// Whether `peer` is a provider this caller wants.
    pub(crate) fn wants(&self, peer: &PeerId) -> bool {
        self.among.as_ref().is_none_or(|among| among.contains(peer))
    }

    /// How many of `found` this caller wants.
    pub(crate) fn wanted(&self, found: &[Found]) -> usize {
        found.iter().filter(|(p, _)| self.wants(p)).count()
    }
}

/// A put or a get of a record in progress.
pub(crate) enum RecordQuery {
    /// A put, answered once it reached enough peers (or only this node's store).
    Put { reply: Reply<()> },
    /// A get, answered with the verified records found when it ends.
    Get {
        key: String,
        found: Vec<SignedRecord>,
        reply: Reply<Vec<SignedRecord>>,
    },
}
