//! Unit tests of the chat state machine: scripted sequences of inputs and the actions they give.

use super::*;

const ME: &str = "12D3KooWMe";
const BOB: &str = "12D3KooWBob";

/// A `Send` the peer's node stored at once.
fn delivered() -> Sent {
    Sent {
        message_id: 1,
        delivered: true,
        waiting: String::new(),
    }
}

/// Bob's chat's `hello`: lines may be written to it from then on.
const BOB_HELLO: &str = "\n{\"type\":\"hello\",\"tag\":\"bob-1\"}";

/// What `opened` gives for the first channel to Bob: the notice, and the wait for his hello.
fn connected_to(peer: &str) -> Vec<Action> {
    vec![
        print(&format!("* connected to {peer}")),
        Action::Arm {
            timer: Timer::Hello,
            after: HELLO_WITHIN,
        },
    ]
}

/// The `hello` a chat writes first on `link` (tags are fixed in tests).
fn hello(link: Link) -> Action {
    Action::Write {
        link,
        text: format!("\n{{\"type\":\"hello\",\"tag\":\"0000000000000000-{link}\"}}"),
    }
}

fn print(text: &str) -> Action {
    Action::Print(text.to_owned())
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

fn opened_link(actions: &[Action]) -> Link {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Open { link, .. } | Action::Accept { link, .. } => Some(*link),
            _ => None,
        })
        .expect("an open or accept")
}

/// A dialer whose first open attempt is in flight.
fn dialer() -> (Chat, Link) {
    let mut chat = Chat::new(Some(BOB.to_owned()));
    let actions = chat.registered(ME.to_owned());
    assert_eq!(
        actions,
        vec![Action::Open {
            link: 1,
            peer: BOB.into()
        }]
    );
    (chat, 1)
}

#[test]
fn dialer_connects_and_writes_lines_as_frames() {
    let (mut chat, link) = dialer();
    assert!(chat.line("early".into()).is_empty(), "waits for the open");
    assert_eq!(chat.opened(link, BOB.into()), connected_to(BOB));
    assert_eq!(chat.writer_ready(link), vec![hello(link)]);
    assert!(
        chat.writer_ready(link).is_empty(),
        "lines wait for Bob's hello"
    );
    assert_eq!(
        chat.frame(link, BOB_HELLO),
        vec![Action::Write {
            link,
            text: "early".into()
        }]
    );
    assert!(chat.line("second".into()).is_empty(), "writer busy");
    assert_eq!(
        chat.writer_ready(link),
        vec![Action::Write {
            link,
            text: "second".into()
        }]
    );
    assert_eq!(
        chat.frame(link, "hi there"),
        vec![print("3KooWBob> hi there")]
    );
}

#[test]
fn offline_peer_gets_lines_by_send_then_channel() {
    let (mut chat, link) = dialer();
    chat.line("one".into());
    let actions = chat.open_failed(link, Failure::Retry("app not listening".into()));
    assert_eq!(
        actions,
        vec![
            print("* 12D3KooWBob is offline; your lines will be delivered when it returns"),
            Action::Arm {
                timer: Timer::Redial,
                after: REDIAL_AFTER
            },
            Action::Send {
                peer: BOB.into(),
                text: "one".into()
            },
        ]
    );
    assert!(chat.line("two".into()).is_empty(), "one Send at a time");
    let retry = chat.timer(Timer::Redial);
    let link2 = opened_link(&retry);
    // The second attempt fails quietly.
    let again = chat.open_failed(link2, Failure::Retry("still offline".into()));
    assert!(prints(&again).is_empty());
    assert_eq!(
        chat.send_done(Ok(delivered())),
        vec![Action::Send {
            peer: BOB.into(),
            text: "two".into()
        }]
    );
    let link3 = opened_link(&chat.timer(Timer::Redial));
    chat.writer_ready(link3);
    assert_eq!(
        chat.opened(link3, BOB.into()),
        [connected_to(BOB), vec![hello(link3)]].concat(),
        "no line while a Send is outstanding"
    );
    chat.line("three".into());
    chat.frame(link3, BOB_HELLO);
    assert!(chat.send_done(Ok(delivered())).is_empty(), "writer busy");
    assert_eq!(
        chat.writer_ready(link3),
        vec![Action::Write {
            link: link3,
            text: "three".into()
        }]
    );
}

