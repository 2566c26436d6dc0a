//! The outbox: messages to send, numbered per peer and queued per (peer, app), read in
//! sequence order skipping the apps the peer asked to wait, and removed once the peer has
//! answered them; and this store's sender epoch.

use std::collections::HashSet;

use bytes::Bytes;
use libp2p::PeerId;
use p2pos_kernel::{Store, events::now_ms, store::BatchOp};
use p2pos_proto::wire::v1::MessageFrame;
use p2pos_protocols::names::root_app;
use prost::Message;

use super::{
    MAX_APPS, MAX_OUTBOX_PER_APP, Mailbox, OUTBOX, key,
    keys::{KeyRecord, MAX_KEY_LEN, digest},
    read_u64, u64_at,
};
use crate::Error;

/// Most peers with an outbox considered at start.
const MAX_OUTBOX_PEERS: usize = 100_000;
/// The key of the sender epoch.
const EPOCH_KEY: &[u8] = b"e";
/// Entries of the layout before per-app queues moved at a time.
const MIGRATE_BATCH: usize = 256;

/// A message waiting in the outbox, with the key it is stored under.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    key: Vec<u8>,
    /// The message.
    pub(crate) frame: MessageFrame,
}

/// What `Send` put in the outbox.
#[derive(Debug)]
pub(crate) enum Enqueued {
    /// A new message.
    New(MessageFrame),
    /// The message its idempotency key already named (stored by an earlier `Send`).
    Again(KeyRecord),
}

/// What to send a peer next.
#[derive(Debug, Default)]
pub(crate) struct NextBatch {
    /// Messages in sequence order, none of a held app, and none after a message still waiting
    /// that is not in the batch (but of a held app).
    pub(crate) messages: Vec<Outgoing>,
    /// Every message waiting for the peer has a sequence at or above this (0: none waits).
    pub(crate) lowest_waiting: u64,
    /// The apps with messages waiting for the peer.
    pub(crate) apps: Vec<String>,
}

/// The store's sender epoch; drawn at random and stored the first time. Frames carrying it are
/// only sent after a flush, so a new epoch is durable before any peer sees it.
pub(super) fn load_or_create_epoch(store: &dyn Store) -> Result<u64, Error> {
    if let Some(epoch) = u64_at(&store.get(OUTBOX, EPOCH_KEY)?.unwrap_or_default(), 0) {
        return Ok(epoch);
    }
    // 0 means "no epoch" on the wire.
    let epoch = rand::random::<u64>().max(1);
    store.insert(OUTBOX, EPOCH_KEY, &epoch.to_be_bytes())?;
    Ok(epoch)
}

impl Mailbox {
    /// Puts a message for `peer` in the outbox with the next message id and sequence number.
    /// Not durable until [`Mailbox::flush`].
    #[cfg(test)]
    pub(crate) fn enqueue(
        &self,
        peer: &PeerId,
        app_id: &str,
        payload: Bytes,
    ) -> Result<MessageFrame, Error> {
        match self.enqueue_once(peer, app_id, payload, None)? {
            Enqueued::New(frame) => Ok(frame),
            Enqueued::Again(record) => unreachable!("no key given, yet {record:?}"),
        }
    }

