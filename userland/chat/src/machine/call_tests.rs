//! Unit tests of the chat machine's calls: commands, signals between chats, and the voice
//! plug-in's reports.

use super::*;
use crate::plugin::{Report, Stats};

const ME: &str = "12D3KooWMe";
const BOB: &str = "12D3KooWBob";
const CALL: &str = "\n{\"type\":\"call\"}";
const HANGUP: &str = "\n{\"type\":\"hangup\"}";

fn print(text: &str) -> Action {
    Action::Print(text.to_owned())
}

/// Bob's chat's `hello`.
const BOB_HELLO: &str = "\n{\"type\":\"hello\",\"tag\":\"bob-1\"}";

/// The `hello` a chat writes first on `link` (tags are fixed in tests).
fn hello(link: Link) -> String {
    format!("\n{{\"type\":\"hello\",\"tag\":\"0000000000000000-{link}\"}}")
}

fn write(link: Link, text: &str) -> Action {
    Action::Write {
        link,
        text: text.to_owned(),
    }
}

/// A dialer connected to Bob whose channel waits for a frame.
fn connected() -> (Chat, Link) {
    let mut chat = Chat::new(Some(BOB.to_owned()));
    chat.registered(ME.to_owned());
    let link = 1;
    chat.opened(link, BOB.into());
    assert_eq!(chat.writer_ready(link), vec![write(link, &hello(link))]);
    chat.frame(link, BOB_HELLO);
    chat.writer_ready(link);
    (chat, link)
}

/// A connected chat that placed a call to Bob, its plug-in started and the signal written.
fn calling() -> (Chat, Link) {
    let (mut chat, link) = connected();
    assert_eq!(
        chat.line("/call".into()),
        vec![
            print("* calling 3KooWBob"),
            Action::StartCall {
                peer: BOB.into(),
                node: ME.into(),
                answer: false
            }
        ]
    );
    assert_eq!(chat.call_started(), vec![write(link, CALL)]);
    (chat, link)
}

fn stats(sent: u64, received: u64) -> Report {
    Report::Stats(Stats {
        sent,
        received,
        lost: 0,
        jitter_ms: 0.3,
        wav: Some("/h/call.wav".into()),
    })
}

#[test]
fn caller_starts_its_plug_in_then_signals_and_hangs_up() {
    let (mut chat, link) = calling();
    assert_eq!(
        chat.call_report(stats(50, 0)),
        vec![print(
            "* voice: sent 50 frames, received 0 frames, lost 0, jitter 0.3 ms, recording /h/call.wav"
        )]
    );
    assert!(chat.call_report(stats(50, 0)).is_empty(), "same line once");
    assert_eq!(
        chat.call_report(Report::Error {
            message: "ignored a bad audio frame".into()
        }),
        vec![print("* voice: ignored a bad audio frame")]
    );
    assert_eq!(
        chat.line("/hangup".into()),
        vec![print("* hanging up"), Action::HangUp]
    );
    assert_eq!(chat.writer_ready(link), vec![write(link, HANGUP)]);
    assert_eq!(
        chat.line("/hangup".into()),
        vec![print("* hanging up already")]
    );
    chat.call_report(Report::Ended {
        reason: "hung up".into(),
    });
    assert_eq!(
        chat.call_ended(Ok(())),
        vec![print("* call ended (hung up)")]
    );
    assert_eq!(
        chat.line("/hangup".into()),
        vec![print("* no call to hang up")]
    );
    // Text lines go on as before.
    chat.writer_ready(link);
    assert_eq!(chat.line("/calls".into()), vec![write(link, "/calls")]);
}

#[test]
fn callee_answers_with_its_plug_in_and_hangs_up_when_told() {
    let mut chat = Chat::new(None);
    chat.registered(ME.into());
    chat.incoming(9, BOB.into());
    chat.opened(1, BOB.into());
    assert_eq!(
        chat.frame(1, CALL),
        vec![
            print("* incoming call from 3KooWBob"),
            Action::StartCall {
                peer: BOB.into(),
                node: ME.into(),
                answer: true
            }
        ]
    );
    assert!(chat.frame(1, CALL).is_empty(), "the same call again");
    assert!(chat.call_started().is_empty(), "the callee signals nothing");
    assert_eq!(
        chat.frame(1, HANGUP),
        vec![print("* 3KooWBob hung up"), Action::HangUp]
    );
    assert_eq!(chat.call_ended(Ok(())), vec![print("* call ended")]);
}

#[test]
fn calls_need_a_live_peer_and_one_at_a_time() {
    let mut listener = Chat::new(None);
    listener.registered(ME.into());
    assert_eq!(
        listener.line("/call".into()),
        vec![print("* cannot call: no peer yet")]
    );

    let mut dialer = Chat::new(Some(BOB.to_owned()));
    dialer.registered(ME.into());
    dialer.open_failed(1, Failure::Retry("offline".into()));
    assert_eq!(
        dialer.line("/call".into()),
        vec![print("* cannot call: 12D3KooWBob is not connected")]
    );

    let (mut chat, _) = calling();
    assert_eq!(
        chat.line("/call".into()),
        vec![print("* cannot call: already in a call with 3KooWBob")]
    );
}

