//! The group room's state, free of I/O: it takes typed lines, messages from the room's
//! subscription and the outcome of each `Groups.Publish`, and answers with [`Action`]s.
//!
//! Guarantees:
//! - Typed lines are published one at a time, in order (the node numbers a sender's messages in
//!   the order it takes them); one the node did not take for a passing reason goes again.
//! - A line typed here is not printed again when the node hands it back to this chat's own
//!   subscription (the node delivers a node's own posts to its local followers): a message of
//!   this node whose number a `Publish` of this chat returned is skipped. One of this node that
//!   arrives while a `Publish` is in flight waits for its answer, since it may be that line.
//!   Messages of this node published by another app or process are printed.
//! - Each message is printed at most once per run, though a new subscription (after the node
//!   restarted, say) replays what was printed already: a sender's messages come in order, so
//!   anything at or below the highest number printed for that sender is skipped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use p2pos_proto::group::v1::TopicMessage;

use crate::peer;

/// Largest line published (the node's limit for a group message).
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// Wait before handing a line to `Publish` again after a passing failure.
pub(crate) const REPUBLISH_AFTER: Duration = Duration::from_secs(2);

/// What `/help` prints.
const HELP: &str = "* commands: /quit (leave the room), /help; other lines go to every member";

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Print one line on stdout.
    Print(String),
    /// Call `Groups.Publish` with this text; report with [`Room::published`].
    Publish(String),
    /// Call [`Room::republish`] after this delay.
    ArmRepublish(Duration),
    /// Exit with success.
    Exit,
    /// Exit with `error: <message>`.
    Fail(String),
}

/// Why a `Publish` failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PublishFailure {
    /// The node may take it later (it restarts, it is busy).
    Retry(String),
    /// The node refuses this line (too large, say): it is dropped.
    Refused(String),
    /// The node refuses every line (not a member, no such group).
    Fatal(String),
}

/// The room.
#[derive(Debug)]
pub(crate) struct Room {
    /// This node's peer id.
    own_id: String,
    /// When the chat started (ms since the Unix epoch): messages sent before it are marked as
    /// earlier.
    started_ms: u64,
    /// Typed lines not yet handed to `Publish`, oldest first.
    queue: VecDeque<String>,
    /// The line handed to `Publish` and not yet answered.
    in_flight: Option<String>,
    /// Waiting for [`Room::republish`].
    paused: bool,
    /// A passing failure was reported and no success since.
    failing: bool,
    /// The numbers `Publish` returned to this chat: its own lines, not printed again. One per
    /// typed line.
    own_seqs: HashSet<u64>,
    /// Messages of this node that came while a `Publish` was in flight.
    deferred: Vec<TopicMessage>,
    /// The highest number printed (or skipped as this chat's own) per sender.
    printed: HashMap<String, u64>,
    /// Stdin ended or `/quit`.
    eof: bool,
    /// `Exit` was emitted.
    exited: bool,
}

impl Room {
    /// The room of a node whose peer id is `own_id`, joined at `started_ms`.
    pub(crate) fn new(own_id: String, started_ms: u64) -> Room {
        Room {
            own_id,
            started_ms,
            queue: VecDeque::new(),
            in_flight: None,
            paused: false,
            failing: false,
            own_seqs: HashSet::new(),
            deferred: Vec::new(),
            printed: HashMap::new(),
            eof: false,
            exited: false,
        }
    }

    /// A line was typed (without its newline). `/quit` and `/help` are commands; an empty
    /// line is not sent.
    pub(crate) fn line(&mut self, text: String) -> Vec<Action> {
        let mut out = Vec::new();
        if self.eof {
            return out;
        }
        match text.trim() {
            "/quit" => return self.eof(),
            "/help" => out.push(Action::Print(HELP.into())),
            "/call" | "/hangup" => out.push(Action::Print(
                "* calls are between two peers: start p2p-chat with a PEER for one".into(),
            )),
            "" => {}
            _ if text.len() > MAX_LINE => out.push(Action::Print(
                "* line too long (at most 64 KiB in a group room); not sent".into(),
            )),
            _ => {
                self.queue.push_back(text);
                self.pump(&mut out);
            }
        }
        out
    }

    /// Stdin ended (or `/quit`): exit once every typed line is out.
    pub(crate) fn eof(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.eof = true;
        self.pump(&mut out);
        out
    }

    /// A message came on the room's subscription, at `now_ms`.
    pub(crate) fn message(&mut self, message: TopicMessage, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if message.sender == self.own_id
            && !self.own_seqs.contains(&message.seq)
            && self.in_flight.is_some()
        {
            self.deferred.push(message);
            return out;
        }
        self.show(message, now_ms, &mut out);
        out
    }

