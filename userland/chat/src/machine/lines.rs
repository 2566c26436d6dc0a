//! The chat machine's line side: registration, typed lines, stored messages, `Send` results,
//! timers, handing lines out in order, and finishing after stdin ends.

use super::signals::{self, LineSignal};
use super::{
    Action, Chat, FINISH_WITHIN, Failure, Link, MAX_LINE, RESEND_AFTER, Sent, Stored, Timer,
};
use crate::peer;

impl Chat {
    /// The session is registered: we know our own peer id.
    pub(crate) fn registered(&mut self, own_id: String) -> Vec<Action> {
        let mut out = Vec::new();
        if self.own_id.is_some() {
            return out;
        }
        if let Some(dial) = &self.dial {
            if dial.peer_id.as_deref() == Some(own_id.as_str()) {
                out.push(Action::Fail(format!(
                    "cannot chat with {}: that is this node's own peer id; give the peer id or \
                     ticket of another node",
                    dial.arg
                )));
                return out;
            }
            self.own_id = Some(own_id);
            self.start_open(&mut out);
        } else {
            out.push(Action::Print(format!(
                "* waiting for a chat (peer id {own_id})"
            )));
            self.own_id = Some(own_id);
        }
        out
    }

    /// A line was typed (without its newline); an empty line is a frame too. `/call`,
    /// `/hangup` and `/help` are commands.
    pub(crate) fn line(&mut self, text: String) -> Vec<Action> {
        let mut out = Vec::new();
        if self.eof {
            return out;
        }
        if let Some(actions) = self.command(&text) {
            return actions;
        }
        if text.len() > MAX_LINE {
            out.push(Action::Print(
                "* line too long (at most 1 MiB); not sent".into(),
            ));
        } else if self.dial.is_none() && self.send_to.is_none() && self.current.is_none() {
            out.push(Action::Print("* no peer yet".into()));
        } else {
            self.queue.push_back(text);
            self.pump(&mut out);
        }
        out
    }

    /// Stdin ended: hang up a call, finish sending, close channels, then exit.
    pub(crate) fn eof(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.eof = true;
        self.hang_up(&mut out);
        self.pump(&mut out);
        out
    }

    /// A stored message arrived through `Apps.Receive`: printed unless it was already (or is a
    /// stale call signal), then acknowledged.
    pub(crate) fn received(&mut self, message: Stored) -> Vec<Action> {
        let Stored {
            from,
            epoch,
            sequence,
            inbox_id,
            text,
        } = message;
        let mut out = Vec::new();
        let line = format!("{}> {text}", peer::short(&from));
        let printed = self.printed.entry((from.clone(), epoch)).or_default();
        if sequence > *printed {
            *printed = sequence;
            match signals::decode_line(&text) {
                // A line first written on a channel that broke: shown unless it was.
                Some(LineSignal::Resent { tag, n, text }) => {
                    out.extend(self.stored_resent(&from, &tag, n, &text));
                }
                _ if !signals::is_signal(&text) => out.push(Action::Print(line)),
                _ => {}
            }
        }
        out.push(Action::Ack { inbox_id });
        out
    }

    /// The outstanding `Send` finished.
    pub(crate) fn send_done(&mut self, result: Result<Sent, Failure>) -> Vec<Action> {
        let mut out = Vec::new();
        match result {
            Ok(sent) => {
                self.in_flight = None;
                self.send_failing = false;
                if !sent.delivered {
                    self.queued(sent.message_id, &sent.waiting, &mut out);
                }
            }
            Err(Failure::Refused(reason)) => {
                if let Some(text) = self.in_flight.take() {
                    out.push(Action::Print(format!("* not delivered ({reason}): {text}")));
                }
            }
            Err(Failure::Retry(reason) | Failure::Unknown(reason)) => {
                if let Some(text) = self.in_flight.take() {
                    self.queue.push_front(text);
                }
                self.send_paused = true;
                out.push(Action::Arm {
                    timer: Timer::Resend,
                    after: RESEND_AFTER,
                });
                if !self.send_failing {
                    self.send_failing = true;
                    out.push(Action::Print(format!(
                        "* the node did not take the line ({reason}); retrying"
                    )));
                }
            }
            Err(Failure::Fatal(reason)) => {
                out.push(Action::Fail(format!(
                    "cannot send to {}: {reason}",
                    self.label
                )));
                return out;
            }
        }
        self.pump(&mut out);
        out
    }

