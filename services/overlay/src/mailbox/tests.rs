use std::sync::Arc;

use bytes::Bytes;
use libp2p::PeerId;
use p2pos_kernel::{Store, store::SledStore};
use p2pos_proto::wire::v1::MessageFrame;
use p2pos_protocols::wire::MAX_PAYLOAD;

use super::{INBOX, Incoming, Mailbox, OUTBOX, Quotas, outbox::raw_outbox_key};

fn open(dir: &tempfile::TempDir, name: &str) -> (Arc<SledStore>, Arc<Mailbox>) {
    let store = SledStore::open(&dir.path().join(name)).expect("open");
    let mailbox = Mailbox::new(store.clone(), Quotas::default()).expect("mailbox");
    (store, mailbox)
}

fn payloads(messages: &[p2pos_proto::app::v1::ReceivedMessage]) -> Vec<Bytes> {
    messages.iter().map(|m| m.payload.clone()).collect()
}

#[test]
fn messages_are_stored_once_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, sender) = open(&dir, "a");
    let (_, receiver) = open(&dir, "b");
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
    let batch = sender
        .next_batch(&b, &Default::default(), 10)
        .expect("outgoing");
    let waiting = batch.messages;
    assert_eq!(
        waiting.iter().map(|m| m.frame.sequence).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(batch.lowest_waiting, 1);
    assert_eq!(batch.apps, ["chat", "other"]);
    assert!(sender.is_waiting(&b, "chat", 2).expect("waiting"));

    for message in &waiting {
        // An app not registered here is taken alike (and held for it).
        let got = receiver
            .accept_incoming(&a, message.frame.clone())
            .expect("accept");
        assert_eq!(got, Incoming::Stored);
    }
    // A resend after a lost acknowledgement is not stored twice.
    assert_eq!(
        receiver
            .accept_incoming(&a, waiting[1].frame.clone())
            .expect("accept"),
        Incoming::Duplicate
    );
    for message in &waiting {
        sender.remove_answered(&b, message).expect("remove");
    }
    assert_eq!(sender.outbox_count("chat").expect("count"), 0);
    assert_eq!(sender.outbox_count("other").expect("count"), 0);
    assert!(!sender.is_waiting(&b, "chat", 2).expect("waiting"));
    assert!(sender.pending_peers().expect("peers").is_empty());

    let inbox = receiver.inbox_after("chat", None, 10).expect("inbox");
    assert_eq!(payloads(&inbox), vec!["m0", "m1", "m2"]);
    assert_eq!(inbox[0].from_peer, a.to_string());
    assert!(inbox.windows(2).all(|w| w[0].inbox_id < w[1].inbox_id));
    assert_eq!(receiver.inbox_count("chat").expect("count"), 3);
    assert_eq!(receiver.apps().expect("apps"), vec!["chat".to_owned()]);
    // The next message gets the next sequence number.
    let next = sender.enqueue(&b, "chat", Bytes::new()).expect("enqueue");
    assert_eq!(next.sequence, 5);
}

#[test]
fn the_inbox_is_read_after_a_cursor_and_emptied_by_cumulative_acks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, receiver) = open(&dir, "b");
    receiver.register_app("chat").expect("register");
    receiver.register_app("other").expect("register");
    let a = PeerId::random();
    for sequence in 1..=6 {
        let app_id = if sequence == 3 { "other" } else { "chat" };
        let frame = MessageFrame {
            sequence,
            app_id: app_id.into(),
            payload: Bytes::from(format!("m{sequence}")),
            ..MessageFrame::default()
        };
        assert_eq!(
            receiver.accept_incoming(&a, frame).expect("accept"),
            Incoming::Stored
        );
    }
    let first = receiver.inbox_after("chat", None, 2).expect("inbox");
    assert_eq!(payloads(&first), vec!["m1", "m2"]);
    // Reading does not remove: the next read goes on after the cursor.
    let rest = receiver
        .inbox_after("chat", Some(first[1].inbox_id), 10)
        .expect("inbox");
    assert_eq!(payloads(&rest), vec!["m4", "m5", "m6"]);
    assert!(
        receiver
            .inbox_after("chat", Some(rest[2].inbox_id), 10)
            .expect("inbox")
            .is_empty()
    );
    assert_eq!(receiver.inbox_count("chat").expect("count"), 5);

    // Nothing is removed before an acknowledgement; then only up to the mark.
    assert_eq!(receiver.remove_acked("chat", u64::MAX).expect("remove"), 0);
    assert_eq!(receiver.acked("chat").expect("mark"), None);
    let mark = rest[0].inbox_id;
    assert_eq!(receiver.mark_acked("chat", mark).expect("ack"), mark);
    assert_eq!(
        receiver.mark_acked("chat", first[0].inbox_id).expect("ack"),
        mark,
        "a mark never goes down"
    );
    // Removing up to an id below the mark keeps the rest for a stream that lags.
    assert_eq!(
        receiver
            .remove_acked("chat", first[0].inbox_id)
            .expect("remove"),
        1
    );
    // Acknowledging m4 takes m1, m2 and m4, and nothing of another app.
    assert_eq!(receiver.remove_acked("chat", u64::MAX).expect("remove"), 2);
    assert_eq!(receiver.remove_acked("chat", u64::MAX).expect("remove"), 0);
    assert_eq!(receiver.inbox_count("chat").expect("count"), 2);
    assert_eq!(receiver.inbox_count("other").expect("count"), 1);
    let again = receiver.inbox_after("chat", None, 10).expect("inbox");
    assert_eq!(payloads(&again), vec!["m5", "m6"]);
    assert_eq!(again[0].inbox_id, rest[1].inbox_id, "ids are kept");
    receiver.mark_acked("chat", u64::MAX).expect("ack");
    assert_eq!(receiver.remove_acked("chat", u64::MAX).expect("remove"), 2);
    // An acknowledgement past every message stored does not cover the ones to come.
    let frame = MessageFrame {
        sequence: 7,
        app_id: "chat".into(),
        payload: Bytes::from_static(b"m7"),
        ..MessageFrame::default()
    };
    assert_eq!(
        receiver.accept_incoming(&a, frame).expect("accept"),
        Incoming::Stored
    );
    let mark = receiver.acked("chat").expect("mark").expect("a mark");
    let later = receiver.inbox_after("chat", Some(mark), 10).expect("inbox");
    assert_eq!(payloads(&later), vec!["m7"]);
    assert_eq!(receiver.inbox_count("chat").expect("count"), 1);
}