    /// The `Publish` in flight was answered (`Ok`: the line's number).
    pub(crate) fn published(
        &mut self,
        result: Result<u64, PublishFailure>,
        now_ms: u64,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        match result {
            Ok(seq) => {
                self.own_seqs.insert(seq);
                self.in_flight = None;
                self.failing = false;
            }
            Err(PublishFailure::Retry(reason)) => {
                if let Some(text) = self.in_flight.take() {
                    self.queue.push_front(text);
                }
                self.paused = true;
                out.push(Action::ArmRepublish(REPUBLISH_AFTER));
                if !self.failing {
                    self.failing = true;
                    out.push(Action::Print(format!(
                        "* the node did not take the line ({reason}); retrying"
                    )));
                }
            }
            Err(PublishFailure::Refused(reason)) => {
                if let Some(text) = self.in_flight.take() {
                    out.push(Action::Print(format!("* not sent ({reason}): {text}")));
                }
            }
            Err(PublishFailure::Fatal(reason)) => {
                self.exited = true;
                out.push(Action::Fail(format!("cannot post in the room: {reason}")));
                return out;
            }
        }
        for message in std::mem::take(&mut self.deferred) {
            self.show(message, now_ms, &mut out);
        }
        self.pump(&mut out);
        out
    }

    /// The wait after a passing failure is over.
    pub(crate) fn republish(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.paused = false;
        self.pump(&mut out);
        out
    }

    /// Prints `message` unless it is this chat's own line or printed already.
    fn show(&mut self, message: TopicMessage, now_ms: u64, out: &mut Vec<Action>) {
        let last = self.printed.entry(message.sender.clone()).or_default();
        if message.seq <= *last {
            return;
        }
        *last = message.seq;
        if message.sender == self.own_id && self.own_seqs.contains(&message.seq) {
            return;
        }
        out.push(Action::Print(self.format(&message, now_ms)));
    }

    /// `<short id>> text`, marked `[earlier, 5m ago]` when sent before the chat started. By
    /// its sending time rather than by `replayed`: the node hands on the posts it catches up
    /// from other members when it starts following a topic as if live.
    fn format(&self, message: &TopicMessage, now_ms: u64) -> String {
        let who = peer::short(&message.sender);
        let text = one_line(&message.data);
        if message.sent_ms < self.started_ms {
            let ago = ago(now_ms.saturating_sub(message.sent_ms));
            format!("[earlier, {ago}] {who}> {text}")
        } else {
            format!("{who}> {text}")
        }
    }

    /// Hands the next line to `Publish` if none is in flight; exits once stdin ended and every
    /// line is out.
    fn pump(&mut self, out: &mut Vec<Action>) {
        if self.exited {
            return;
        }
        if self.in_flight.is_none()
            && !self.paused
            && let Some(text) = self.queue.pop_front()
        {
            self.in_flight = Some(text.clone());
            out.push(Action::Publish(text));
        }
        if self.eof && self.queue.is_empty() && self.in_flight.is_none() {
            self.exited = true;
            out.push(Action::Exit);
        }
    }
}

/// The data as text on one line: not UTF-8 is replaced, control characters are escaped.
fn one_line(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c.is_control() {
            true => out.extend(c.escape_default()),
            false => out.push(c),
        }
    }
    out
}