#[test]
fn a_plug_in_that_cannot_start_is_reported_and_the_chat_goes_on() {
    let (mut chat, link) = connected();
    chat.line("/call".into());
    assert_eq!(
        chat.call_ended(Err(
            "no program p2p-voice in the plug-in directory (not found)".into()
        )),
        vec![print(
            "* cannot call: no program p2p-voice in the plug-in directory (not found)"
        )],
        "the peer never heard of it"
    );
    assert_eq!(chat.line("hi".into()), vec![write(link, "hi")]);
}

#[test]
fn a_callee_that_cannot_answer_tells_the_caller() {
    let mut chat = Chat::new(None);
    chat.registered(ME.into());
    chat.incoming(9, BOB.into());
    chat.opened(1, BOB.into());
    chat.writer_ready(1);
    chat.writer_ready(1);
    chat.frame(1, CALL);
    assert_eq!(
        chat.call_ended(Err("not installed".into())),
        vec![
            print("* cannot answer the call from 3KooWBob: not installed"),
            write(
                1,
                "\n{\"type\":\"hangup\",\"reason\":\"cannot answer: not installed\"}"
            )
        ]
    );
}

#[test]
fn caller_hears_a_callee_that_failed() {
    let (mut chat, link) = calling();
    assert_eq!(
        chat.frame(
            link,
            "\n{\"type\":\"hangup\",\"reason\":\"cannot answer: not installed\"}"
        ),
        vec![
            print("* 3KooWBob hung up: cannot answer: not installed"),
            Action::HangUp
        ]
    );
}

#[test]
fn a_second_call_is_refused_as_busy() {
    let (mut chat, link) = calling();
    chat.writer_ready(link);
    // Bob called at the same time (crossed calls): both sides refuse, both calls end.
    assert_eq!(
        chat.frame(link, CALL),
        vec![
            print("* missed a call from 3KooWBob: already in a call"),
            write(link, "\n{\"type\":\"hangup\",\"reason\":\"busy\"}")
        ]
    );
    assert_eq!(
        chat.frame(link, "\n{\"type\":\"hangup\",\"reason\":\"busy\"}"),
        vec![print("* 3KooWBob hung up: busy"), Action::HangUp]
    );
}

#[test]
fn a_call_signal_without_a_channel_hangs_up_the_call() {
    let (mut chat, link) = connected();
    chat.line("/call".into());
    chat.closed(link);
    assert_eq!(
        chat.call_started(),
        vec![
            print("* cannot call: 3KooWBob is not connected"),
            Action::HangUp
        ]
    );
    assert_eq!(chat.call_ended(Ok(())), vec![print("* call ended")]);
}

#[test]
fn a_plug_in_that_stops_mid_call_ends_it_on_both_sides() {
    let (mut chat, link) = calling();
    chat.writer_ready(link);
    assert_eq!(
        chat.call_ended(Err("the voice plug-in killed by SIGKILL".into())),
        vec![
            print("* call ended: the voice plug-in killed by SIGKILL"),
            write(link, HANGUP)
        ]
    );
}

#[test]
fn signals_are_not_text_and_unknown_ones_are_ignored() {
    let (mut chat, link) = connected();
    assert!(chat.frame(link, "\n{\"type\":\"video\"}").is_empty());
    assert!(chat.frame(link, HANGUP).is_empty(), "no call to hang up");
    // A signal stored by `Send` is stale: acknowledged, not shown.
    let stored = Stored {
        from: BOB.into(),
        epoch: 1,
        sequence: 1,
        inbox_id: 5,
        text: CALL.into(),
    };
    assert_eq!(chat.received(stored), vec![Action::Ack { inbox_id: 5 }]);
    assert!(prints_help(&chat.line(" /help ".into())));
}

fn prints_help(actions: &[Action]) -> bool {
    matches!(actions, [Action::Print(text)] if text.starts_with("* commands: /call"))
}

#[test]
fn eof_hangs_up_and_exits_once_the_call_is_over() {
    let (mut chat, link) = calling();
    assert_eq!(chat.eof(), vec![print("* hanging up"), Action::HangUp]);
    assert_eq!(
        chat.writer_ready(link),
        vec![
            write(link, HANGUP),
            Action::Close { link },
            Action::Arm {
                timer: Timer::Finish,
                after: FINISH_WITHIN
            }
        ]
    );
    assert!(chat.closed(link).is_empty(), "the call is still on");
    assert_eq!(
        chat.call_ended(Ok(())),
        vec![print("* call ended"), Action::Exit]
    );
}
