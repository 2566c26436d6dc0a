//! The durable side of store-and-forward: known apps, the outbox of messages to send and the
//! inbox of messages received, in the node's store, with exactly-once bookkeeping between
//! nodes and at-least-once hand-over to the app (an inbox entry stays until the app acks it).
//!
//! Trees and keys:
//! - `apps`: app id → registration time (ms). An app id here accepts messages even while no
//!   session of it lives.
//! - `outbox`: `q` + peer id bytes + app id + `0x00` + BE sequence → `MessageFrame` (each
//!   app's queue for each peer); `k` + peer id bytes + app id → messages in that queue; `s` +
//!   peer id bytes → last sequence given to that peer; `c` + app id → messages waiting; `r` +
//!   peer id bytes → when the peer first answered; `e` → this store's sender epoch (random,
//!   created once). Entries of the layout before per-app queues (`m` + peer id bytes + BE
//!   sequence [+ app id]) are moved into their queues at open. The idempotency keys of `Send`
//!   (`I`, `T`, `K`, `N`: see `keys`) are written in the same batch as the entry they name.
//! - `inbox`: `i` + app id + `0x00` + BE inbox id → `ReceivedMessage`; `a` + app id → the
//!   app's acknowledgement mark; what is held (see `usage`): `c` + app id, `p` + sender peer
//!   id bytes, `q` + sender peer id bytes + app id, `U` (apps not registered here, with their
//!   messages indexed by `u` + BE inbox id: see `unclaimed`); the dedupe marks (see
//!   `dedupe`): `d` + sender peer id bytes + BE epoch + app id → last sequence stored, with
//!   their age index `t` and count `D`; and, from before marks were per app, `s` + sender peer
//!   id bytes [+ BE epoch] → last sequence stored from that sender's store.
//!
//! Peer id bytes are a multihash, which encodes its own length, so no peer's key is a prefix
//! of another's; no app id holds a `0x00`. Each write that must be atomic is one batch in one
//! tree; a mutex serialises the read-modify-writes (it is never held across an await).
//!
//! # Layout
//! - this file: the [`Mailbox`] handle, apps, flushing and arrival signals.
//! - `outbox`: messages to send, per peer and app, in sequence order.
//! - `keys`: the idempotency keys of `Send`, kept for a window, bounded per app and in all.
//! - `inbox`: messages received, their acknowledgement by the app.
//! - `usage`: what the inbox holds per app, per sender and per (sender, app), and the quotas.
//! - `dedupe`: the marks that tell a repeat from a new message, and how they are compacted.
//! - `unclaimed`: messages for app ids not registered here: held alike, dropped oldest first.
//! - `range`: reading the inbox after a cursor with prefix scans only.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use p2pos_kernel::{
    Store,
    events::now_ms,
    store::{BatchOp, StoreError},
};
use tokio::sync::watch;

use crate::Error;

mod dedupe;
mod inbox;
#[cfg(test)]
mod key_tests;
mod keys;
mod outbox;
#[cfg(test)]
mod quota_tests;
mod range;
#[cfg(test)]
mod tests;
mod unclaimed;
mod usage;

pub(crate) use inbox::Incoming;
pub(crate) use outbox::{Enqueued, NextBatch};
pub(crate) use usage::{KeyLimits, Quotas, Usage};

/// Store tree of the apps known here.
pub(crate) const APPS: &str = "apps";
/// Store tree of messages to send.
pub(crate) const OUTBOX: &str = "outbox";
/// Store tree of messages received.
pub(crate) const INBOX: &str = "inbox";
/// Most apps listed.
pub(crate) const MAX_APPS: usize = 10_000;
/// Most messages waiting in the outbox of one app.
pub(crate) const MAX_OUTBOX_PER_APP: u64 = 10_000;

/// The node's apps, outbox and inbox.
pub(crate) struct Mailbox {
    store: Arc<dyn Store>,
    lock: Mutex<()>,
    signals: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// This store's sender epoch, sent in every `MessageFrame`.
    epoch: u64,
    /// The inbox's quotas.
    quotas: Quotas,
    /// No inbox entry has a larger id. Raised under `lock` once an entry is written, so every
    /// entry up to it is readable.
    newest_inbox_id: AtomicU64,
    /// Group commit: flushes asked for so far, the last one a finished flush covers, and the
    /// one flush that runs at a time.
    flushes_asked: AtomicU64,
    flushes_done: AtomicU64,
    flushing: tokio::sync::Mutex<()>,
    /// The `answered_below` last acted on per (sender, epoch), so that a batch's frames, which
    /// all carry the same one, scan the sender's marks once. Bounded: emptied when full (the
    /// scan is then only done again).
    answered: Mutex<HashMap<(libp2p::PeerId, u64), u64>>,
}

/// Senders whose last `answered_below` is remembered.
const ANSWERED_REMEMBERED: usize = 4096;

