//! Finding providers: `FindService` (this node's provider first, then remote ones from the
//! DHT, connected ones by round-trip time, then the others). Calls and channels try remote
//! providers in the same order (`tries`).

use std::time::Duration;

use p2pos_proto::service::v1::{FindServiceReply, Reachability, ServiceInfo};
use p2pos_protocols::{
    certs::{Certificate, PublisherKey},
    ids::ServiceName,
    network::{ProviderReach, RemoteProvider},
    services::ProviderFilter,
};
use tokio::time::Instant;
use tracing::debug;

use super::{
    state::service_key,
    tries::{CANDIDATES_WAIT, MAX_CHECKED, shortened},
    trust::{Checker, vouching},
};
use crate::{Error, registry::actor::ServiceRegistry, task::Fut};

/// How long `FindService` waits for the DHT.
const FIND_WAIT: Duration = Duration::from_secs(10);
/// Providers `FindService` answers when the request says 0.
const DEFAULT_LIMIT: usize = 20;
/// Most providers `FindService` answers.
const MAX_LIMIT: usize = 100;

/// Who provides a service on this node.
pub(crate) enum Here {
    /// An app with a live session.
    App(String),
}

impl ServiceRegistry {
    /// Who provides `service` on this node, if anyone.
    pub(crate) fn provider_here(&self, service: &str) -> Option<Here> {
        if let Some(r) = self.services.registrations.get(service) {
            return Some(Here::App(r.app_id.clone()));
        }
        None
    }

    /// The certificates the provider of `service` here presents (only those for the app
    /// registered now: `Register` takes no other, this checks again).
    pub(crate) fn certificates_here(&self, service: &str) -> Vec<Certificate> {
        self.services
            .registrations
            .get(service)
            .map(|r| {
                r.certificates
                    .iter()
                    .filter(|c| c.check_app(&r.app_id).is_ok())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `Services.FindService`: with publisher keys pinned, each provider found is asked for
    /// its certificates (all at once, within the look-up's time) and only those a pinned key
    /// vouches for are answered.
    pub(super) fn find(
        &mut self,
        service: ServiceName,
        limit: u32,
        filter: ProviderFilter,
    ) -> Fut<FindServiceReply> {
        let service = service.into_string();
        let limit = match usize::try_from(limit).unwrap_or(MAX_LIMIT) {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let local = self.net.local_peer_id();
        let pinned = filter.publisher_keys.clone();
        let mut not_certified = Vec::new();
        let here = match self.provider_here(&service) {
            Some(Here::App(_)) if filter.allows(&local) => {
                let mut info = self.local_info(service.clone());
                match pinned.is_empty() {
                    true => Some(info),
                    false => {
                        match vouching(&self.certificates_here(&service), &service, &local, &pinned)
                        {
                            Ok(key) => {
                                info.publisher_key = key.to_text();
                                Some(info)
                            }
                            Err(why) => {
                                not_certified.push(format!("this node: {why}"));
                                None
                            }
                        }
                    }
                }
            }
            _ => None,
        };
        let (net, checker) = (self.net.clone(), self.services.checker(&self.net));
        Box::pin(async move {
            let mut providers: Vec<ServiceInfo> = here.into_iter().collect();
            let mut scope = "(not on this node, and no provider was found in the DHT)";
            let want = limit - providers.len();
            if want > 0 {
                // Always a fresh look-up: this is where people see who provides what. Only the
                // peers named count; with keys pinned, more are asked for and checked, and the
                // answer is cut after the check (uncertified ones cannot crowd it out).
                let ask = match pinned.is_empty() {
                    true => want,
                    false => MAX_CHECKED.max(want),
                };
                match net
                    .find_providers_among(
                        service_key(&service),
                        (ask, filter.only.clone()),
                        FIND_WAIT,
                        true,
                    )
                    .await
                    .map_err(Error::from)
                {
                    Ok(remote) => {
                        // Those that said they do not provide it (any more) are left out while
                        // that is believed: their DHT records outlive them by minutes.
                        let remote: Vec<_> = remote
                            .providers
                            .into_iter()
                            .filter(|p| p.reach != ProviderReach::NotProviding)
                            .filter(|p| filter.allows(&p.peer))
                            .collect();
                        let until = Instant::now() + CANDIDATES_WAIT;
                        let keys = certified_by(&checker, &remote, &service, &pinned, until).await;
                        for (p, key) in remote.into_iter().zip(keys) {
                            if providers.len() >= limit {
                                break;
                            }
                            let publisher_key = match key {
                                None => String::new(),
                                Some(Ok(key)) => key.to_text(),
                                Some(Err(e)) => {
                                    not_certified.push(format!("peer {}: {e}", p.peer));
                                    continue;
                                }
                            };
                            providers.push(ServiceInfo {
                                service: service.clone(),
                                // The DHT names the node only: the app and description stay empty.
                                peer_id: p.peer.to_string(),
                                rtt_us: p.rtt.map_or(0, |rtt| {
                                    u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX).max(1)
                                }),
                                reachability: reachability(p.reach).into(),
                                last_reached_ms: p.last_connected_ms,
                                publisher_key,
                                ..ServiceInfo::default()
                            });
                        }
                    }
                    Err(Error::DhtDisabled) => {
                        scope = "on this node (the DHT is off here, so no other node was asked)";
                    }
                    Err(e) if providers.is_empty() && not_certified.is_empty() => return Err(e),
                    Err(e) => debug!(%service, "no remote providers: {e}"),
                }
            }
            if providers.is_empty() && !not_certified.is_empty() {
                return Err(Error::NoneCertified {
                    service,
                    known: not_certified.len(),
                    reasons: shortened(not_certified.join("; ")),
                });
            }
            if providers.is_empty() {
                return Err(Error::ServiceNotFound { service, scope });
            }
            Ok(FindServiceReply { providers })
        })
    }
}

/// For each of `providers`, the pinned key that vouches for it (`None` when no key is
/// pinned), asking them all at once by `until`.
async fn certified_by(
    checker: &Checker,
    providers: &[RemoteProvider],
    service: &str,
    pinned: &[PublisherKey],
    until: Instant,
) -> Vec<Option<Result<PublisherKey, Error>>> {
    if pinned.is_empty() {
        return providers.iter().map(|_| None).collect();
    }
    let asks = providers.iter().map(|p| async move {
        let (key, fared) = checker
            .check((p.peer, p.addrs.clone()), service, pinned, until)
            .await;
        if let Some(fared) = fared {
            checker
                .net
                .provider_fared(&service_key(service), p.peer, fared);
        }
        Some(key)
    });
    futures::future::join_all(asks).await
}

/// A remote provider's standing as `FindService` shows it.
fn reachability(reach: ProviderReach) -> Reachability {
    match reach {
        ProviderReach::Connected => Reachability::Connected,
        ProviderReach::Recently => Reachability::Recently,
        ProviderReach::NotRecently => Reachability::NotRecently,
        ProviderReach::Unreached => Reachability::Unreachable,
        ProviderReach::Refused => Reachability::Refused,
        // Left out of the answer; if shown, it is as good as not reached.
        ProviderReach::NotProviding => Reachability::NotRecently,
    }
}
