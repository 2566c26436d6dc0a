//! The idempotency keys of `Send` against a real store: a retry answers the first message, a
//! reused key is refused, and the bounds refuse new keys without ever dropping a kept one.

use std::sync::Arc;

use bytes::Bytes;
use libp2p::PeerId;
use p2pos_kernel::{events::now_ms, store::SledStore};

use super::{Enqueued, KeyLimits, Mailbox, Quotas};
use crate::Error;

fn open(dir: &tempfile::TempDir, limits: KeyLimits) -> Arc<Mailbox> {
    let store = SledStore::open(&dir.path().join("store")).expect("open");
    let quotas = Quotas {
        send_keys: limits,
        ..Quotas::default()
    };
    Mailbox::new(store, quotas).expect("mailbox")
}

const LIMITS: KeyLimits = KeyLimits {
    ttl_ms: 3_600_000,
    per_app: 3,
    total: 5,
};

fn send(
    mailbox: &Mailbox,
    peer: &PeerId,
    app: &str,
    payload: &'static [u8],
    key: &[u8],
) -> Result<Enqueued, Error> {
    mailbox.enqueue_once(peer, app, Bytes::from_static(payload), Some(key))
}

fn new_id(enqueued: Enqueued) -> u64 {
    match enqueued {
        Enqueued::New(frame) => frame.message_id,
        Enqueued::Again(record) => panic!("expected a new message, got {record:?}"),
    }
}

fn again_id(enqueued: Enqueued) -> u64 {
    match enqueued {
        Enqueued::Again(record) => record.message_id,
        Enqueued::New(frame) => panic!("expected the first message again, got {frame:?}"),
    }
}

#[test]
fn a_retry_answers_the_first_message_across_a_restart_and_a_changed_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = PeerId::random();
    let first = {
        let mailbox = open(&dir, LIMITS);
        let first = new_id(send(&mailbox, &peer, "shop", b"order 7", b"k7").expect("send"));
        let again = again_id(send(&mailbox, &peer, "shop", b"order 7", b"k7").expect("retry"));
        assert_eq!(again, first);
        assert_eq!(mailbox.outbox_count("shop").expect("count"), 1, "one copy");
        mailbox.store.flush().expect("flush");
        first
    };
    // Reopened, as after a restart: the key still names the message.
    let mailbox = open(&dir, LIMITS);
    let again = again_id(send(&mailbox, &peer, "shop", b"order 7", b"k7").expect("retry"));
    assert_eq!(again, first);
    assert_eq!(mailbox.outbox_count("shop").expect("count"), 1);

    // The same key with another payload or peer is refused, saying what differs.
    for (to, payload, differs) in [
        (peer, &b"order 8"[..], "payload"),
        (PeerId::random(), &b"order 7"[..], "peer"),
        (PeerId::random(), &b"other"[..], "peer and payload"),
    ] {
        let err = mailbox
            .enqueue_once(&to, "shop", Bytes::copy_from_slice(payload), Some(b"k7"))
            .expect_err("a reused key");
        match &err {
            Error::SendKeyReused {
                message_id,
                differs: said,
                ..
            } => {
                assert_eq!((*message_id, *said), (first, differs));
            }
            other => panic!("expected SendKeyReused, got {other:?}"),
        }
        let status = p2pos_kernel::ServiceError::from(err);
        assert_eq!(status.code, p2pos_kernel::ErrorCode::FailedPrecondition);
        assert!(
            status.message.contains("idempotency key"),
            "{}",
            status.message
        );
    }
    // Keys are per app id: a helper's key of the same bytes names its own message.
    let helper = new_id(send(&mailbox, &peer, "shop:h", b"order 8", b"k7").expect("send"));
    assert_ne!(helper, first);
    // A key is 1 to 64 bytes.
    for bad in [&b""[..], &[b'x'; 65][..]] {
        let err = mailbox
            .enqueue_once(&peer, "shop", Bytes::from_static(b"x"), Some(bad))
            .expect_err("a bad key");
        assert!(
            matches!(err, Error::InvalidSendKey { len } if len == bad.len()),
            "{err:?}"
        );
    }
    assert!(send(&mailbox, &peer, "shop", b"x", &[b'x'; 64]).is_ok());
}