#[test]
fn oversize_payloads_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, mailbox) = open(&dir, "a");
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

#[test]
fn unreadable_entries_are_dropped_and_counted_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, mailbox) = open(&dir, "a");
    let b = PeerId::random();
    for _ in 0..2 {
        mailbox
            .enqueue(&b, "chat", Bytes::from_static(b"x"))
            .expect("enqueue");
    }
    store
        .insert(OUTBOX, &raw_outbox_key(&b, 1, "chat"), b"\xff\xff\xff")
        .expect("spoil");
    let waiting = mailbox.outgoing(&b, "chat", 10).expect("outgoing");
    assert_eq!(
        waiting.iter().map(|m| m.frame.sequence).collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(mailbox.outbox_count("chat").expect("count"), 1);

    mailbox.register_app("chat").expect("register");
    let frame = MessageFrame {
        sequence: 1,
        app_id: "chat".into(),
        ..MessageFrame::default()
    };
    mailbox
        .accept_incoming(&PeerId::random(), frame)
        .expect("accept");
    let entry = store
        .scan_prefix(INBOX, b"i", 10)
        .expect("scan")
        .remove(0)
        .0;
    store.insert(INBOX, &entry, b"\xff\xff\xff").expect("spoil");
    assert!(
        mailbox
            .inbox_after("chat", None, 10)
            .expect("inbox")
            .is_empty()
    );
    assert_eq!(mailbox.inbox_count("chat").expect("count"), 0);
}

#[test]
fn a_sender_that_lost_its_store_is_not_taken_for_a_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, receiver) = open(&dir, "b");
    receiver.register_app("chat").expect("register");
    let (a, b) = (PeerId::random(), PeerId::random());

    let (store, sender) = open(&dir, "a");
    let epoch = sender
        .enqueue(&b, "chat", Bytes::new())
        .expect("enqueue")
        .epoch;
    assert_ne!(epoch, 0);
    for sequence in 1..=2 {
        let frame = sender
            .enqueue(&b, "chat", Bytes::from(format!("old {sequence}")))
            .expect("enqueue");
        receiver.accept_incoming(&a, frame).expect("accept");
    }
    // The same store keeps its epoch.
    drop(sender);
    let again = Mailbox::new(store.clone(), Quotas::default()).expect("mailbox");
    let frame = again.enqueue(&b, "chat", Bytes::new()).expect("enqueue");
    assert_eq!((frame.epoch, frame.sequence), (epoch, 4));
    drop((again, store));

    // A fresh store, same peer id: sequences start again, under a new epoch.
    let (_, reborn) = open(&dir, "a-again");
    let frame = reborn
        .enqueue(&b, "chat", Bytes::from_static(b"new 1"))
        .expect("enqueue");
    assert_eq!(frame.sequence, 1);
    assert_ne!(frame.epoch, epoch);
    assert_eq!(
        receiver.accept_incoming(&a, frame.clone()).expect("accept"),
        Incoming::Stored
    );
    assert_eq!(
        receiver.accept_incoming(&a, frame).expect("accept"),
        Incoming::Duplicate
    );
    // A sender without epochs is tracked on its own.
    let legacy = MessageFrame {
        sequence: 1,
        app_id: "chat".into(),
        ..MessageFrame::default()
    };
    assert_eq!(
        receiver.accept_incoming(&a, legacy).expect("accept"),
        Incoming::Stored
    );
    let inbox = receiver.inbox_after("chat", None, 10).expect("inbox");
    assert_eq!(
        inbox.iter().map(|m| m.sequence).collect::<Vec<_>>(),
        vec![2, 3, 1, 1]
    );
    let epochs: Vec<u64> = inbox.iter().map(|m| m.sender_epoch).collect();
    assert_eq!((epochs[0], epochs[1], epochs[3]), (epoch, epoch, 0));
    assert!(epochs[2] != epoch && epochs[2] != 0, "{epochs:?}");
}

