//! The chat's state machine, free of I/O: it takes what happened (a typed line, a channel that
//! opened or closed, a `Send` that finished, a timer) and answers with [`Action`]s for the shell
//! in `run` to carry out.
//!
//! Guarantees:
//! - Every typed line leaves exactly once: handed to a channel's input stream *as it asks for
//!   its next frame* (`Write`), or to `Apps.Send` (`Send`). A frame the channel no longer takes
//!   comes back through [`Chat::frame_rejected`] and goes out the other way.
//! - Lines keep their order: one `Send` at a time, and no channel frame while a `Send` is
//!   outstanding, or while a line `Send` left queued in the node's outbox is not delivered.
//! - No line is lost when a channel breaks: the peer's chat confirms the lines it showed, and
//!   those not confirmed go again, shown once ([`confirm`]).
//! - At most one *current* channel. When both peers open a channel to each other at once, both
//!   keep the one opened by the smaller peer id (the newer one if the same peer opened both).
//! - A stored message is printed at most once per run, though the node may hand it over again
//!   (delivery to the app is at least once), and acknowledged once printed (`Ack`).
//! - At most one voice call, with the peer of the current channel ([`calls`]); its signals
//!   travel in the same queue as lines, as frames no typed line can be ([`signals`]), and only
//!   over a live channel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use crate::peer;

mod calls;
mod channels;
mod confirm;
mod lines;
mod signals;

/// The chat's app id.
pub(crate) const APP_ID: &str = "chat";
/// Wait between attempts to open a channel to an offline peer.
pub(crate) const REDIAL_AFTER: Duration = Duration::from_secs(3);
/// Wait before handing a line to `Send` again after a transient failure.
pub(crate) const RESEND_AFTER: Duration = Duration::from_secs(2);
/// After stdin ends and every line is out: how long to wait for channels to close.
pub(crate) const FINISH_WITHIN: Duration = Duration::from_secs(5);
/// How long a channel's lines wait for the peer's `hello` before its chat is taken for one
/// that does not confirm lines.
pub(crate) const HELLO_WITHIN: Duration = Duration::from_secs(5);
/// Largest line sent (a channel frame and a message payload are at most 1 MiB).
pub(crate) const MAX_LINE: usize = 1024 * 1024;

/// Identifies one channel (one `Apps.Channel` call) of this process; never reused.
pub(crate) type Link = u64;

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Print one line on stdout.
    Print(String),
    /// Start `Apps.Channel` with `open{app_id, peer}`.
    Open { link: Link, peer: String },
    /// Start `Apps.Channel` with `accept{channel_id}`.
    Accept { link: Link, channel_id: u64 },
    /// Hand one frame to the channel's waiting input stream.
    Write { link: Link, text: String },
    /// End the channel's input stream (half-close) and take no more frames for it.
    Close { link: Link },
    /// Call `Apps.Send`; report with [`Chat::send_done`].
    Send { peer: String, text: String },
    /// Acknowledge (`Apps.Ack`) every stored message up to this inbox id: they are printed.
    Ack { inbox_id: u64 },
    /// Call [`Chat::timer`] with this timer after the delay (re-arming replaces it).
    Arm { timer: Timer, after: Duration },
    /// Start the voice plug-in for a call with `peer` (`answer`: the peer called us), hand it
    /// the call over the local control channel to this node (`node`, our peer id), and report
    /// with [`Chat::call_started`], [`Chat::call_report`] and [`Chat::call_ended`].
    StartCall {
        peer: String,
        node: String,
        answer: bool,
    },
    /// Tell the voice plug-in to hang up (it reports its end as usual).
    HangUp,
    /// Exit with success.
    Exit,
    /// Exit with `error: <message>`.
    Fail(String),
}

/// The machine's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// Try to open a channel to the peer again.
    Redial,
    /// Retry handing the front line to `Send`.
    Resend,
    /// Stop waiting for channels to close at exit.
    Finish,
    /// Stop waiting for the `hello` of the current channel's peer: its chat does not confirm
    /// lines (an older chat).
    Hello,
}

/// Why a call failed: worth retrying, or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The peer or the node may come back.
    Retry(String),
    /// The node has never seen the peer and cannot find it (`NOT_FOUND`): it may still turn up.
    Unknown(String),
    /// The app does not run on the peer (`FAILED_PRECONDITION`): a `Send` is dropped for good,
    /// an open may succeed later.
    Refused(String),
    /// Retrying cannot help (bad peer name, no permission).
    Fatal(String),
}

