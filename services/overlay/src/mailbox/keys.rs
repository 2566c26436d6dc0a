//! Idempotency keys of `Send`: an app that retries a `Send` whose answer it lost (its node was
//! killed mid-call, its connection broke) names the message with a key of its own, and the
//! retry answers the message stored the first time instead of queueing a second copy.
//!
//! A key is the sending app id's (each app id has its own keys; an app and its helpers share
//! one budget of them). It is written in the same batch as the outbox entry it names, so after
//! a crash either both are in the store or neither is (and then the message was never sent:
//! the outbox sends only what is durable). A key is kept for the window (`send_key_ttl`) from
//! its `Send`, never less, and for another window whenever its message still waits in the
//! outbox at the end of one; at most `per_app` keys per app (its helpers' included) and `total`
//! in all are kept (an app below its even share of `total` still gets keys: see
//! [`Mailbox::fair_share`]): a new key past either bound is refused, no key within its window
//! is ever dropped to make room.
//!
//! Keys in the outbox tree: `I` + app id + `0x00` + key → the record (message id, sequence,
//! time, payload digest, peer); `T` + BE ms + app id + `0x00` + key → nothing (the age index);
//! `K` + root app id → keys of the app and its helpers; `N` → keys in all (counters as
//! [`super::Usage`]).

use std::time::Duration;

use libp2p::PeerId;
use p2pos_kernel::store::BatchOp;
use p2pos_protocols::names::root_app;
use sha2::{Digest, Sha256};

use super::{Mailbox, OUTBOX, Usage, key, u64_at, usage::Ledger};
use crate::Error;

/// Longest idempotency key, in bytes.
pub(crate) const MAX_KEY_LEN: usize = p2pos_protocols::wire::MAX_IDEMPOTENCY_KEY;
/// Keys looked at per round of a sweep.
const SWEEP_BATCH: usize = 256;
/// Apps looked at when the node-wide bound is shared out (past it, the shares only get larger).
const MAX_KEY_HOLDERS: usize = 4096;
/// The count of keys in all.
const TOTAL_KEY: &[u8] = b"N";

/// The SHA-256 of a payload: what a retry's payload is compared with.
pub(crate) type PayloadDigest = [u8; 32];

/// The digest of `payload`.
pub(crate) fn digest(payload: &[u8]) -> PayloadDigest {
    Sha256::digest(payload).into()
}

/// What a key names: the message its first `Send` stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRecord {
    /// The message's id on this node.
    pub(crate) message_id: u64,
    /// Its sequence number for its peer.
    pub(crate) sequence: u64,
    /// When the key was recorded, ms since the Unix epoch.
    pub(crate) created_ms: u64,
    /// The payload's digest.
    pub(crate) digest: PayloadDigest,
    /// The peer it is for.
    pub(crate) peer: PeerId,
}

impl KeyRecord {
    fn encode(&self) -> Vec<u8> {
        let peer = self.peer.to_bytes();
        let mut v = Vec::with_capacity(56 + peer.len());
        v.extend_from_slice(&self.message_id.to_be_bytes());
        v.extend_from_slice(&self.sequence.to_be_bytes());
        v.extend_from_slice(&self.created_ms.to_be_bytes());
        v.extend_from_slice(&self.digest);
        v.extend_from_slice(&peer);
        v
    }

    fn decode(v: &[u8]) -> Option<Self> {
        Some(Self {
            message_id: u64_at(v, 0)?,
            sequence: u64_at(v, 8)?,
            created_ms: u64_at(v, 16)?,
            digest: v.get(24..56)?.try_into().ok()?,
            peer: PeerId::from_bytes(v.get(56..)?).ok()?,
        })
    }

