//! Services in the DHT, from the swarm task: the node provides the Kademlia key
//! `/p2pos/service/<service>` of exactly the services the overlay wants announced (a `watch`
//! of the set, so the latest set always wins and nothing queues up), and looks up the
//! providers of a service for `FindService`, calls and service channels.
//!
//! Provider records expire on other nodes 5 minutes after their last publication, and a
//! provider republishes every minute (see `behaviour`): a provider that goes away without
//! saying so is forgotten within minutes, and callers skip stale records meanwhile ("not
//! provided there").

use std::time::Duration;

use libp2p::{PeerId, kad};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{RemoteProvider, Reply, event_loop::EventLoop};
use crate::Error;

/// Where a service's providers are announced: `/p2pos/service/<service>`.
const KEY_PREFIX: &str = "/p2pos/service/";
/// Most look-ups of providers at once.
const MAX_PROVIDER_QUERIES: usize = 64;

/// A look-up of a service's providers in progress.
pub(crate) struct ProviderQuery {
    limit: usize,
    deadline: Instant,
    /// Providers found so far, in the order found, without this node.
    found: Vec<PeerId>,
    reply: Reply<Vec<RemoteProvider>>,
}

/// The DHT key under which the providers of `service` are announced.
fn service_key(service: &str) -> kad::RecordKey {
    kad::RecordKey::new(&format!("{KEY_PREFIX}{service}"))
}

impl EventLoop {
    /// Provides exactly the services the overlay wants now: stops providing those it no longer
    /// wants (a local change; other nodes forget the record when it expires) and starts
    /// providing new ones.
    pub(super) fn provide_wanted(&mut self) {
        let Some(wanted) = self
            .wanted
            .as_mut()
            .map(|rx| rx.borrow_and_update().clone())
        else {
            return;
        };
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return; // Kademlia is off: nothing is announced
        };
        for gone in self.providing.difference(&wanted) {
            debug!(service = %gone, "no longer provided in the DHT");
            kad.stop_providing(&service_key(gone));
        }
        let mut providing = wanted.clone();
        for new in wanted.difference(&self.providing) {
            match kad.start_providing(service_key(new)) {
                Ok(_) => debug!(service = %new, "provided in the DHT"),
                Err(e) => {
                    warn!(service = %new, "cannot announce the service in the DHT: {e}");
                    providing.remove(new);
                }
            }
        }
        self.providing = providing;
    }

    /// A peer entered the routing table. If it is the first one, announcements made while
    /// the table was empty reached nobody: make them again now rather than at the next
    /// republication.
    pub(super) fn on_new_routing_peer(&mut self) {
        if self.providing.is_empty() {
            return;
        }
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        if kad.kbuckets().map(|b| b.num_entries()).sum::<usize>() != 1 {
            return;
        }
        for service in &self.providing {
            if let Err(e) = kad.start_providing(service_key(service)) {
                warn!(%service, "cannot announce the service in the DHT: {e}");
            }
        }
    }

    /// Starts a look-up of the providers of `service`.
    pub(super) fn find_providers(
        &mut self,
        service: &str,
        limit: usize,
        wait: Duration,
        reply: Reply<Vec<RemoteProvider>>,
    ) {
        if !self.swarm.behaviour().kad.is_enabled() {
            let _ = reply.send(Err(Error::DhtDisabled));
            return;
        }
        if self.provider_queries.len() >= MAX_PROVIDER_QUERIES {
            let _ = reply.send(Err(Error::Busy {
                what: "look-ups of service providers in progress",
                limit: MAX_PROVIDER_QUERIES,
            }));
            return;
        }
        self.seed_routing_table();
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        let id = kad.get_providers(service_key(service));
        self.provider_queries.insert(
            id,
            ProviderQuery {
                limit: limit.max(1),
                deadline: Instant::now() + wait,
                found: Vec::new(),
                reply,
            },
        );
    }

    /// Kademlia events about providers: look-up progress, and how announcements went.
    pub(super) fn on_provider_event(&mut self, event: kad::Event) {
        let local = *self.swarm.local_peer_id();
        match event {
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            } => {
                let Some(query) = self.provider_queries.get_mut(&id) else {
                    return;
                };
                match result {
                    Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                        for p in providers {
                            if p != local && !query.found.contains(&p) {
                                query.found.push(p);
                            }
                        }
                    }
                    Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
                    Err(kad::GetProvidersError::Timeout { .. }) => {
                        debug!("a look-up of providers timed out");
                    }
                }
                if step.last || query.found.len() >= query.limit {
                    self.end_provider_query(id);
                }
            }
            kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::StartProviding(result),
                ..
            } => match result {
                Ok(ok) => debug!(key = ?ok.key, "service announced"),
                Err(e) => debug!("a service announcement did not complete: {e}"),
            },
            _ => {}
        }
    }

    /// Answers the look-ups whose time is up (with what they found) or whose caller left.
    pub(super) fn expire_provider_queries(&mut self) {
        let now = Instant::now();
        let due: Vec<kad::QueryId> = self
            .provider_queries
            .iter()
            .filter(|(_, q)| q.deadline <= now || q.reply.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.end_provider_query(id);
        }
    }

    fn end_provider_query(&mut self, id: kad::QueryId) {
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
            limit,
            found,
            reply,
            ..
        } = query;
        let _ = reply.send(Ok(self.ranked(found, limit)));
    }

    /// `found` in the order callers should try them: connected peers by round-trip time
    /// (those not measured yet last among them), then the others in the order found.
    fn ranked(&self, found: Vec<PeerId>, limit: usize) -> Vec<RemoteProvider> {
        let mut providers: Vec<RemoteProvider> = found
            .into_iter()
            .map(|peer| {
                let connected = self.swarm.is_connected(&peer);
                RemoteProvider {
                    peer,
                    connected,
                    rtt: connected
                        .then(|| self.rtt.get(&peer).map(|(rtt, _)| *rtt))
                        .flatten(),
                }
            })
            .collect();
        providers.sort_by_key(|p| (!p.connected, p.rtt.is_none(), p.rtt));
        providers.truncate(limit);
        providers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced() {
        assert_eq!(
            service_key("translate/1").as_ref(),
            b"/p2pos/service/translate/1"
        );
    }
}
