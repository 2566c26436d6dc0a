//! Trying the remote providers of a call or a channel, best first ([`try_providers`]): those
//! a filter allows, picked out before the cut; with publisher keys pinned, certified first;
//! each with its own time to be reached; and how each fared, remembered by the network.

use std::{future::Future, time::Duration};

use libp2p::{Multiaddr, PeerId};
use p2pos_kernel::ErrorCode;
use p2pos_protocols::{
    certs::PublisherKey,
    network::{Fared, Network, ProviderReach, Providers, RemoteProvider},
    services::ProviderFilter,
};
use tokio::time::Instant;
use tracing::debug;

use super::{call::code, state::service_key, trust::Checker};
use crate::Error;

/// How long a call or a channel waits for the DHT to name providers, at most.
pub(crate) const CANDIDATES_WAIT: Duration = Duration::from_secs(5);
/// How long a call or a channel waits for a second, fresh look-up once every provider of a
/// recent one failed.
const RELOOKUP_WAIT: Duration = Duration::from_secs(2);
/// Most remote providers one call or channel tries (and asks the DHT for): more than a few
/// Sybils answering busy or junk can hold back, since each of those fails fast.
pub(crate) const MAX_TRIES: usize = 16;
/// Most remote providers a call or channel with publisher keys pinned asks the DHT for and
/// checks the certificates of (all at once): those not certified are picked out before the
/// [`MAX_TRIES`] are, so that uncertified Sybils cannot crowd out a certified provider.
pub(crate) const MAX_CHECKED: usize = 64;

/// How long a provider's node has to say it took a call or a channel once it is sent, at
/// least (more when the time to reach it allows, up to [`TAKEN_LIMIT`]; never past the
/// request's end). Only a provider given this long and silent is held back for it.
pub(crate) const TAKEN_FLOOR: Duration = Duration::from_secs(1);
/// How long a provider's node has to say it took a call or a channel, at most: its node says
/// so before any app sees the request, so a provider slower than this is skipped.
pub(crate) const TAKEN_LIMIT: Duration = Duration::from_secs(2);
/// How long a provider that took a request must have had to answer before its silence till
/// the request's end counts as breaking it off (escalating); silence within a shorter time,
/// which the caller chose, is held back only briefly.
pub(crate) const ANSWER_FLOOR: Duration = Duration::from_secs(10);

/// By when the provider's node must say it took a request sent now: within the time to reach
/// it (`reach_by`), between [`TAKEN_FLOOR`] and [`TAKEN_LIMIT`], never past `until`.
pub(crate) fn taken_by(now: Instant, reach_by: Instant, until: Instant) -> Instant {
    reach_by
        .min(now + TAKEN_LIMIT)
        .max(now + TAKEN_FLOOR)
        .min(until)
}

/// What trying one provider came to.
pub(crate) enum Attempt<T> {
    /// The request is settled: done, refused by the provider's app, out of time, or broken
    /// after the provider may have seen it.
    Done(Result<T, Error>),
    /// No app saw the request there: the next provider may be tried.
    Next(Error),
}

/// The remote providers of `service` a call or a channel may try, best first, as far as
/// `filter`'s peers go (picked out before the answer is cut, so that other providers cannot
/// crowd them out); with publisher keys pinned, up to [`MAX_CHECKED`], whose certificates are
/// checked before any is tried. None when the DHT is off; with peers named, a failed look-up
/// is no error either (they are tried directly). Unless `fresh`, a look-up less than 30 s old
/// answers.
async fn remote_providers(
    net: &Network,
    (service, filter): (&str, &ProviderFilter),
    wait: Duration,
    fresh: bool,
) -> Result<Providers, Error> {
    let limit = match filter.publisher_keys.is_empty() {
        true => MAX_TRIES,
        false => MAX_CHECKED,
    };
    let none = || Providers {
        providers: Vec::new(),
        cached: false,
    };
    match net
        .find_providers_among(
            service_key(service),
            (limit, filter.only.clone()),
            wait,
            fresh,
        )
        .await
        .map_err(Error::from)
    {
        Err(Error::DhtDisabled) => Ok(none()),
        Err(e) if filter.only.is_some() => {
            debug!(%service, "no look-up of the peers named ({e}): they are tried directly");
            Ok(none())
        }
        other => other,
    }
}