    /// Whether a retry for `peer` with a payload of `digest` is the same message; the error
    /// says what differs.
    pub(crate) fn check_same(
        &self,
        app_id: &str,
        peer: &PeerId,
        digest: &PayloadDigest,
    ) -> Result<(), Error> {
        let differs = match (self.peer == *peer, self.digest == *digest) {
            (true, true) => return Ok(()),
            (false, true) => "peer",
            (true, false) => "payload",
            (false, false) => "peer and payload",
        };
        Err(Error::SendKeyReused {
            app_id: app_id.to_owned(),
            message_id: self.message_id,
            differs,
        })
    }
}

/// `I` + app id + `0x00` + key.
fn record_key(app_id: &str, send_key: &[u8]) -> Vec<u8> {
    let mut k = key(b"I", app_id.as_bytes());
    k.push(0);
    k.extend_from_slice(send_key);
    k
}

/// `T` + BE `created_ms` + app id + `0x00` + key.
fn age_key(created_ms: u64, app_id: &str, send_key: &[u8]) -> Vec<u8> {
    let mut k = key(b"T", &created_ms.to_be_bytes());
    k.extend_from_slice(app_id.as_bytes());
    k.push(0);
    k.extend_from_slice(send_key);
    k
}

/// The app id and key of an age index entry.
fn parse_age_key(k: &[u8]) -> Option<(&str, &[u8])> {
    let tail = k.get(9..)?;
    let split = tail.iter().position(|b| *b == 0)?;
    let app_id = std::str::from_utf8(&tail[..split]).ok()?;
    Some((app_id, &tail[split + 1..]))
}

/// `K` + root app id.
fn app_count_key(app_id: &str) -> Vec<u8> {
    key(b"K", root_app(app_id).as_bytes())
}

/// "24 h", "90 s": a window as a person reads it.
pub(crate) fn window(ttl_ms: u64) -> String {
    let secs = Duration::from_millis(ttl_ms).as_secs();
    match secs {
        s if s >= 3_600 && s % 3_600 == 0 => format!("{} h", s / 3_600),
        s => format!("{s} s"),
    }
}

impl Mailbox {
    /// The record of `send_key` of `app_id`, if it is kept. Call with the lock held.
    pub(super) fn send_key(
        &self,
        app_id: &str,
        send_key: &[u8],
    ) -> Result<Option<KeyRecord>, Error> {
        let value = self.store.get(OUTBOX, &record_key(app_id, send_key))?;
        Ok(value.as_deref().and_then(KeyRecord::decode))
    }

    /// Refuses a new key of `app_id` when its app or the node keeps as many as allowed. Call
    /// with the lock held.
    pub(super) fn check_key_room(&self, app_id: &str) -> Result<(), Error> {
        let limits = self.quotas.send_keys;
        let held = |k: &[u8]| -> Result<u64, Error> {
            Ok(Usage::decode(self.store.get(OUTBOX, k)?.as_deref()).messages)
        };
        let (of_app, all) = (held(&app_count_key(app_id))?, held(TOTAL_KEY)?);
        let (whose, limit) = if of_app >= limits.per_app {
            ("this app and its helpers", limits.per_app)
        } else if all >= limits.total && of_app >= self.fair_share(limits.total, all, of_app)? {
            ("this node's apps", limits.total)
        } else {
            return Ok(());
        };
        Err(Error::SendKeysFull {
            whose,
            limit,
            window: window(limits.ttl_ms),
        })
    }

    /// Once the node keeps `total` keys, an app still gets new ones while it holds fewer than
    /// an even share of `total` among the apps holding keys (itself counted): a few apps at
    /// their own bound cannot lock every other app out for a whole window. Apps below their
    /// share can each grow to it, so the keys kept stay below twice `total`; past that, 0.
    fn fair_share(&self, total: u64, all: u64, of_app: u64) -> Result<u64, Error> {
        if all >= total.saturating_mul(2) {
            return Ok(0);
        }
        let holders = self
            .store
            .scan_prefix(OUTBOX, b"K", MAX_KEY_HOLDERS)?
            .iter()
            .filter(|(_, v)| Usage::decode(Some(v.as_slice())).messages > 0)
            .count() as u64;
        Ok(total / (holders + u64::from(of_app == 0)).max(1))
    }

