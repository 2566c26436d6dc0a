//! Unit tests of confirmed lines: what a broken channel sends again, what the peer's chat shows
//! once, and lines that wait in the node's outbox ahead of the channel.

use super::*;

const ME: &str = "12D3KooWMe";
const BOB: &str = "12D3KooWBob";

fn write(link: Link, text: &str) -> Action {
    Action::Write {
        link,
        text: text.to_owned(),
    }
}

fn send(text: &str) -> Action {
    Action::Send {
        peer: BOB.into(),
        text: text.to_owned(),
    }
}

fn hello(link: Link) -> String {
    signals::encode_line(&signals::LineSignal::Hello {
        tag: format!("0000000000000000-{link}"),
    })
}

fn got(upto: u64) -> String {
    signals::encode_line(&signals::LineSignal::Got { upto })
}

fn resent(link: Link, n: u64, text: &str) -> String {
    signals::encode_line(&signals::LineSignal::Resent {
        tag: format!("0000000000000000-{link}"),
        n,
        text: text.into(),
    })
}

fn prints(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Print(text) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn bob_hello() -> String {
    signals::encode_line(&signals::LineSignal::Hello {
        tag: "bob-1".into(),
    })
}

/// A dialer connected to Bob, whose chat said hello: lines `texts` written on link 1.
fn wrote(texts: &[&str]) -> Chat {
    let mut chat = Chat::new(Some(BOB.to_owned()));
    chat.registered(ME.to_owned());
    chat.opened(1, BOB.into());
    chat.frame(1, &bob_hello());
    assert_eq!(
        chat.writer_ready(1),
        vec![write(1, &hello(1))],
        "the hello first"
    );
    for text in texts {
        chat.line((*text).into());
    }
    for text in texts {
        assert_eq!(chat.writer_ready(1), vec![write(1, text)]);
    }
    chat
}

#[test]
fn lines_a_broken_channel_did_not_confirm_go_again_first_in_order_and_named() {
    let mut chat = wrote(&["one", "two", "three"]);
    assert!(chat.frame(1, &got(1)).is_empty());
    chat.line("four".into());
    let broke = chat.closed(1);
    assert_eq!(
        prints(&broke)[0],
        "* the channel to 12D3KooWBob broke before 2 lines reached it for sure; sending them again"
    );
    assert!(broke.contains(&send(&resent(1, 2, "two"))), "{broke:?}");
    let rest: Vec<Action> = [
        chat.send_done(Ok(Sent::default())),
        chat.send_done(Ok(Sent::default())),
    ]
    .concat();
    assert_eq!(rest, vec![send(&resent(1, 3, "three")), send("four")]);
}

#[test]
fn the_peer_s_chat_confirms_what_it_showed_and_shows_a_resent_line_once() {
    let mut chat = Chat::new(None);
    chat.registered(ME.into());
    chat.incoming(5, BOB.into());
    chat.opened(1, BOB.into());
    assert!(chat.frame(1, &bob_hello()).is_empty());
    assert_eq!(prints(&chat.frame(1, "first")), vec!["3KooWBob> first"]);
    assert_eq!(prints(&chat.frame(1, "second")), vec!["3KooWBob> second"]);
    // Its input asks for frames: its own hello, then the confirmation of both.
    assert_eq!(chat.writer_ready(1), vec![write(1, &hello(1))]);
    assert_eq!(chat.writer_ready(1), vec![write(1, &got(2))]);
    // The channel broke before the confirmation got there: Bob's chat sends both again, by
    // `Send`; only what was not shown is.
    chat.closed(1);
    let again = |n: u64, text: &str| Stored {
        from: BOB.into(),
        epoch: 1,
        sequence: n,
        inbox_id: n,
        text: signals::encode_line(&signals::LineSignal::Resent {
            tag: "bob-1".into(),
            n,
            text: text.into(),
        }),
    };
    assert_eq!(
        chat.received(again(2, "second")),
        vec![Action::Ack { inbox_id: 2 }]
    );
    assert_eq!(
        prints(&chat.received(again(3, "third"))),
        vec!["3KooWBob> third"]
    );
}

#[test]
fn a_peer_that_says_no_hello_is_taken_for_an_older_chat_and_the_user_is_told() {
    let mut chat = Chat::new(Some(BOB.to_owned()));
    chat.registered(ME.to_owned());
    chat.opened(1, BOB.into());
    assert_eq!(chat.writer_ready(1), vec![write(1, &hello(1))]);
    chat.writer_ready(1);
    assert!(chat.line("one".into()).is_empty(), "waits for Bob's hello");
    let timed_out = chat.timer(Timer::Hello);
    assert!(
        prints(&timed_out)[0].contains("does not confirm lines"),
        "{timed_out:?}"
    );
    assert!(timed_out.contains(&write(1, "one")), "{timed_out:?}");
    // Not kept: nothing to send again (an older chat would drop a resent line, and show a
    // plain one twice if it had it).
    let broke = chat.closed(1);
    assert!(!broke.contains(&send("one")), "{broke:?}");
}

#[test]
fn lines_wait_behind_a_queued_one_and_the_user_hears_why() {
    let mut chat = Chat::new(Some(BOB.to_owned()));
    chat.registered(ME.to_owned());
    let link = 1;
    chat.open_failed(link, Failure::Retry("offline".into()));
    chat.line("big".into());
    let waiting = Sent {
        message_id: 7,
        delivered: false,
        waiting: "a message of 204900 bytes cannot cross the relayed connection".into(),
    };
    let told = chat.send_done(Ok(waiting));
    assert_eq!(
        prints(&told),
        vec![
            "* your line waits in your node: a message of 204900 bytes cannot cross the relayed connection"
        ]
    );
    // A channel opens meanwhile: the next line still goes by `Send`, behind the queued one.
    let link2 = 2;
    chat.timer(Timer::Redial);
    chat.opened(link2, BOB.into());
    assert_eq!(chat.writer_ready(link2), vec![write(link2, &hello(link2))]);
    chat.frame(link2, &bob_hello());
    chat.writer_ready(link2);
    assert_eq!(chat.line("small".into()), vec![send("small")]);
    // The same reason again (an event) is not printed twice.
    assert!(chat.message_waiting(7, "again").is_empty());
    chat.send_done(Ok(Sent {
        message_id: 8,
        ..Sent::default()
    }));
    chat.message_delivered(7);
    assert_eq!(
        chat.line("later".into()),
        vec![send("later")],
        "8 is still queued"
    );
    chat.send_done(Ok(Sent::default()));
    chat.message_delivered(8);
    chat.message_delivered(0);
    // Now the channel takes lines again.
    assert_eq!(chat.line("live".into()), vec![write(link2, "live")]);
}

#[test]
fn a_delivery_reported_before_its_send_answered_does_not_hold_lines_back() {
    let (mut chat, link) = (Chat::new(Some(BOB.to_owned())), 1);
    chat.registered(ME.to_owned());
    chat.open_failed(link, Failure::Retry("offline".into()));
    chat.line("one".into());
    chat.message_delivered(9);
    chat.send_done(Ok(Sent {
        message_id: 9,
        ..Sent::default()
    }));
    assert!(chat.confirm.outbox.is_empty());
}