/// Tries the remote providers of `service` that `filter` allows, with `attempt`, best first,
/// until one settles the request, [`MAX_TRIES`] have been tried or `until` passes (then
/// `timed_out`): first those of a recent look-up, and if every one of them failed, those a
/// fresh look-up finds that were not tried yet. With peers named, those the DHT does not list
/// are tried too (after the others), directly. `failures` are earlier ones (this node's
/// provider).
///
/// With publisher keys pinned, the certificates of up to [`MAX_CHECKED`] providers are asked
/// for at once (each within half the time left), and a provider is tried as soon as a pinned
/// key is found to vouch for it, before it is sent anything of the request; those not
/// certified are not tried, and not held against them (other callers pin other keys).
///
/// An attempt is told by when it must have reached its provider, counted when it starts:
/// half the time left while other providers may follow, so that a stale first provider cannot
/// use up the whole time. With none left: `NOT_FOUND` if there was none, `RESOURCE_EXHAUSTED`
/// if all were busy, else `UNAVAILABLE`.
pub(crate) async fn try_providers<T, F, Fut>(
    checker: &Checker,
    (service, filter): (&str, &ProviderFilter),
    until: Instant,
    failures: Vec<(String, Error)>,
    timed_out: impl FnOnce() -> Error,
    attempt: F,
) -> Result<T, Error>
where
    F: FnMut(PeerId, Vec<Multiaddr>, Instant) -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let net = &checker.net;
    let mut trying = Trying {
        net,
        key: service_key(service),
        until,
        failures,
        tried: Vec::new(),
        checked: Vec::new(),
        silent: Vec::new(),
        attempt,
    };
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
        let found = remote_providers(net, (service, filter), left.min(wait), fresh).await?;
        let mut candidates: Vec<RemoteProvider> = found
            .providers
            .into_iter()
            .filter(|p| trying.untried(&p.peer) && filter.allows(&p.peer))
            .collect();
        // Peers named but not listed (yet) by the DHT: asked directly, after the others.
        let local = net.local_peer_id();
        for peer in filter.only.iter().flatten() {
            if *peer != local && trying.untried(peer) && !candidates.iter().any(|p| p.peer == *peer)
            {
                candidates.push(by_id(*peer));
            }
        }
        let settled = match filter.publisher_keys.is_empty() {
            true => {
                let count = candidates.len();
                let mut settled = None;
                for (i, provider) in candidates.into_iter().enumerate() {
                    if trying.tried.len() >= MAX_TRIES {
                        break;
                    }
                    let others_follow = i + 1 < count || found.cached;
                    if let Some(result) = trying.one(provider, others_follow).await {
                        settled = Some(result);
                        break;
                    }
                }
                settled
            }
            false => {
                let pinned = &filter.publisher_keys;
                trying
                    .certified_first(checker, (service, pinned), candidates, found.cached)
                    .await
            }
        };
        match settled {
            Some(Ok(result)) => return result,
            Some(Err(())) => return Err(timed_out()),
            None => {}
        }
        // Only a look-up from the cache is worth doing again, fresh.
        if !found.cached || trying.tried.len() >= MAX_TRIES {
            break;
        }
        fresh = true;
    }
    // A provider that said nothing within the quick wait may be an older node, which answers a
    // channel's hello only once its app accepts (no "taken" byte): with no one else left to
    // try, each gets the whole of the time left.
    for peer in std::mem::take(&mut trying.silent) {
        match trying.one(by_id(peer), false).await {
            Some(Ok(result)) => return result,
            Some(Err(())) => return Err(timed_out()),
            None => {}
        }
    }
    Err(none_worked(service.to_owned(), trying.failures))
}

/// A provider known by its peer id alone (named, or tried before): no addresses (the node
/// knows its own), nothing known of how it fared.
fn by_id(peer: PeerId) -> RemoteProvider {
    RemoteProvider {
        peer,
        addrs: Vec::new(),
        connected: false,
        rtt: None,
        reach: ProviderReach::NotRecently,
        last_connected_ms: 0,
    }
}

/// Providers being tried, one request.
struct Trying<'a, F> {
    net: &'a Network,
    /// The service's DHT key, under which how providers fared is remembered.
    key: String,
    until: Instant,
    failures: Vec<(String, Error)>,
    /// Tried (or skipped as unreached), at most [`MAX_TRIES`].
    tried: Vec<PeerId>,
    /// Checked and found not certified (or not answering the check).
    checked: Vec<PeerId>,
    /// Tried, and silent within the quick wait: tried again with the whole time left once no
    /// one else is left.
    silent: Vec<PeerId>,
    attempt: F,
}

/// What trying one provider came to: `None`, the next may be tried; `Some(Ok(result))`, the
/// request is settled; `Some(Err(()))`, out of time.
type Settled<T> = Option<Result<Result<T, Error>, ()>>;

