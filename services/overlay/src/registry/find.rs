//! Finding providers: `FindService` (this node's provider first, then remote ones from the
//! DHT, connected ones by round-trip time, then the others), and trying the remote providers
//! of a call or a channel in the same order ([`try_providers`]).

use std::{future::Future, time::Duration};

use libp2p::{Multiaddr, PeerId};
use p2pos_kernel::ErrorCode;
use p2pos_proto::service::v1::{FindServiceReply, Reachability, ServiceInfo};
use p2pos_protocols::{
    certs::{Certificate, PublisherKey},
    ids::ServiceName,
    network::{Fared, Network, ProviderReach, Providers, RemoteProvider},
    services::ProviderFilter,
};
use tokio::time::Instant;
use tracing::debug;

use super::{
    call::code,
    state::service_key,
    trust::{Checker, vouching},
};
use crate::{Error, registry::actor::ServiceRegistry, task::Fut};

/// How long `FindService` waits for the DHT.
const FIND_WAIT: Duration = Duration::from_secs(10);
/// How long a call or a channel waits for the DHT to name providers, at most.
pub(crate) const CANDIDATES_WAIT: Duration = Duration::from_secs(5);
/// How long a call or a channel waits for a second, fresh look-up once every provider of a
/// recent one failed.
const RELOOKUP_WAIT: Duration = Duration::from_secs(2);
/// Most remote providers one call or channel tries (and asks the DHT for): more than a few
/// Sybils answering busy or junk can hold back, since each of those fails fast.
pub(crate) const MAX_TRIES: usize = 16;
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

    /// The certificates the provider of `service` here presents.
    pub(crate) fn certificates_here(&self, service: &str) -> Vec<Certificate> {
        self.services
            .registrations
            .get(service)
            .map(|r| r.certificates.clone())
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
                // Always a fresh look-up: this is where people see who provides what.
                match net
                    .find_providers(service_key(&service), want, FIND_WAIT, true)
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
        let key = checker
            .certified((p.peer, p.addrs.clone()), service, pinned, until)
            .await;
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

/// What trying one provider came to.
pub(crate) enum Attempt<T> {
    /// The request is settled: done, refused by the provider's app, out of time, or broken
    /// after the provider may have seen it.
    Done(Result<T, Error>),
    /// No app saw the request there: the next provider may be tried.
    Next(Error),
}

/// The remote providers of `service` a call or a channel tries, best first: none when the DHT
/// is off. Unless `fresh`, a look-up less than 30 s old answers.
async fn remote_providers(
    net: &Network,
    service: &str,
    wait: Duration,
    fresh: bool,
) -> Result<Providers, Error> {
    match net
        .find_providers(service_key(service), MAX_TRIES, wait, fresh)
        .await
        .map_err(Error::from)
    {
        Err(Error::DhtDisabled) => Ok(Providers {
            providers: Vec::new(),
            cached: false,
        }),
        other => other,
    }
}

/// Tries the remote providers of `service` that `filter` allows, with `attempt`, best first,
/// until one settles the request (with publisher keys pinned, only those `checker` finds
/// certified, checked before `attempt` sends them anything of the request), [`MAX_TRIES`] have been tried or `until` passes (then `timed_out`): first those of a
/// recent look-up, and if every one of them failed, those a fresh look-up finds that were not
/// tried yet. `failures` are earlier ones (this node's provider).
///
/// An attempt is told by when it must have reached its provider: half the time left while
/// other providers may follow, so that a stale first provider cannot use up the whole time; a
/// provider that was not busy but failed is forgotten by the look-up cache. With none left:
/// `NOT_FOUND` if there was none, `RESOURCE_EXHAUSTED` if all were busy, else `UNAVAILABLE`.
pub(crate) async fn try_providers<T, F, Fut>(
    checker: &Checker,
    (service, filter): (&str, &ProviderFilter),
    until: Instant,
    mut failures: Vec<(String, Error)>,
    timed_out: impl FnOnce() -> Error,
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut(PeerId, Vec<Multiaddr>, Instant) -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let net = &checker.net;
    let mut tried: Vec<PeerId> = Vec::new();
    let mut fresh = false;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        // A second look-up only adds providers found since the first: a DHT that answers
        // at all does so in well under RELOOKUP_WAIT (it waits longer only on peers that do
        // not answer, such as the provider that just failed).
        let wait = match fresh {
            false => CANDIDATES_WAIT,
            true => RELOOKUP_WAIT,
        };
        let found = remote_providers(net, service, left.min(wait), fresh).await?;
        let candidates: Vec<_> = found
            .providers
            .into_iter()
            .filter(|p| !tried.contains(&p.peer) && filter.allows(&p.peer))
            .take(MAX_TRIES - tried.len())
            .collect();
        let count = candidates.len();
        for (i, provider) in candidates.into_iter().enumerate() {
            let now = Instant::now();
            let left = until.saturating_duration_since(now);
            if left.is_zero() {
                return Err(timed_out());
            }
            let others_follow = i + 1 < count || found.cached;
            let reach_by = match others_follow {
                true => now + left / 2,
                false => until,
            };
            tried.push(provider.peer);
            let key = service_key(service);
            if provider.reach == ProviderReach::Unreached {
                // Tried less than 30 s ago, in vain: not again yet (it would only time out).
                let e = Error::Unreachable {
                    peer: provider.peer,
                    reason: "it could not be reached less than 30 s ago (skipped until then)"
                        .into(),
                };
                failures.push((format!("peer {}", provider.peer), e));
                continue;
            }
            if !filter.publisher_keys.is_empty() {
                let (peer, addrs) = (provider.peer, provider.addrs.clone());
                let pinned = &filter.publisher_keys;
                if let Err(e) = checker
                    .certified((peer, addrs), service, pinned, reach_by)
                    .await
                {
                    debug!(%peer, %service, "provider not certified: {e}");
                    failures.push((format!("peer {peer}"), e));
                    continue;
                }
            }
            match attempt(provider.peer, provider.addrs, reach_by).await {
                Attempt::Done(result) => {
                    match &result {
                        Ok(_) => net.provider_fared(&key, provider.peer, Fared::Served),
                        // It took the request and broke off: tried after the others next time.
                        Err(Error::Protocol { .. }) => {
                            net.provider_fared(&key, provider.peer, Fared::Misbehaved);
                        }
                        Err(_) => {}
                    }
                    return result;
                }
                Attempt::Next(e) => {
                    debug!(peer = %provider.peer, %service, "provider not usable: {e}");
                    if let Some(fared) = fared(&e) {
                        net.provider_fared(&key, provider.peer, fared);
                    }
                    failures.push((format!("peer {}", provider.peer), e));
                }
            }
        }
        // Only a look-up from the cache is worth doing again, fresh.
        if !found.cached || tried.len() >= MAX_TRIES {
            break;
        }
        fresh = true;
    }
    Err(none_worked(service.to_owned(), failures))
}