#[test]
fn the_bounds_refuse_new_keys_but_never_drop_one_within_its_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mailbox = open(&dir, LIMITS);
    let peer = PeerId::random();
    // An app and its helper share the app's budget of 3.
    let ids = [
        new_id(send(&mailbox, &peer, "shop", b"1", b"a").expect("send")),
        new_id(send(&mailbox, &peer, "shop:h", b"2", b"b").expect("send")),
        new_id(send(&mailbox, &peer, "shop", b"3", b"c").expect("send")),
    ];
    assert_eq!(mailbox.send_key_count("shop").expect("count"), (3, 3));
    let err = send(&mailbox, &peer, "shop:h", b"4", b"d").expect_err("full");
    assert!(
        matches!(err, Error::SendKeysFull { limit: 3, .. }),
        "{err:?}"
    );
    let status = p2pos_kernel::ServiceError::from(err);
    assert_eq!(status.code, p2pos_kernel::ErrorCode::ResourceExhausted);
    assert!(status.message.contains("1 h"), "{}", status.message);
    // Full, yet every kept key is still answered, and a message without a key still goes.
    assert_eq!(
        again_id(send(&mailbox, &peer, "shop", b"1", b"a").expect("retry")),
        ids[0]
    );
    assert_eq!(
        again_id(send(&mailbox, &peer, "shop:h", b"2", b"b").expect("retry")),
        ids[1]
    );
    assert!(matches!(
        mailbox.enqueue_once(&peer, "shop", Bytes::from_static(b"no key"), None),
        Ok(Enqueued::New(_))
    ));
    // The node-wide bound (5): two more of another app, then none.
    send(&mailbox, &peer, "blog", b"1", b"a").expect("send");
    send(&mailbox, &peer, "blog", b"2", b"b").expect("send");
    let err = send(&mailbox, &peer, "blog", b"3", b"c").expect_err("node full");
    assert!(
        matches!(err, Error::SendKeysFull { limit: 5, .. }),
        "{err:?}"
    );
    // Yet an app holding no key gets its share (5 / 3 apps = 1): two apps at the node-wide
    // bound do not lock the others out.
    send(&mailbox, &peer, "news", b"1", b"a").expect("an even share");
    let err = send(&mailbox, &peer, "news", b"2", b"b").expect_err("past its share");
    assert!(
        matches!(err, Error::SendKeysFull { limit: 5, .. }),
        "{err:?}"
    );

    // Within the window nothing is forgotten; past it, everything is, and there is room again.
    let now = now_ms();
    assert_eq!(mailbox.expire_send_keys(now - 1_000).expect("sweep"), 0);
    assert_eq!(mailbox.send_key_count("shop").expect("count"), (3, 6));
    // Past it, a key whose message still waits in the outbox is kept (for another window):
    // a retry must not queue a second copy of a message not yet sent.
    let past = now + LIMITS.ttl_ms;
    assert_eq!(mailbox.expire_send_keys(past).expect("sweep"), 0);
    assert_eq!(mailbox.send_key_count("shop").expect("count"), (3, 6));
    // Once the peer has them, they go at the end of that window.
    for app in ["shop", "shop:h", "blog", "news"] {
        for m in mailbox.outgoing(&peer, app, 100).expect("outgoing") {
            mailbox.remove_answered(&peer, &m).expect("answered");
        }
    }
    assert_eq!(mailbox.expire_send_keys(past).expect("sweep"), 0);
    assert_eq!(
        mailbox
            .expire_send_keys(past + LIMITS.ttl_ms + 1)
            .expect("sweep"),
        6
    );
    assert_eq!(mailbox.send_key_count("shop").expect("count"), (0, 0));
    // A forgotten key names nothing: the same key is a new message.
    let fresh = new_id(send(&mailbox, &peer, "shop", b"1", b"a").expect("send"));
    assert!(!ids.contains(&fresh));
}