#[test]
fn channel_close_falls_back_to_send_without_loss() {
    let (mut chat, link) = dialer();
    chat.opened(link, BOB.into());
    assert_eq!(chat.writer_ready(link), vec![hello(link)]);
    chat.frame(link, BOB_HELLO);
    chat.writer_ready(link);
    // The writer was ready but its stream is gone when the frame is handed over.
    let write = chat.line("lost?".into());
    assert_eq!(
        write,
        vec![Action::Write {
            link,
            text: "lost?".into()
        }]
    );
    assert!(chat.frame_rejected(link, "lost?".into()).is_empty());
    let actions = chat.closed(link);
    assert_eq!(
        actions,
        vec![
            print("* 12D3KooWBob went offline; your lines will be delivered when it returns"),
            Action::Arm {
                timer: Timer::Redial,
                after: REDIAL_AFTER
            },
            Action::Send {
                peer: BOB.into(),
                text: "lost?".into()
            },
        ]
    );
}

#[test]
fn send_retries_transient_failures_and_fails_on_fatal() {
    let (mut chat, link) = dialer();
    chat.open_failed(link, Failure::Retry("offline".into()));
    chat.line("x".into());
    let actions = chat.send_done(Err(Failure::Retry("node busy".into())));
    assert_eq!(
        prints(&actions),
        vec!["* the node did not take the line (node busy); retrying"]
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Send { .. })));
    assert_eq!(
        chat.timer(Timer::Resend),
        vec![Action::Send {
            peer: BOB.into(),
            text: "x".into()
        }]
    );
    chat.line("y".into());
    assert_eq!(
        chat.send_done(Err(Failure::Refused("chat never ran there".into()))),
        vec![
            print("* not delivered (chat never ran there): x"),
            Action::Send {
                peer: BOB.into(),
                text: "y".into()
            }
        ]
    );
    let fatal = chat.send_done(Err(Failure::Fatal("bad peer".into())));
    assert_eq!(
        fatal,
        vec![Action::Fail("cannot send to 12D3KooWBob: bad peer".into())]
    );
}

#[test]
fn eof_waits_for_every_line_then_closes_and_exits() {
    let (mut chat, link) = dialer();
    chat.open_failed(link, Failure::Retry("offline".into()));
    chat.line("a".into());
    assert!(!chat.eof().contains(&Action::Exit), "a is in flight");
    let link2 = opened_link(&chat.timer(Timer::Redial));
    let done = chat.send_done(Ok(delivered()));
    assert_eq!(
        done,
        vec![
            Action::Close { link: link2 },
            Action::Arm {
                timer: Timer::Finish,
                after: FINISH_WITHIN
            }
        ]
    );
    assert_eq!(
        chat.open_failed(link2, Failure::Retry("closed".into())),
        vec![Action::Exit]
    );
}

#[test]
fn eof_with_open_channel_half_closes_and_exits_on_close() {
    let (mut chat, link) = dialer();
    chat.opened(link, BOB.into());
    chat.line("bye".into());
    assert_eq!(chat.writer_ready(link), vec![hello(link)]);
    chat.frame(link, BOB_HELLO);
    chat.writer_ready(link);
    // Bob's chat showed it.
    assert!(
        chat.frame(link, "\n{\"type\":\"got\",\"upto\":1}")
            .is_empty()
    );
    assert_eq!(
        chat.eof(),
        vec![
            Action::Close { link },
            Action::Arm {
                timer: Timer::Finish,
                after: FINISH_WITHIN
            }
        ]
    );
    assert!(!chat.takes_frames(link));
    assert_eq!(chat.closed(link), vec![Action::Exit], "no offline notice");
}

