//! How providers fared, as the swarm task remembers it for ranking them and for
//! `FindService`: providers that said they do not provide a key (a call's "not provided here",
//! or the provider's own notice that it stopped), peers this node failed to reach, and when
//! each peer was last connected; which providers served lately (tried first), and which broke
//! off a request they took (held back, longer when they do it again). Provider records stay in the DHT for minutes after a provider
//! stops; this is what lets callers skip such a provider at once instead of timing out on it.
//!
//! Every table is bounded ([`MAX_ENTRIES`] each): past the bound, expired entries go first
//! (each by its own time: a refusal's minute, a misbehaviour's ten), then the one that would
//! expire soonest.

use std::{collections::HashMap, hash::Hash, time::Duration};

use libp2p::PeerId;
use p2pos_kernel::events::now_ms;
use p2pos_protocols::network::{Fared, ProviderReach};
use tokio::time::Instant;

/// How long "peer P does not provide key K" is believed (P is then tried only after every
/// other provider, and `FindService` leaves it out).
pub(crate) const NOT_PROVIDING_TTL: Duration = Duration::from_secs(30);
/// How long a peer that could not be reached is not tried again by calls and channels
/// (unless a connection to it opens meanwhile).
pub(crate) const UNREACHED_TTL: Duration = Duration::from_secs(30);
/// How long a provider that refused a call (busy) is tried after the others.
pub(crate) const REFUSED_TTL: Duration = Duration::from_secs(60);
/// How long a provider that broke the protocol is tried after the others.
pub(crate) const MISBEHAVED_TTL: Duration = Duration::from_secs(10 * 60);
/// How long a provider that served a request is tried before those not proven lately.
pub(crate) const SERVED_TTL: Duration = Duration::from_secs(10 * 60);
/// How long a provider that broke off a request it took is remembered for it: doing so again
/// meanwhile is held against it as misbehaviour.
pub(crate) const BROKE_OFF_WINDOW: Duration = Duration::from_secs(10 * 60);
/// A peer connected less than this long ago was reached "recently".
pub(crate) const RECENTLY: Duration = Duration::from_secs(5 * 60);
/// Most entries in each table.
pub(crate) const MAX_ENTRIES: usize = 1024;

/// What the swarm task remembers of how providers fared.
#[derive(Default)]
pub(crate) struct Reach {
    /// (key, peer) → when the peer said it does not provide the key.
    not_providing: HashMap<(String, PeerId), Instant>,
    /// (key, peer) → when it refused or misbehaved, and for how long that is held against it.
    refused: HashMap<(String, PeerId), (Instant, Duration)>,
    /// (key, peer) → when it last served a request.
    served: HashMap<(String, PeerId), Instant>,
    /// (key, peer) → when it last broke off a request it took.
    broke_off: HashMap<(String, PeerId), Instant>,
    /// Peer → when reaching it last failed.
    unreached: HashMap<PeerId, Instant>,
    /// Peer → when a connection to it was last open (monotonic, and ms since the epoch).
    last_connected: HashMap<PeerId, (Instant, u64)>,
}

impl Reach {
    /// A call or channel to `peer` for `key` fared as `fared`.
    pub(crate) fn fared(&mut self, key: &str, peer: PeerId, fared: Fared) {
        let now = Instant::now();
        match fared {
            Fared::Served => {
                self.not_providing.remove(&(key.to_owned(), peer));
                self.refused.remove(&(key.to_owned(), peer));
                self.broke_off.remove(&(key.to_owned(), peer));
                self.unreached.remove(&peer);
                insert_bounded(&mut self.served, (key.to_owned(), peer), now, |at| {
                    *at + SERVED_TTL
                });
            }
            Fared::BrokeOff => {
                let again = self
                    .broke_off
                    .get(&(key.to_owned(), peer))
                    .is_some_and(|at| at.elapsed() < BROKE_OFF_WINDOW);
                insert_bounded(&mut self.broke_off, (key.to_owned(), peer), now, |at| {
                    *at + BROKE_OFF_WINDOW
                });
                let fared = match again {
                    true => Fared::Misbehaved,
                    false => Fared::Refused,
                };
                self.fared(key, peer, fared);
            }
            Fared::NotProviding => {
                self.served.remove(&(key.to_owned(), peer));
                insert_bounded(&mut self.not_providing, (key.to_owned(), peer), now, |at| {
                    *at + NOT_PROVIDING_TTL
                });
            }
            Fared::Unreached => {
                insert_bounded(&mut self.unreached, peer, now, |at| *at + UNREACHED_TTL);
            }
            Fared::Refused | Fared::Failing | Fared::Misbehaved => {
                self.served.remove(&(key.to_owned(), peer));
                let ttl = match fared {
                    Fared::Misbehaved => MISBEHAVED_TTL,
                    _ => REFUSED_TTL,
                };
                // A misbehaviour is not shortened by a later refusal.
                let held = self
                    .refused
                    .get(&(key.to_owned(), peer))
                    .filter(|(at, held)| at.elapsed() < *held && *held > ttl);
                if held.is_none() {
                    insert_bounded(
                        &mut self.refused,
                        (key.to_owned(), peer),
                        (now, ttl),
                        |(at, held)| *at + *held,
                    );
                }
            }
            Fared::Failed => {}
        }
    }

