//! Dedupe marks: for each sender store (peer, epoch) and app, the last sequence stored, so a
//! repeat (a resend after a lost acknowledgement) is acknowledged again and not stored twice.
//! A sender sends each app's messages in sequence order, so one number per (peer, epoch, app)
//! is the whole state, and one app held back leaves the others' marks free to move.
//!
//! Compaction, so that no peer can grow the marks without bound:
//! - a frame's `answered_below` says which of the sender's messages have left its outbox for
//!   good: every mark of that (peer, epoch) below it is dropped (it can only ever match a
//!   message never sent again), and so is the mark kept before marks were per app;
//! - at most [`MAX_MARKS_PER_PEER`] marks per sending peer (all its epochs and apps): a new
//!   one past it replaces the peer's least recently used;
//! - at most [`MAX_MARKS`] in all: a new one past it replaces the least recently used;
//! - a mark unused for `dedupe_ttl` is dropped (swept now and then).
//!
//! Each mark is indexed by its last use (`t` + BE ms + the mark key's tail) and counted (`D`).

use p2pos_kernel::store::BatchOp;

use super::{INBOX, Mailbox, inbox::legacy_mark_key, key, u64_at, usage::Ledger};
use crate::Error;

/// Most marks kept for one sending peer.
pub(crate) const MAX_MARKS_PER_PEER: usize = 64;
/// Most marks kept in all.
pub(crate) const MAX_MARKS: u64 = 100_000;
/// Marks looked at per round of a sweep.
const SWEEP_BATCH: usize = 256;
/// The count of marks.
const COUNT_KEY: &[u8] = b"D";

/// The last sequence stored from one (sender, epoch, app), and when it was last used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    pub(super) sequence: u64,
    used_ms: u64,
}

impl Mailbox {
    /// The mark of (`peer_bytes`, `epoch`, `app_id`).
    pub(super) fn mark(
        &self,
        peer_bytes: &[u8],
        epoch: u64,
        app_id: &str,
    ) -> Result<Option<Mark>, Error> {
        let value = self
            .store
            .get(INBOX, &mark_key(peer_bytes, epoch, app_id))?;
        Ok(value.and_then(|v| decode(&v)))
    }

    /// Adds to `ops` and `ledger` the writes that set the mark at `at` (its `old` value read
    /// under the same lock) to `sequence`, used at `now_ms`, and that make room for a new one.
    /// Call with the lock held.
    pub(super) fn set_mark(
        &self,
        ledger: &mut Ledger<'_>,
        ops: &mut Vec<BatchOp>,
        at: (&[u8], u64, &str),
        old: Option<Mark>,
        (sequence, now_ms): (u64, u64),
    ) -> Result<(), Error> {
        let (peer_bytes, epoch, app_id) = at;
        let k = mark_key(peer_bytes, epoch, app_id);
        match old {
            Some(old) => ops.push(BatchOp::Remove(age_key(old.used_ms, &k))),
            None => {
                let peer_marks =
                    self.store
                        .scan_prefix(INBOX, &key(b"d", peer_bytes), MAX_MARKS_PER_PEER)?;
                let oldest_of_peer = peer_marks
                    .iter()
                    .filter_map(|(k, v)| Some((decode(v)?.used_ms, k)))
                    .min();
                if peer_marks.len() >= MAX_MARKS_PER_PEER
                    && let Some((used_ms, evicted)) = oldest_of_peer
                {
                    ops.push(BatchOp::Remove(evicted.clone()));
                    ops.push(BatchOp::Remove(age_key(used_ms, evicted)));
                } else if ledger.get(COUNT_KEY)?.messages >= MAX_MARKS {
                    self.evict_oldest(ops)?;
                } else {
                    ledger.add(COUNT_KEY, super::Usage::one(0))?;
                }
            }
        }
        ops.push(BatchOp::Insert(age_key(now_ms, &k), Vec::new()));
        let mut value = sequence.to_be_bytes().to_vec();
        value.extend_from_slice(&now_ms.to_be_bytes());
        ops.push(BatchOp::Insert(k, value));
        Ok(())
    }

    /// Whether `answered_below` from (`peer`, `epoch`) is above the last one acted on (and
    /// remembers it): only then can it drop marks.
    pub(super) fn newly_answered(
        &self,
        peer: &libp2p::PeerId,
        epoch: u64,
        answered_below: u64,
    ) -> bool {
        let mut answered = self
            .answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if answered
            .get(&(*peer, epoch))
            .is_some_and(|&last| last >= answered_below)
        {
            return false;
        }
        if answered.len() >= super::ANSWERED_REMEMBERED {
            answered.clear();
        }
        answered.insert((*peer, epoch), answered_below);
        true
    }