impl Mailbox {
    /// The mailbox in `store`, with the inbox's `quotas`; gives the store its sender epoch the
    /// first time, and moves an outbox of an earlier layout into per-app queues. Blocks.
    pub(crate) fn new(store: Arc<dyn Store>, quotas: Quotas) -> Result<Arc<Self>, Error> {
        let epoch = outbox::load_or_create_epoch(store.as_ref())?;
        // Every inbox id handed out so far is below a new one.
        let newest_inbox_id = AtomicU64::new(store.next_id()?);
        let mailbox = Arc::new(Self {
            store,
            lock: Mutex::new(()),
            signals: Mutex::new(HashMap::new()),
            epoch,
            quotas,
            newest_inbox_id,
            flushes_asked: AtomicU64::new(0),
            flushes_done: AtomicU64::new(0),
            flushing: tokio::sync::Mutex::new(()),
            answered: Mutex::new(HashMap::new()),
        });
        mailbox.migrate_outbox()?;
        Ok(mailbox)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data lives in the store; a poisoned lock guards nothing broken.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every write so far durable, off the async threads. Concurrent callers share
    /// flushes (group commit): one runs at a time, and a caller whose writes a flush that began
    /// after its call has covered returns without one of its own.
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        // Every write of this caller happened before its ticket.
        let ticket = self.flushes_asked.fetch_add(1, Ordering::AcqRel) + 1;
        let _turn = self.flushing.lock().await;
        if self.flushes_done.load(Ordering::Acquire) >= ticket {
            return Ok(());
        }
        // Every ticket up to here was taken before this flush began: it covers them all.
        let covers = self.flushes_asked.load(Ordering::Acquire);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| StoreError::Io(format!("flush task: {e}")))??;
        self.flushes_done.fetch_max(covers, Ordering::AcqRel);
        Ok(())
    }

    /// Drops what outlived its time at `now_ms`: messages held for app ids not registered
    /// here, dedupe marks unused too long, and idempotency keys past their window; answers how
    /// many of each. Blocks.
    pub(crate) fn expire_old(&self, now_ms: u64) -> Result<(u64, u64, u64), Error> {
        let unclaimed =
            self.expire_unclaimed(now_ms.saturating_sub(self.quotas.unclaimed_ttl_ms))?;
        let marks = self.expire_marks(now_ms.saturating_sub(self.quotas.dedupe_ttl_ms))?;
        let keys = self.expire_send_keys(now_ms.saturating_sub(self.quotas.send_keys.ttl_ms))?;
        Ok((unclaimed, marks, keys))
    }

    /// Remembers that `app_id` exists on this node, durably, off the async threads.
    pub(crate) async fn register_app_durably(
        self: &Arc<Self>,
        app_id: String,
    ) -> Result<(), Error> {
        let mailbox = self.clone();
        tokio::task::spawn_blocking(move || {
            mailbox.register_app(&app_id)?;
            mailbox.store.flush()?;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Io(format!("store task: {e}")))?
    }

    /// Runs `work` on the mailbox off the async threads (its store writes block).
    pub(crate) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Mailbox) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let mailbox = self.clone();
        tokio::task::spawn_blocking(move || work(&mailbox))
            .await
            .map_err(|e| StoreError::Io(format!("store task: {e}")))?
    }

    /// Remembers that `app_id` exists on this node; the messages held for it before are its
    /// own from then on.
    pub(crate) fn register_app(&self, app_id: &str) -> Result<(), Error> {
        if self.store.get(APPS, app_id.as_bytes())?.is_some() {
            return Ok(());
        }
        let _guard = self.lock();
        if self.store.get(APPS, app_id.as_bytes())?.is_none() {
            self.store
                .insert(APPS, app_id.as_bytes(), &now_ms().to_be_bytes())?;
            self.claim_unclaimed(app_id)?;
        }
        Ok(())
    }

    /// Every app id known here, sorted.
    pub(crate) fn apps(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .store
            .scan_prefix(APPS, b"", MAX_APPS)?
            .into_iter()
            .filter_map(|(k, _)| String::from_utf8(k).ok())
            .collect())
    }

    /// Whether `app_id` is known here.
    pub(crate) fn is_app_known(&self, app_id: &str) -> Result<bool, Error> {
        Ok(self.store.get(APPS, app_id.as_bytes())?.is_some())
    }

    /// A receiver that changes whenever a message for `app_id` is stored.
    pub(crate) fn subscribe(&self, app_id: &str) -> watch::Receiver<u64> {
        let mut map = self.signals.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(app_id.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the receivers of `app_id`.
    pub(crate) fn signal(&self, app_id: &str) {
        let map = self.signals.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(app_id) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Sets the per-app counter at `count_key` in `tree` to what `change` makes of it, in the
    /// same batch as `ops`. Call with the lock held.
    fn apply_counted(
        &self,
        tree: &str,
        count_key: Vec<u8>,
        change: impl FnOnce(u64) -> u64,
        mut ops: Vec<BatchOp>,
    ) -> Result<(), Error> {
        let count = change(read_u64(self.store.get(tree, &count_key)?));
        ops.push(BatchOp::Insert(count_key, count.to_be_bytes().to_vec()));
        self.store.batch(tree, ops)?;
        Ok(())
    }
}

fn key(tag: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tag.len() + rest.len() + 9);
    k.extend_from_slice(tag);
    k.extend_from_slice(rest);
    k
}

fn read_u64(value: Option<Vec<u8>>) -> u64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// The BE `u64` at `at` in `bytes`.
fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let slice = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(<[u8; 8]>::try_from(slice).ok()?))
}