    /// A connection to `peer` is open (it is reachable again), or one just closed.
    pub(crate) fn connection(&mut self, peer: PeerId, opened: bool) {
        if opened {
            self.unreached.remove(&peer);
        }
        let entry = (Instant::now(), now_ms());
        insert_bounded(&mut self.last_connected, peer, entry, |(at, _)| {
            *at + RECENTLY
        });
    }

    /// How `peer`, a provider of `key`, stands (`connected`: a connection to it is open), and
    /// when it was last connected (ms since the epoch).
    pub(crate) fn of(&self, key: &str, peer: PeerId, connected: bool) -> (ProviderReach, u64) {
        let fresh = |at: Option<&Instant>, ttl: Duration| at.is_some_and(|at| at.elapsed() < ttl);
        let last = self.last_connected.get(&peer);
        let last_ms = match connected {
            true => now_ms(),
            false => last.map_or(0, |(_, ms)| *ms),
        };
        let reach = if fresh(
            self.not_providing.get(&(key.to_owned(), peer)),
            NOT_PROVIDING_TTL,
        ) {
            ProviderReach::NotProviding
        } else if fresh(self.unreached.get(&peer), UNREACHED_TTL) {
            ProviderReach::Unreached
        } else if self
            .refused
            .get(&(key.to_owned(), peer))
            .is_some_and(|(at, held)| at.elapsed() < *held)
        {
            ProviderReach::Refused
        } else if connected {
            ProviderReach::Connected
        } else if fresh(last.map(|(at, _)| at), RECENTLY) {
            ProviderReach::Recently
        } else {
            ProviderReach::NotRecently
        };
        (reach, last_ms)
    }

    /// Whether `peer` served a request for `key` in the last [`SERVED_TTL`] (and was not
    /// marked since).
    pub(crate) fn served(&self, key: &str, peer: PeerId) -> bool {
        self.served
            .get(&(key.to_owned(), peer))
            .is_some_and(|at| at.elapsed() < SERVED_TTL)
    }

    /// Drops what has expired.
    pub(crate) fn expire(&mut self) {
        self.not_providing
            .retain(|_, at| at.elapsed() < NOT_PROVIDING_TTL);
        self.unreached.retain(|_, at| at.elapsed() < UNREACHED_TTL);
        self.served.retain(|_, at| at.elapsed() < SERVED_TTL);
        self.broke_off
            .retain(|_, at| at.elapsed() < BROKE_OFF_WINDOW);
        self.refused.retain(|_, (at, held)| at.elapsed() < *held);
        self.last_connected
            .retain(|_, (at, _)| at.elapsed() < RECENTLY);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.not_providing.len()
            + self.unreached.len()
            + self.refused.len()
            + self.last_connected.len()
            + self.served.len()
            + self.broke_off.len()
    }
}

