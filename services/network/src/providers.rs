//! Providers in the DHT, from the swarm task: the node provides exactly the keys its
//! announcers want (each a `watch` of a set, so the latest set always wins and nothing queues
//! up; the app layer announces `/p2pos/service/<service>` for the services provided here), and
//! looks up the providers of a key (for `FindService`, calls and service channels).
//!
//! Look-ups are shared: callers that ask for the providers of a key while a look-up of it
//! runs join that Kademlia query (one query per key), each answered when it has as many
//! providers as it wants or its time is up. What a look-up found is reused for a while
//! (`provider_cache`) by calls and channels, and the addresses the DHT gave with each
//! provider go into the address book (heard, not stored until a connection to it succeeds:
//! see `peers`), so that connecting to it needs no second look-up.
//!
//! Provider records expire on other nodes 5 minutes after their last publication, and a
//! provider republishes every minute (see `behaviour`): a provider that goes away without
//! saying so is forgotten within minutes, and callers skip stale records meanwhile ("not
//! provided there"), telling the cache to forget them.

use std::{collections::BTreeSet, time::Duration};

use libp2p::{
    Multiaddr, PeerId,
    core::Endpoint,
    kad,
    swarm::{ConnectionId, NetworkBehaviour},
};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, warn};

use p2pos_protocols::network::{
    Error, Fared, ProviderReach, Providers, RemoteProvider, Reply, check_key,
};

use crate::{
    event_loop::EventLoop,
    provider_cache::Found,
    waiting::{ProviderQuery, Waiter},
};

/// Most look-ups of providers at once (of different services: callers of one key share
/// its look-up).
const MAX_PROVIDER_QUERIES: usize = 64;
/// Most callers waiting on one look-up.
const MAX_WAITERS_PER_QUERY: usize = 1024;

/// The Kademlia key of a DHT key (a string under `/p2pos/`, checked by the handle).
fn dht_key(key: &str) -> kad::RecordKey {
    kad::RecordKey::new(&key)
}

/// Most announcers at once (one per service start).
const MAX_ANNOUNCERS: usize = 64;

impl EventLoop {
    /// A new announcer: its keys are provided from now on, with every other announcer's. Past
    /// [`MAX_ANNOUNCERS`], announcers whose sender is gone make room; if none did, the new one
    /// is ignored (its keys are not announced) with a warning.
    pub(crate) fn announce(&mut self, keys: watch::Receiver<BTreeSet<String>>) {
        if self.wanted.len() >= MAX_ANNOUNCERS {
            self.wanted.retain(|rx| rx.has_changed().is_ok());
        }
        if self.wanted.len() >= MAX_ANNOUNCERS {
            warn!("too many announcers of DHT keys ({MAX_ANNOUNCERS}); one is ignored");
            return;
        }
        self.wanted.push(keys);
        self.provide_wanted();
    }