impl<F, Fut, T> Trying<'_, F>
where
    F: FnMut(PeerId, Vec<Multiaddr>, Instant) -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    fn untried(&self, peer: &PeerId) -> bool {
        !self.tried.contains(peer) && !self.checked.contains(peer)
    }

    /// Tries `provider` (`others_follow`: it gets half the time left to be reached).
    async fn one(&mut self, provider: RemoteProvider, others_follow: bool) -> Settled<T> {
        let now = Instant::now();
        let left = self.until.saturating_duration_since(now);
        if left.is_zero() {
            return Some(Err(()));
        }
        let reach_by = match others_follow {
            true => now + left / 2,
            false => self.until,
        };
        self.tried.push(provider.peer);
        if provider.reach == ProviderReach::Unreached {
            // Tried less than 30 s ago, in vain: not again yet (it would only time out).
            let e = Error::Unreachable {
                peer: provider.peer,
                reason: "it could not be reached less than 30 s ago (skipped until then)".into(),
            };
            self.failures.push((format!("peer {}", provider.peer), e));
            return None;
        }
        let (net, key, peer) = (self.net, &self.key, provider.peer);
        match (self.attempt)(peer, provider.addrs, reach_by).await {
            Attempt::Done(result) => {
                if let Some(fared) = fared_settled(result.as_ref().map(|_| ())) {
                    net.provider_fared(key, peer, fared);
                }
                Some(Ok(result))
            }
            Attempt::Next(e) => {
                debug!(%peer, key = %self.key, "provider not usable: {e}");
                if let Some(fared) = fared(&e) {
                    net.provider_fared(key, peer, fared);
                }
                if matches!(
                    e,
                    Error::Silent {
                        older_may_answer: true,
                        ..
                    }
                ) && !self.silent.contains(&peer)
                {
                    self.silent.push(peer);
                }
                self.failures.push((format!("peer {peer}"), e));
                None
            }
        }
    }

    /// Checks the certificates of `candidates` (up to [`MAX_CHECKED`], all at once, each
    /// within half the time left) and tries each as soon as a key of `pinned` is found to
    /// vouch for it.
    async fn certified_first(
        &mut self,
        checker: &Checker,
        (service, pinned): (&str, &[PublisherKey]),
        candidates: Vec<RemoteProvider>,
        cached: bool,
    ) -> Settled<T> {
        let now = Instant::now();
        let check_by = now + self.until.saturating_duration_since(now) / 2;
        let mut checks = tokio::task::JoinSet::new();
        for provider in candidates.into_iter().take(MAX_CHECKED) {
            if provider.reach == ProviderReach::Unreached {
                if self.tried.len() < MAX_TRIES
                    && let Some(settled) = self.one(provider, true).await
                {
                    return Some(settled);
                }
                continue;
            }
            let (checker, service, pinned) = (checker.clone(), service.to_owned(), pinned.to_vec());
            checks.spawn(async move {
                let at = (provider.peer, provider.addrs.clone());
                let checked = checker.check(at, &service, &pinned, check_by).await;
                (provider, checked)
            });
        }
        while let Some(done) = checks.join_next().await {
            let Ok((provider, (certified, fared_there))) = done else {
                continue;
            };
            let peer = provider.peer;
            if let Some(fared) = fared_there {
                self.net.provider_fared(&self.key, peer, fared);
            }
            if let Err(e) = certified {
                debug!(%peer, %service, "provider not certified: {e}");
                self.checked.push(peer);
                self.failures.push((format!("peer {peer}"), e));
                continue;
            }
            if self.tried.len() >= MAX_TRIES {
                break;
            }
            let others_follow = !checks.is_empty() || cached;
            if let Some(settled) = self.one(provider, others_follow).await {
                return Some(settled);
            }
        }
        None
    }
}

/// What a request that a provider settled says about it (for ranking later requests: the
/// request itself is not sent elsewhere once its app may have seen it).
fn fared_settled(result: Result<(), &Error>) -> Option<Fared> {
    // UNAVAILABLE, INTERNAL, UNKNOWN.
    let failing = [code(ErrorCode::Unavailable), code(ErrorCode::Internal), 2];
    match result {
        Ok(()) => Some(Fared::Served),
        // It took the request and answered junk: tried after the others for a while.
        Err(Error::Protocol { .. }) => Some(Fared::Misbehaved),
        // It took the request and then said nothing till its end: held back, longer when it
        // does so again; briefly only when the caller's own time was short.
        Err(Error::Timeout { after, .. }) if *after >= ANSWER_FLOOR => Some(Fared::BrokeOff),
        Err(Error::Timeout { .. }) => Some(Fared::Refused),
        // It took the request and its node broke the stream before answering (a Sybil that
        // takes calls to fail them, or a provider going away): held back, longer when it
        // does so again.
        Err(Error::Broken { .. }) => Some(Fared::BrokeOff),
        // Its app failed (or says it is unavailable): the next request tries others first.
        Err(Error::Provider { code: c, .. }) if failing.contains(c) => Some(Fared::Failing),
        Err(_) => None,
    }
}