/// Inserts into a table of at most [`MAX_ENTRIES`] whose entries each expire at
/// `expires(entry)`: when full, the expired entries go, then the one that expires soonest.
fn insert_bounded<K: Hash + Eq + Clone, V>(
    table: &mut HashMap<K, V>,
    key: K,
    value: V,
    expires: impl Fn(&V) -> Instant,
) {
    if !table.contains_key(&key) && table.len() >= MAX_ENTRIES {
        let now = Instant::now();
        table.retain(|_, v| expires(v) > now);
        if table.len() >= MAX_ENTRIES
            && let Some(soonest) = table
                .iter()
                .min_by_key(|(_, v)| expires(v))
                .map(|(k, _)| k.clone())
        {
            table.remove(&soonest);
        }
    }
    table.insert(key, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn marks_expire_and_a_served_call_clears_them() {
        let mut reach = Reach::default();
        let (p, q) = (PeerId::random(), PeerId::random());
        assert_eq!(reach.of("k", p, false).0, ProviderReach::NotRecently);
        reach.fared("k", p, Fared::NotProviding);
        reach.fared("k", q, Fared::Unreached);
        assert_eq!(reach.of("k", p, true).0, ProviderReach::NotProviding);
        assert_eq!(reach.of("other", p, true).0, ProviderReach::Connected);
        assert_eq!(reach.of("k", q, true).0, ProviderReach::Unreached);
        reach.fared("k", p, Fared::Served);
        assert_eq!(reach.of("k", p, true).0, ProviderReach::Connected);
        // A connection to q opens: reachable again.
        reach.connection(q, true);
        assert_eq!(reach.of("k", q, false).0, ProviderReach::Recently);
        assert!(reach.of("k", q, false).1 > 0);
        reach.fared("k", p, Fared::NotProviding);
        tokio::time::advance(NOT_PROVIDING_TTL).await;
        assert_eq!(reach.of("k", p, false).0, ProviderReach::NotRecently);
        tokio::time::advance(RECENTLY).await;
        reach.expire();
        assert_eq!(reach.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_held_for_a_minute_and_misbehaviour_for_ten() {
        let mut reach = Reach::default();
        let (busy, junk) = (PeerId::random(), PeerId::random());
        reach.fared("k", busy, Fared::Refused);
        reach.fared("k", junk, Fared::Misbehaved);
        reach.fared("k", junk, Fared::Refused);
        assert_eq!(reach.of("k", busy, true).0, ProviderReach::Refused);
        assert_eq!(reach.of("other", busy, true).0, ProviderReach::Connected);
        tokio::time::advance(REFUSED_TTL).await;
        assert_eq!(reach.of("k", busy, true).0, ProviderReach::Connected);
        assert_eq!(
            reach.of("k", junk, true).0,
            ProviderReach::Refused,
            "a refusal does not shorten a misbehaviour"
        );
        reach.fared("k", junk, Fared::Served);
        assert_eq!(reach.of("k", junk, true).0, ProviderReach::Connected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_drops_what_expired_by_its_own_time_before_what_still_holds() {
        let mut reach = Reach::default();
        let junk: Vec<PeerId> = (0..MAX_ENTRIES - 1).map(|_| PeerId::random()).collect();
        for peer in &junk {
            reach.fared("k", *peer, Fared::Misbehaved);
        }
        let busy = PeerId::random();
        tokio::time::advance(Duration::from_secs(1)).await;
        reach.fared("k", busy, Fared::Refused);
        // The refusal's minute is over; the misbehaviours' ten minutes are not.
        tokio::time::advance(REFUSED_TTL).await;
        let newcomer = PeerId::random();
        reach.fared("k", newcomer, Fared::Misbehaved);
        assert_eq!(reach.refused.len(), MAX_ENTRIES);
        assert!(!reach.refused.contains_key(&("k".to_owned(), busy)));
        for peer in junk.iter().chain([&newcomer]) {
            assert_eq!(reach.of("k", *peer, true).0, ProviderReach::Refused);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn breaking_off_twice_is_misbehaviour_and_serving_ranks_first() {
        let mut reach = Reach::default();
        let (sybil, honest) = (PeerId::random(), PeerId::random());
        reach.fared("k", sybil, Fared::BrokeOff);
        assert_eq!(reach.of("k", sybil, true).0, ProviderReach::Refused);
        tokio::time::advance(REFUSED_TTL).await;
        assert_eq!(reach.of("k", sybil, true).0, ProviderReach::Connected);
        // Again within the window: ten minutes.
        reach.fared("k", sybil, Fared::BrokeOff);
        tokio::time::advance(REFUSED_TTL).await;
        assert_eq!(reach.of("k", sybil, true).0, ProviderReach::Refused);
        tokio::time::advance(MISBEHAVED_TTL).await;
        assert_eq!(reach.of("k", sybil, true).0, ProviderReach::Connected);
        // A failing app is held back for a minute, and forgets that it served.
        reach.fared("k", honest, Fared::Served);
        assert!(reach.served("k", honest));
        assert!(!reach.served("other", honest));
        reach.fared("k", honest, Fared::Failing);
        assert!(!reach.served("k", honest));
        assert_eq!(reach.of("k", honest, true).0, ProviderReach::Refused);
        reach.fared("k", honest, Fared::Served);
        tokio::time::advance(SERVED_TTL).await;
        assert!(!reach.served("k", honest));
    }

    #[test]
    fn tables_are_bounded() {
        let mut reach = Reach::default();
        for _ in 0..(MAX_ENTRIES * 2) {
            let peer = PeerId::random();
            reach.fared("k2", peer, Fared::Served);
            reach.fared("k3", peer, Fared::BrokeOff);
            reach.fared("k", peer, Fared::NotProviding);
            reach.fared("k", peer, Fared::Unreached);
            reach.fared("k", peer, Fared::Misbehaved);
            reach.connection(peer, false);
        }
        // `refused` holds k and k3 marks: bounded all the same.
        assert_eq!(reach.len(), 6 * MAX_ENTRIES);
    }
}
