//! The chat machine's call side: the `/call`, `/hangup` and `/help` commands, call signals from
//! the peer's chat (see [`super::signals`]), and what the call task reports about the voice
//! plug-in.
//!
//! At most one call at a time, with the peer of the current channel. The caller's chat starts
//! its plug-in (`StartCall`) and, once the plug-in has the call, signals `call` to the peer's
//! chat, which prints `* incoming call from <short id>` and starts its own plug-in to answer.
//! Either side hangs up with `/hangup` (or by ending stdin): its plug-in is told (`HangUp`)
//! and the peer's chat gets a `hangup` signal, which hangs up there too. A call that arrives
//! during another (also two calls crossing) is refused with a `hangup` signal whose reason is
//! `busy`. The call is over when the call task reports its end (`* call ended`).

use super::signals::{self, Signal};
use super::{Action, Chat};
use crate::peer;
use crate::plugin::Report;

/// What `/help` prints.
const HELP: &str = "* commands: /call (voice call with the peer), /hangup (end the call), /help; other lines are sent as text";

/// The call in progress.
#[derive(Debug)]
pub(super) struct Call {
    /// The other peer's id.
    peer: String,
    /// We placed it (rather than answered it).
    outgoing: bool,
    /// The plug-in has the call (its control channel is open and it got `call` / `answer`).
    started: bool,
    /// A hang-up was asked (by us, by the peer, or by the end of stdin).
    hanging_up: bool,
    /// The last stats line printed (a report that says the same is not printed again).
    last_stats: Option<String>,
    /// Why the plug-in ended the call, from its `ended` report.
    end_reason: Option<String>,
}

impl Call {
    fn new(peer: String, outgoing: bool) -> Call {
        Call {
            peer,
            outgoing,
            started: false,
            hanging_up: false,
            last_stats: None,
            end_reason: None,
        }
    }
}

impl Chat {
    /// A typed line that is a command, carried out; `None` for a text line.
    pub(super) fn command(&mut self, text: &str) -> Option<Vec<Action>> {
        match text.trim() {
            "/call" => Some(self.place_call()),
            "/hangup" => {
                let mut out = Vec::new();
                match &self.call {
                    None => out.push(Action::Print("* no call to hang up".into())),
                    Some(call) if call.hanging_up => {
                        out.push(Action::Print("* hanging up already".into()));
                    }
                    Some(_) => self.hang_up(&mut out),
                }
                Some(out)
            }
            "/help" => Some(vec![Action::Print(HELP.into())]),
            _ => None,
        }
    }

    fn place_call(&mut self) -> Vec<Action> {
        let refuse = |reason: String| vec![Action::Print(format!("* cannot call: {reason}"))];
        if let Some(call) = &self.call {
            return refuse(format!(
                "already in a call with {}",
                peer::short(&call.peer)
            ));
        }
        let Some(node) = self.own_id.clone() else {
            return refuse("not registered with the node yet".into());
        };
        let live = self
            .current
            .and_then(|link| self.channels.get(&link))
            .filter(|chan| chan.open && !chan.closing)
            .and_then(|chan| chan.peer.clone());
        let Some(peer) = live else {
            return if self.dial.is_none() && self.send_to.is_none() {
                refuse("no peer yet".into())
            } else {
                refuse(format!("{} is not connected", self.label))
            };
        };
        self.call = Some(Call::new(peer.clone(), true));
        vec![
            Action::Print(format!("* calling {}", peer::short(&peer))),
            Action::StartCall {
                peer,
                node,
                answer: false,
            },
        ]
    }

    /// Hangs up the call from this side: tells the plug-in and, if it knows of the call, the
    /// peer's chat.
    pub(super) fn hang_up(&mut self, out: &mut Vec<Action>) {
        let Some(call) = &mut self.call else {
            return;
        };
        if call.hanging_up {
            return;
        }
        call.hanging_up = true;
        out.push(Action::Print("* hanging up".into()));
        out.push(Action::HangUp);
        if call.started || !call.outgoing {
            self.queue_signal(&Signal::Hangup { reason: None });
            self.pump(out);
        }
    }

