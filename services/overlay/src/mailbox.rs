//! The durable side of store-and-forward: known apps, the outbox of messages to send and the
//! inbox of messages received, in the node's store, with exactly-once bookkeeping.
//!
//! Trees and keys:
//! - `apps`: app id → registration time (ms). An app id here accepts messages even while no
//!   session of it lives.
//! - `outbox`: `m` + peer id bytes + BE sequence → `MessageFrame`; `s` + peer id bytes → last
//!   sequence given to that peer; `c` + app id → messages waiting.
//! - `inbox`: `i` + app id + `0x00` + BE inbox id → `ReceivedMessage`; `s` + sender peer id
//!   bytes → last sequence stored from that sender; `c` + app id → messages waiting.
//!
//! Peer id bytes are a multihash, which encodes its own length, so no peer's key is a prefix
//! of another's. Each write that must be atomic is one batch in one tree; a mutex serialises
//! the read-modify-writes (it is never held across an await).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use libp2p::PeerId;
use p2pos_kernel::{
    Store,
    events::now_ms,
    store::{BatchOp, StoreError},
    wire::MAX_PAYLOAD,
};
use p2pos_proto::{app::v1::ReceivedMessage, wire::v1::MessageFrame};
use prost::Message;
use tokio::sync::watch;

use crate::Error;

const APPS: &str = "apps";
const OUTBOX: &str = "outbox";
const INBOX: &str = "inbox";
/// Most apps listed.
const MAX_APPS: usize = 10_000;
/// Most peers with an outbox considered at start.
const MAX_OUTBOX_PEERS: usize = 100_000;
/// Most messages waiting in the inbox of one app; past this, peers keep theirs until the app
/// reads some.
pub(crate) const MAX_INBOX_PER_APP: u64 = 10_000;
/// Most messages waiting in the outbox of one app.
pub(crate) const MAX_OUTBOX_PER_APP: u64 = 10_000;

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

