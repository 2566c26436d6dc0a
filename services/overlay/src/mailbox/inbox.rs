//! The inbox: messages offered by peers, stored at most once per (sender, epoch, sequence), read
//! by `Receive` oldest first after a cursor, and removed only once the app has acknowledged them
//! (the acknowledgement mark, durable) and every open `Receive` stream has had them.

use std::sync::atomic::Ordering;

use libp2p::PeerId;
use p2pos_kernel::store::BatchOp;
use p2pos_proto::{app::v1::ReceivedMessage, wire::v1::MessageFrame};
use p2pos_protocols::wire::MAX_PAYLOAD;
use prost::Message;

use super::{INBOX, Mailbox, key, range, read_u64, u64_at};
use crate::Error;

/// Entries read per round of a removal.
const ACK_BATCH: usize = 16;

/// What became of a message offered by a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// Stored now.
    Stored,
    /// Stored earlier: acknowledged again, not stored twice.
    Duplicate,
    /// The app id was never registered here.
    UnknownApp,
    /// The payload is over the limit.
    TooLarge,
    /// The app's inbox is full: not stored, not acknowledged.
    InboxFull,
}

impl Mailbox {
    /// Takes a message offered by `from` into the inbox, at most once per sequence number of
    /// the sender's epoch. Not durable until [`Mailbox::flush`].
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
        } = frame;
        if payload.len() > MAX_PAYLOAD {
            return Ok(Incoming::TooLarge);
        }
        if !self.is_app_known(&app_id)? {
            return Ok(Incoming::UnknownApp);
        }
        let _guard = self.lock();
        let seen_key = seen_key(from, epoch);
        if sequence <= read_u64(self.store.get(INBOX, &seen_key)?) {
            return Ok(Incoming::Duplicate);
        }
        let count_key = key(b"c", app_id.as_bytes());
        if read_u64(self.store.get(INBOX, &count_key)?) >= self.max_inbox {
            return Ok(Incoming::InboxFull);
        }
        let inbox_id = self.store.next_id()?;
        let entry_key = inbox_key(&app_id, inbox_id);
        let message = ReceivedMessage {
            from_peer: from.to_string(),
            app_id,
            message_id,
            sequence,
            payload,
            sent_at_ms,
            inbox_id,
            sender_epoch: epoch,
        };
        self.apply_counted(
            INBOX,
            count_key,
            |n| n + 1,
            vec![
                BatchOp::Insert(entry_key, message.encode_to_vec()),
                BatchOp::Insert(seen_key, sequence.to_be_bytes().to_vec()),
            ],
        )?;
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
                    self.remove_counted(INBOX, &k, app_id)?;
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
            let keys: Vec<Vec<u8>> = pairs
                .into_iter()
                .map(|(k, _)| k)
                .take_while(|k| u64_at(k, prefix.len()).is_some_and(|id| id <= upto))
                .collect();
            let done = read < ACK_BATCH || keys.len() < read;
            if !keys.is_empty() {
                let _guard = self.lock();
                let mut ops = Vec::with_capacity(keys.len());
                for k in keys {
                    // A removal racing this one may have taken it already.
                    if self.store.get(INBOX, &k)?.is_some() {
                        ops.push(BatchOp::Remove(k));
                    }
                }
                let n = ops.len() as u64;
                if n > 0 {
                    let count_key = key(b"c", app_id.as_bytes());
                    self.apply_counted(INBOX, count_key, |c| c.saturating_sub(n), ops)?;
                    removed += n;
                }
            }
            if done {
                return Ok(removed);
            }
        }
    }

    /// Messages stored in the inbox of `app_id`: not yet acknowledged, or acknowledged and still
    /// owed to an open `Receive` stream.
    pub(crate) fn inbox_count(&self, app_id: &str) -> Result<u64, Error> {
        Ok(read_u64(
            self.store.get(INBOX, &key(b"c", app_id.as_bytes()))?,
        ))
    }
}

/// Where the last sequence stored from `from`'s store `epoch` is kept. Epoch 0 (a sender that
/// sends none) keeps the key of the time before epochs.
fn seen_key(from: &PeerId, epoch: u64) -> Vec<u8> {
    let mut k = key(b"s", &from.to_bytes());
    if epoch != 0 {
        k.extend_from_slice(&epoch.to_be_bytes());
    }
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

fn inbox_key(app_id: &str, id: u64) -> Vec<u8> {
    let mut k = inbox_prefix(app_id);
    k.extend_from_slice(&id.to_be_bytes());
    k
}