    /// A signal frame arrived on a channel.
    pub(super) fn signal(&mut self, from: Option<String>, text: &str) -> Vec<Action> {
        let (Some(from), Some(signal)) = (from, signals::decode(text)) else {
            return Vec::new();
        };
        match signal {
            Signal::Call => self.incoming_call(from),
            Signal::Hangup { reason } => {
                let mut out = Vec::new();
                let Some(call) = &mut self.call else {
                    return out;
                };
                if call.peer != from {
                    return out;
                }
                let short = peer::short(&from);
                out.push(Action::Print(match reason {
                    Some(reason) => format!("* {short} hung up: {reason}"),
                    None => format!("* {short} hung up"),
                }));
                if !call.hanging_up {
                    call.hanging_up = true;
                    out.push(Action::HangUp);
                }
                out
            }
        }
    }

    fn incoming_call(&mut self, from: String) -> Vec<Action> {
        let mut out = Vec::new();
        if self.eof {
            return out;
        }
        if let Some(call) = &self.call {
            if call.peer == from && !call.outgoing {
                return out;
            }
            out.push(Action::Print(format!(
                "* missed a call from {}: already in a call",
                peer::short(&from)
            )));
            self.queue_signal(&Signal::Hangup {
                reason: Some("busy".into()),
            });
            self.pump(&mut out);
            return out;
        }
        let Some(node) = self.own_id.clone() else {
            return out;
        };
        out.push(Action::Print(format!(
            "* incoming call from {}",
            peer::short(&from)
        )));
        self.call = Some(Call::new(from.clone(), false));
        out.push(Action::StartCall {
            peer: from,
            node,
            answer: true,
        });
        out
    }

    /// The plug-in has the call: a caller now tells the peer's chat.
    pub(crate) fn call_started(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(call) = &mut self.call else {
            return out;
        };
        call.started = true;
        if call.outgoing && !call.hanging_up {
            self.queue_signal(&Signal::Call);
            self.pump(&mut out);
        }
        out
    }

    /// The plug-in reported something.
    pub(crate) fn call_report(&mut self, report: Report) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(call) = &mut self.call else {
            return out;
        };
        match report {
            Report::Stats(stats) => {
                let line = stats.line();
                if call.last_stats.as_ref() != Some(&line) {
                    call.last_stats = Some(line.clone());
                    out.push(Action::Print(line));
                }
            }
            Report::Error { message } => out.push(Action::Print(format!("* voice: {message}"))),
            Report::Ended { reason } => call.end_reason = Some(reason),
        }
        out
    }

    /// The call task is done (the helper is stopped): `Err` when the plug-in could not be
    /// started or reached, or stopped without ending the call.
    pub(crate) fn call_ended(&mut self, result: Result<(), String>) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(call) = self.call.take() else {
            return out;
        };
        let short = peer::short(&call.peer).to_owned();
        match result {
            Err(reason) if !call.started => {
                if call.outgoing {
                    out.push(Action::Print(format!("* cannot call: {reason}")));
                } else {
                    out.push(Action::Print(format!(
                        "* cannot answer the call from {short}: {reason}"
                    )));
                }
                if !call.outgoing && !call.hanging_up {
                    self.queue_signal(&Signal::Hangup {
                        reason: Some(format!("cannot answer: {reason}")),
                    });
                }
            }
            Err(reason) => {
                out.push(Action::Print(format!("* call ended: {reason}")));
                if !call.hanging_up {
                    self.queue_signal(&Signal::Hangup { reason: None });
                }
            }
            Ok(()) => out.push(Action::Print(match call.end_reason {
                Some(reason) => format!("* call ended ({reason})"),
                None => "* call ended".into(),
            })),
        }
        self.pump(&mut out);
        out
    }

    /// A signal that could not go out (no live channel to the peer): a call that cannot be
    /// announced is hung up.
    pub(super) fn signal_undelivered(&mut self, text: &str, out: &mut Vec<Action>) {
        let Some(call) = &mut self.call else {
            return;
        };
        if signals::decode(text) == Some(Signal::Call) && call.outgoing && !call.hanging_up {
            call.hanging_up = true;
            out.push(Action::Print(format!(
                "* cannot call: {} is not connected",
                peer::short(&call.peer)
            )));
            out.push(Action::HangUp);
        }
    }

    fn queue_signal(&mut self, signal: &Signal) {
        self.queue.push_back(signals::encode(signal));
    }
}