    /// Puts a message for `peer` in the outbox with the next message id and sequence number,
    /// unless `send_key` (an idempotency key of `app_id`'s) already names one: then answers
    /// that message, if it is the same (same peer and payload; otherwise
    /// [`Error::SendKeyReused`]). A new key is kept in the same batch as the message. Not
    /// durable until [`Mailbox::flush`].
    pub(crate) fn enqueue_once(
        &self,
        peer: &PeerId,
        app_id: &str,
        payload: Bytes,
        send_key: Option<&[u8]>,
    ) -> Result<Enqueued, Error> {
        if let Some(k) = send_key
            && (k.is_empty() || k.len() > MAX_KEY_LEN)
        {
            return Err(Error::InvalidSendKey { len: k.len() });
        }
        let digest = send_key.map(|_| digest(&payload));
        let _guard = self.lock();
        if let (Some(k), Some(digest)) = (send_key, &digest)
            && let Some(record) = self.send_key(app_id, k)?
        {
            record.check_same(app_id, peer, digest)?;
            return Ok(Enqueued::Again(record));
        }
        let peer_bytes = peer.to_bytes();
        let seq_key = key(b"s", &peer_bytes);
        let sequence = read_u64(self.store.get(OUTBOX, &seq_key)?) + 1;
        let count_key = key(b"c", root_app(app_id).as_bytes());
        let waiting = read_u64(self.store.get(OUTBOX, &count_key)?);
        if waiting >= MAX_OUTBOX_PER_APP {
            return Err(Error::Busy {
                what: "messages waiting in this app's outbox",
                limit: MAX_OUTBOX_PER_APP as usize,
            });
        }
        if send_key.is_some() {
            self.check_key_room(app_id)?;
        }
        let frame = MessageFrame {
            sequence,
            message_id: self.store.next_id()?,
            app_id: app_id.to_owned(),
            payload,
            sent_at_ms: now_ms(),
            epoch: self.epoch,
            answered_below: 0,
        };
        let queue_count = queue_count_key(&peer_bytes, app_id);
        let queued = read_u64(self.store.get(OUTBOX, &queue_count)?) + 1;
        let ops = vec![
            BatchOp::Insert(
                queue_key(&peer_bytes, app_id, sequence),
                frame.encode_to_vec(),
            ),
            BatchOp::Insert(queue_count, queued.to_be_bytes().to_vec()),
            BatchOp::Insert(seq_key, sequence.to_be_bytes().to_vec()),
            BatchOp::Insert(count_key, (waiting + 1).to_be_bytes().to_vec()),
        ];
        match (send_key, digest) {
            (Some(k), Some(digest)) => {
                let record = KeyRecord {
                    message_id: frame.message_id,
                    sequence,
                    created_ms: frame.sent_at_ms,
                    digest,
                    peer: *peer,
                };
                self.commit_with_key(app_id, k, &record, ops)?;
            }
            _ => self.store.batch(OUTBOX, ops)?,
        }
        Ok(Enqueued::New(frame))
    }

    /// Peers that have messages waiting.
    pub(crate) fn pending_peers(&self) -> Result<Vec<PeerId>, Error> {
        let mut peers = Vec::new();
        for (k, _) in self.store.scan_prefix(OUTBOX, b"s", MAX_OUTBOX_PEERS)? {
            if let Ok(peer) = PeerId::from_bytes(&k[1..])
                && self.has_outgoing(&peer)?
            {
                peers.push(peer);
            }
        }
        Ok(peers)
    }

    /// Whether messages for `peer` are waiting.
    pub(crate) fn has_outgoing(&self, peer: &PeerId) -> Result<bool, Error> {
        let prefix = key(b"k", &peer.to_bytes());
        Ok(!self.store.scan_prefix(OUTBOX, &prefix, 1)?.is_empty())
    }

    /// The apps with messages waiting for `peer`.
    pub(crate) fn apps_waiting(&self, peer: &PeerId) -> Result<Vec<String>, Error> {
        let prefix = key(b"k", &peer.to_bytes());
        Ok(self
            .store
            .scan_prefix(OUTBOX, &prefix, MAX_APPS)?
            .into_iter()
            .filter_map(|(k, _)| String::from_utf8(k[prefix.len()..].to_vec()).ok())
            .collect())
    }

    /// Whether message `sequence` of `app_id` for `peer` is still waiting.
    pub(crate) fn is_waiting(
        &self,
        peer: &PeerId,
        app_id: &str,
        sequence: u64,
    ) -> Result<bool, Error> {
        let k = queue_key(&peer.to_bytes(), app_id, sequence);
        Ok(self.store.get(OUTBOX, &k)?.is_some())
    }

    /// Up to `limit` messages of `app_id` waiting for `peer`, in sequence order. Unreadable
    /// entries can never be sent: they are dropped (and counted off their app) rather than
    /// block the queue.
    pub(crate) fn outgoing(
        &self,
        peer: &PeerId,
        app_id: &str,
        limit: usize,
    ) -> Result<Vec<Outgoing>, Error> {
        let prefix = queue_prefix(&peer.to_bytes(), app_id);
        let mut out = Vec::new();
        for (k, v) in self.store.scan_prefix(OUTBOX, &prefix, limit)? {
            match MessageFrame::decode(v.as_slice()) {
                Ok(frame) => out.push(Outgoing { key: k, frame }),
                Err(e) => {
                    tracing::error!(%peer, app_id, "dropping an unreadable outbox entry: {e}");
                    self.remove_queued(peer, app_id, &k)?;
                }
            }
        }
        Ok(out)
    }

