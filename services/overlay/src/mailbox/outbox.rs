//! The outbox: messages to send, numbered per peer, read in sequence order and removed once the
//! peer has acknowledged them; and this store's sender epoch.

use bytes::Bytes;
use libp2p::PeerId;
use p2pos_kernel::{Store, events::now_ms, store::BatchOp};
use p2pos_proto::wire::v1::MessageFrame;
use p2pos_protocols::names::root_app;
use prost::Message;

use super::{MAX_OUTBOX_PER_APP, Mailbox, OUTBOX, key, read_u64};
use crate::Error;

/// Most peers with an outbox considered at start.
const MAX_OUTBOX_PEERS: usize = 100_000;
/// The key of the sender epoch.
const EPOCH_KEY: &[u8] = b"e";

/// A message waiting in the outbox, with the key it is stored under.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    key: Vec<u8>,
    /// The message.
    pub(crate) frame: MessageFrame,
}

/// The store's sender epoch; drawn at random and stored the first time. Frames carrying it are
/// only sent after a flush, so a new epoch is durable before any peer sees it.
pub(super) fn load_or_create_epoch(store: &dyn Store) -> Result<u64, Error> {
    if let Some(epoch) = super::u64_at(&store.get(OUTBOX, EPOCH_KEY)?.unwrap_or_default(), 0) {
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
    pub(crate) fn enqueue(
        &self,
        peer: &PeerId,
        app_id: &str,
        payload: Bytes,
    ) -> Result<MessageFrame, Error> {
        let _guard = self.lock();
        let peer_bytes = peer.to_bytes();
        let seq_key = key(b"s", &peer_bytes);
        let sequence = read_u64(self.store.get(OUTBOX, &seq_key)?) + 1;
        let count_key = key(b"c", root_app(app_id).as_bytes());
        if read_u64(self.store.get(OUTBOX, &count_key)?) >= MAX_OUTBOX_PER_APP {
            return Err(Error::Busy {
                what: "messages waiting in this app's outbox",
                limit: MAX_OUTBOX_PER_APP as usize,
            });
        }
        let frame = MessageFrame {
            sequence,
            message_id: self.store.next_id()?,
            app_id: app_id.to_owned(),
            payload,
            sent_at_ms: now_ms(),
            epoch: self.epoch,
        };
        let entry = outbox_key(&peer_bytes, sequence, app_id);
        self.apply_counted(
            OUTBOX,
            count_key,
            |n| n + 1,
            vec![
                BatchOp::Insert(entry, frame.encode_to_vec()),
                BatchOp::Insert(seq_key, sequence.to_be_bytes().to_vec()),
            ],
        )?;
        Ok(frame)
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
        Ok(!self.outgoing(peer, 1)?.is_empty())
    }

    /// Whether message `sequence` for `peer` is still waiting.
    pub(crate) fn is_waiting(&self, peer: &PeerId, sequence: u64) -> Result<bool, Error> {
        let mut prefix = key(b"m", &peer.to_bytes());
        prefix.extend_from_slice(&sequence.to_be_bytes());
        Ok(!self.store.scan_prefix(OUTBOX, &prefix, 1)?.is_empty())
    }

    /// Up to `limit` messages waiting for `peer`, in sequence order. Unreadable entries can
    /// never be sent: they are dropped (and counted off their app) rather than block the queue.
    pub(crate) fn outgoing(&self, peer: &PeerId, limit: usize) -> Result<Vec<Outgoing>, Error> {
        let prefix = key(b"m", &peer.to_bytes());
        let mut out = Vec::new();
        for (k, v) in self.store.scan_prefix(OUTBOX, &prefix, limit)? {
            match MessageFrame::decode(v.as_slice()) {
                Ok(frame) => out.push(Outgoing { key: k, frame }),
                Err(e) => {
                    // The app id is the key's tail (none in entries from before it was).
                    let app_id = k
                        .get(prefix.len() + 8..)
                        .and_then(|tail| std::str::from_utf8(tail).ok())
                        .filter(|app_id| !app_id.is_empty());
                    tracing::error!(%peer, ?app_id, "dropping an unreadable outbox entry: {e}");
                    match app_id {
                        Some(app_id) => self.remove_counted(OUTBOX, &k, root_app(app_id))?,
                        None => {
                            let _guard = self.lock();
                            self.store.remove(OUTBOX, &k)?;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes a message the peer has answered (stored, or refused for good), and remembers
    /// that the peer was reached.
    pub(crate) fn remove_answered(&self, peer: &PeerId, message: &Outgoing) -> Result<(), Error> {
        let reached = key(b"r", &peer.to_bytes());
        if self.store.get(OUTBOX, &reached)?.is_none() {
            self.store
                .insert(OUTBOX, &reached, &now_ms().to_be_bytes())?;
        }
        self.remove_counted(OUTBOX, &message.key, root_app(&message.frame.app_id))
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
    /// Reads at most `limit`; the oldest come first.
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
        for message in self.outgoing(peer, limit)? {
            if message.frame.sent_at_ms >= before_ms {
                break;
            }
            self.remove_counted(OUTBOX, &message.key, root_app(&message.frame.app_id))?;
            expired.push(message.frame);
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
}

fn outbox_key(peer_bytes: &[u8], sequence: u64, app_id: &str) -> Vec<u8> {
    let mut k = key(b"m", peer_bytes);
    k.extend_from_slice(&sequence.to_be_bytes());
    k.extend_from_slice(app_id.as_bytes());
    k
}

#[cfg(test)]
pub(super) fn raw_outbox_key(peer: &PeerId, sequence: u64, app_id: &str) -> Vec<u8> {
    outbox_key(&peer.to_bytes(), sequence, app_id)
}