    /// A timer armed by [`Action::Arm`] fired.
    pub(crate) fn timer(&mut self, timer: Timer) -> Vec<Action> {
        let mut out = Vec::new();
        match timer {
            Timer::Redial => {
                let idle = self.dial.as_ref().is_some_and(|d| d.dialing.is_none());
                if idle && self.current.is_none() && !self.finishing {
                    self.start_open(&mut out);
                }
            }
            Timer::Resend => {
                self.send_paused = false;
                self.pump(&mut out);
            }
            Timer::Hello => {
                if let Some(current) = self.current {
                    self.no_hello(current, &mut out);
                }
                self.pump(&mut out);
            }
            Timer::Finish => {
                // Channels that did not close in time: what they did not confirm goes by
                // `Send`, then the chat exits.
                self.finish_due = true;
                let links: Vec<Link> = self.channels.keys().copied().collect();
                for link in links {
                    self.resend_unconfirmed(link, &mut out);
                }
                self.pump(&mut out);
            }
        }
        out
    }

    /// Hands queued lines out, then finishes if stdin has ended and nothing is left. A call
    /// signal goes only to a live channel: without one it is dropped. Confirmations owed go
    /// first, on every channel that takes frames.
    pub(super) fn pump(&mut self, out: &mut Vec<Action>) {
        self.write_confirmations(out);
        while self.in_flight.is_none() && !self.send_paused && !self.queue.is_empty() {
            let call_signal = self
                .queue
                .front()
                .is_some_and(|t| signals::is_signal(t) && signals::decode_line(t).is_none());
            // Lines go by channel only once every line left in the node's outbox is delivered:
            // a channel must not overtake them.
            let live = self
                .current
                .filter(|c| self.channels.get(c).is_some_and(|c| !c.closing))
                .filter(|_| call_signal || self.confirm.outbox.is_empty());
            if let Some(current) = live {
                if !self.channels.get(&current).is_some_and(|c| c.writer_ready) {
                    break;
                }
                let owed = self.owed_frame(current);
                if owed.is_none() && !call_signal && !self.takes_lines(current) {
                    // Lines wait for the peer's `hello` (or for its chat to be taken for one
                    // that does not confirm).
                    break;
                }
                let text = match owed {
                    Some(owed) => owed,
                    None => match self.queue.pop_front() {
                        Some(text) => {
                            self.written(current, &text, out);
                            text
                        }
                        None => break,
                    },
                };
                if let Some(chan) = self.channels.get_mut(&current) {
                    chan.writer_ready = false;
                }
                out.push(Action::Write {
                    link: current,
                    text,
                });
                continue;
            }
            // A call signal without a live channel is dropped (a resent line is a line).
            if call_signal {
                if let Some(text) = self.queue.pop_front() {
                    self.signal_undelivered(&text, out);
                }
                continue;
            }
            if self.dial.as_ref().is_some_and(|d| !d.first_result) {
                break;
            }
            let (Some(peer), Some(text)) = (self.send_to.clone(), self.queue.pop_front()) else {
                break;
            };
            self.in_flight = Some(text.clone());
            out.push(Action::Send { peer, text });
        }
        self.finish_if_done(out);
    }

    /// Writes the confirmations owed on every channel whose input waits for a frame.
    fn write_confirmations(&mut self, out: &mut Vec<Action>) {
        let links: Vec<Link> = self
            .channels
            .iter()
            .filter(|(_, c)| c.open && c.writer_ready && !c.closing && c.lines.owes_frame())
            .map(|(link, _)| *link)
            .collect();
        for link in links {
            let Some(text) = self.owed_confirmation(link) else {
                continue;
            };
            if let Some(chan) = self.channels.get_mut(&link) {
                chan.writer_ready = false;
            }
            out.push(Action::Write { link, text });
        }
    }

    pub(super) fn finish_if_done(&mut self, out: &mut Vec<Action>) {
        let handed = self.queue.is_empty() && self.in_flight.is_none();
        let done = self.eof && handed;
        if done && !self.finishing {
            self.finishing = true;
            let links: Vec<Link> = self.channels.keys().copied().collect();
            for link in links {
                self.close(link, out);
            }
            if !self.channels.is_empty() || self.call.is_some() {
                out.push(Action::Arm {
                    timer: Timer::Finish,
                    after: FINISH_WITHIN,
                });
            }
        }
        let closed = self.channels.is_empty() && self.call.is_none();
        if self.finishing && handed && (closed || self.finish_due) {
            self.exit(out);
        }
    }

    pub(super) fn exit(&mut self, out: &mut Vec<Action>) {
        if !self.exited {
            self.exited = true;
            out.push(Action::Exit);
        }
    }
}