/// What a provider's failure `e` (before any app saw the request, or refused by its app with
/// `RESOURCE_EXHAUSTED`) says about it: busy ones and those that broke the protocol are tried
/// after the others for a while.
fn fared(e: &Error) -> Option<Fared> {
    match e {
        // This node's own limit (calls in flight to one peer): nothing against the provider.
        Error::Busy { .. } => None,
        // Not certified by the keys of this request (its node said so): nothing against it,
        // other callers pin other keys.
        Error::NotCertified { .. } => None,
        // Too large for the relay it is reached through: nothing against it, smaller calls
        // cross.
        Error::TooLargeForRelay { .. } => None,
        _ if is_busy(e) => Some(Fared::Refused),
        // It took the stream and did not say it took the request in time; unless the
        // request's own end left it less than its floor (nothing against it then).
        Error::Silent { waited, .. } if *waited < TAKEN_FLOOR => None,
        Error::Silent { .. } | Error::Timeout { .. } => Some(Fared::Refused),
        Error::Protocol { .. } => Some(Fared::Misbehaved),
        Error::NotProvidedThere { .. } => Some(Fared::NotProviding),
        Error::Provider { code: c, .. } if *c == code(ErrorCode::NotFound) => {
            Some(Fared::NotProviding)
        }
        Error::Unreachable { .. } | Error::PeerNotFound(_) => Some(Fared::Unreached),
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
pub(crate) fn shortened(mut reasons: String) -> String {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::PeerId;

    use super::*;

    #[test]
    fn local_limits_and_other_keys_are_not_held_against_a_provider() {
        let peer = PeerId::random();
        let ours = Error::Busy {
            what: "calls in flight from this node to one peer",
            limit: 32,
        };
        assert_eq!(fared(&ours), None);
        assert_eq!(
            fared(&Error::not_certified(peer, "echo/1", "no certificate")),
            None
        );
        let busy = Error::Provider {
            code: code(ErrorCode::ResourceExhausted),
            message: "busy".into(),
        };
        assert_eq!(fared(&busy), Some(Fared::Refused));
        let silent = Error::Silent {
            peer,
            waited: Duration::from_secs(2),
            older_may_answer: false,
        };
        assert_eq!(fared(&silent), Some(Fared::Refused));
        let cut_short = Error::Silent {
            peer,
            waited: Duration::from_millis(300),
            older_may_answer: true,
        };
        assert_eq!(fared(&cut_short), None, "the caller's own deadline");
        let junk = Error::Protocol {
            peer,
            protocol: "/p2pos/call/2",
            reason: "junk".into(),
        };
        assert_eq!(fared(&junk), Some(Fared::Misbehaved));
        let gone = Error::Unreachable {
            peer,
            reason: "no route".into(),
        };
        assert_eq!(fared(&gone), Some(Fared::Unreached));
    }

    #[test]
    fn breaking_off_a_taken_request_and_failing_apps_are_held_back() {
        let peer = PeerId::random();
        assert_eq!(fared_settled(Ok(())), Some(Fared::Served));
        let broken = Error::Broken {
            peer,
            protocol: "/p2pos/call/2",
            reason: "reset".into(),
        };
        assert_eq!(fared_settled(Err(&broken)), Some(Fared::BrokeOff));
        let junk = Error::Protocol {
            peer,
            protocol: "/p2pos/call/2",
            reason: "not a CallAnswer".into(),
        };
        assert_eq!(fared_settled(Err(&junk)), Some(Fared::Misbehaved));
        let silent = Error::Timeout {
            what: "the answer".into(),
            after: Duration::from_secs(20),
        };
        assert_eq!(fared_settled(Err(&silent)), Some(Fared::BrokeOff));
        let short = Error::Timeout {
            what: "the answer".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(fared_settled(Err(&short)), Some(Fared::Refused));
        let answered = Error::Provider {
            code: 3,
            message: "bad request".into(),
        };
        assert_eq!(fared_settled(Err(&answered)), None);
        for failing in [2, 13, 14] {
            let answered = Error::Provider {
                code: failing,
                message: "down".into(),
            };
            assert_eq!(fared_settled(Err(&answered)), Some(Fared::Failing));
        }
    }
}