    /// Drops the marks of (`peer_bytes`, `epoch`) below `answered_below`: the sender says it
    /// never sends those messages again. Call with the lock held.
    pub(super) fn forget_answered(
        &self,
        peer: &libp2p::PeerId,
        epoch: u64,
        answered_below: u64,
    ) -> Result<(), Error> {
        let peer_bytes = peer.to_bytes();
        let mut prefix = key(b"d", &peer_bytes);
        prefix.extend_from_slice(&epoch.to_be_bytes());
        let mut ops = Vec::new();
        let mut forgotten = 0;
        for (k, v) in self.store.scan_prefix(INBOX, &prefix, MAX_MARKS_PER_PEER)? {
            if let Some(mark) = decode(&v)
                && mark.sequence < answered_below
            {
                ops.push(BatchOp::Remove(age_key(mark.used_ms, &k)));
                ops.push(BatchOp::Remove(k));
                forgotten += 1;
            }
        }
        let legacy = legacy_mark_key(peer, epoch);
        if let Some(v) = self.store.get(INBOX, &legacy)?
            && u64_at(&v, 0).is_some_and(|sequence| sequence < answered_below)
        {
            ops.push(BatchOp::Remove(legacy));
        }
        self.commit_removals(ops, forgotten)
    }

    /// Drops the marks unused since before `before_ms`, a round at a time; answers how many.
    /// Takes the lock for each round.
    pub(crate) fn expire_marks(&self, before_ms: u64) -> Result<u64, Error> {
        let mut expired = 0;
        loop {
            let _guard = self.lock();
            let mut ops = Vec::new();
            let aged = self.store.scan_prefix(INBOX, b"t", SWEEP_BATCH)?;
            let read = aged.len();
            for (k, _) in aged {
                if u64_at(&k, 1).is_none_or(|used_ms| used_ms >= before_ms) {
                    break;
                }
                ops.push(BatchOp::Remove(mark_key_of_age(&k)));
                ops.push(BatchOp::Remove(k));
            }
            let n = (ops.len() / 2) as u64;
            self.commit_removals(ops, n)?;
            expired += n;
            if n < read as u64 || read < SWEEP_BATCH {
                return Ok(expired);
            }
        }
    }

    /// Marks kept, in all and for `peer`.
    #[cfg(test)]
    pub(crate) fn mark_count(&self, peer: &libp2p::PeerId) -> Result<(u64, usize), Error> {
        let all = super::Usage::decode(self.store.get(INBOX, COUNT_KEY)?.as_deref()).messages;
        let of_peer = self
            .store
            .scan_prefix(INBOX, &key(b"d", &peer.to_bytes()), 2 * MAX_MARKS_PER_PEER)?
            .len();
        Ok((all, of_peer))
    }

    /// Writes `ops`, which remove `removed` marks, and counts them off, in one batch. Call
    /// with the lock held.
    fn commit_removals(&self, ops: Vec<BatchOp>, removed: u64) -> Result<(), Error> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut ledger = Ledger::new(self.store.as_ref(), INBOX);
        let count = ledger.get(COUNT_KEY)?;
        let removed = super::Usage {
            messages: removed.min(count.messages),
            bytes: 0,
        };
        ledger.sub(COUNT_KEY, removed)?;
        ledger.commit(ops)
    }

    /// Adds to `ops` the removal of the least recently used mark. Call with the lock held.
    fn evict_oldest(&self, ops: &mut Vec<BatchOp>) -> Result<(), Error> {
        if let Some((k, _)) = self.store.scan_prefix(INBOX, b"t", 1)?.pop() {
            ops.push(BatchOp::Remove(mark_key_of_age(&k)));
            ops.push(BatchOp::Remove(k));
        }
        Ok(())
    }
}

fn decode(value: &[u8]) -> Option<Mark> {
    Some(Mark {
        sequence: u64_at(value, 0)?,
        used_ms: u64_at(value, 8)?,
    })
}

/// `d` + peer id bytes + BE epoch + app id.
fn mark_key(peer_bytes: &[u8], epoch: u64, app_id: &str) -> Vec<u8> {
    let mut k = key(b"d", peer_bytes);
    k.extend_from_slice(&epoch.to_be_bytes());
    k.extend_from_slice(app_id.as_bytes());
    k
}

/// `t` + BE last use + the mark key without its tag.
fn age_key(used_ms: u64, mark_key: &[u8]) -> Vec<u8> {
    let mut k = key(b"t", &used_ms.to_be_bytes());
    k.extend_from_slice(mark_key.get(1..).unwrap_or_default());
    k
}

/// The mark an age key indexes.
fn mark_key_of_age(age_key: &[u8]) -> Vec<u8> {
    key(b"d", age_key.get(9..).unwrap_or_default())
}
