//! Lines that are never lost when a channel breaks, and never shown twice.
//!
//! A line handed to a channel has left this chat, but not necessarily reached the peer: a
//! channel that breaks (a relay's circuit that ended, a connection that dropped) loses what was
//! on the way. So each chat confirms the lines it was shown: it says `hello` with a tag as its
//! first frame on a channel (its lines there are numbered from 1 under it), writes no line
//! there before the peer's `hello` came, and answers each line it shows with `got` (how many it
//! has shown). When a channel breaks, the lines written on
//! it and not confirmed go again, first, in order: by `Apps.Send` (store-and-forward, which the
//! node delivers exactly once, in order) or by the next channel, as `resent` signals that name
//! the line (tag and number), so that the peer's chat drops a copy of a line it showed already
//! (its confirmation was what got lost).
//!
//! Why this and not just a notice of which lines may be lost: a messenger's user expects every
//! line to arrive, once and in order, without retyping it; a list of lines that may or may not
//! have arrived leaves the user to guess and to resend by hand, which shows the lines the peer
//! did get twice. So the chat resends, and tells the user only that it does.
//!
//! A peer whose chat says no `hello` within [`HELLO_WITHIN`] is taken for one that does not
//! confirm (an older chat): lines go to it unconfirmed, and the user is told that lines lost
//! with a broken channel cannot be known.
//!
//! Also here: the order of lines across both ways. A line `Send` answered `QUEUED` sits in the
//! node's outbox (the peer is offline, or the line waits for a direct connection because a
//! relay's circuits are too small for it); later lines go by `Send` too, behind it, until the
//! node says it was delivered (a `MessageDelivered` event): a channel must not overtake it.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

#[cfg(doc)]
use super::HELLO_WITHIN;
use super::signals::{self, LineSignal};
use super::{Action, Chat, Link, MAX_LINE};
use crate::peer;

/// Lines written on a channel and not confirmed, at most: a peer's chat that says `hello` and
/// then confirms nothing is not kept up with past that (flow control keeps an honest one far
/// below it).
const MAX_UNCONFIRMED: usize = 16 * 1024;
/// Tags of the peer's channels remembered, with how many of their lines were shown.
const MAX_TAGS: usize = 256;
/// Ids of delivered messages remembered before their `Send` answered.
const MAX_EARLY: usize = 256;

/// One channel's lines, both ways.
#[derive(Debug, Default)]
pub(super) struct LinkLines {
    /// This chat's tag on the channel, said in `hello` before its first line.
    tag: String,
    hello_sent: bool,
    /// Lines written so far.
    written: u64,
    /// Lines written and not confirmed: their number and the frame as written.
    unconfirmed: VecDeque<(u64, String)>,
    /// The peer's chat confirms lines (it said `hello`).
    peer_confirms: bool,
    /// Lines are not kept: the peer's chat does not confirm them (it said no `hello` in time),
    /// or stopped confirming.
    untracked: bool,
    /// The peer's tag, once it said `hello`, and how many of its lines came since.
    tag_in: Option<String>,
    received: u64,
    /// A `got` is owed to the peer.
    ack_due: bool,
}

impl LinkLines {
    pub(super) fn new(tag: String) -> LinkLines {
        LinkLines {
            tag,
            ..LinkLines::default()
        }
    }

    /// A frame is owed to the peer: the `hello`, or a `got`.
    pub(super) fn owes_frame(&self) -> bool {
        !self.hello_sent || self.ack_due
    }
}

/// The chat's memory of lines across channels and messages.
#[derive(Debug, Default)]
pub(super) struct Confirmations {
    /// How many lines of each of the peer's tags were shown.
    shown: HashMap<String, u64>,
    /// Lines `Send` answered `QUEUED` whose delivery the node has not reported yet.
    pub(super) outbox: BTreeSet<u64>,
    /// Messages reported delivered before their `Send` answered.
    delivered_early: VecDeque<u64>,
    /// Messages whose wait was told.
    waits_told: HashSet<u64>,
}

impl Confirmations {
    /// Line `n` of `tag` came: whether it is new (and so to be shown).
    fn first_time(&mut self, tag: &str, n: u64) -> bool {
        let shown = self.shown.get(tag).copied().unwrap_or(0);
        if n <= shown {
            return false;
        }
        if self.shown.len() >= MAX_TAGS && !self.shown.contains_key(tag) {
            self.shown.clear();
        }
        self.shown.insert(tag.to_owned(), n);
        true
    }
}