/// How a `Send` went: the node's id of the message, whether the peer has it already, and why it
/// waits in the node's outbox when the node says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sent {
    pub(crate) message_id: u64,
    pub(crate) delivered: bool,
    pub(crate) waiting: String,
}

/// A message from `Apps.Receive`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The sender's peer id.
    pub(crate) from: String,
    /// The sender's store epoch and its sequence number in it: which message this is.
    pub(crate) epoch: u64,
    pub(crate) sequence: u64,
    /// The node's id for it, to acknowledge.
    pub(crate) inbox_id: u64,
    /// The payload as text.
    pub(crate) text: String,
}

/// One channel attempt.
#[derive(Debug)]
struct Chan {
    /// We sent `open` (rather than `accept`).
    ours: bool,
    /// The remote peer id, once known.
    peer: Option<String>,
    /// `opened` has arrived.
    open: bool,
    /// Its input stream waits for a frame.
    writer_ready: bool,
    /// We ended its input.
    closing: bool,
    /// Its lines both ways, numbered and confirmed.
    lines: confirm::LinkLines,
}

/// Dialer mode: the PEER argument.
#[derive(Debug)]
struct Dial {
    /// As typed: peer id, ticket or multiaddr (also the `Send` destination).
    arg: String,
    /// Its peer id, if it could be read from the argument or learned since.
    peer_id: Option<String>,
    /// Our outgoing open in flight.
    dialing: Option<Link>,
    /// The first open attempt has finished (lines wait for it before going by `Send`).
    first_result: bool,
}

/// The chat state.
#[derive(Debug)]
pub(crate) struct Chat {
    own_id: Option<String>,
    dial: Option<Dial>,
    /// Where `Send` goes: the PEER argument, or the last peer that chatted with us.
    send_to: Option<String>,
    /// How the peer is named in status lines.
    label: String,
    channels: BTreeMap<Link, Chan>,
    current: Option<Link>,
    next_link: Link,
    /// Typed lines and call signals not yet handed anywhere, oldest first.
    queue: VecDeque<String>,
    /// The line handed to `Send` and not yet acknowledged.
    in_flight: Option<String>,
    /// Waiting for [`Timer::Resend`].
    send_paused: bool,
    /// A `Send` failure was reported and no success since.
    send_failing: bool,
    /// "is offline" / "went offline" was printed and no channel opened since.
    offline_announced: bool,
    /// The highest sequence printed per (sender, epoch): a sender's messages come in order, so
    /// anything at or below it is one handed over again.
    printed: HashMap<(String, u64), u64>,
    /// The voice call in progress.
    call: Option<calls::Call>,
    /// Lines across channels and messages: shown, queued in the node, waiting.
    confirm: confirm::Confirmations,
    /// Names this run's channels (tags are this, and the link).
    run_id: u64,
    /// The finish timer fired: exit once every line is handed over, open channels or not.
    finish_due: bool,
    /// Stdin ended.
    eof: bool,
    /// Every line is out; channels are being closed.
    finishing: bool,
    /// `Exit` was emitted.
    exited: bool,
}

impl Chat {
    /// A chat with `peer` (dialer), or waiting for someone to open one (listener).
    pub(crate) fn new(peer: Option<String>) -> Chat {
        let dial = peer.map(|arg| Dial {
            peer_id: peer::peer_id_of(&arg),
            arg,
            dialing: None,
            first_result: false,
        });
        let label = dial
            .as_ref()
            .map(|d| d.peer_id.clone().unwrap_or_else(|| d.arg.clone()))
            .unwrap_or_default();
        Chat {
            own_id: None,
            send_to: dial.as_ref().map(|d| d.arg.clone()),
            dial,
            label,
            channels: BTreeMap::new(),
            current: None,
            next_link: 1,
            queue: VecDeque::new(),
            in_flight: None,
            send_paused: false,
            send_failing: false,
            offline_announced: false,
            printed: HashMap::new(),
            call: None,
            confirm: confirm::Confirmations::default(),
            run_id: run_id(),
            finish_due: false,
            eof: false,
            finishing: false,
            exited: false,
        }
    }
}

/// A random name for this run's channels (their tags); 0 in unit tests.
fn run_id() -> u64 {
    if cfg!(test) {
        return 0;
    }
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod call_tests;
#[cfg(test)]
mod confirm_tests;
#[cfg(test)]
mod tests;