/// The node's apps, outbox and inbox.
pub(crate) struct Mailbox {
    store: Arc<dyn Store>,
    lock: Mutex<()>,
    signals: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Mailbox {
    /// The mailbox in `store`.
    pub(crate) fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            lock: Mutex::new(()),
            signals: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data lives in the store; a poisoned lock guards nothing broken.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every write so far durable, off the async threads.
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| StoreError::Io(format!("flush task: {e}")))??;
        Ok(())
    }

    /// Remembers that `app_id` exists on this node.
    pub(crate) fn register_app(&self, app_id: &str) -> Result<(), Error> {
        if self.store.get(APPS, app_id.as_bytes())?.is_none() {
            self.store
                .insert(APPS, app_id.as_bytes(), &now_ms().to_be_bytes())?;
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
        let count_key = key(b"c", app_id.as_bytes());
        let count = read_u64(self.store.get(OUTBOX, &count_key)?) + 1;
        if count > MAX_OUTBOX_PER_APP {
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
        };
        self.store.batch(
            OUTBOX,
            vec![
                BatchOp::Insert(outbox_key(&peer_bytes, sequence), frame.encode_to_vec()),
                BatchOp::Insert(seq_key, sequence.to_be_bytes().to_vec()),
                BatchOp::Insert(count_key, count.to_be_bytes().to_vec()),
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

    /// Up to `limit` messages waiting for `peer`, in sequence order.
    pub(crate) fn outgoing(&self, peer: &PeerId, limit: usize) -> Result<Vec<MessageFrame>, Error> {
        let prefix = key(b"m", &peer.to_bytes());
        let mut frames = Vec::new();
        for (k, v) in self.store.scan_prefix(OUTBOX, &prefix, limit)? {
            match MessageFrame::decode(v.as_slice()) {
                Ok(frame) => frames.push(frame),
                Err(e) => {
                    // Unreadable: it can never be sent; drop it rather than block the queue.
                    tracing::error!(%peer, "dropping an unreadable outbox entry: {e}");
                    self.store.remove(OUTBOX, &k)?;
                }
            }
        }
        Ok(frames)
    }

    /// Removes a message the peer has acknowledged (or refused for good).
    pub(crate) fn remove_outgoing(&self, peer: &PeerId, frame: &MessageFrame) -> Result<(), Error> {
        let _guard = self.lock();
        let k = outbox_key(&peer.to_bytes(), frame.sequence);
        if self.store.get(OUTBOX, &k)?.is_none() {
            return Ok(());
        }
        let count_key = key(b"c", frame.app_id.as_bytes());
        let count = read_u64(self.store.get(OUTBOX, &count_key)?).saturating_sub(1);
        self.store.batch(
            OUTBOX,
            vec![
                BatchOp::Remove(k),
                BatchOp::Insert(count_key, count.to_be_bytes().to_vec()),
            ],
        )?;
        Ok(())
    }

    /// Messages of `app_id` waiting in the outbox, to any peer.
    pub(crate) fn outbox_count(&self, app_id: &str) -> Result<u64, Error> {
        Ok(read_u64(
            self.store.get(OUTBOX, &key(b"c", app_id.as_bytes()))?,
        ))
    }

    /// Takes a message offered by `from` into the inbox, at most once per sequence number.
    /// Not durable until [`Mailbox::flush`].
    pub(crate) fn accept_incoming(
        &self,
        from: &PeerId,
        frame: MessageFrame,
    ) -> Result<Incoming, Error> {
        if frame.payload.len() > MAX_PAYLOAD {
            return Ok(Incoming::TooLarge);
        }
        if !self.is_app_known(&frame.app_id)? {
            return Ok(Incoming::UnknownApp);
        }
        let _guard = self.lock();
        let from_bytes = from.to_bytes();
        let seen_key = key(b"s", &from_bytes);
        if frame.sequence <= read_u64(self.store.get(INBOX, &seen_key)?) {
            return Ok(Incoming::Duplicate);
        }
        let count_key = key(b"c", frame.app_id.as_bytes());
        let count = read_u64(self.store.get(INBOX, &count_key)?) + 1;
        if count > MAX_INBOX_PER_APP {
            return Ok(Incoming::InboxFull);
        }
        let id = self.store.next_id()?;
        let sequence = frame.sequence;
        let entry_key = inbox_key(&frame.app_id, id);
        let message = ReceivedMessage {
            from_peer: from.to_string(),
            app_id: frame.app_id,
            message_id: frame.message_id,
            sequence,
            payload: frame.payload,
            sent_at_ms: frame.sent_at_ms,
        };
        self.store.batch(
            INBOX,
            vec![
                BatchOp::Insert(entry_key, message.encode_to_vec()),
                BatchOp::Insert(seen_key, sequence.to_be_bytes().to_vec()),
                BatchOp::Insert(count_key, count.to_be_bytes().to_vec()),
            ],
        )?;
        Ok(Incoming::Stored)
    }

    /// Up to `limit` messages waiting for `app_id`, oldest first, with their keys.
    pub(crate) fn inbox(
        &self,
        app_id: &str,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, ReceivedMessage)>, Error> {
        let mut prefix = key(b"i", app_id.as_bytes());
        prefix.push(0);
        let mut out = Vec::new();
        for (k, v) in self.store.scan_prefix(INBOX, &prefix, limit)? {
            match ReceivedMessage::decode(v.as_slice()) {
                Ok(msg) => out.push((k, msg)),
                Err(e) => {
                    tracing::error!(app_id, "dropping an unreadable inbox entry: {e}");
                    self.remove_incoming(&k, app_id)?;
                }
            }
        }
        Ok(out)
    }

    /// Removes a message handed to the app.
    pub(crate) fn remove_incoming(&self, entry_key: &[u8], app_id: &str) -> Result<(), Error> {
        let _guard = self.lock();
        if self.store.get(INBOX, entry_key)?.is_none() {
            return Ok(());
        }
        let count_key = key(b"c", app_id.as_bytes());
        let count = read_u64(self.store.get(INBOX, &count_key)?).saturating_sub(1);
        self.store.batch(
            INBOX,
            vec![
                BatchOp::Remove(entry_key.to_vec()),
                BatchOp::Insert(count_key, count.to_be_bytes().to_vec()),
            ],
        )?;
        Ok(())
    }

    /// Messages waiting in the inbox of `app_id`.
    pub(crate) fn inbox_count(&self, app_id: &str) -> Result<u64, Error> {
        Ok(read_u64(
            self.store.get(INBOX, &key(b"c", app_id.as_bytes()))?,
        ))
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
}

fn key(tag: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tag.len() + rest.len() + 9);
    k.extend_from_slice(tag);
    k.extend_from_slice(rest);
    k
}

fn outbox_key(peer_bytes: &[u8], sequence: u64) -> Vec<u8> {
    let mut k = key(b"m", peer_bytes);
    k.extend_from_slice(&sequence.to_be_bytes());
    k
}

fn inbox_key(app_id: &str, id: u64) -> Vec<u8> {
    let mut k = key(b"i", app_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn read_u64(value: Option<Vec<u8>>) -> u64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use p2pos_kernel::store::SledStore;

    use super::*;

    #[test]
    fn messages_are_stored_once_and_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sender = Mailbox::new(SledStore::open(&dir.path().join("a")).expect("open"));
        let receiver = Mailbox::new(SledStore::open(&dir.path().join("b")).expect("open"));
        let (a, b) = (PeerId::random(), PeerId::random());
        receiver.register_app("chat").expect("register");

        for i in 0..3 {
            sender
                .enqueue(&b, "chat", Bytes::from(format!("m{i}")))
                .expect("enqueue");
        }
        sender
            .enqueue(&b, "other", Bytes::from_static(b"x"))
            .expect("enqueue");
        assert_eq!(sender.outbox_count("chat").expect("count"), 3);
        assert_eq!(sender.pending_peers().expect("peers"), vec![b]);
        let frames = sender.outgoing(&b, 10).expect("outgoing");
        assert_eq!(
            frames.iter().map(|f| f.sequence).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );

        for frame in &frames {
            let got = receiver.accept_incoming(&a, frame.clone()).expect("accept");
            let want = if frame.app_id == "chat" {
                Incoming::Stored
            } else {
                Incoming::UnknownApp
            };
            assert_eq!(got, want);
        }
        // A resend after a lost acknowledgement is not stored twice.
        assert_eq!(
            receiver
                .accept_incoming(&a, frames[1].clone())
                .expect("accept"),
            Incoming::Duplicate
        );
        for frame in &frames {
            sender.remove_outgoing(&b, frame).expect("remove");
        }
        assert_eq!(sender.outbox_count("chat").expect("count"), 0);
        assert!(sender.pending_peers().expect("peers").is_empty());

        let inbox = receiver.inbox("chat", 10).expect("inbox");
        let payloads: Vec<_> = inbox.iter().map(|(_, m)| m.payload.clone()).collect();
        assert_eq!(payloads, vec!["m0", "m1", "m2"]);
        assert_eq!(inbox[0].1.from_peer, a.to_string());
        assert_eq!(receiver.inbox_count("chat").expect("count"), 3);
        receiver
            .remove_incoming(&inbox[0].0, "chat")
            .expect("remove");
        assert_eq!(receiver.inbox_count("chat").expect("count"), 2);
        assert_eq!(receiver.apps().expect("apps"), vec!["chat".to_owned()]);
        // The next message gets the next sequence number.
        let next = sender.enqueue(&b, "chat", Bytes::new()).expect("enqueue");
        assert_eq!(next.sequence, 5);
    }

    #[test]
    fn oversize_payloads_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mailbox = Mailbox::new(SledStore::open(dir.path()).expect("open"));
        mailbox.register_app("chat").expect("register");
        let frame = MessageFrame {
            sequence: 1,
            app_id: "chat".into(),
            payload: Bytes::from(vec![0; MAX_PAYLOAD + 1]),
            ..MessageFrame::default()
        };
        assert_eq!(
            mailbox
                .accept_incoming(&PeerId::random(), frame)
                .expect("accept"),
            Incoming::TooLarge
        );
    }
}
