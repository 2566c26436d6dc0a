//! Providers in the DHT, from the swarm task: looks up the providers of a key (for
//! `FindService`, calls and service channels); what this node provides is `announce`'s.
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

use std::time::Duration;

use libp2p::{
    Multiaddr, PeerId,
    core::Endpoint,
    kad,
    swarm::{ConnectionId, NetworkBehaviour},
};
use tokio::time::Instant;
use tracing::debug;

use p2pos_protocols::network::{Error, Fared, ProviderReach, Providers, RemoteProvider, Reply};

use crate::{
    announce::dht_key,
    event_loop::EventLoop,
    provider_cache::Found,
    waiting::{ProviderQuery, Waiter},
};

/// Most look-ups of providers at once (of different services: callers of one key share
/// its look-up).
const MAX_PROVIDER_QUERIES: usize = 64;
/// Most callers waiting on one look-up.
const MAX_WAITERS_PER_QUERY: usize = 1024;

impl EventLoop {
    /// Answers up to `limit` providers of `key` within `wait`: from a recent look-up
    /// unless `fresh`, else from the look-up of it in progress (joined) or a new one.
    pub(crate) fn find_providers(
        &mut self,
        key: String,
        (limit, among): (usize, Option<Vec<PeerId>>),
        wait: Duration,
        fresh: bool,
        reply: Reply<Providers>,
    ) {
        if !self.swarm.behaviour().kad.is_enabled() {
            let _ = reply.send(Err(Error::DhtDisabled));
            return;
        }
        // With peers named, no more than they can be found.
        let limit = match &among {
            Some(among) => limit.min(among.len()),
            None => limit,
        }
        .max(1);
        let waiter = Waiter {
            limit,
            among,
            deadline: Instant::now() + wait,
            reply,
        };
        if !fresh && let Some(found) = self.provider_cache.get(&key, |f| waiter.wanted(f) >= limit)
        {
            let providers = self.ranked(&key, found, &waiter);
            let _ = waiter.reply.send(Ok(Providers {
                providers,
                cached: true,
            }));
            return;
        }
        // Peers named that this node reaches without the DHT (connected, or at addresses it
        // connected to before): the caller tries them at once, with what a recent look-up found
        // of them, rather than after the look-up; if they all fail, it asks for a fresh one.
        if !fresh
            && let Some(among) = &waiter.among
            && among
                .iter()
                .any(|p| self.connections.contains_key(p) || !self.book.confirmed(p).is_empty())
        {
            let found = self.provider_cache.get(&key, |_| true).unwrap_or_default();
            let providers = self.ranked(&key, found, &waiter);
            let _ = waiter.reply.send(Ok(Providers {
                providers,
                cached: true,
            }));
            return;
        }
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
                result:
                    kad::QueryResult::StartProviding(result)
                    | kad::QueryResult::RepublishProvider(result),
                stats,
                ..
            } => self.on_announced(result, stats.num_successes()),
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
        let found = &query.found;
        let (done, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut query.waiters)
            .into_iter()
            .partition(|w| w.wanted(found) >= w.limit);
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
        let providers = self.ranked(key, found, &waiter);
        let _ = waiter.reply.send(Ok(Providers {
            providers,
            cached: false,
        }));
    }

    /// `found` (providers of `key`) in the order callers should try them: those that served
    /// lately first, then the other connected peers by round-trip time (those not measured
    /// yet last among them), then the others in the order found, then those that refused or
    /// misbehaved recently, then those that said they do not provide it, then those not
    /// reached
    /// (see [`ProviderReach`]); only those `waiter` wants, picked out before the cut to its
    /// limit.
    fn ranked(&self, key: &str, found: Vec<Found>, waiter: &Waiter) -> Vec<RemoteProvider> {
        let mut providers: Vec<RemoteProvider> = found
            .into_iter()
            .filter(|(peer, _)| waiter.wants(peer))
            .map(|(peer, addrs)| {
                let connected = self.connections.contains_key(&peer);
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
            ProviderReach::Refused => 2,
            ProviderReach::NotProviding => 3,
            ProviderReach::Unreached => 4,
        };
        // Among those not held back, providers that served lately come first: a Sybil that
        // is connected and fast but never serves cannot stay ahead of an honest provider.
        let held_back = |reach: ProviderReach| class(reach) > 1;
        providers.sort_by_cached_key(|p| {
            (
                held_back(p.reach),
                !self.reach.served(key, p.peer),
                class(p.reach),
                p.rtt.is_none(),
                p.rtt,
            )
        });
        providers.truncate(waiter.limit);
        providers
    }
}