#[test]
fn listener_waits_accepts_and_falls_back_to_its_last_peer() {
    let mut chat = Chat::new(None);
    assert_eq!(
        chat.registered(ME.into()),
        vec![print("* waiting for a chat (peer id 12D3KooWMe)")]
    );
    assert_eq!(chat.line("hello?".into()), vec![print("* no peer yet")]);
    let accept = chat.incoming(42, BOB.into());
    assert_eq!(
        accept,
        vec![Action::Accept {
            link: 1,
            channel_id: 42
        }]
    );
    assert_eq!(
        chat.incoming(43, "12D3KooWEve".into()),
        vec![print("* ignored a chat request from 12D3KooWEve")]
    );
    assert_eq!(chat.opened(1, BOB.into()), connected_to(BOB));
    let closed = chat.closed(1);
    assert_eq!(
        closed,
        vec![print(
            "* 12D3KooWBob went offline; your lines will be delivered when it returns"
        )],
        "a listener does not redial"
    );
    assert_eq!(
        chat.line("later".into()),
        vec![Action::Send {
            peer: BOB.into(),
            text: "later".into()
        }]
    );
    // A new peer replaces the closed one.
    let accept = chat.incoming(44, "12D3KooWEve".into());
    let link = opened_link(&accept);
    assert_eq!(
        chat.opened(link, "12D3KooWEve".into()),
        connected_to("12D3KooWEve")
    );
}

#[test]
fn listener_eof_without_peer_exits_at_once() {
    let mut chat = Chat::new(None);
    chat.registered(ME.into());
    assert_eq!(chat.eof(), vec![Action::Exit]);
}

#[test]
fn crossed_opens_keep_the_channel_of_the_smaller_peer_id() {
    // We are "12D3KooWMe" < "12D3KooWZed": both sides keep the channel we opened.
    let zed = "12D3KooWZed";
    let mut chat = Chat::new(Some(zed.into()));
    let ours = opened_link(&chat.registered(ME.into()));
    let theirs = opened_link(&chat.incoming(7, zed.into()));
    assert_eq!(chat.opened(theirs, zed.into()), connected_to(zed));
    assert_eq!(
        chat.opened(ours, zed.into()),
        vec![
            Action::Close { link: theirs },
            Action::Arm {
                timer: Timer::Hello,
                after: HELLO_WITHIN
            }
        ]
    );
    assert!(chat.closed(theirs).is_empty(), "switch is silent");
    assert_eq!(chat.writer_ready(ours), vec![hello(ours)]);
    chat.frame(ours, BOB_HELLO);
    chat.writer_ready(ours);
    assert_eq!(
        chat.line("x".into()),
        vec![Action::Write {
            link: ours,
            text: "x".into()
        }]
    );

    // Seen from the other side, where we ("12D3KooWAaa") are the smaller id.
    let mut other = Chat::new(Some("12D3KooWAaa".into()));
    let own = opened_link(&other.registered(zed.into()));
    let remote = opened_link(&other.incoming(8, "12D3KooWAaa".into()));
    other.opened(own, "12D3KooWAaa".into());
    assert_eq!(
        other.opened(remote, "12D3KooWAaa".into()),
        vec![
            Action::Close { link: own },
            Action::Arm {
                timer: Timer::Hello,
                after: HELLO_WITHIN
            }
        ],
        "the remote's channel wins over ours"
    );
}

#[test]
fn dialer_ignores_other_peers() {
    let (mut chat, _) = dialer();
    assert_eq!(
        prints(&chat.incoming(1, "12D3KooWEve".into())),
        vec!["* ignored a chat request from 12D3KooWEve"]
    );
}

#[test]
fn fatal_open_failure_exits() {
    let (mut chat, link) = dialer();
    assert_eq!(
        chat.open_failed(link, Failure::Fatal("invalid peer".into())),
        vec![Action::Fail(
            "cannot chat with 12D3KooWBob: invalid peer".into()
        )]
    );
}