    /// Provides exactly the keys the announcers want now, all together: stops providing those
    /// no longer wanted (a local change; other nodes forget the record when it expires) and
    /// starts providing new ones.
    pub(crate) fn provide_wanted(&mut self) {
        let wanted: BTreeSet<String> = self
            .wanted
            .iter_mut()
            .flat_map(|rx| rx.borrow_and_update().clone())
            .filter(|key| check_key(key).is_ok())
            .collect();
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return; // Kademlia is off: nothing is announced
        };
        for gone in self.providing.difference(&wanted) {
            debug!(key = %gone, "no longer provided in the DHT");
            kad.stop_providing(&dht_key(gone));
        }
        let mut providing = wanted.clone();
        for new in wanted.difference(&self.providing) {
            match kad.start_providing(dht_key(new)) {
                Ok(_) => debug!(key = %new, "provided in the DHT"),
                Err(e) => {
                    warn!(key = %new, "cannot announce the key in the DHT: {e}");
                    providing.remove(new);
                }
            }
        }
        self.providing = providing;
    }

    /// A peer entered the routing table. If it is the first one, announcements made while
    /// the table was empty reached nobody: make them again now rather than at the next
    /// republication.
    pub(crate) fn on_new_routing_peer(&mut self) {
        if self.providing.is_empty() {
            return;
        }
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        if kad.kbuckets().map(|b| b.num_entries()).sum::<usize>() != 1 {
            return;
        }
        for key in &self.providing {
            if let Err(e) = kad.start_providing(dht_key(key)) {
                warn!(%key, "cannot announce the key in the DHT: {e}");
            }
        }
    }

    /// Answers up to `limit` providers of `key` within `wait`: from a recent look-up
    /// unless `fresh`, else from the look-up of it in progress (joined) or a new one.
    pub(crate) fn find_providers(
        &mut self,
        key: String,
        limit: usize,
        wait: Duration,
        fresh: bool,
        reply: Reply<Providers>,
    ) {
        if !self.swarm.behaviour().kad.is_enabled() {
            let _ = reply.send(Err(Error::DhtDisabled));
            return;
        }
        let limit = limit.max(1);
        if !fresh && let Some(found) = self.provider_cache.get(&key, limit) {
            let providers = self.ranked(&key, found, limit);
            let _ = reply.send(Ok(Providers {
                providers,
                cached: true,
            }));
            return;
        }
        let waiter = Waiter {
            limit,
            deadline: Instant::now() + wait,
            reply,
        };
        if let Some(id) = self.provider_query_of.get(&key).copied()
            && let Some(query) = self.provider_queries.get_mut(&id)
        {
            if query.waiters.len() >= MAX_WAITERS_PER_QUERY {
                let _ = waiter.reply.send(Err(Error::Busy {
                    what: "callers waiting for one look-up of providers",
                    limit: MAX_WAITERS_PER_QUERY,
                }));
            } else {
                query.waiters.push(waiter);
                // It may have found enough for this caller already.
                self.answer_satisfied(id);
            }
            return;
        }
        if self.provider_queries.len() >= MAX_PROVIDER_QUERIES {
            let _ = waiter.reply.send(Err(Error::Busy {
                what: "look-ups of providers in progress",
                limit: MAX_PROVIDER_QUERIES,
            }));
            return;
        }
        self.seed_routing_table();
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        let id = kad.get_providers(dht_key(&key));
        self.provider_query_of.insert(key.clone(), id);
        self.provider_queries.insert(
            id,
            ProviderQuery {
                key,
                found: Vec::new(),
                waiters: vec![waiter],
            },
        );
    }

    /// How a call or channel to `peer`, a provider of `key`, fared, remembered (`reach`) for
    /// ranking: one that said it does not provide the key, or was not reached, stays in recent
    /// look-ups, ranked last (callers skip it or try it last); one that failed otherwise is no
    /// longer offered by them.
    pub(crate) fn provider_fared(&mut self, key: &str, peer: PeerId, fared: Fared) {
        if fared == Fared::Failed {
            self.provider_cache.forget(key, &peer);
        }
        self.reach.fared(key, peer, fared);
    }

    /// Kademlia events about providers: look-up progress, and how announcements went.
    pub(crate) fn on_provider_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            } => {
                if !self.provider_queries.contains_key(&id) {
                    return;
                }
                match result {
                    Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                        for peer in providers {
                            self.on_provider_found(id, peer);
                        }
                    }
                    Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
                    Err(kad::GetProvidersError::Timeout { .. }) => {
                        debug!("a look-up of providers timed out");
                    }
                }
                if step.last {
                    self.end_provider_query(id, true);
                } else {
                    self.answer_satisfied(id);
                }
            }
            kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::StartProviding(result),
                ..
            } => match result {
                Ok(ok) => debug!(key = ?ok.key, "key announced"),
                Err(e) => debug!("a key announcement did not complete: {e}"),
            },
            other => self.on_record_event(other),
        }
    }

    /// Look-up `id` found `peer`: kept with the addresses the DHT gave for it (which the
    /// query holds only while it runs), also in the address book for connecting to it.
    fn on_provider_found(&mut self, id: kad::QueryId, peer: PeerId) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        if self
            .provider_queries
            .get(&id)
            .is_none_or(|q| q.found.iter().any(|(p, _)| *p == peer))
        {
            return;
        }
        let addrs = self.query_addresses(peer);
        // A DHT answer's claim: stored only once a connection to it succeeds.
        self.book.hear(peer, addrs.clone());
        if let Some(query) = self.provider_queries.get_mut(&id) {
            query.found.push((peer, addrs));
        }
    }

    /// The addresses Kademlia knows for `peer`: its routing table's, and those the running
    /// queries were given (a provider's, with its record). Kademlia hands them out only when
    /// asked how to dial the peer, so it is asked that.
    fn query_addresses(&mut self, peer: PeerId) -> Vec<Multiaddr> {
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return Vec::new();
        };
        let known = kad
            .handle_pending_outbound_connection(
                ConnectionId::new_unchecked(0),
                Some(peer),
                &[],
                Endpoint::Dialer,
            )
            .unwrap_or_default();
        let mut addrs: Vec<Multiaddr> = Vec::new();
        for addr in known {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        addrs
    }

    /// Answers the callers of look-up `id` that have as many providers as they asked for;
    /// with none left waiting, the look-up ends.
    fn answer_satisfied(&mut self, id: kad::QueryId) {
        let Some(query) = self.provider_queries.get_mut(&id) else {
            return;
        };
        let count = query.found.len();
        let (done, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut query.waiters)
            .into_iter()
            .partition(|w| count >= w.limit);
        query.waiters = waiting;
        let (key, found, none_left) = (
            query.key.clone(),
            query.found.clone(),
            query.waiters.is_empty(),
        );
        for waiter in done {
            self.answer(&key, waiter, found.clone());
        }
        if none_left {
            self.end_provider_query(id, false);
        }
    }

    /// Answers the callers whose time is up (with what was found) and drops those who left;
    /// a look-up nobody waits for any more ends.
    pub(crate) fn expire_provider_queries(&mut self) {
        let now = Instant::now();
        let ids: Vec<kad::QueryId> = self.provider_queries.keys().copied().collect();
        for id in ids {
            let Some(query) = self.provider_queries.get_mut(&id) else {
                continue;
            };
            let (due, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut query.waiters)
                .into_iter()
                .filter(|w| !w.reply.is_closed())
                .partition(|w| w.deadline <= now);
            query.waiters = waiting;
            let (key, found, none_left) = (
                query.key.clone(),
                query.found.clone(),
                query.waiters.is_empty(),
            );
            for waiter in due {
                self.answer(&key, waiter, found.clone());
            }
            if none_left {
                self.end_provider_query(id, false);
            }
        }
        self.provider_cache.expire();
        self.reach.expire();
    }

    /// Ends look-up `id` (`complete`: it ran to its end), remembers what it found and answers
    /// whoever still waits.
    fn end_provider_query(&mut self, id: kad::QueryId, complete: bool) {
        let Some(query) = self.provider_queries.remove(&id) else {
            return;
        };
        if let Some(mut running) = self
            .swarm
            .behaviour_mut()
            .kad
            .as_mut()
            .and_then(|k| k.query_mut(&id))
        {
            running.finish();
        }
        let ProviderQuery {
            key,
            found,
            waiters,
        } = query;
        if self.provider_query_of.get(&key) == Some(&id) {
            self.provider_query_of.remove(&key);
        }
        self.provider_cache.put(&key, found.clone(), complete);
        for waiter in waiters {
            self.answer(&key, waiter, found.clone());
        }
    }

    fn answer(&self, key: &str, waiter: Waiter, found: Vec<Found>) {
        let providers = self.ranked(key, found, waiter.limit);
        let _ = waiter.reply.send(Ok(Providers {
            providers,
            cached: false,
        }));
    }

    /// `found` (providers of `key`) in the order callers should try them: connected peers by
    /// round-trip time (those not measured yet last among them), then the others in the
    /// order found, then those that said they do not provide it, then those not reached
    /// (see [`ProviderReach`]).
    fn ranked(&self, key: &str, found: Vec<Found>, limit: usize) -> Vec<RemoteProvider> {
        let mut providers: Vec<RemoteProvider> = found
            .into_iter()
            .map(|(peer, addrs)| {
                let connected = self.swarm.is_connected(&peer);
                let (reach, last_connected_ms) = self.reach.of(key, peer, connected);
                RemoteProvider {
                    peer,
                    addrs,
                    connected,
                    rtt: connected
                        .then(|| self.rtt.get(&peer).map(|(rtt, _)| *rtt))
                        .flatten(),
                    reach,
                    last_connected_ms,
                }
            })
            .collect();
        let class = |reach: ProviderReach| match reach {
            ProviderReach::Connected => 0,
            ProviderReach::Recently | ProviderReach::NotRecently => 1,
            ProviderReach::NotProviding => 2,
            ProviderReach::Unreached => 3,
        };
        providers.sort_by_key(|p| (class(p.reach), p.rtt.is_none(), p.rtt));
        providers.truncate(limit);
        providers
    }
}
