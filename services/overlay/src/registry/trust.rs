//! Publisher keys on the calling side: before a call or a channel that pins publisher keys
//! reaches a provider, this node gets the provider's certificates (a `CallFrame` with
//! `certificates` set on `/p2pos/call/2`, which no app sees) and checks that one of them, signed
//! by a pinned key, names that provider and the service and has not expired. Only then is the
//! request sent: a provider that is not certified never sees it. Verified certificates are
//! remembered for a while (bounded), so later requests do not ask again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use libp2p::{Multiaddr, PeerId};
use p2pos_kernel::{ErrorCode, events::now_ms};
use p2pos_proto::wire::v1::{CallAnswer, CallFrame};
use p2pos_protocols::{
    certs::{Certificate, MAX_CERTIFICATES, PublisherKey},
    network::{Fared, Network},
    wire::{read_message, write_message},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::Instant,
};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::{
    call::{CALL_PROTOCOL, CALL_TAKEN, MAX_CALL_FRAME, code},
    slots::PeerSlots,
};
use crate::Error;

/// How long verified certificates of a provider are used without asking it again (at most
/// until they expire).
pub(crate) const VERIFIED_TTL: Duration = Duration::from_secs(10 * 60);
/// Most (provider, service) pairs whose certificates are remembered; expired entries, then
/// the oldest, make room.
pub(crate) const MAX_VERIFIED: usize = 1024;
/// How long what a provider presented is believed when no pinned key vouches for it there
/// (it may register a certificate meanwhile): not asked again before.
pub(crate) const UNVOUCHED_TTL: Duration = Duration::from_secs(30);
/// How long asking a provider for its certificates may take, at most.
const FETCH_LIMIT: Duration = Duration::from_secs(5);
/// How much longer than its deadline a certificate request is waited for before it is
/// dropped (its steps keep to the deadline; this only guards against a stalled one).
const STALL_GRACE: Duration = Duration::from_millis(500);

/// What a provider presented for a service (signatures verified) — or why it presented
/// nothing (it did not answer in time) — and when it was asked.
type Presented = (Instant, Result<Vec<Certificate>, String>);

/// Certificates checked lately, by provider and service.
#[derive(Default)]
pub(crate) struct VerifiedCerts(Mutex<HashMap<(PeerId, String), Presented>>);

impl VerifiedCerts {
    /// What remembered certificates of `peer` for `service` say: the pinned key that vouches
    /// for it, or why none does (for [`UNVOUCHED_TTL`] only); `None`: ask it.
    fn get(
        &self,
        peer: PeerId,
        service: &str,
        pinned: &[PublisherKey],
    ) -> Option<Result<PublisherKey, String>> {
        let table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (at, presented) = table.get(&(peer, service.to_owned()))?;
        let certs = match presented {
            Ok(certs) => certs,
            Err(why) if at.elapsed() < UNVOUCHED_TTL => return Some(Err(why.clone())),
            Err(_) => return None,
        };
        match vouching(certs, service, &peer, pinned) {
            Ok(key) if at.elapsed() < VERIFIED_TTL => Some(Ok(key)),
            Err(why) if at.elapsed() < UNVOUCHED_TTL => Some(Err(why)),
            _ => None,
        }
    }

    /// Forgets what `peer` presented for `service` (its node refused a request for want of a
    /// pinned key's certificate: what it presented is out of date).
    pub(crate) fn forget(&self, peer: PeerId, service: &str) {
        let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        table.remove(&(peer, service.to_owned()));
    }