#[test]
fn received_messages_are_printed_with_a_short_sender() {
    let mut chat = Chat::new(None);
    assert_eq!(
        chat.received(stored(BOB, 7, 1, 10, "stored hello")),
        vec![
            print("3KooWBob> stored hello"),
            Action::Ack { inbox_id: 10 }
        ]
    );
}

fn stored(from: &str, epoch: u64, sequence: u64, inbox_id: u64, text: &str) -> Stored {
    Stored {
        from: from.into(),
        epoch,
        sequence,
        inbox_id,
        text: text.into(),
    }
}

#[test]
fn messages_handed_over_again_are_acknowledged_but_printed_once() {
    let mut chat = Chat::new(None);
    chat.received(stored(BOB, 7, 1, 10, "one"));
    chat.received(stored(BOB, 7, 2, 11, "two"));
    // A new `Receive` starts again from the oldest message not acknowledged.
    assert_eq!(
        chat.received(stored(BOB, 7, 2, 11, "two")),
        vec![Action::Ack { inbox_id: 11 }]
    );
    assert_eq!(
        prints(&chat.received(stored(BOB, 7, 3, 12, "three"))),
        vec!["3KooWBob> three"]
    );
    // Another sender, or Bob after losing his store (a new epoch), counts on its own.
    assert_eq!(
        prints(&chat.received(stored(ME, 7, 1, 13, "mine"))),
        vec!["D3KooWMe> mine"]
    );
    assert_eq!(
        prints(&chat.received(stored(BOB, 8, 1, 14, "reborn"))),
        vec!["3KooWBob> reborn"]
    );
}

#[test]
fn empty_lines_are_frames_and_oversized_lines_are_not_sent() {
    let (mut chat, link) = dialer();
    chat.opened(link, BOB.into());
    assert_eq!(chat.writer_ready(link), vec![hello(link)]);
    chat.frame(link, BOB_HELLO);
    chat.writer_ready(link);
    assert_eq!(
        chat.line(String::new()),
        vec![Action::Write {
            link,
            text: String::new()
        }]
    );
    assert_eq!(
        chat.line("x".repeat(MAX_LINE + 1)),
        vec![print("* line too long (at most 1 MiB); not sent")]
    );
}

#[test]
fn chatting_with_the_own_peer_id_is_refused() {
    let mut chat = Chat::new(Some(ME.to_owned()));
    let actions = chat.registered(ME.to_owned());
    assert!(
        matches!(&actions[..], [Action::Fail(why)] if why.contains("this node's own peer id")),
        "{actions:?}"
    );
    // A ticket whose peer id the chat cannot read leads to the node itself: refused once open.
    let mut chat = Chat::new(Some("p2posnotaticket".to_owned()));
    let link = opened_link(&chat.registered(ME.to_owned()));
    let actions = chat.opened(link, ME.into());
    assert!(
        matches!(&actions[..], [Action::Fail(why)] if why.contains("this node itself")),
        "{actions:?}"
    );
}

#[test]
fn an_unknown_peer_is_named_unknown_and_the_lines_wait() {
    let (mut chat, link) = dialer();
    chat.line("one".into());
    let actions = chat.open_failed(
        link,
        Failure::Unknown("not found: peer 12D3KooWBob is unknown here".into()),
    );
    let printed = prints(&actions);
    assert_eq!(printed.len(), 1, "{actions:?}");
    assert!(
        printed[0].contains("is unknown to your node"),
        "{printed:?}"
    );
    assert!(printed[0].contains("ticket"), "{printed:?}");
    assert!(
        actions.contains(&Action::Send {
            peer: BOB.into(),
            text: "one".into()
        }),
        "the line waits in the node: {actions:?}"
    );
    assert!(
        actions.contains(&Action::Arm {
            timer: Timer::Redial,
            after: REDIAL_AFTER
        }),
        "{actions:?}"
    );
}
