//! Outbound calls in flight per peer: at most [`MAX_CALLS_PER_PEER`] `/p2pos/call/2` streams
//! from this node to one peer at once; further calls to it wait their turn (within their own
//! time) instead of being refused by the provider's node, which serves at most 64 call
//! streams from one peer. The limit here is lower, so that streams whose answers are read but
//! whose serving task on the far side has not ended yet still fit.
//!
//! Streams to one peer are also opened one at a time: the far side's `libp2p-stream` hands
//! inbound streams to the node through a channel of one, and drops (resets) a stream that
//! arrives while the previous one has not been taken yet. Opening one after the other (each
//! open waits for the far side's protocol confirmation) spaces them out.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use libp2p::PeerId;
use tokio::sync::{Mutex as AsyncMutex, MutexGuard, OwnedSemaphorePermit, Semaphore};

/// Most calls in flight from this node to one peer.
pub(crate) const MAX_CALLS_PER_PEER: usize = 32;
/// How many entries the map may hold before those no call uses any more are dropped.
const PRUNE_AT: usize = 64;

/// The calls to one peer.
struct Peer {
    /// Places among the calls in flight.
    calls: Arc<Semaphore>,
    /// Held while a stream to the peer is being opened.
    opening: AsyncMutex<()>,
}

/// A place among the calls in flight to one peer, given back on drop.
pub(crate) struct Slot {
    peer: Arc<Peer>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// Waits until no other stream to the peer is being opened; open one while holding this.
    pub(crate) async fn opening(&self) -> MutexGuard<'_, ()> {
        self.peer.opening.lock().await
    }
}

/// The calls to each peer with calls in flight. The map is only touched to find a peer's
/// entry (never held across an await), by call futures on any thread; an entry lives as long
/// as a call holds or waits for one of its places.
#[derive(Default)]
pub(crate) struct PeerSlots {
    peers: Mutex<HashMap<PeerId, Weak<Peer>>>,
}

impl PeerSlots {
    /// Waits for a place among the calls in flight to `peer`. (`None` only if its semaphore
    /// were closed, which it never is.)
    pub(crate) async fn acquire(&self, peer: PeerId) -> Option<Slot> {
        let peer = self.peer(peer);
        let permit = peer.calls.clone().acquire_owned().await.ok()?;
        Some(Slot {
            peer,
            _permit: permit,
        })
    }

    fn peer(&self, peer: PeerId) -> Arc<Peer> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(live) = peers.get(&peer).and_then(Weak::upgrade) {
            return live;
        }
        if peers.len() >= PRUNE_AT {
            peers.retain(|_, s| s.strong_count() > 0);
        }
        let entry = Arc::new(Peer {
            calls: Arc::new(Semaphore::new(MAX_CALLS_PER_PEER)),
            opening: AsyncMutex::new(()),
        });
        peers.insert(peer, Arc::downgrade(&entry));
        entry
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.peers.lock().map(|p| p.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_peer_gets_at_most_its_share_and_the_rest_wait() {
        let slots = PeerSlots::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut held = Vec::new();
        for _ in 0..MAX_CALLS_PER_PEER {
            held.push(slots.acquire(a).await.expect("open"));
        }
        let waiting = tokio::time::timeout(Duration::from_millis(50), slots.acquire(a)).await;
        assert!(waiting.is_err(), "a full peer makes callers wait");
        // Another peer is not affected.
        let _other = slots.acquire(b).await;
        // Opens to one peer go one at a time.
        let first = held[0].opening().await;
        let second = tokio::time::timeout(Duration::from_millis(50), held[1].opening()).await;
        assert!(second.is_err(), "one open at a time");
        drop((first, second));
        held.pop();
        let next = tokio::time::timeout(Duration::from_secs(5), slots.acquire(a)).await;
        assert!(next.is_ok(), "a freed place is taken");
    }

    #[tokio::test]
    async fn unused_peers_are_dropped() {
        let slots = PeerSlots::default();
        for _ in 0..(PRUNE_AT * 2) {
            drop(slots.acquire(PeerId::random()).await);
        }
        assert!(slots.len() <= PRUNE_AT, "{}", slots.len());
    }
}
