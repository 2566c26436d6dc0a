//! The inbox's quotas, per-(sender, app) dedupe and its compaction, messages for apps not
//! registered here, and the outbox's per-app queues.

use std::{collections::HashSet, sync::Arc};

use bytes::Bytes;
use libp2p::PeerId;
use p2pos_kernel::{Store, store::SledStore};
use p2pos_proto::wire::v1::MessageFrame;
use prost::Message;

use super::{
    INBOX, Incoming, Mailbox, OUTBOX, Quotas, Usage, dedupe::MAX_MARKS_PER_PEER,
    outbox::legacy_outbox_key,
};

fn quotas() -> Quotas {
    Quotas {
        app: Usage {
            messages: 10,
            bytes: 1000,
        },
        peer: Usage {
            messages: 6,
            bytes: 600,
        },
        peer_app: Usage {
            messages: 3,
            bytes: 300,
        },
        unclaimed: Usage {
            messages: 4,
            bytes: 400,
        },
        ..Quotas::default()
    }
}

fn open(dir: &tempfile::TempDir, quotas: Quotas) -> (Arc<SledStore>, Arc<Mailbox>) {
    let store = SledStore::open(dir.path()).expect("open");
    let mailbox = Mailbox::new(store.clone(), quotas).expect("mailbox");
    (store, mailbox)
}

fn frame(sequence: u64, app_id: &str, size: usize) -> MessageFrame {
    MessageFrame {
        sequence,
        app_id: app_id.into(),
        payload: Bytes::from(vec![b'x'; size]),
        epoch: 7,
        ..MessageFrame::default()
    }
}

fn offer(mailbox: &Mailbox, from: &PeerId, frame: MessageFrame) -> Incoming {
    mailbox.accept_incoming(from, frame).expect("accept")
}

fn is_app_full(incoming: &Incoming) -> bool {
    matches!(incoming, Incoming::AppFull(_))
}

/// Acknowledges and removes everything `app` holds.
fn read_all(mailbox: &Mailbox, app: &str) {
    mailbox.mark_acked(app, u64::MAX).expect("ack");
    mailbox.remove_acked(app, u64::MAX).expect("remove");
}

#[test]
fn quotas_per_sender_and_app_refuse_only_what_is_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, mailbox) = open(&dir, quotas());
    for app in ["a", "b", "c"] {
        mailbox.register_app(app).expect("register");
    }
    let (alice, bob) = (PeerId::random(), PeerId::random());

    // Alice fills her quota for app a: the 4th is refused for that app only.
    for sequence in 1..=3 {
        assert_eq!(
            offer(&mailbox, &alice, frame(sequence, "a", 10)),
            Incoming::Stored
        );
    }
    let refused = offer(&mailbox, &alice, frame(4, "a", 10));
    assert!(is_app_full(&refused), "{refused:?}");
    let Incoming::AppFull(reason) = refused else {
        unreachable!()
    };
    assert!(
        reason.contains("quota per sending peer and app"),
        "{reason}"
    );
    // Her messages to b still go in, after the refused one (ordering is per app).
    for sequence in 5..=7 {
        assert_eq!(
            offer(&mailbox, &alice, frame(sequence, "b", 10)),
            Incoming::Stored
        );
    }
    // Six held from her in all: the next, for any app, is over her quota as a sender.
    let Incoming::SenderFull(reason) = offer(&mailbox, &alice, frame(8, "c", 10)) else {
        panic!("over the sender's quota");
    };
    assert!(reason.contains("quota per sending peer"), "{reason}");
    assert_eq!(mailbox.held_from(&alice).expect("held").messages, 6);
    // Bob is not held back by Alice.
    assert_eq!(offer(&mailbox, &bob, frame(1, "a", 10)), Incoming::Stored);

    // Bytes count too: one large message fits an empty quota, the next does not.
    let carol = PeerId::random();
    assert_eq!(
        offer(&mailbox, &carol, frame(1, "c", 290)),
        Incoming::Stored
    );
    assert!(is_app_full(&offer(&mailbox, &carol, frame(2, "c", 20))));
    assert_eq!(
        offer(&mailbox, &carol, frame(3, "b", 20)),
        Incoming::Stored,
        "another app of the same sender"
    );

    // App a reads: Alice's refused message goes in now, once; a repeat of it is a duplicate.
    read_all(&mailbox, "a");
    assert_eq!(mailbox.held_from(&alice).expect("held").messages, 3);
    assert_eq!(offer(&mailbox, &alice, frame(4, "a", 10)), Incoming::Stored);
    assert_eq!(
        offer(&mailbox, &alice, frame(4, "a", 10)),
        Incoming::Duplicate
    );
    // A repeat of a message of b stored after it is a duplicate too; c's next is new.
    assert_eq!(
        offer(&mailbox, &alice, frame(6, "b", 10)),
        Incoming::Duplicate
    );
    assert_eq!(offer(&mailbox, &alice, frame(8, "c", 10)), Incoming::Stored);
    assert_eq!(mailbox.inbox_usage("a").expect("usage").messages, 1);
    assert_eq!(
        mailbox.inbox_usage("b").expect("usage"),
        Usage {
            messages: 4,
            bytes: 50
        }
    );

    // The app's own quota, all senders together.
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, mailbox) = open(
        &dir,
        Quotas {
            app: Usage {
                messages: 2,
                bytes: 1000,
            },
            ..quotas()
        },
    );
    mailbox.register_app("a").expect("register");
    for peer in [PeerId::random(), PeerId::random()] {
        assert_eq!(offer(&mailbox, &peer, frame(1, "a", 1)), Incoming::Stored);
    }
    let Incoming::AppFull(reason) = offer(&mailbox, &PeerId::random(), frame(1, "a", 1)) else {
        panic!("over the app's quota");
    };
    assert!(reason.contains("quota per app"), "{reason}");
}