    /// Adds to `ops` the writes that keep `record` under `send_key` of `app_id`, counted, and
    /// writes them all in one batch. Call with the lock held, after
    /// [`Mailbox::check_key_room`].
    pub(super) fn commit_with_key(
        &self,
        app_id: &str,
        send_key: &[u8],
        record: &KeyRecord,
        mut ops: Vec<BatchOp>,
    ) -> Result<(), Error> {
        let mut ledger = Ledger::new(self.store.as_ref(), OUTBOX);
        ledger.add(&app_count_key(app_id), Usage::one(0))?;
        ledger.add(TOTAL_KEY, Usage::one(0))?;
        ops.push(BatchOp::Insert(
            record_key(app_id, send_key),
            record.encode(),
        ));
        ops.push(BatchOp::Insert(
            age_key(record.created_ms, app_id, send_key),
            Vec::new(),
        ));
        ledger.commit(ops)
    }

    /// Forgets the keys recorded before `before_ms`; answers how many. A key whose message
    /// still waits in the outbox is kept for another window instead (a retry then would
    /// otherwise queue a second copy of a message not yet sent: a peer offline for days, a
    /// clock set forward). Blocks.
    pub(crate) fn expire_send_keys(&self, before_ms: u64) -> Result<u64, Error> {
        let renewed_ms = before_ms.saturating_add(self.quotas.send_keys.ttl_ms);
        let mut expired = 0;
        loop {
            let _guard = self.lock();
            let aged = self.store.scan_prefix(OUTBOX, b"T", SWEEP_BATCH)?;
            let read = aged.len();
            let mut ledger = Ledger::new(self.store.as_ref(), OUTBOX);
            let mut ops = Vec::new();
            let mut n = 0usize;
            for (k, _) in aged {
                if u64_at(&k, 1).is_none_or(|created_ms| created_ms >= before_ms) {
                    break;
                }
                n += 1;
                if let Some((app_id, send_key)) = parse_age_key(&k) {
                    let record = self.send_key(app_id, send_key)?;
                    if let Some(record) = record
                        && self.is_waiting(&record.peer, app_id, record.sequence)?
                    {
                        ops.push(BatchOp::Insert(
                            age_key(renewed_ms, app_id, send_key),
                            Vec::new(),
                        ));
                        ops.push(BatchOp::Remove(k));
                        continue;
                    }
                    ops.push(BatchOp::Remove(record_key(app_id, send_key)));
                    ledger.sub(&app_count_key(app_id), Usage::one(0))?;
                    ledger.sub(TOTAL_KEY, Usage::one(0))?;
                    expired += 1;
                }
                ops.push(BatchOp::Remove(k));
            }
            ledger.commit(ops)?;
            if n < read || read < SWEEP_BATCH {
                return Ok(expired);
            }
        }
    }

    /// Keys kept for `app_id`'s app (its helpers' included) and in all.
    #[cfg(test)]
    pub(crate) fn send_key_count(&self, app_id: &str) -> Result<(u64, u64), Error> {
        let held = |k: &[u8]| -> Result<u64, Error> {
            Ok(Usage::decode(self.store.get(OUTBOX, k)?.as_deref()).messages)
        };
        Ok((held(&app_count_key(app_id))?, held(TOTAL_KEY)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_an_age_key_names_its_record() {
        let record = KeyRecord {
            message_id: 7,
            sequence: 3,
            created_ms: 1_700_000_000_000,
            digest: digest(b"hello"),
            peer: PeerId::random(),
        };
        assert_eq!(KeyRecord::decode(&record.encode()), Some(record));
        assert_eq!(KeyRecord::decode(b"short"), None);
        let age = age_key(5, "chat:voice", b"k\x00ey");
        assert_eq!(parse_age_key(&age), Some(("chat:voice", &b"k\x00ey"[..])));
        assert_eq!(window(24 * 3_600_000), "24 h");
        assert_eq!(window(90_000), "90 s");
    }
}