    /// Remembers what `peer` presented for `service` (signatures verified), or why nothing.
    fn put(&self, peer: PeerId, service: &str, certs: Result<Vec<Certificate>, String>) {
        let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (peer, service.to_owned());
        if !table.contains_key(&key) && table.len() >= MAX_VERIFIED {
            table.retain(|_, (at, presented)| match presented {
                Ok(_) => at.elapsed() < VERIFIED_TTL,
                Err(_) => at.elapsed() < UNVOUCHED_TTL,
            });
            if table.len() >= MAX_VERIFIED
                && let Some(oldest) = table
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone())
            {
                table.remove(&oldest);
            }
        }
        table.insert(key, (Instant::now(), certs));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// What checking providers' certificates takes: the network, the calls in flight to each peer
/// (streams to one peer are opened one at a time), and what was verified lately.
#[derive(Clone)]
pub(crate) struct Checker {
    pub(crate) net: Network,
    pub(crate) slots: Arc<PeerSlots>,
    pub(crate) verified: Arc<VerifiedCerts>,
}

impl Checker {
    /// The pinned key that vouches for `peer` (found at `addrs`) as a provider of `service`,
    /// asking it for its certificates by `check_by` unless verified ones are remembered; or
    /// why none does.
    pub(crate) async fn certified(
        &self,
        (peer, addrs): (PeerId, Vec<Multiaddr>),
        service: &str,
        pinned: &[PublisherKey],
        check_by: Instant,
    ) -> Result<PublisherKey, Error> {
        self.check((peer, addrs), service, pinned, check_by).await.0
    }

    /// As [`Checker::certified`], with what the check says about the provider itself
    /// (whatever the pinned keys): one that took the request for its certificates and did not
    /// answer in time, or answered busy, is refused; one that answered junk misbehaved. Not
    /// being certified by these keys says nothing against it (other callers pin other keys).
    pub(crate) async fn check(
        &self,
        (peer, addrs): (PeerId, Vec<Multiaddr>),
        service: &str,
        pinned: &[PublisherKey],
        check_by: Instant,
    ) -> (Result<PublisherKey, Error>, Option<Fared>) {
        if let Some(known) = self.verified.get(peer, service, pinned) {
            let known = known.map_err(|reason| Error::not_certified(peer, service, reason));
            return (known, None);
        }
        let now = Instant::now();
        let by = check_by.min(now + FETCH_LIMIT);
        // Silence is held against the peer only if it had its full time (not when the
        // caller's own deadline was short).
        let full_time = by >= now + FETCH_LIMIT;
        // `fetch` keeps to `by` itself; this only guards against a stalled step.
        let fetching = self.fetch(peer, addrs, service, by);
        let certs = match tokio::time::timeout_at(by + STALL_GRACE, fetching).await {
            Ok(Ok(certs)) => certs,
            Ok(Err(Fetch::Failed(e, fared))) => return (Err(e), fared),
            Ok(Err(Fetch::Silent)) if full_time => {
                // It took the stream and said nothing: remembered (briefly) like a refusal,
                // so that a silent provider does not hold up every call.
                let why = "it took the request for its certificates and did not answer in time"
                    .to_owned();
                self.verified.put(peer, service, Err(why.clone()));
                return (
                    Err(Error::not_certified(peer, service, why)),
                    Some(Fared::Refused),
                );
            }
            Ok(Err(Fetch::Silent)) => {
                let why = "it did not answer for its certificates within the short time left";
                return (Err(Error::not_certified(peer, service, why)), None);
            }
            // This node's time ran out before the peer could answer: nothing against it.
            Err(_) => {
                let why = "there was no time left to ask it for its certificates";
                return (Err(Error::not_certified(peer, service, why)), None);
            }
        };
        let found = vouching(&certs, service, &peer, pinned);
        self.verified.put(peer, service, Ok(certs));
        (
            found.map_err(|reason| Error::not_certified(peer, service, reason)),
            None,
        )
    }

    /// Forgets what `peer` presented for `service`: its node refused a request because its
    /// current registration holds no certificate of the keys the caller pinned.
    pub(crate) fn forget(&self, peer: PeerId, service: &str) {
        self.verified.forget(peer, service);
    }

