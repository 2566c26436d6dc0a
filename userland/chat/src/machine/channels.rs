//! The chat machine's channel side: incoming announcements, channels opening, failing and
//! closing, frames in and out (text lines and call signals), and which of two crossed channels
//! to keep.

use super::signals;
use super::{Action, Chan, Chat, Failure, Link, REDIAL_AFTER, Timer};
use crate::peer;

impl Chat {
    /// A remote copy of the app wants a channel.
    pub(crate) fn incoming(&mut self, channel_id: u64, peer_id: String) -> Vec<Action> {
        let mut out = Vec::new();
        if self.finishing {
            return out;
        }
        let wanted = match &self.dial {
            Some(dial) => dial.peer_id.as_ref().is_none_or(|id| *id == peer_id),
            // A listener takes the first peer, then only that peer while it has a channel.
            None => self
                .channels
                .values()
                .all(|c| c.peer.as_ref() == Some(&peer_id)),
        };
        if !wanted {
            out.push(Action::Print(format!(
                "* ignored a chat request from {peer_id}"
            )));
            return out;
        }
        let link = self.new_chan(false, Some(peer_id));
        out.push(Action::Accept { link, channel_id });
        out
    }

    /// A channel is open (its first output arrived).
    pub(crate) fn opened(&mut self, link: Link, peer_id: String) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(chan) = self.channels.get_mut(&link) else {
            return out;
        };
        chan.open = true;
        chan.peer = Some(peer_id.clone());
        let closing = chan.closing;
        let ours = self.dial.as_ref().is_some_and(|d| d.dialing == Some(link));
        if ours && self.own_id.as_deref() == Some(peer_id.as_str()) {
            // A ticket or address that names this node.
            out.push(Action::Fail(format!(
                "cannot chat with {}: it leads to this node itself; give the peer id or ticket \
                 of another node",
                self.label
            )));
            return out;
        }
        if let Some(dial) = &mut self.dial {
            if dial.dialing == Some(link) {
                dial.dialing = None;
                dial.first_result = true;
            }
            if dial.peer_id.is_none() {
                dial.peer_id = Some(peer_id.clone());
            }
        }
        if closing {
            return out;
        }
        if self.finishing {
            self.close(link, &mut out);
            return out;
        }
        match self.current {
            None => {
                self.current = Some(link);
                self.label = peer_id.clone();
                if self.dial.is_none() {
                    self.send_to = Some(peer_id.clone());
                }
                self.offline_announced = false;
                out.push(Action::Print(format!("* connected to {peer_id}")));
                out.push(Action::Arm {
                    timer: Timer::Hello,
                    after: super::HELLO_WITHIN,
                });
            }
            Some(current) => {
                let same_peer =
                    self.channels.get(&current).and_then(|c| c.peer.as_ref()) == Some(&peer_id);
                if same_peer && self.preferred(link, current) {
                    self.current = Some(link);
                    self.close(current, &mut out);
                    out.push(Action::Arm {
                        timer: Timer::Hello,
                        after: super::HELLO_WITHIN,
                    });
                } else {
                    self.close(link, &mut out);
                }
            }
        }
        self.pump(&mut out);
        out
    }

    /// Opening or accepting a channel failed.
    pub(crate) fn open_failed(&mut self, link: Link, failure: Failure) -> Vec<Action> {
        let mut out = Vec::new();
        if self.channels.remove(&link).is_none() {
            return out;
        }
        let ours = match &mut self.dial {
            Some(dial) if dial.dialing == Some(link) => {
                dial.dialing = None;
                dial.first_result = true;
                true
            }
            _ => false,
        };
        if ours && !self.finishing {
            if let Failure::Fatal(reason) = failure {
                out.push(Action::Fail(format!(
                    "cannot chat with {}: {reason}",
                    self.label
                )));
                return out;
            }
            if self.current.is_none() {
                if !self.offline_announced {
                    self.offline_announced = true;
                    out.push(Action::Print(match failure {
                        Failure::Unknown(_) => format!(
                            "* {} is unknown to your node: never seen, and not found in the DHT. \
                             Your lines wait in your node until it is reached (a node drops \
                             messages to a peer it never reached after 7 days, by default); to \
                             reach it now, chat with its ticket (`p2pctl ticket` on its node)",
                            self.label
                        ),
                        _ => format!(
                            "* {} is offline; your lines will be delivered when it returns",
                            self.label
                        ),
                    }));
                }
                out.push(Action::Arm {
                    timer: Timer::Redial,
                    after: REDIAL_AFTER,
                });
            }
        }
        self.pump(&mut out);
        out
    }

    /// A channel's output ended (the remote closed it, or the connection broke).
    pub(crate) fn closed(&mut self, link: Link) -> Vec<Action> {
        let Some(chan) = self.channels.get(&link) else {
            return Vec::new();
        };
        if !chan.open {
            return self.open_failed(link, Failure::Retry("the channel closed".into()));
        }
        let mut out = Vec::new();
        self.resend_unconfirmed(link, &mut out);
        self.channels.remove(&link);
        if self.current == Some(link) {
            self.current = None;
            let label = self.label.clone();
            let successor = self
                .channels
                .iter()
                .find(|(_, c)| c.open && !c.closing && c.peer.as_ref() == Some(&label))
                .map(|(g, _)| *g);
            if let Some(successor) = successor {
                self.current = Some(successor);
            } else if !self.finishing {
                self.offline_announced = true;
                out.push(Action::Print(format!(
                    "* {label} went offline; your lines will be delivered when it returns"
                )));
                if self.dial.as_ref().is_some_and(|d| d.dialing.is_none()) {
                    out.push(Action::Arm {
                        timer: Timer::Redial,
                        after: REDIAL_AFTER,
                    });
                }
            }
        }
        self.pump(&mut out);
        out
    }

    /// A data frame arrived on a channel: a text line, a line signal or a call signal.
    pub(crate) fn frame(&mut self, link: Link, text: &str) -> Vec<Action> {
        let from = self.channels.get(&link).and_then(|c| c.peer.clone());
        if let Some(line_signal) = signals::decode_line(text) {
            return self.line_signal(link, line_signal);
        }
        if signals::is_signal(text) {
            return self.signal(from, text);
        }
        self.line_came(link);
        let from = from.as_deref().unwrap_or("?");
        let mut out = vec![Action::Print(format!("{}> {text}", peer::short(from)))];
        // Its confirmation is owed.
        self.pump(&mut out);
        out
    }

    /// Whether the channel still takes frames (the shell drops a waiting input otherwise).
    pub(crate) fn takes_frames(&self, link: Link) -> bool {
        self.channels.get(&link).is_some_and(|c| !c.closing)
    }

    /// A channel's input stream asks for its next frame.
    pub(crate) fn writer_ready(&mut self, link: Link) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(chan) = self.channels.get_mut(&link) {
            chan.writer_ready = true;
            self.pump(&mut out);
        }
        out
    }

    /// A `Write` could not be handed over (the input stream was gone): send it another way.
    pub(crate) fn frame_rejected(&mut self, link: Link, text: String) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(chan) = self.channels.get_mut(&link) {
            chan.writer_ready = false;
        }
        if self.unwritten(link, &text) {
            self.queue.push_front(text);
        }
        self.pump(&mut out);
        out
    }

    pub(super) fn new_chan(&mut self, ours: bool, peer: Option<String>) -> Link {
        let link = self.next_link;
        self.next_link += 1;
        let tag = format!("{:016x}-{link}", self.run_id);
        self.channels.insert(
            link,
            Chan {
                ours,
                peer,
                open: false,
                writer_ready: false,
                closing: false,
                lines: super::confirm::LinkLines::new(tag),
            },
        );
        link
    }

    pub(super) fn start_open(&mut self, out: &mut Vec<Action>) {
        let Some((arg, peer_id)) = self
            .dial
            .as_ref()
            .map(|d| (d.arg.clone(), d.peer_id.clone()))
        else {
            return;
        };
        let link = self.new_chan(true, peer_id);
        if let Some(dial) = &mut self.dial {
            dial.dialing = Some(link);
        }
        out.push(Action::Open { link, peer: arg });
    }

    pub(super) fn close(&mut self, link: Link, out: &mut Vec<Action>) {
        if let Some(chan) = self.channels.get_mut(&link)
            && !chan.closing
        {
            chan.closing = true;
            chan.writer_ready = false;
            out.push(Action::Close { link });
        }
    }

    /// Whether channel `a` should be kept over `b` (both with the same peer).
    pub(super) fn preferred(&self, a: Link, b: Link) -> bool {
        match (self.opener(a), self.opener(b)) {
            (Some(oa), Some(ob)) if oa != ob => oa < ob,
            _ => a > b,
        }
    }

    pub(super) fn opener(&self, link: Link) -> Option<&str> {
        let chan = self.channels.get(&link)?;
        if chan.ours {
            self.own_id.as_deref()
        } else {
            chan.peer.as_deref()
        }
    }
}
