//! The chat machine's line side: registration, typed lines, stored messages, `Send` results,
//! timers, handing lines out in order, and finishing after stdin ends.

use super::signals;
use super::{Action, Chat, FINISH_WITHIN, Failure, Link, MAX_LINE, RESEND_AFTER, Stored, Timer};
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
        let printed = self.printed.entry((from, epoch)).or_default();
        if sequence > *printed {
            *printed = sequence;
            if !signals::is_signal(&text) {
                out.push(Action::Print(line));
            }
        }
        out.push(Action::Ack { inbox_id });
        out
    }

    /// The outstanding `Send` finished.
    pub(crate) fn send_done(&mut self, result: Result<(), Failure>) -> Vec<Action> {
        let mut out = Vec::new();
        match result {
            Ok(()) => {
                self.in_flight = None;
                self.send_failing = false;
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
            Timer::Finish => self.exit(&mut out),
        }
        out
    }

    /// Hands queued lines out, then finishes if stdin has ended and nothing is left. A signal
    /// goes only to a live channel: without one it is dropped.
    pub(super) fn pump(&mut self, out: &mut Vec<Action>) {
        while self.in_flight.is_none() && !self.send_paused && !self.queue.is_empty() {
            if let Some(current) = self.current {
                let Some(chan) = self.channels.get_mut(&current) else {
                    break;
                };
                if !chan.writer_ready {
                    break;
                }
                let Some(text) = self.queue.pop_front() else {
                    break;
                };
                chan.writer_ready = false;
                out.push(Action::Write {
                    link: current,
                    text,
                });
                continue;
            }
            if self.queue.front().is_some_and(|t| signals::is_signal(t)) {
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

    pub(super) fn finish_if_done(&mut self, out: &mut Vec<Action>) {
        let done = self.eof && self.queue.is_empty() && self.in_flight.is_none();
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
        if self.finishing && self.channels.is_empty() && self.call.is_none() {
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