/// What a frame to write on a channel is, for its numbering.
fn is_line(text: &str) -> bool {
    !signals::is_signal(text)
        || matches!(signals::decode_line(text), Some(LineSignal::Resent { .. }))
}

impl Chat {
    /// The next frame owed on `link` before any queued line: its `hello` (the first frame on
    /// it), or a `got`. Marks it written.
    pub(super) fn owed_frame(&mut self, link: Link) -> Option<String> {
        let lines = &mut self.channels.get_mut(&link)?.lines;
        if lines.ack_due && lines.hello_sent {
            lines.ack_due = false;
            return Some(signals::encode_line(&LineSignal::Got {
                upto: lines.received,
            }));
        }
        if !lines.hello_sent {
            lines.hello_sent = true;
            return Some(signals::encode_line(&LineSignal::Hello {
                tag: lines.tag.clone(),
            }));
        }
        None
    }

    /// The frame owed on `link` (its `hello`, a `got`), if any. Marks it written.
    pub(super) fn owed_confirmation(&mut self, link: Link) -> Option<String> {
        self.owed_frame(link)
    }

    /// Whether lines may be written on `link`: its peer said `hello`, or was taken for an
    /// older chat.
    pub(super) fn takes_lines(&self, link: Link) -> bool {
        self.channels
            .get(&link)
            .is_some_and(|c| c.lines.peer_confirms || c.lines.untracked)
    }

    /// The peer of `link` said no `hello` in time: its chat is taken for one that does not
    /// confirm lines.
    pub(super) fn no_hello(&mut self, link: Link, out: &mut Vec<Action>) {
        let label = self.label.clone();
        let Some(lines) = self.channels.get_mut(&link).map(|c| &mut c.lines) else {
            return;
        };
        if lines.peer_confirms || lines.untracked {
            return;
        }
        lines.untracked = true;
        out.push(Action::Print(format!(
            "* {label}'s chat does not confirm lines (an older p2p-chat?): if this channel \
             breaks, the lines on their way are lost"
        )));
    }

    /// `text` is being written on `link`: a line is numbered and kept until confirmed.
    pub(super) fn written(&mut self, link: Link, text: &str, out: &mut Vec<Action>) {
        if !is_line(text) {
            return;
        }
        let label = self.label.clone();
        let Some(chan) = self.channels.get_mut(&link) else {
            return;
        };
        let lines = &mut chan.lines;
        lines.written += 1;
        if lines.untracked {
            return;
        }
        lines
            .unconfirmed
            .push_back((lines.written, text.to_owned()));
        if lines.unconfirmed.len() > MAX_UNCONFIRMED {
            lines.untracked = true;
            lines.unconfirmed.clear();
            out.push(Action::Print(format!(
                "* {label}'s chat stopped confirming lines: if this channel breaks, the lines on \
                 their way are lost"
            )));
        }
    }

    /// A frame handed back unwritten: what it was is undone (see [`Chat::frame_rejected`]);
    /// answers whether it is to be queued again.
    pub(super) fn unwritten(&mut self, link: Link, text: &str) -> bool {
        let Some(lines) = self.channels.get_mut(&link).map(|c| &mut c.lines) else {
            return is_line(text) || signals::decode_line(text).is_none();
        };
        match signals::decode_line(text) {
            Some(LineSignal::Hello { .. }) => {
                lines.hello_sent = false;
                false
            }
            Some(LineSignal::Got { .. }) => {
                lines.ack_due = true;
                false
            }
            _ => {
                if is_line(text) && lines.unconfirmed.back().is_some_and(|(_, t)| t == text) {
                    lines.unconfirmed.pop_back();
                    lines.written -= 1;
                }
                true
            }
        }
    }

    /// A line signal arrived on `link`.
    pub(super) fn line_signal(&mut self, link: Link, signal: LineSignal) -> Vec<Action> {
        let mut out = Vec::new();
        let from = self.channels.get(&link).and_then(|c| c.peer.clone());
        let Some(lines) = self.channels.get_mut(&link).map(|c| &mut c.lines) else {
            return out;
        };
        match signal {
            LineSignal::Hello { tag } => {
                // From now on its lines are kept until confirmed (a late hello too).
                lines.peer_confirms = true;
                lines.untracked = false;
                lines.tag_in = Some(tag);
                lines.received = 0;
            }
            LineSignal::Got { upto } => {
                while lines.unconfirmed.front().is_some_and(|(n, _)| *n <= upto) {
                    lines.unconfirmed.pop_front();
                }
            }
            LineSignal::Resent { tag, n, text } => {
                // A line on this channel too: counted and confirmed as one.
                self.line_came(link);
                if self.confirm.first_time(&tag, n) {
                    let from = from.as_deref().unwrap_or("?");
                    out.push(Action::Print(format!("{}> {text}", peer::short(from))));
                }
            }
        }
        self.pump(&mut out);
        out
    }

