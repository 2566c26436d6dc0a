//! What the swarm task remembers of recent look-ups of providers: for [`PROVIDER_TTL`] after a
//! look-up, calls and channels to the same key take its providers (and their addresses)
//! from here instead of asking the DHT again. A provider that turned out not to provide the
//! key (any more), or could not be reached, is forgotten at once, so the next caller does
//! not try it first again; a fresh look-up (`FindService`, or a caller whose cached providers
//! all failed) replaces the entry.

use std::{collections::HashMap, time::Duration};

use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

/// How long the providers a look-up found are reused.
pub(crate) const PROVIDER_TTL: Duration = Duration::from_secs(30);
/// Most keys whose providers are remembered; the oldest entry goes first.
const MAX_ENTRIES: usize = 256;

/// A provider as found: its node and the addresses the DHT gave for it.
pub(crate) type Found = (PeerId, Vec<Multiaddr>);

/// Recent look-ups of providers, by key.
#[derive(Default)]
pub(crate) struct ProviderCache {
    entries: HashMap<String, Entry>,
}

struct Entry {
    /// In the order found.
    providers: Vec<Found>,
    /// Whether the look-up ran to its end (rather than stopping once enough were found).
    complete: bool,
    at: Instant,
}

impl ProviderCache {
    /// The providers of `key` found less than [`PROVIDER_TTL`] ago, if they are `enough` or
    /// the look-up found every one it could.
    pub(crate) fn get(
        &self,
        key: &str,
        enough: impl FnOnce(&[Found]) -> bool,
    ) -> Option<Vec<Found>> {
        let entry = self.entries.get(key)?;
        let fresh = entry.at.elapsed() < PROVIDER_TTL;
        let enough = entry.complete || enough(&entry.providers);
        (fresh && enough).then(|| entry.providers.clone())
    }

    /// Remembers what a look-up of `key` found. A look-up that found nobody only clears
    /// the entry, and only if it ran to its end.
    pub(crate) fn put(&mut self, key: &str, providers: Vec<Found>, complete: bool) {
        if providers.is_empty() {
            if complete {
                self.entries.remove(key);
            }
            return;
        }
        if !self.entries.contains_key(key) && self.entries.len() >= MAX_ENTRIES {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.at)
                .map(|(s, _)| s.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        let entry = Entry {
            providers,
            complete,
            at: Instant::now(),
        };
        self.entries.insert(key.to_owned(), entry);
    }

    /// `peer` did not take a call or channel to `key` (not provided there, unreachable):
    /// no longer offered from here.
    pub(crate) fn forget(&mut self, key: &str, peer: &PeerId) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.providers.retain(|(p, _)| p != peer);
            if entry.providers.is_empty() {
                self.entries.remove(key);
            }
        }
    }

    /// Drops the entries older than [`PROVIDER_TTL`].
    pub(crate) fn expire(&mut self) {
        self.entries.retain(|_, e| e.at.elapsed() < PROVIDER_TTL);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(n: usize) -> Vec<Found> {
        (0..n).map(|_| (PeerId::random(), Vec::new())).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn entries_last_thirty_seconds_and_only_when_enough() {
        let mut cache = ProviderCache::default();
        let two = found(2);
        cache.put("echo/1", two.clone(), false);
        assert_eq!(
            cache.get("echo/1", |f| f.len() >= 2).map(|p| p.len()),
            Some(2)
        );
        assert!(
            cache.get("echo/1", |f| f.len() >= 8).is_none(),
            "the look-up stopped early"
        );
        cache.put("echo/1", two.clone(), true);
        assert_eq!(
            cache.get("echo/1", |f| f.len() >= 8).map(|p| p.len()),
            Some(2),
            "all there are"
        );
        assert!(cache.get("other/1", |f| !f.is_empty()).is_none());

        tokio::time::advance(PROVIDER_TTL).await;
        assert!(cache.get("echo/1", |f| !f.is_empty()).is_none(), "stale");
        cache.expire();
        assert_eq!(cache.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_providers_are_forgotten_and_empty_answers_clear() {
        let mut cache = ProviderCache::default();
        let two = found(2);
        cache.put("echo/1", two.clone(), true);
        cache.forget("echo/1", &two[0].0);
        let left = cache.get("echo/1", |f| f.len() >= 8).expect("one left");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, two[1].0);
        cache.forget("echo/1", &two[1].0);
        assert_eq!(cache.len(), 0);

        cache.put("echo/1", two.clone(), true);
        cache.put("echo/1", Vec::new(), false);
        assert!(
            cache.get("echo/1", |f| !f.is_empty()).is_some(),
            "an early stop clears nothing"
        );
        cache.put("echo/1", Vec::new(), true);
        assert!(cache.get("echo/1", |f| !f.is_empty()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_entry_makes_room() {
        let mut cache = ProviderCache::default();
        for i in 0..MAX_ENTRIES {
            cache.put(&format!("s{i}/1"), found(1), true);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        cache.put("new/1", found(1), true);
        assert_eq!(cache.len(), MAX_ENTRIES);
        assert!(cache.get("s0/1", |f| !f.is_empty()).is_none());
        assert!(cache.get("new/1", |f| !f.is_empty()).is_some());
    }
}