#[test]
fn apps_not_registered_are_taken_alike_and_held_within_their_own_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let quotas = Quotas {
        peer: Usage {
            messages: 20,
            bytes: 2000,
        },
        ..quotas()
    };
    let (_, mailbox) = open(&dir, quotas);
    mailbox.register_app("real").expect("register");
    let prober = PeerId::random();
    // The same answers, message for message, for an app that exists and one that does not.
    let mut answers = Vec::new();
    for (app, first) in [("real", 1), ("ghost", 10)] {
        let got: Vec<String> = (0..4)
            .map(|i| format!("{:?}", offer(&mailbox, &prober, frame(first + i, app, 10))))
            .collect();
        answers.push(got.join(",").replace("real", "X").replace("ghost", "X"));
    }
    assert_eq!(answers[0], answers[1]);
    assert!(
        answers[0].starts_with("Stored,Stored,Stored,AppFull"),
        "{}",
        answers[0]
    );
    // Not an app id at all: refused for good (that tells nothing about any app).
    assert_eq!(
        offer(&mailbox, &prober, frame(20, "not an app id", 1)),
        Incoming::UnknownApp
    );

    // Held for apps not registered, all senders together: past the bound the oldest goes.
    let others: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
    for (i, peer) in others.iter().enumerate() {
        let app = format!("ghost{i}");
        assert_eq!(offer(&mailbox, peer, frame(1, &app, 10)), Incoming::Stored);
    }
    let held = mailbox.unclaimed_usage().expect("usage");
    assert_eq!(held.messages, 4, "bounded: {held:?}");
    assert_eq!(mailbox.inbox_count("ghost").expect("count"), 1);
    assert_eq!(mailbox.held_from(&prober).expect("held").messages, 4);

    // An app that registers gets what was held for it.
    mailbox.register_app("ghost2").expect("register");
    assert_eq!(mailbox.unclaimed_usage().expect("usage").messages, 3);
    let got = mailbox.inbox_after("ghost2", None, 10).expect("inbox");
    assert_eq!(got.len(), 1);
    // The rest expire in time; the claimed one stays.
    assert_eq!(mailbox.expire_unclaimed(u64::MAX).expect("expire"), 3);
    assert_eq!(mailbox.unclaimed_usage().expect("usage"), Usage::default());
    assert_eq!(mailbox.inbox_count("ghost2").expect("count"), 1);
    assert_eq!(mailbox.inbox_count("ghost0").expect("count"), 0);
    assert_eq!(mailbox.held_from(&others[0]).expect("held").messages, 0);
}