    /// What to send `peer` next: about `limit` messages (at least one per app that is not
    /// held) read from the apps not in `held`, merged in sequence order and cut where an app's
    /// unread rest could come before. Each app held, and each other beyond `limit`, costs one
    /// message read.
    pub(crate) fn next_batch(
        &self,
        peer: &PeerId,
        held: &HashSet<String>,
        limit: usize,
    ) -> Result<NextBatch, Error> {
        let apps = self.apps_waiting(peer)?;
        let ready = apps.iter().filter(|app| !held.contains(*app)).count();
        let limit = (limit / ready.max(1)).max(1);
        let mut lowest_waiting = u64::MAX;
        let mut messages = Vec::new();
        // Sequences above this may have an earlier message of some app not read yet.
        let mut cut = u64::MAX;
        for app in &apps {
            let held_back = held.contains(app);
            let queue = self.outgoing(peer, app, if held_back { 1 } else { limit })?;
            if let Some(head) = queue.first() {
                lowest_waiting = lowest_waiting.min(head.frame.sequence);
            }
            if held_back {
                continue;
            }
            if queue.len() >= limit
                && let Some(last) = queue.last()
            {
                cut = cut.min(last.frame.sequence);
            }
            messages.extend(queue);
        }
        messages.retain(|m| m.frame.sequence <= cut);
        messages.sort_by_key(|m| m.frame.sequence);
        Ok(NextBatch {
            messages,
            lowest_waiting: if lowest_waiting == u64::MAX {
                0
            } else {
                lowest_waiting
            },
            apps,
        })
    }

    /// Removes a message the peer has answered (stored, or refused for good), and remembers
    /// that the peer was reached.
    pub(crate) fn remove_answered(&self, peer: &PeerId, message: &Outgoing) -> Result<(), Error> {
        let reached = key(b"r", &peer.to_bytes());
        if self.store.get(OUTBOX, &reached)?.is_none() {
            self.store
                .insert(OUTBOX, &reached, &now_ms().to_be_bytes())?;
        }
        self.remove_queued(peer, &message.frame.app_id, &message.key)
    }

    /// Removes the entry at `entry_key` of `app_id`'s queue for `peer`, if it is still there,
    /// and counts it off. Takes the lock.
    fn remove_queued(&self, peer: &PeerId, app_id: &str, entry_key: &[u8]) -> Result<(), Error> {
        let _guard = self.lock();
        if self.store.get(OUTBOX, entry_key)?.is_none() {
            return Ok(());
        }
        let queue_count = queue_count_key(&peer.to_bytes(), app_id);
        let left = read_u64(self.store.get(OUTBOX, &queue_count)?).saturating_sub(1);
        let count_op = if left == 0 {
            BatchOp::Remove(queue_count)
        } else {
            BatchOp::Insert(queue_count, left.to_be_bytes().to_vec())
        };
        self.apply_counted(
            OUTBOX,
            // An app and its helpers share one count.
            key(b"c", root_app(app_id).as_bytes()),
            |n| n.saturating_sub(1),
            vec![BatchOp::Remove(entry_key.to_vec()), count_op],
        )
    }

    /// Whether `peer` has ever answered a message from this node.
    pub(crate) fn was_reached(&self, peer: &PeerId) -> Result<bool, Error> {
        Ok(self
            .store
            .get(OUTBOX, &key(b"r", &peer.to_bytes()))?
            .is_some())
    }