/// `just now`, `5m ago`, `2h 5m ago`.
fn ago(ms: u64) -> String {
    let minutes = ms / 60_000;
    match minutes {
        0 => "just now".to_owned(),
        1..60 => format!("{minutes}m ago"),
        _ => format!("{}h {}m ago", minutes / 60, minutes % 60),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ME: &str = "12D3KooWMeMeMeMe";
    const BOB: &str = "12D3KooWBobBobBo";
    const START: u64 = 1_000_000_000;

    fn msg(sender: &str, seq: u64, text: &str, replayed: bool, sent_ms: u64) -> TopicMessage {
        TopicMessage {
            group: "g".into(),
            app: "chat".into(),
            topic: "room".into(),
            sender: sender.into(),
            seq,
            sent_ms,
            data: text.as_bytes().to_vec().into(),
            replayed,
        }
    }

    fn live(sender: &str, seq: u64, text: &str) -> TopicMessage {
        msg(sender, seq, text, false, START + 10)
    }

    fn prints(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Print(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lines_go_out_one_at_a_time_in_order() {
        let mut room = Room::new(ME.into(), START);
        assert_eq!(room.line("one".into()), [Action::Publish("one".into())]);
        assert!(room.line("two".into()).is_empty());
        assert!(room.line("".into()).is_empty(), "an empty line is not sent");
        assert_eq!(
            room.published(Ok(1), START),
            [Action::Publish("two".into())]
        );
        assert!(room.eof().is_empty(), "waits for the line in flight");
        assert_eq!(room.published(Ok(2), START), [Action::Exit]);
    }

    #[test]
    fn own_lines_are_not_printed_twice_whichever_comes_first() {
        let mut room = Room::new(ME.into(), START);
        room.line("mine".into());
        // The node hands the post to this chat's subscription before Publish answers.
        assert!(room.message(live(ME, 1, "mine"), START).is_empty());
        assert!(room.published(Ok(1), START).is_empty());
        // Or after.
        room.line("again".into());
        assert!(room.published(Ok(2), START).is_empty());
        assert!(room.message(live(ME, 2, "again"), START).is_empty());
        // Another app of this node posting in the room is shown, with this node's id.
        assert_eq!(
            prints(&room.message(live(ME, 3, "from p2pctl"), START)),
            ["MeMeMeMe> from p2pctl"]
        );
    }

    #[test]
    fn this_nodes_other_posts_wait_for_the_publish_in_flight() {
        let mut room = Room::new(ME.into(), START);
        room.line("typed".into());
        assert!(room.message(live(ME, 1, "other"), START).is_empty());
        assert!(room.message(live(ME, 2, "typed"), START).is_empty());
        let out = room.published(Ok(2), START);
        assert_eq!(prints(&out), ["MeMeMeMe> other"]);
    }

    #[test]
    fn members_lines_print_once_and_replays_are_marked() {
        let mut room = Room::new(ME.into(), START);
        let old = msg(BOB, 1, "before you came", true, START - 5 * 60_000);
        assert_eq!(
            prints(&room.message(old.clone(), START)),
            ["[earlier, 5m ago] BobBobBo> before you came"]
        );
        assert_eq!(
            prints(&room.message(live(BOB, 2, "hi\nall"), START)),
            ["BobBobBo> hi\\nall"]
        );
        // A new subscription replays both: nothing is printed again.
        assert!(room.message(old, START).is_empty());
        assert!(room.message(live(BOB, 2, "hi"), START).is_empty());
        // Caught up after the start (a gap filled): not marked.
        let late = msg(BOB, 3, "late", true, START + 1);
        assert_eq!(prints(&room.message(late, START + 2)), ["BobBobBo> late"]);
        // Sent before the start but handed on as live (caught up as the node began following).
        let carol = msg(
            "12D3KooWCarolCar",
            4,
            "old news",
            false,
            START - 2 * 3_600_000,
        );
        assert_eq!(
            prints(&room.message(carol, START)),
            ["[earlier, 2h 0m ago] CarolCar> old news"]
        );
    }

    #[test]
    fn failures_retry_drop_or_end() {
        let mut room = Room::new(ME.into(), START);
        room.line("a".into());
        let out = room.published(Err(PublishFailure::Retry("busy".into())), START);
        assert_eq!(
            out,
            [
                Action::ArmRepublish(REPUBLISH_AFTER),
                Action::Print("* the node did not take the line (busy); retrying".into())
            ]
        );
        assert!(room.line("b".into()).is_empty(), "paused");
        assert_eq!(room.republish(), [Action::Publish("a".into())]);
        let out = room.published(Err(PublishFailure::Refused("too big".into())), START);
        assert_eq!(
            out,
            [
                Action::Print("* not sent (too big): a".into()),
                Action::Publish("b".into())
            ]
        );
        let out = room.published(Err(PublishFailure::Fatal("not a member".into())), START);
        assert_eq!(
            out,
            [Action::Fail("cannot post in the room: not a member".into())]
        );
    }

    #[test]
    fn commands() {
        let mut room = Room::new(ME.into(), START);
        assert_eq!(prints(&room.line(" /help ".into())), [HELP]);
        assert_eq!(room.line("/call".into()).len(), 1);
        assert!(
            room.line("x".repeat(MAX_LINE + 1))
                .iter()
                .all(|a| matches!(a, Action::Print(t) if t.contains("too long")))
        );
        assert_eq!(room.line("/quit".into()), [Action::Exit]);
        assert!(room.line("after".into()).is_empty());
    }

    #[test]
    fn ages() {
        assert_eq!(ago(59_999), "just now");
        assert_eq!(ago(60_000), "1m ago");
        assert_eq!(ago(61 * 60_000), "1h 1m ago");
    }
}
