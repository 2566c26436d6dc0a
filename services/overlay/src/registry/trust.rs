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
    network::Network,
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

/// What a provider presented for a service (signatures verified), and when it was asked.
type Presented = (Instant, Vec<Certificate>);

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
        let (at, certs) = table.get(&(peer, service.to_owned()))?;
        match vouching(certs, service, &peer, pinned) {
            Ok(key) if at.elapsed() < VERIFIED_TTL => Some(Ok(key)),
            Err(why) if at.elapsed() < UNVOUCHED_TTL => Some(Err(why)),
            _ => None,
        }
    }

    /// Remembers what `peer` presented for `service` (signatures verified).
    fn put(&self, peer: PeerId, service: &str, certs: Vec<Certificate>) {
        let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (peer, service.to_owned());
        if !table.contains_key(&key) && table.len() >= MAX_VERIFIED {
            table.retain(|_, (at, _)| at.elapsed() < VERIFIED_TTL);
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
    /// asking it for its certificates by `reach_by` unless verified ones are remembered; or
    /// why none does.
    pub(crate) async fn certified(
        &self,
        (peer, addrs): (PeerId, Vec<Multiaddr>),
        service: &str,
        pinned: &[PublisherKey],
        reach_by: Instant,
    ) -> Result<PublisherKey, Error> {
        if let Some(known) = self.verified.get(peer, service, pinned) {
            return known.map_err(|reason| Error::not_certified(peer, service, reason));
        }
        let limit = reach_by
            .saturating_duration_since(Instant::now())
            .min(FETCH_LIMIT);
        let certs = tokio::time::timeout(limit, self.fetch(peer, addrs, service))
            .await
            .map_err(|_| {
                Error::not_certified(peer, service, "it did not present its certificates in time")
            })??;
        let found = vouching(&certs, service, &peer, pinned);
        self.verified.put(peer, service, certs);
        found.map_err(|reason| Error::not_certified(peer, service, reason))
    }

    /// Asks `peer` for the certificates it presents as a provider of `service`; those whose
    /// signatures verify (at most [`MAX_CERTIFICATES`]).
    async fn fetch(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        service: &str,
    ) -> Result<Vec<Certificate>, Error> {
        let not_certified = |reason: String| Error::not_certified(peer, service, reason);
        let Some(slot) = self.slots.acquire(peer).await else {
            return Err(not_certified("too many calls in flight to it".into()));
        };
        self.net.connect(peer, addrs, FETCH_LIMIT).await?;
        let stream = {
            let _one_at_a_time = slot.opening().await;
            self.net.open_stream(peer, CALL_PROTOCOL).await
        }
        .map_err(|e| Error::Unreachable {
            peer,
            reason: e.to_string(),
        })?;
        let mut io = stream.compat();
        let ask = CallFrame {
            service: service.to_owned(),
            certificates: true,
            ..CallFrame::default()
        };
        let broke = |e: std::io::Error| not_certified(format!("asking for them failed: {e}"));
        write_message(&mut io, &ask, FETCH_LIMIT)
            .await
            .map_err(broke)?;
        io.shutdown().await.map_err(broke)?;
        if io.read_u8().await.map_err(broke)? != CALL_TAKEN {
            return Err(not_certified("it answered junk".into()));
        }
        let answer: CallAnswer = read_message(&mut io, MAX_CALL_FRAME, FETCH_LIMIT)
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
            c if c == code(ErrorCode::NotFound) => Err(Error::NotProvidedThere {
                service: service.to_owned(),
                peer,
            }),
            c => Err(not_certified(format!(
                "it presents no certificates (it answered code {c}: an older node?)"
            ))),
        }
    }
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
        let good = ours.certify("echo/1", peer, later);
        assert_eq!(
            vouching(std::slice::from_ref(&good), "echo/1", &peer, &pinned),
            Ok(ours.public())
        );
        let other_key = theirs.certify("echo/1", peer, later);
        assert!(vouching(&[other_key], "echo/1", &peer, &pinned).is_err());
        let other_peer = ours.certify("echo/1", PeerId::random(), later);
        assert!(vouching(&[other_peer], "echo/1", &peer, &pinned).is_err());
        let expired = ours.certify("echo/1", peer, now_ms() - 1);
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
        verified.put(good, "echo/1", vec![ours.certify("echo/1", good, far)]);
        verified.put(bad, "echo/1", vec![theirs.certify("echo/1", bad, far)]);
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
                vec![key.certify("echo/1", peer, now_ms() + 60_000)],
            );
        }
        assert_eq!(verified.len(), MAX_VERIFIED);
    }
}