    /// Drops the messages for `peer` stored before `before_ms` (Unix ms), if the peer has never
    /// been reached, and answers them: they waited too long for a peer that may not exist.
    /// Reads at most `limit` per app; the oldest come first.
    pub(crate) fn expire_unreached(
        &self,
        peer: &PeerId,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<MessageFrame>, Error> {
        if self.was_reached(peer)? {
            return Ok(Vec::new());
        }
        let mut expired = Vec::new();
        for app in self.apps_waiting(peer)? {
            for message in self.outgoing(peer, &app, limit)? {
                if message.frame.sent_at_ms >= before_ms {
                    break;
                }
                self.remove_queued(peer, &app, &message.key)?;
                expired.push(message.frame);
            }
        }
        Ok(expired)
    }

    /// Messages of `app_id`'s app waiting in the outbox, to any peer: the app's and all its
    /// helpers' (`app:helper`), which share one budget ([`MAX_OUTBOX_PER_APP`]).
    pub(crate) fn outbox_count(&self, app_id: &str) -> Result<u64, Error> {
        Ok(read_u64(
            self.store
                .get(OUTBOX, &key(b"c", root_app(app_id).as_bytes()))?,
        ))
    }

    /// Moves the entries of the layout before per-app queues (`m` + peer + sequence [+ app id])
    /// into their queues; unreadable ones are dropped and counted off. Runs at open.
    pub(super) fn migrate_outbox(&self) -> Result<(), Error> {
        for (k, _) in self.store.scan_prefix(OUTBOX, b"s", MAX_OUTBOX_PEERS)? {
            let Ok(peer) = PeerId::from_bytes(&k[1..]) else {
                continue;
            };
            let peer_bytes = peer.to_bytes();
            let prefix = key(b"m", &peer_bytes);
            loop {
                let entries = self.store.scan_prefix(OUTBOX, &prefix, MIGRATE_BATCH)?;
                if entries.is_empty() {
                    break;
                }
                let _guard = self.lock();
                let mut ops = Vec::new();
                for (old, value) in entries {
                    ops.push(BatchOp::Remove(old.clone()));
                    match MessageFrame::decode(value.as_slice()) {
                        Ok(frame) => {
                            let count_key = queue_count_key(&peer_bytes, &frame.app_id);
                            let queued = read_u64(self.store.get(OUTBOX, &count_key)?) + 1;
                            // One batch per entry: the counter is read back for the next.
                            ops.push(BatchOp::Insert(
                                queue_key(&peer_bytes, &frame.app_id, frame.sequence),
                                value,
                            ));
                            ops.push(BatchOp::Insert(count_key, queued.to_be_bytes().to_vec()));
                        }
                        Err(e) => {
                            // The app id is the key's tail (none in the oldest entries).
                            let app_id = old
                                .get(prefix.len() + 8..)
                                .and_then(|tail| std::str::from_utf8(tail).ok())
                                .filter(|app_id| !app_id.is_empty());
                            tracing::error!(%peer, ?app_id, "dropping an unreadable outbox entry: {e}");
                            if let Some(app_id) = app_id {
                                let count_key = key(b"c", root_app(app_id).as_bytes());
                                let left =
                                    read_u64(self.store.get(OUTBOX, &count_key)?).saturating_sub(1);
                                ops.push(BatchOp::Insert(count_key, left.to_be_bytes().to_vec()));
                            }
                        }
                    }
                    self.store.batch(OUTBOX, std::mem::take(&mut ops))?;
                }
            }
        }
        Ok(())
    }
}

/// `k` + peer + app id: how many messages of the app wait for the peer.
fn queue_count_key(peer_bytes: &[u8], app_id: &str) -> Vec<u8> {
    let mut k = key(b"k", peer_bytes);
    k.extend_from_slice(app_id.as_bytes());
    k
}

/// `q` + peer + app id + `0x00`: the queue of the app's messages for the peer (no app id holds
/// a `0x00`, and peer id bytes encode their own length).
fn queue_prefix(peer_bytes: &[u8], app_id: &str) -> Vec<u8> {
    let mut k = key(b"q", peer_bytes);
    k.extend_from_slice(app_id.as_bytes());
    k.push(0);
    k
}

fn queue_key(peer_bytes: &[u8], app_id: &str, sequence: u64) -> Vec<u8> {
    let mut k = queue_prefix(peer_bytes, app_id);
    k.extend_from_slice(&sequence.to_be_bytes());
    k
}

/// The key of a message in the layout before per-app queues.
#[cfg(test)]
pub(super) fn legacy_outbox_key(peer: &PeerId, sequence: u64, app_id: &str) -> Vec<u8> {
    let mut k = key(b"m", &peer.to_bytes());
    k.extend_from_slice(&sequence.to_be_bytes());
    k.extend_from_slice(app_id.as_bytes());
    k
}

/// The key of a message in its queue.
#[cfg(test)]
pub(super) fn raw_outbox_key(peer: &PeerId, sequence: u64, app_id: &str) -> Vec<u8> {
    queue_key(&peer.to_bytes(), app_id, sequence)
}