    /// Asks `peer` for the certificates it presents as a provider of `service`; those whose
    /// signatures verify (at most [`MAX_CERTIFICATES`]).
    async fn fetch(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        service: &str,
        by: Instant,
    ) -> Result<Vec<Certificate>, Fetch> {
        let not_certified = |reason: String| Error::not_certified(peer, service, reason);
        let left = || by.saturating_duration_since(Instant::now());
        // Not reached before `by`: unreached only if it failed with time left (else this
        // node's time ran out, which says nothing against the peer).
        let unreached = |e: Error| {
            let fared = (!left().is_zero()).then_some(Fared::Unreached);
            Fetch::Failed(e, fared)
        };
        let Ok(Some(slot)) = tokio::time::timeout_at(by, self.slots.acquire(peer)).await else {
            // This node's own limit: nothing against the provider.
            return Err(Fetch::Failed(
                Error::Busy {
                    what: "calls in flight from this node to one peer",
                    limit: super::slots::MAX_CALLS_PER_PEER,
                },
                None,
            ));
        };
        if let Err(e) = self.net.connect(peer, addrs, left()).await {
            return Err(unreached(e.into()));
        }
        let opening = async {
            let _one_at_a_time = slot.opening().await;
            self.net.open_stream(peer, CALL_PROTOCOL).await
        };
        let stream = match tokio::time::timeout_at(by, opening).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let reason = e.to_string();
                return Err(unreached(Error::Unreachable { peer, reason }));
            }
            Err(_) => {
                let reason = "no stream in time".to_owned();
                return Err(Fetch::Failed(Error::Unreachable { peer, reason }, None));
            }
        };
        let mut io = stream.compat();
        let ask = CallFrame {
            service: service.to_owned(),
            certificates: true,
            ..CallFrame::default()
        };
        let broke = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::TimedOut => Fetch::Silent,
            std::io::ErrorKind::InvalidData => Fetch::Failed(
                not_certified(format!("it answered junk: {e}")),
                Some(Fared::Misbehaved),
            ),
            _ => Fetch::Failed(
                not_certified(format!("asking for them failed: {e}")),
                Some(Fared::Failed),
            ),
        };
        // The stream is open: from here on, a peer that does not answer by `by` is silent.
        write_message(&mut io, &ask, left()).await.map_err(broke)?;
        io.shutdown().await.map_err(broke)?;
        let taken = tokio::time::timeout_at(by, io.read_u8())
            .await
            .map_err(|_| Fetch::Silent)?
            .map_err(broke)?;
        if taken != CALL_TAKEN {
            let junk = not_certified("it answered junk".into());
            return Err(Fetch::Failed(junk, Some(Fared::Misbehaved)));
        }
        let answer: CallAnswer = read_message(&mut io, MAX_CALL_FRAME, left())
            .await
            .map_err(broke)?;
        drop(slot);
        match answer.code {
            0 => Ok(answer
                .certificates
                .iter()
                .take(MAX_CERTIFICATES)
                .filter_map(|bytes| Certificate::from_bytes(bytes).ok())
                .collect()),
            c if c == code(ErrorCode::NotFound) => {
                let gone = Error::NotProvidedThere {
                    service: service.to_owned(),
                    peer,
                };
                Err(Fetch::Failed(gone, Some(Fared::NotProviding)))
            }
            c if c == code(ErrorCode::ResourceExhausted) => {
                let busy = Error::Provider {
                    code: c,
                    message: format!(
                        "peer {peer} is busy: its certificates could not be asked for"
                    ),
                };
                Err(Fetch::Failed(busy, Some(Fared::Refused)))
            }
            c => Err(Fetch::Failed(
                not_certified(format!(
                    "it presents no certificates (it answered code {c}: an older node?)"
                )),
                None,
            )),
        }
    }
}

/// Why asking a provider for its certificates gave none.
enum Fetch {
    /// It did not answer in time.
    Silent,
    /// It failed, and what that says about it.
    Failed(Error, Option<Fared>),
}