/// What a provider's failure `e` (before any app saw the request, or refused by its app with
/// `RESOURCE_EXHAUSTED`) says about it: busy ones and those that broke the protocol are tried
/// after the others for a while.
fn fared(e: &Error) -> Option<Fared> {
    match e {
        _ if is_busy(e) => Some(Fared::Refused),
        Error::Protocol { .. } => Some(Fared::Misbehaved),
        Error::NotProvidedThere { .. } => Some(Fared::NotProviding),
        Error::Provider { code: c, .. } if *c == code(ErrorCode::NotFound) => {
            Some(Fared::NotProviding)
        }
        Error::Unreachable { .. } | Error::PeerNotFound(_) | Error::Timeout { .. } => {
            Some(Fared::Unreached)
        }
        _ => Some(Fared::Failed),
    }
}

/// Whether `e` says the provider (or this node) was only busy: it still provides the service.
pub(crate) fn is_busy(e: &Error) -> bool {
    match e {
        Error::Busy { .. }
        | Error::TooManyChannels { .. }
        | Error::ChannelRefused { .. }
        | Error::ProvidersBusy { .. } => true,
        Error::Provider { code: c, .. } => *c == code(ErrorCode::ResourceExhausted),
        _ => false,
    }
}

/// The error when no provider worked: `NOT_FOUND` when none was known, `RESOURCE_EXHAUSTED`
/// when every one was busy, else `UNAVAILABLE`, naming what happened with each.
pub(crate) fn none_worked(service: String, failures: Vec<(String, Error)>) -> Error {
    if failures.is_empty() {
        return Error::ServiceNotFound {
            service,
            scope: "(not on this node, and no provider was found in the DHT)",
        };
    }
    let known = failures.len();
    let all_busy = failures.iter().all(|(_, e)| is_busy(e));
    let none_certified = failures
        .iter()
        .all(|(_, e)| matches!(e, Error::NotCertified { .. }));
    let reasons = shortened(
        failures
            .iter()
            .map(|(who, e)| format!("{who}: {e}"))
            .collect::<Vec<_>>()
            .join("; "),
    );
    if none_certified {
        return Error::NoneCertified {
            service,
            known,
            reasons,
        };
    }
    match all_busy {
        true => Error::ProvidersBusy {
            service,
            known,
            reasons,
        },
        false => Error::ProvidersUnreachable {
            service,
            known,
            reasons,
        },
    }
}

/// `reasons` cut to 1 KiB, on a character boundary.
fn shortened(mut reasons: String) -> String {
    if reasons.len() > 1024 {
        let mut end = 1024;
        while !reasons.is_char_boundary(end) {
            end -= 1;
        }
        reasons.truncate(end);
        reasons.push_str("...");
    }
    reasons
}
