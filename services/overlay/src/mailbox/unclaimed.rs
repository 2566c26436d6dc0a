//! Messages for app ids not registered here. A sender cannot tell them from messages for a
//! registered app: they are taken alike, within the same quotas, and acknowledged alike, so a
//! peer cannot probe which app ids exist on this node. They are held for the app, should it
//! register (from then on they are its own), for at most `unclaimed_ttl`, and at most the
//! `unclaimed` quota of them in all: past it the oldest is dropped to make room, never the
//! new one refused (a refusal would tell).
//!
//! Each is indexed by `u` + BE inbox id → BE arrival ms, BE payload size, the sender's peer id
//! bytes' length (one byte) and bytes, and the app id; `U` is what they hold in all.

use p2pos_kernel::{events::now_ms, store::BatchOp};

use super::{
    INBOX, Mailbox,
    inbox::{app_usage_key, inbox_key, peer_app_usage_key, peer_usage_key},
    key, u64_at,
    usage::{Ledger, Usage},
};
use crate::Error;

/// What the unclaimed messages hold.
const USAGE_KEY: &[u8] = b"U";
/// Index entries looked at per round of a sweep.
const SWEEP_BATCH: usize = 256;

/// One unclaimed message, as its index entry tells.
struct Held {
    index_key: Vec<u8>,
    inbox_id: u64,
    arrived_ms: u64,
    size: u64,
    peer_bytes: Vec<u8>,
    app_id: String,
}

impl Held {
    fn read(index_key: Vec<u8>, value: &[u8]) -> Option<Self> {
        let inbox_id = u64_at(&index_key, 1)?;
        let arrived_ms = u64_at(value, 0)?;
        let size = u64_at(value, 8)?;
        let peer_len = usize::from(*value.get(16)?);
        let peer_bytes = value.get(17..17 + peer_len)?.to_vec();
        let app_id = String::from_utf8(value.get(17 + peer_len..)?.to_vec()).ok()?;
        Some(Self {
            index_key,
            inbox_id,
            arrived_ms,
            size,
            peer_bytes,
            app_id,
        })
    }
}

impl Mailbox {
    /// Adds to `ops` and `ledger` the writes that index message `inbox_id` from `from` (peer id
    /// bytes, app id) as unclaimed, dropping the oldest unclaimed ones while it would not fit.
    /// Call with the lock held.
    pub(super) fn hold_unclaimed(
        &self,
        ledger: &mut Ledger<'_>,
        ops: &mut Vec<BatchOp>,
        inbox_id: u64,
        (peer_bytes, app_id): (&[u8], &str),
        size: Usage,
    ) -> Result<(), Error> {
        let quota = self.quotas.unclaimed;
        if ledger.get(USAGE_KEY)?.would_exceed(size, quota) {
            // Every entry fits in one scan: the quota bounds them.
            let limit = usize::try_from(quota.messages)
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            for (k, v) in self.store.scan_prefix(INBOX, b"u", limit)? {
                if !ledger.get(USAGE_KEY)?.would_exceed(size, quota) {
                    break;
                }
                match Held::read(k.clone(), &v) {
                    Some(held) => {
                        tracing::info!(
                            app_id = held.app_id,
                            "dropping the oldest message held for an app not registered here, to \
                             make room"
                        );
                        self.drop_held(ledger, ops, &held)?;
                    }
                    None => ops.push(BatchOp::Remove(k)),
                }
            }
        }
        let mut value = Vec::with_capacity(17 + peer_bytes.len() + app_id.len());
        value.extend_from_slice(&now_ms().to_be_bytes());
        value.extend_from_slice(&size.bytes.to_be_bytes());
        value.push(u8::try_from(peer_bytes.len()).unwrap_or(u8::MAX));
        value.extend_from_slice(peer_bytes);
        value.extend_from_slice(app_id.as_bytes());
        ops.push(BatchOp::Insert(index_key(inbox_id), value));
        ledger.add(USAGE_KEY, size)
    }

    /// The messages held for `app_id`, which has just registered, are its own from now on.
    /// Call with the lock held.
    pub(super) fn claim_unclaimed(&self, app_id: &str) -> Result<(), Error> {
        let limit = usize::try_from(self.quotas.unclaimed.messages)
            .unwrap_or(usize::MAX)
            .saturating_add(SWEEP_BATCH);
        let mut ledger = Ledger::new(self.store.as_ref(), INBOX);
        let mut ops = Vec::new();
        for (k, v) in self.store.scan_prefix(INBOX, b"u", limit)? {
            if let Some(held) = Held::read(k, &v)
                && held.app_id == app_id
            {
                ledger.sub(
                    USAGE_KEY,
                    Usage {
                        messages: 1,
                        bytes: held.size,
                    },
                )?;
                ops.push(BatchOp::Remove(held.index_key));
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        ledger.commit(ops)
    }

    /// Drops the unclaimed messages that arrived before `before_ms`, a round at a time;
    /// answers how many. Takes the lock for each round.
    pub(crate) fn expire_unclaimed(&self, before_ms: u64) -> Result<u64, Error> {
        let mut expired = 0;
        loop {
            let _guard = self.lock();
            let entries = self.store.scan_prefix(INBOX, b"u", SWEEP_BATCH)?;
            let read = entries.len();
            let mut ledger = Ledger::new(self.store.as_ref(), INBOX);
            let mut ops = Vec::new();
            let mut n = 0;
            for (k, v) in entries {
                match Held::read(k.clone(), &v) {
                    Some(held) if held.arrived_ms < before_ms => {
                        self.drop_held(&mut ledger, &mut ops, &held)?;
                    }
                    // Ids grow with time: the rest came later.
                    Some(_) => break,
                    None => ops.push(BatchOp::Remove(k)),
                }
                n += 1;
            }
            ledger.commit(ops)?;
            expired += n as u64;
            if n < read || read < SWEEP_BATCH {
                return Ok(expired);
            }
        }
    }

    /// What the unclaimed messages hold.
    #[cfg(test)]
    pub(crate) fn unclaimed_usage(&self) -> Result<Usage, Error> {
        Ok(Usage::decode(self.store.get(INBOX, USAGE_KEY)?.as_deref()))
    }

    /// Adds to `ops` and `ledger` the removal of an unclaimed message, counted off its sender,
    /// its app and the unclaimed. Call with the lock held.
    fn drop_held(
        &self,
        ledger: &mut Ledger<'_>,
        ops: &mut Vec<BatchOp>,
        held: &Held,
    ) -> Result<(), Error> {
        let size = Usage {
            messages: 1,
            bytes: held.size,
        };
        ops.push(BatchOp::Remove(held.index_key.clone()));
        ops.push(BatchOp::Remove(inbox_key(&held.app_id, held.inbox_id)));
        ledger.sub(USAGE_KEY, size)?;
        ledger.sub(&peer_usage_key(&held.peer_bytes), size)?;
        ledger.sub(&peer_app_usage_key(&held.peer_bytes, &held.app_id), size)?;
        ledger.sub(&app_usage_key(&held.app_id), size)
    }
}

fn index_key(inbox_id: u64) -> Vec<u8> {
    key(b"u", &inbox_id.to_be_bytes())
}