/// The pinned key that one of `certs` is signed by and that vouches for `peer` as a provider
/// of `service` now; or why none does.
pub(crate) fn vouching(
    certs: &[Certificate],
    service: &str,
    peer: &PeerId,
    pinned: &[PublisherKey],
) -> Result<PublisherKey, String> {
    let now = now_ms();
    let mut why = Vec::new();
    for cert in certs.iter().filter(|c| pinned.contains(&c.publisher)) {
        match cert.check(service, peer, now) {
            Ok(()) => return Ok(cert.publisher.clone()),
            Err(e) => why.push(e),
        }
    }
    Err(match (certs.is_empty(), why.is_empty()) {
        (true, _) => "it presents no certificate".into(),
        (false, true) => "none of its certificates is signed by a pinned publisher key".into(),
        (false, false) => why.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use p2pos_protocols::certs::PublisherSecret;

    use super::*;

    #[test]
    fn only_a_pinned_publishers_certificate_for_the_peer_and_service_vouches() {
        let (ours, theirs) = (PublisherSecret::generate(), PublisherSecret::generate());
        let peer = PeerId::random();
        let later = now_ms() + 60_000;
        let pinned = [ours.public()];
        let good = ours
            .certify("echo/1", ("app", peer), later)
            .expect("certify");
        assert_eq!(
            vouching(std::slice::from_ref(&good), "echo/1", &peer, &pinned),
            Ok(ours.public())
        );
        let other_key = theirs
            .certify("echo/1", ("app", peer), later)
            .expect("certify");
        assert!(vouching(&[other_key], "echo/1", &peer, &pinned).is_err());
        let other_peer = ours
            .certify("echo/1", ("app", PeerId::random()), later)
            .expect("certify");
        assert!(vouching(&[other_peer], "echo/1", &peer, &pinned).is_err());
        let expired = ours
            .certify("echo/1", ("app", peer), now_ms() - 1)
            .expect("certify");
        assert!(vouching(&[expired], "echo/1", &peer, &pinned).is_err());
        assert!(vouching(&[good], "echo/2", &peer, &pinned).is_err());
        assert!(vouching(&[], "echo/1", &peer, &pinned).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_remembered_briefly_and_a_vouching_certificate_longer() {
        let verified = VerifiedCerts::default();
        let (ours, theirs) = (PublisherSecret::generate(), PublisherSecret::generate());
        let (good, bad) = (PeerId::random(), PeerId::random());
        let far = now_ms() + 3_600_000;
        verified.put(
            good,
            "echo/1",
            Ok(vec![
                ours.certify("echo/1", ("app", good), far).expect("certify"),
            ]),
        );
        verified.put(
            bad,
            "echo/1",
            Ok(vec![
                theirs
                    .certify("echo/1", ("app", bad), far)
                    .expect("certify"),
            ]),
        );
        let pinned = [ours.public()];
        assert_eq!(
            verified.get(good, "echo/1", &pinned),
            Some(Ok(ours.public()))
        );
        assert!(matches!(verified.get(bad, "echo/1", &pinned), Some(Err(_))));
        assert_eq!(
            verified.get(good, "echo/2", &pinned),
            None,
            "not asked for it"
        );
        tokio::time::advance(UNVOUCHED_TTL).await;
        assert_eq!(verified.get(bad, "echo/1", &pinned), None, "asked again");
        assert!(verified.get(good, "echo/1", &pinned).is_some());
        tokio::time::advance(VERIFIED_TTL).await;
        assert_eq!(verified.get(good, "echo/1", &pinned), None);
    }

    #[tokio::test]
    async fn what_is_remembered_is_bounded() {
        let verified = VerifiedCerts::default();
        let key = PublisherSecret::generate();
        for _ in 0..(MAX_VERIFIED + 10) {
            let peer = PeerId::random();
            verified.put(
                peer,
                "echo/1",
                Ok(vec![
                    key.certify("echo/1", ("app", peer), now_ms() + 60_000)
                        .expect("certify"),
                ]),
            );
        }
        assert_eq!(verified.len(), MAX_VERIFIED);
    }
}
