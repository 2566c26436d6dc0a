//! The inbox: messages offered by peers, stored at most once per (sender, epoch, app,
//! sequence) and within the quotas, read by `Receive` oldest first after a cursor, and removed
//! only once the app has acknowledged them (the acknowledgement mark, durable) and every open
//! `Receive` stream has had them.

use std::sync::atomic::Ordering;

use libp2p::PeerId;
use p2pos_kernel::{events::now_ms, store::BatchOp};
use p2pos_proto::{app::v1::ReceivedMessage, wire::v1::MessageFrame};
use p2pos_protocols::{ids::AppId, wire::MAX_PAYLOAD};
use prost::Message;

use super::{
    INBOX, Mailbox, key, range, read_u64, u64_at,
    usage::{Ledger, Usage},
};
use crate::Error;

/// Entries read per round of a removal.
const ACK_BATCH: usize = 16;

/// What became of a message offered by a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// Stored now.
    Stored,
    /// Stored earlier: acknowledged again, not stored twice.
    Duplicate,
    /// Not an app id at all: no app can have it (an app id that is merely not registered here
    /// is taken as any other, see `unclaimed`).
    UnknownApp,
    /// The payload is over the limit.
    TooLarge,
    /// Over a quota of the app (its messages from this sender, or from all): not stored; the
    /// sender may go on with other apps. Why, for people.
    AppFull(String),
    /// Over the quota of this sender, all apps together: not stored. Why, for people.
    SenderFull(String),
}

impl Mailbox {
    /// Takes a message offered by `from` into the inbox, at most once per sequence number of
    /// the sender's epoch and app, within the quotas. An app id not registered here is taken
    /// alike (and held for the app, see `unclaimed`): the sender cannot tell. Not durable until
    /// [`Mailbox::flush`].
    pub(crate) fn accept_incoming(
        &self,
        from: &PeerId,
        frame: MessageFrame,
    ) -> Result<Incoming, Error> {
        let MessageFrame {
            sequence,
            message_id,
            app_id,
            payload,
            sent_at_ms,
            epoch,
            answered_below,
        } = frame;
        if payload.len() > MAX_PAYLOAD {
            return Ok(Incoming::TooLarge);
        }
        if AppId::parse(&app_id).is_err() {
            return Ok(Incoming::UnknownApp);
        }
        let peer_bytes = from.to_bytes();
        let now = now_ms();
        let _guard = self.lock();
        if answered_below > 0 && self.newly_answered(from, epoch, answered_below) {
            self.forget_answered(from, epoch, answered_below)?;
        }
        let mark = self.mark(&peer_bytes, epoch, &app_id)?;
        // A mark from before marks were per app is below any per-app one (those came after it),
        // so it is read only while the app has none.
        let legacy = match mark {
            Some(_) => 0,
            None => read_u64(self.store.get(INBOX, &legacy_mark_key(from, epoch))?),
        };
        if sequence <= mark.map_or(0, |m| m.sequence).max(legacy) {
            return Ok(Incoming::Duplicate);
        }
        let size = Usage::one(payload.len());
        let mut ledger = Ledger::new(self.store.as_ref(), INBOX);
        let quotas = self.quotas;
        let (peer_key, peer_app_key, app_key) = (
            peer_usage_key(&peer_bytes),
            peer_app_usage_key(&peer_bytes, &app_id),
            app_usage_key(&app_id),
        );
        let held = ledger.get(&peer_key)?;
        if held.would_exceed(size, quotas.peer) {
            return Ok(Incoming::SenderFull(format!(
                "this node holds {} from you unread, all apps together; the quota per sending \
                 peer is {}",
                held.describe(),
                quotas.peer.describe()
            )));
        }
        let held = ledger.get(&peer_app_key)?;
        if held.would_exceed(size, quotas.peer_app) {
            return Ok(Incoming::AppFull(format!(
                "this node holds {} from you for app '{app_id}' unread; the quota per sending \
                 peer and app is {}",
                held.describe(),
                quotas.peer_app.describe()
            )));
        }
        let held = ledger.get(&app_key)?;
        if held.would_exceed(size, quotas.app) {
            return Ok(Incoming::AppFull(format!(
                "app '{app_id}' holds {} unread from all senders; the quota per app is {}",
                held.describe(),
                quotas.app.describe()
            )));
        }
        let registered = self.is_app_known(&app_id)?;
        let inbox_id = self.store.next_id()?;
        let mut ops = Vec::new();
        if !registered {
            self.hold_unclaimed(
                &mut ledger,
                &mut ops,
                inbox_id,
                (&peer_bytes, &app_id),
                size,
            )?;
        }
        self.set_mark(
            &mut ledger,
            &mut ops,
            (&peer_bytes, epoch, &app_id),
            mark,
            (sequence, now),
        )?;
        for k in [&peer_key, &peer_app_key, &app_key] {
            ledger.add(k, size)?;
        }
        let message = ReceivedMessage {
            from_peer: from.to_string(),
            app_id: app_id.clone(),
            message_id,
            sequence,
            payload,
            sent_at_ms,
            inbox_id,
            sender_epoch: epoch,
        };
        ops.push(BatchOp::Insert(
            inbox_key(&app_id, inbox_id),
            message.encode_to_vec(),
        ));
        ledger.commit(ops)?;
        // Still under the lock: entries are written in id order, so every entry up to this id
        // is now readable.
        self.newest_inbox_id.fetch_max(inbox_id, Ordering::Release);
        Ok(Incoming::Stored)
    }