/// The node's store, counting its flushes (each made slow enough to overlap).
struct CountingFlushes {
    inner: Arc<SledStore>,
    flushes: std::sync::atomic::AtomicUsize,
}

impl Store for CountingFlushes {
    fn get(
        &self,
        tree: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, p2pos_kernel::store::StoreError> {
        self.inner.get(tree, key)
    }
    fn insert(
        &self,
        tree: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), p2pos_kernel::store::StoreError> {
        self.inner.insert(tree, key, value)
    }
    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), p2pos_kernel::store::StoreError> {
        self.inner.remove(tree, key)
    }
    fn scan_prefix(
        &self,
        tree: &str,
        prefix: &[u8],
        limit: usize,
    ) -> Result<p2pos_kernel::store::Pairs, p2pos_kernel::store::StoreError> {
        self.inner.scan_prefix(tree, prefix, limit)
    }
    fn batch(
        &self,
        tree: &str,
        ops: Vec<p2pos_kernel::store::BatchOp>,
    ) -> Result<(), p2pos_kernel::store::StoreError> {
        self.inner.batch(tree, ops)
    }
    fn next_id(&self) -> Result<u64, p2pos_kernel::store::StoreError> {
        self.inner.next_id()
    }
    fn flush(&self) -> Result<(), p2pos_kernel::store::StoreError> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(20));
        self.inner.flush()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_flushes_share_one_and_a_later_one_still_flushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(CountingFlushes {
        inner: SledStore::open(dir.path()).expect("open"),
        flushes: Default::default(),
    });
    let mailbox = Mailbox::new(store.clone(), Quotas::default()).expect("mailbox");
    let peer = PeerId::random();
    let mut senders = tokio::task::JoinSet::new();
    for i in 0..16 {
        let mailbox = mailbox.clone();
        senders.spawn(async move {
            mailbox
                .blocking(move |m| m.enqueue(&peer, "chat", Bytes::from(format!("m{i}"))))
                .await?;
            mailbox.flush().await
        });
    }
    while let Some(done) = senders.join_next().await {
        done.expect("task").expect("written and flushed");
    }
    let shared = store.flushes.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..16).contains(&shared), "16 callers, {shared} flushes");

    // A caller after them all is covered by no flush yet: it gets one of its own.
    mailbox.flush().await.expect("flushed");
    assert_eq!(
        store.flushes.load(std::sync::atomic::Ordering::SeqCst),
        shared + 1
    );
}

#[test]
fn only_messages_to_a_peer_never_reached_expire_and_only_old_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, mailbox) = open(&dir, "a");
    let (stranger, friend) = (PeerId::random(), PeerId::random());
    for peer in [&stranger, &friend] {
        for i in 0..3 {
            mailbox
                .enqueue(peer, "chat", Bytes::from(format!("m{i}")))
                .expect("enqueue");
        }
    }
    // The friend answered one message once: it was reached.
    let first = mailbox.outgoing(&friend, "chat", 1).expect("outgoing");
    mailbox
        .remove_answered(&friend, &first[0])
        .expect("answered");
    assert!(mailbox.was_reached(&friend).expect("reached"));
    assert!(!mailbox.was_reached(&stranger).expect("reached"));

    // Nothing is older than the start of time.
    assert!(
        mailbox
            .expire_unreached(&stranger, 0, 10)
            .expect("expire")
            .is_empty()
    );
    // Everything is older than the end of time: the stranger's go, two at a time, in order.
    let expired = mailbox
        .expire_unreached(&stranger, u64::MAX, 2)
        .expect("expire");
    assert_eq!(
        expired.iter().map(|f| f.sequence).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        mailbox
            .expire_unreached(&stranger, u64::MAX, 2)
            .expect("expire")
            .len(),
        1
    );
    assert!(!mailbox.has_outgoing(&stranger).expect("outgoing"));
    // The friend's wait for as long as it takes.
    assert!(
        mailbox
            .expire_unreached(&friend, u64::MAX, 10)
            .expect("expire")
            .is_empty()
    );
    assert_eq!(mailbox.outbox_count("chat").expect("count"), 2);
}
