//! Asks per peer on `/p2pos/group/1`, counted in fixed windows, for at most [`RATE_PEERS`]
//! peers at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use libp2p::PeerId;

/// Asks one peer may make per [`RATE_WINDOW`].
pub const ASKS_PER_WINDOW: u32 = 64;
/// The window of [`ASKS_PER_WINDOW`].
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Peers whose asks are counted at once (ended windows are dropped beyond; a new peer is
/// refused while every window is running).
pub const RATE_PEERS: usize = 4096;

/// Asks per peer in the current window: cheap to clone.
#[derive(Clone, Default)]
pub struct RateLimit(Arc<Mutex<HashMap<PeerId, (Instant, u32)>>>);

impl RateLimit {
    /// Whether `peer` may ask once more now.
    pub fn allow(&self, peer: PeerId) -> bool {
        let mut asks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if !asks.contains_key(&peer) && asks.len() >= RATE_PEERS {
            asks.retain(|_, (since, _)| now.duration_since(*since) < RATE_WINDOW);
            if asks.len() >= RATE_PEERS {
                return false;
            }
        }
        let entry = asks.entry(peer).or_insert((now, 0));
        if now.duration_since(entry.0) >= RATE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= ASKS_PER_WINDOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_past_its_asks_is_refused_others_are_not() {
        let rate = RateLimit::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        for _ in 0..ASKS_PER_WINDOW {
            assert!(rate.allow(a));
        }
        assert!(!rate.allow(a));
        assert!(rate.allow(b));
    }
}