    /// A line (plain or resent) came on `link`: counted, and a `got` owed.
    pub(super) fn line_came(&mut self, link: Link) {
        let Some(lines) = self.channels.get_mut(&link).map(|c| &mut c.lines) else {
            return;
        };
        lines.received += 1;
        if let Some(tag) = lines.tag_in.clone() {
            lines.ack_due = true;
            let n = lines.received;
            self.confirm.first_time(&tag, n);
        }
    }

    /// A stored message that is a resent line: shown unless it was already.
    pub(super) fn stored_resent(
        &mut self,
        from: &str,
        tag: &str,
        n: u64,
        text: &str,
    ) -> Vec<Action> {
        if self.confirm.first_time(tag, n) {
            vec![Action::Print(format!("{}> {text}", peer::short(from)))]
        } else {
            Vec::new()
        }
    }

    /// `link` is gone: the lines written on it and not confirmed go again, first, in order.
    pub(super) fn resend_unconfirmed(&mut self, link: Link, out: &mut Vec<Action>) {
        let label = self.label.clone();
        let Some(chan) = self.channels.get_mut(&link) else {
            return;
        };
        let lines = std::mem::take(&mut chan.lines.unconfirmed);
        if lines.is_empty() {
            return;
        }
        let tag = chan.lines.tag.clone();
        let count = lines.len();
        let again: Vec<String> = lines
            .into_iter()
            .map(|(n, text)| {
                if signals::is_signal(&text) {
                    // Already a resent line: it keeps its first name.
                    return text;
                }
                let resent = signals::encode_line(&LineSignal::Resent {
                    tag: tag.clone(),
                    n,
                    text: text.clone(),
                });
                // A line near the 1 MiB limit has no room for its name: it goes plain.
                if resent.len() > MAX_LINE {
                    text
                } else {
                    resent
                }
            })
            .collect();
        for text in again.into_iter().rev() {
            self.queue.push_front(text);
        }
        out.push(Action::Print(format!(
            "* the channel to {label} broke before {count} line{} reached it for sure; sending \
             {} again",
            if count == 1 { "" } else { "s" },
            if count == 1 { "it" } else { "them" },
        )));
    }

    /// The node delivered message `message_id` of this app (a `MessageDelivered` event).
    pub(crate) fn message_delivered(&mut self, message_id: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.confirm.outbox.remove(&message_id) {
            if self.confirm.delivered_early.len() >= MAX_EARLY {
                self.confirm.delivered_early.pop_front();
            }
            self.confirm.delivered_early.push_back(message_id);
        }
        self.confirm.waits_told.remove(&message_id);
        self.pump(&mut out);
        out
    }

    /// A line `Send` answered `QUEUED`: channels wait until the node delivers it.
    pub(super) fn queued(&mut self, message_id: u64, waiting: &str, out: &mut Vec<Action>) {
        if let Some(at) = self
            .confirm
            .delivered_early
            .iter()
            .position(|id| *id == message_id)
        {
            self.confirm.delivered_early.remove(at);
            return;
        }
        self.confirm.outbox.insert(message_id);
        if !waiting.is_empty() {
            self.tell_waiting(message_id, waiting, out);
        }
    }

    /// A queued line waits, for `reason` (`Send`'s answer, or a `MessageWaiting` event).
    pub(crate) fn message_waiting(&mut self, message_id: u64, reason: &str) -> Vec<Action> {
        let mut out = Vec::new();
        self.tell_waiting(message_id, reason, &mut out);
        out
    }

    fn tell_waiting(&mut self, message_id: u64, reason: &str, out: &mut Vec<Action>) {
        if self.confirm.waits_told.len() >= MAX_EARLY {
            self.confirm.waits_told.clear();
        }
        if self.confirm.waits_told.insert(message_id) {
            out.push(Action::Print(format!(
                "* your line waits in your node: {reason}"
            )));
        }
    }

    /// The node's outbox holds none of this app's messages: nothing to wait for.
    pub(crate) fn outbox_empty(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.confirm.outbox.clear();
        self.pump(&mut out);
        out
    }
}