#[test]
fn dedupe_marks_are_compacted_and_bounded_per_sender() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, mailbox) = open(&dir, Quotas::default());
    mailbox.register_app("a").expect("register");
    mailbox.register_app("b").expect("register");
    let sender = PeerId::random();
    // Sequences alternate between two apps; each frame says everything below it was answered.
    for sequence in 1..=100 {
        let app = if sequence % 2 == 0 { "a" } else { "b" };
        let frame = MessageFrame {
            answered_below: sequence,
            ..frame(sequence, app, 1)
        };
        assert_eq!(offer(&mailbox, &sender, frame), Incoming::Stored);
    }
    // Only the marks at or above the lowest still waiting are kept: here, the last one's.
    assert_eq!(mailbox.mark_count(&sender).expect("marks"), (1, 1));
    // A repeat of the last message is still a duplicate.
    let repeat = MessageFrame {
        answered_below: 100,
        ..frame(100, "a", 1)
    };
    assert_eq!(offer(&mailbox, &sender, repeat), Incoming::Duplicate);

    // A sender that makes up epochs (or never says what was answered) keeps at most
    // MAX_MARKS_PER_PEER marks; another sender's are untouched.
    let honest = PeerId::random();
    assert_eq!(offer(&mailbox, &honest, frame(1, "a", 1)), Incoming::Stored);
    let forger = PeerId::random();
    for epoch in 0..(3 * MAX_MARKS_PER_PEER as u64) {
        let frame = MessageFrame {
            epoch: 1000 + epoch,
            ..frame(1, "a", 0)
        };
        assert_eq!(offer(&mailbox, &forger, frame), Incoming::Stored);
        read_all(&mailbox, "a");
    }
    let (all, of_forger) = mailbox.mark_count(&forger).expect("marks");
    assert_eq!(of_forger, MAX_MARKS_PER_PEER);
    assert_eq!(all, 1 + 1 + MAX_MARKS_PER_PEER as u64);
    assert_eq!(
        offer(&mailbox, &honest, frame(1, "a", 1)),
        Incoming::Duplicate
    );
    // Index and count agree with the marks.
    let marks = store
        .scan_prefix(INBOX, b"d", usize::MAX)
        .expect("scan")
        .len();
    let ages = store
        .scan_prefix(INBOX, b"t", usize::MAX)
        .expect("scan")
        .len();
    assert_eq!((marks as u64, ages as u64), (all, all));

    // Unused too long: dropped.
    assert_eq!(mailbox.expire_marks(u64::MAX).expect("expire"), all);
    assert_eq!(mailbox.mark_count(&honest).expect("marks"), (0, 0));
}

#[test]
fn the_outbox_sends_in_order_past_held_apps_and_moves_the_old_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, mailbox) = open(&dir, Quotas::default());
    let peer = PeerId::random();
    for i in 0..40u64 {
        let app = if i % 4 == 0 { "slow" } else { "fast" };
        mailbox
            .enqueue(&peer, app, Bytes::from(format!("m{i}")))
            .expect("enqueue");
    }
    let batch = mailbox
        .next_batch(&peer, &HashSet::new(), 8)
        .expect("batch");
    let sequences: Vec<u64> = batch.messages.iter().map(|m| m.frame.sequence).collect();
    // Four from each app, in sequence order, cut where a queue's unread rest could come first.
    assert_eq!(sequences, [1, 2, 3, 4, 5, 6]);
    let held = HashSet::from(["slow".to_owned()]);
    let batch = mailbox.next_batch(&peer, &held, 100).expect("batch");
    assert!(batch.messages.iter().all(|m| m.frame.app_id == "fast"));
    assert_eq!(batch.messages.len(), 30);
    assert_eq!(batch.lowest_waiting, 1, "held messages still wait");

    // An outbox of the layout before per-app queues is moved at open.
    drop(mailbox);
    let old = MessageFrame {
        sequence: 41,
        app_id: "old".into(),
        payload: Bytes::from_static(b"from before"),
        ..MessageFrame::default()
    };
    store
        .insert(
            OUTBOX,
            &legacy_outbox_key(&peer, 41, "old"),
            &old.encode_to_vec(),
        )
        .expect("insert");
    store
        .insert(OUTBOX, &legacy_outbox_key(&peer, 42, "bad"), b"\xff\xff")
        .expect("insert");
    let mailbox = Mailbox::new(store.clone(), Quotas::default()).expect("reopen");
    assert!(
        store
            .scan_prefix(OUTBOX, b"m", 10)
            .expect("scan")
            .is_empty()
    );
    let moved = mailbox.outgoing(&peer, "old", 10).expect("outgoing");
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].frame.payload, Bytes::from_static(b"from before"));
    assert!(
        mailbox
            .apps_waiting(&peer)
            .expect("apps")
            .contains(&"old".to_owned())
    );
}