    /// Up to `limit` messages waiting for `app_id`, oldest first: from the oldest if `after` is
    /// `None`, else those with an inbox id above `after`. Reads nothing at or below `after`.
    pub(crate) fn inbox_after(
        &self,
        app_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>, Error> {
        // An entry with a larger id may be on its way in while an older one is too; reading
        // only up to `newest` never skips one that lands later.
        let newest = self.newest_inbox_id.load(Ordering::Acquire);
        let prefix = inbox_prefix(app_id);
        let pairs = match after {
            None => self.store.scan_prefix(INBOX, &prefix, limit)?,
            Some(after) => match after.checked_add(1) {
                Some(lo) => {
                    range::scan_numbered(self.store.as_ref(), INBOX, &prefix, lo, newest, limit)?
                }
                None => Vec::new(),
            },
        };
        let mut out = Vec::new();
        for (k, v) in pairs {
            let Some(inbox_id) = u64_at(&k, prefix.len()).filter(|id| *id <= newest) else {
                break;
            };
            match ReceivedMessage::decode(v.as_slice()) {
                Ok(message) => out.push(ReceivedMessage {
                    inbox_id,
                    ..message
                }),
                Err(e) => {
                    tracing::error!(app_id, inbox_id, "dropping an unreadable inbox entry: {e}");
                    let _guard = self.lock();
                    self.remove_inbox_entries(app_id, vec![(k, v)])?;
                }
            }
        }
        Ok(out)
    }

    /// The acknowledgement mark of `app_id`: every message up to this inbox id has been
    /// acknowledged (some may still be stored, for a `Receive` stream that has not had them
    /// yet); `None` before the first `Ack`.
    pub(crate) fn acked(&self, app_id: &str) -> Result<Option<u64>, Error> {
        Ok(self
            .store
            .get(INBOX, &ack_key(app_id))?
            .map(|v| read_u64(Some(v))))
    }

    /// Raises the acknowledgement mark of `app_id` to `upto` (it never goes down), but never
    /// past the newest message stored (an id of a message to come acknowledges nothing), and
    /// answers the mark. Not durable until [`Mailbox::flush`].
    pub(crate) fn mark_acked(&self, app_id: &str, upto: u64) -> Result<u64, Error> {
        let _guard = self.lock();
        let upto = upto.min(self.newest_inbox_id.load(Ordering::Acquire));
        match self.acked(app_id)? {
            Some(mark) if mark >= upto => Ok(mark),
            _ => {
                self.store
                    .insert(INBOX, &ack_key(app_id), &upto.to_be_bytes())?;
                Ok(upto)
            }
        }
    }

    /// Removes the acknowledged messages of `app_id` up to `upto` (never one above the
    /// acknowledgement mark) and answers how many. Not durable until [`Mailbox::flush`]; a
    /// message acknowledged but not yet removed is never streamed to a new `Receive`. Blocks
    /// for as long as it takes to read them.
    pub(crate) fn remove_acked(&self, app_id: &str, upto: u64) -> Result<u64, Error> {
        let Some(mark) = self.acked(app_id)? else {
            return Ok(0);
        };
        let upto = upto.min(mark);
        let prefix = inbox_prefix(app_id);
        let mut removed = 0;
        loop {
            let pairs = self.store.scan_prefix(INBOX, &prefix, ACK_BATCH)?;
            let read = pairs.len();
            let entries: Vec<(Vec<u8>, Vec<u8>)> = pairs
                .into_iter()
                .take_while(|(k, _)| u64_at(k, prefix.len()).is_some_and(|id| id <= upto))
                .collect();
            let done = read < ACK_BATCH || entries.len() < read;
            if !entries.is_empty() {
                let _guard = self.lock();
                removed += self.remove_inbox_entries(app_id, entries)?;
            }
            if done {
                return Ok(removed);
            }
        }
    }

    /// Removes the inbox entries of `app_id` (key, value as read) still there, counted off what
    /// their senders and the app hold, in one batch; answers how many. Call with the lock held.
    fn remove_inbox_entries(
        &self,
        app_id: &str,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<u64, Error> {
        let mut ledger = Ledger::new(self.store.as_ref(), INBOX);
        let mut ops = Vec::with_capacity(entries.len());
        let app_key = app_usage_key(app_id);
        for (k, v) in entries {
            // A removal racing this one may have taken it already.
            if self.store.get(INBOX, &k)?.is_none() {
                continue;
            }
            ops.push(BatchOp::Remove(k));
            let sender = ReceivedMessage::decode(v.as_slice())
                .ok()
                .and_then(|m| Some((m.from_peer.parse::<PeerId>().ok()?, m.payload.len())));
            match sender {
                Some((peer, size)) => {
                    let size = Usage::one(size);
                    let peer_bytes = peer.to_bytes();
                    ledger.sub(&peer_usage_key(&peer_bytes), size)?;
                    ledger.sub(&peer_app_usage_key(&peer_bytes, app_id), size)?;
                    ledger.sub(&app_key, size)?;
                }
                // Unreadable: its sender and size are lost with it.
                None => ledger.sub(&app_key, Usage::one(0))?,
            }
        }
        let n = ops.len() as u64;
        ledger.commit(ops)?;
        Ok(n)
    }

    /// Messages stored in the inbox of `app_id`: not yet acknowledged, or acknowledged and still
    /// owed to an open `Receive` stream.
    pub(crate) fn inbox_count(&self, app_id: &str) -> Result<u64, Error> {
        Ok(self.inbox_usage(app_id)?.messages)
    }

    /// What the inbox of `app_id` holds.
    pub(crate) fn inbox_usage(&self, app_id: &str) -> Result<Usage, Error> {
        Ok(Usage::decode(
            self.store.get(INBOX, &app_usage_key(app_id))?.as_deref(),
        ))
    }

    /// What the inbox holds from `peer`, all apps together.
    #[cfg(test)]
    pub(crate) fn held_from(&self, peer: &PeerId) -> Result<Usage, Error> {
        Ok(Usage::decode(
            self.store
                .get(INBOX, &peer_usage_key(&peer.to_bytes()))?
                .as_deref(),
        ))
    }
}

/// Where the last sequence stored from `from`'s store `epoch` was kept before marks were per
/// app. Epoch 0 (a sender that sends none) keeps the key of the time before epochs.
pub(super) fn legacy_mark_key(from: &PeerId, epoch: u64) -> Vec<u8> {
    let mut k = key(b"s", &from.to_bytes());
    if epoch != 0 {
        k.extend_from_slice(&epoch.to_be_bytes());
    }
    k
}

/// What the inbox holds for `app_id`, all senders together.
pub(super) fn app_usage_key(app_id: &str) -> Vec<u8> {
    key(b"c", app_id.as_bytes())
}

/// What the inbox holds from a sender, all apps together.
pub(super) fn peer_usage_key(peer_bytes: &[u8]) -> Vec<u8> {
    key(b"p", peer_bytes)
}

/// What the inbox holds from a sender for one app.
pub(super) fn peer_app_usage_key(peer_bytes: &[u8], app_id: &str) -> Vec<u8> {
    let mut k = key(b"q", peer_bytes);
    k.extend_from_slice(app_id.as_bytes());
    k
}

/// Where the acknowledgement mark of `app_id` is kept.
fn ack_key(app_id: &str) -> Vec<u8> {
    key(b"a", app_id.as_bytes())
}

fn inbox_prefix(app_id: &str) -> Vec<u8> {
    let mut k = key(b"i", app_id.as_bytes());
    k.push(0);
    k
}

pub(super) fn inbox_key(app_id: &str, id: u64) -> Vec<u8> {
    let mut k = inbox_prefix(app_id);
    k.extend_from_slice(&id.to_be_bytes());
    k
}
