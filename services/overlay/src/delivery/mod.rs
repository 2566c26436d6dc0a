//! Outbound store-and-forward: a manager task keeps one delivery task per peer with messages
//! waiting; each drains that peer's outbox over `/p2pos/msg/1` in sequence order, one frame and
//! one acknowledgement at a time, and deletes what the peer acknowledged.
//!
//! The outbox is one queue per (peer, app): an app whose inbox on the peer is over a quota
//! (`APP_FULL`) is held back on its own, its messages kept in order, while the other apps'
//! messages go on; a peer that is over its quota for this node (`RETRY_LATER`) is held back
//! whole. A delivery task runs while its peer has messages waiting: it tries at once, then
//! backs off (5 s doubling to 60 s; a held-back app or peer: 2 s doubling to 60 s) and
//! retries early whenever the peer connects (which also ends every hold) or a new message
//! comes while the peer is not known to be failing. A task that panics is replaced after
//! 60 s. `Send` waits (briefly) for the outcome of its own message through
//! [`Delivery::deliver`].

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use libp2p::{PeerId, StreamProtocol};
use libp2p_stream::OpenStreamError;
use p2pos_kernel::{EventBus, events::now_ms};
use p2pos_proto::{
    monitor::v1::{MessageDelivered, MessageFailed, event::Kind},
    wire::v1::{MessageAck, MessageFrame, message_ack},
};
use p2pos_protocols::{
    network::{NetEvent, Network},
    wire::{self, read_message, write_message},
};
use tokio::{
    sync::{Notify, broadcast, mpsc, oneshot},
    task::{self, JoinSet},
    time::Instant,
};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::{debug, error, warn};

use crate::{
    Error,
    mailbox::{Mailbox, NextBatch},
};

mod waiters;

pub(crate) use waiters::Outcome;
use waiters::Waiters;

/// `/p2pos/msg/1`.
pub(crate) const MESSAGE_PROTOCOL: StreamProtocol = StreamProtocol::new(wire::MESSAGE_PROTOCOL);
/// Commands waiting for the manager.
const COMMAND_BUFFER: usize = 64;
/// Reports from delivery tasks waiting for the manager.
const REPORT_BUFFER: usize = 256;
/// Messages read from the outbox at a time.
const BATCH: usize = 16;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the peer may take to store and acknowledge one message.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// How soon a peer that asked to retry later (or to retry one app later) is tried again the
/// first time; the wait doubles up to [`RETRY_MAX`] while it keeps asking.
const RETRY_BUSY: Duration = Duration::from_secs(2);
/// Most apps held back at once for one peer (each has messages waiting in the outbox).
const MAX_HELD_APPS: usize = crate::mailbox::MAX_APPS;
/// Times in a row a connected peer that does not take messages (its overlay is restarting, say)
/// is retried after [`RETRY_BUSY`] rather than with back-off.
const NOT_SERVING_RETRIES: u32 = 5;
/// First and longest wait before retrying a peer.
const RETRY_MIN: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How often the outbox is swept for peers that no delivery serves.
const SWEEP: Duration = Duration::from_secs(60);

enum Command {
    Deliver {
        peer: PeerId,
        app_id: String,
        sequence: u64,
        reply: oneshot::Sender<Outcome>,
    },
}

enum Report {
    Acked {
        peer: PeerId,
        sequence: u64,
        outcome: Outcome,
    },
    Failed {
        peer: PeerId,
    },
}

/// A cheap, cloneable handle to the delivery manager.
#[derive(Clone)]
pub(crate) struct Delivery {
    tx: mpsc::Sender<Command>,
}

impl Delivery {
    /// Starts delivering message `sequence` of `app_id` (already durable in the outbox) and
    /// waits up to `limit` for its outcome.
    pub(crate) async fn deliver(
        &self,
        peer: PeerId,
        app_id: String,
        sequence: u64,
        limit: Duration,
    ) -> Outcome {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Deliver {
            peer,
            app_id,
            sequence,
            reply,
        };
        if self.tx.send(cmd).await.is_err() {
            return Outcome::Queued;
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(outcome)) => outcome,
            _ => Outcome::Queued,
        }
    }
}

/// What every delivery task needs.
struct Shared {
    mailbox: Arc<Mailbox>,
    net: Network,
    events: EventBus,
    /// How long a message waits for a peer never reached.
    unreached_ttl: Duration,
}

struct Slot {
    kick: Arc<Kick>,
    /// The last attempt failed and the peer has not connected since.
    failing: bool,
}

/// Spawns the manager; it runs until the handle and the network are gone (or it is aborted).
pub(crate) fn start(
    mailbox: Arc<Mailbox>,
    net: Network,
    events: EventBus,
    unreached_ttl: Duration,
) -> (Delivery, tokio::task::JoinHandle<()>) {
    let (tx, commands) = mpsc::channel(COMMAND_BUFFER);
    let (reports_tx, reports) = mpsc::channel(REPORT_BUFFER);
    let manager = Manager {
        net_events: net.subscribe(),
        shared: Arc::new(Shared {
            mailbox,
            net,
            events,
            unreached_ttl,
        }),
        commands,
        reports,
        reports_tx,
        slots: HashMap::new(),
        tasks: JoinSet::new(),
        task_peers: HashMap::new(),
        waiters: Waiters::default(),
    };
    (Delivery { tx }, tokio::spawn(manager.run()))
}

struct Manager {
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    reports: mpsc::Receiver<Report>,
    reports_tx: mpsc::Sender<Report>,
    net_events: broadcast::Receiver<NetEvent>,
    slots: HashMap<PeerId, Slot>,
    /// Delivery tasks; dropping the manager aborts them all.
    tasks: JoinSet<()>,
    /// The peer of each delivery task, so that a task that panicked can be told.
    task_peers: HashMap<task::Id, PeerId>,
    waiters: Waiters,
}

impl Manager {
    async fn run(mut self) {
        // At start, and now and then after: a message stored by a task of an overlay instance
        // that had gone (its `Send` finishing its store write) has nobody else to start it.
        let mut sweep = tokio::time::interval(SWEEP);
        let mut net_open = true;
        loop {
            tokio::select! {
                _ = sweep.tick() => self.sweep(),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => return,
                },
                Some(report) = self.reports.recv() => self.on_report(report),
                event = self.net_events.recv(), if net_open => match event {
                    Ok(NetEvent::Connected(peer)) => self.on_connected(peer),
                    Ok(NetEvent::Disconnected(_)) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let peers: Vec<PeerId> = self.slots.keys().copied().collect();
                        peers.into_iter().for_each(|p| self.on_connected(p));
                    }
                    Err(broadcast::error::RecvError::Closed) => net_open = false,
                },
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_task_end(done);
                }
            }
        }
    }

    /// Starts delivery to every peer with messages waiting and no delivery running.
    fn sweep(&mut self) {
        match self.shared.mailbox.pending_peers() {
            Ok(peers) => peers
                .into_iter()
                .for_each(|p| self.ensure(p, Duration::ZERO)),
            Err(e) => warn!("cannot read the outbox: {e}"),
        }
    }

    fn on_task_end(&mut self, done: Result<(task::Id, ()), task::JoinError>) {
        let (id, panicked) = match done {
            Ok((id, ())) => (id, false),
            Err(e) => (e.id(), true),
        };
        let Some(peer) = self.task_peers.remove(&id) else {
            return;
        };
        self.slots.remove(&peer);
        if panicked {
            error!(%peer, "the message delivery task panicked; retrying in {RETRY_MAX:?}");
            self.waiters.answer_peer(peer, Outcome::Queued);
        }
        // A message may have come in as the task finished.
        if self.shared.mailbox.has_outgoing(&peer).unwrap_or(false) {
            self.ensure(peer, if panicked { RETRY_MAX } else { Duration::ZERO });
        }
    }

    fn on_command(&mut self, command: Command) {
        let Command::Deliver {
            peer,
            app_id,
            sequence,
            reply,
        } = command;
        // Tasks report an outcome before they remove the message: once the reports sent so far
        // are in, a message no longer in the outbox has a known outcome (or a forgotten one).
        while let Ok(report) = self.reports.try_recv() {
            self.on_report(report);
        }
        if let Some(outcome) = self.waiters.known((peer, sequence)) {
            let _ = reply.send(outcome);
            return;
        }
        if self.slots.get(&peer).is_some_and(|s| s.failing) {
            // The peer was unreachable moments ago; it will be retried on its own schedule.
            let _ = reply.send(Outcome::Queued);
            return;
        }
        match self.shared.mailbox.is_waiting(&peer, &app_id, sequence) {
            Ok(true) => self.waiters.wait((peer, sequence), reply),
            Ok(false) => {
                // Its outcome was reported too long ago to be remembered; nothing will answer.
                let _ = reply.send(Outcome::Queued);
                return;
            }
            Err(e) => {
                warn!(%peer, "cannot read the outbox: {e}");
                let _ = reply.send(Outcome::Queued);
            }
        }
        self.ensure(peer, Duration::ZERO);
        if let Some(slot) = self.slots.get(&peer) {
            slot.kick.message();
        }
    }

    fn on_report(&mut self, report: Report) {
        match report {
            Report::Acked {
                peer,
                sequence,
                outcome,
            } => {
                if let Some(slot) = self.slots.get_mut(&peer) {
                    slot.failing = false;
                }
                self.waiters.settle((peer, sequence), outcome);
            }
            Report::Failed { peer } => {
                if let Some(slot) = self.slots.get_mut(&peer) {
                    slot.failing = true;
                }
                self.waiters.answer_peer(peer, Outcome::Queued);
            }
        }
    }

    fn on_connected(&mut self, peer: PeerId) {
        if let Some(slot) = self.slots.get_mut(&peer) {
            slot.failing = false;
            slot.kick.connected();
        } else if self.shared.mailbox.has_outgoing(&peer).unwrap_or(false) {
            self.ensure(peer, Duration::ZERO);
        }
    }

    /// Makes sure a delivery task runs for `peer`; a new one starts after `delay` (or when
    /// kicked).
    fn ensure(&mut self, peer: PeerId, delay: Duration) {
        if self.slots.contains_key(&peer) {
            return;
        }
        let kick = Arc::new(Kick::default());
        self.slots.insert(
            peer,
            Slot {
                kick: kick.clone(),
                failing: false,
            },
        );
        let shared = self.shared.clone();
        let reports = self.reports_tx.clone();
        let task = self
            .tasks
            .spawn(deliver_to(peer, kick, delay, shared, reports));
        self.task_peers.insert(task.id(), peer);
    }
}

/// Wakes a delivery task: a new message, or the peer connected (which also ends its holds).
#[derive(Default)]
struct Kick {
    notify: Notify,
    connected: AtomicBool,
}

impl Kick {
    fn message(&self) {
        self.notify.notify_one();
    }

    fn connected(&self) {
        self.connected.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Whether the peer connected since the last call.
    fn take_connected(&self) -> bool {
        self.connected.swap(false, Ordering::AcqRel)
    }
}

/// A peer, or one of its apps, that asked to retry later: not sent to before `until`.
#[derive(Debug, Clone, Copy)]
struct Hold {
    until: Instant,
    /// The wait after the next refusal.
    next: Duration,
}

impl Hold {
    /// Held (again) after a refusal: for twice as long as the last time, at most
    /// [`RETRY_MAX`].
    fn after(previous: Option<Hold>) -> Hold {
        let wait = previous.map_or(RETRY_BUSY, |h| h.next);
        Hold {
            until: Instant::now() + wait,
            next: (wait * 2).min(RETRY_MAX),
        }
    }
}

/// The holds of one peer's delivery: on the peer as a whole, and per app.
#[derive(Default)]
struct Holds {
    peer: Option<Hold>,
    /// Only apps with messages waiting (at most [`MAX_HELD_APPS`]).
    apps: HashMap<String, Hold>,
}

impl Holds {
    /// The apps held now; forgets the holds that ended (an app keeps its back-off, to double
    /// it if it is refused again, until one of its messages is stored).
    fn held_now(&self) -> HashSet<String> {
        let now = Instant::now();
        self.apps
            .iter()
            .filter(|(_, h)| h.until > now)
            .map(|(app, _)| app.clone())
            .collect()
    }

    /// When the first hold that still keeps a message back ends.
    fn next_end(&self) -> Option<Instant> {
        let now = Instant::now();
        let apps = self.apps.values().map(|h| h.until).filter(|t| *t > now);
        apps.chain(self.peer.map(|h| h.until).filter(|t| *t > now))
            .min()
    }

    fn hold_app(&mut self, app_id: &str) {
        if self.apps.len() >= MAX_HELD_APPS && !self.apps.contains_key(app_id) {
            // Cannot happen with the outbox's own bound; if it did, the app is retried sooner.
            return;
        }
        let hold = Hold::after(self.apps.get(app_id).copied());
        self.apps.insert(app_id.to_owned(), hold);
    }
}

/// Delivers everything waiting for `peer`, retrying with back-off; ends once the outbox for
/// `peer` is empty.
async fn deliver_to(
    peer: PeerId,
    kick: Arc<Kick>,
    delay: Duration,
    shared: Arc<Shared>,
    reports: mpsc::Sender<Report>,
) {
    if !delay.is_zero() {
        tokio::select! {
            _ = kick.wait() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
    let mut backoff = RETRY_MIN;
    let mut not_serving = 0;
    let mut holds = Holds::default();
    loop {
        if kick.take_connected() {
            holds = Holds::default();
        }
        let drained = drain(peer, &shared, &reports, &mut holds).await;
        if !matches!(drained, Ok(Drained::NotServing)) {
            not_serving = 0;
        }
        match drained {
            Ok(Drained::Empty) => return,
            Ok(Drained::NotServing) if not_serving < NOT_SERVING_RETRIES => {
                // Connected, but its messages protocol is not served right now: most likely
                // its overlay is restarting, back in a moment.
                not_serving += 1;
                debug!(%peer, "the peer does not take messages right now; retrying soon");
                tokio::select! {
                    _ = kick.wait() => {}
                    _ = tokio::time::sleep(RETRY_BUSY) => {}
                }
                continue;
            }
            Ok(Drained::NotServing) => {
                debug!(%peer, "the peer does not take messages; will retry");
                let _ = reports.send(Report::Failed { peer }).await;
            }
            Ok(Drained::Held) => {
                // The peer is reachable and asked to wait (for some apps, or all): retry when
                // the first hold ends, without counting the peer as failing. A new message
                // wakes the task too (it may be for an app not held).
                let until = holds
                    .next_end()
                    .unwrap_or_else(|| Instant::now() + RETRY_BUSY);
                tokio::select! {
                    _ = kick.wait() => {}
                    _ = tokio::time::sleep_until(until) => {}
                }
                continue;
            }
            Err(e) => {
                debug!(%peer, "message delivery failed; will retry: {e}");
                let _ = reports.send(Report::Failed { peer }).await;
                match expire_unreached(peer, &shared).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => warn!(%peer, "cannot expire old messages: {e}"),
                }
            }
        }
        tokio::select! {
            _ = kick.wait() => backoff = RETRY_MIN,
            _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(RETRY_MAX),
        }
    }
}

/// How a drain ended without error.
enum Drained {
    /// The outbox for the peer is empty.
    Empty,
    /// What is left waits for holds to end (the peer asked to retry later: some apps, or all).
    Held,
    /// The peer is connected but does not serve the messages protocol now.
    NotServing,
}

/// One attempt: connects, then sends the outbox for `peer` in sequence order, but the apps
/// held back, until nothing but held messages is left.
async fn drain(
    peer: PeerId,
    shared: &Shared,
    reports: &mpsc::Sender<Report>,
    holds: &mut Holds,
) -> Result<Drained, Error> {
    let mut io = None;
    loop {
        if holds.peer.is_some_and(|h| h.until > Instant::now()) {
            return Ok(Drained::Held);
        }
        let held = holds.held_now();
        let NextBatch {
            messages,
            lowest_waiting,
            apps,
        } = shared
            .mailbox
            .blocking(move |mailbox| mailbox.next_batch(&peer, &held, BATCH))
            .await?;
        holds.apps.retain(|app, _| apps.contains(app));
        if messages.is_empty() {
            if let Some(mut io) = io {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
            }
            return Ok(if apps.is_empty() {
                Drained::Empty
            } else {
                Drained::Held
            });
        }
        // What is sent must be durable first (read, then flush: a message enqueued in between
        // is not in this batch): a sequence number the peer has seen must never be handed out
        // again after a crash.
        shared.mailbox.flush().await?;
        if io.is_none() {
            shared
                .net
                .connect(peer, Vec::new(), CONNECT_TIMEOUT)
                .await?;
            let stream = tokio::time::timeout(
                CONNECT_TIMEOUT,
                shared.net.open_stream(peer, MESSAGE_PROTOCOL),
            )
            .await
            .map_err(|_| broken(peer, "no stream within 10 s".into()))?;
            let stream = match stream {
                Ok(stream) => stream,
                Err(OpenStreamError::UnsupportedProtocol(_)) => return Ok(Drained::NotServing),
                Err(e) => return Err(broken(peer, e.to_string())),
            };
            io = Some(stream.compat());
        }
        let Some(stream) = io.as_mut() else {
            continue; // just set above
        };
        // Apps refused in this batch: their later messages stay behind the refused one.
        let mut refused: HashSet<String> = HashSet::new();
        for message in messages {
            if refused.contains(&message.frame.app_id) {
                continue;
            }
            let frame = MessageFrame {
                answered_below: lowest_waiting,
                ..message.frame.clone()
            };
            write_message(stream, &frame, ACK_TIMEOUT)
                .await
                .map_err(|e| broken(peer, e.to_string()))?;
            let ack: MessageAck = read_message(stream, wire::MAX_CONTROL_FRAME, ACK_TIMEOUT)
                .await
                .map_err(|e| broken(peer, e.to_string()))?;
            if ack.sequence != frame.sequence {
                return Err(broken(
                    peer,
                    format!(
                        "acknowledged {} instead of {}",
                        ack.sequence, frame.sequence
                    ),
                ));
            }
            let outcome = match message_ack::Result::try_from(ack.result) {
                Ok(message_ack::Result::RetryLater) => {
                    // Over this node's quota there: every app waits, and the peer closes the
                    // stream.
                    debug!(%peer, reason = ack.reason, "the peer asks to retry later");
                    holds.peer = Some(Hold::after(holds.peer));
                    report_queued(reports, peer, frame.sequence).await;
                    return Ok(Drained::Held);
                }
                Ok(message_ack::Result::AppFull) => {
                    // This app's inbox there is full: its messages wait, the others go on.
                    debug!(%peer, app_id = frame.app_id, reason = ack.reason, "the peer asks to retry an app later");
                    holds.hold_app(&frame.app_id);
                    refused.insert(frame.app_id.clone());
                    report_queued(reports, peer, frame.sequence).await;
                    continue;
                }
                Ok(message_ack::Result::Stored) => Outcome::Delivered,
                Ok(message_ack::Result::UnknownApp) => Outcome::UnknownApp,
                Ok(message_ack::Result::TooLarge) => Outcome::TooLarge,
                Err(_) => return Err(broken(peer, format!("unknown ack result {}", ack.result))),
            };
            holds.peer = None;
            holds.apps.remove(&frame.app_id);
            publish(&shared.events, peer, &frame, outcome);
            // Reported before it leaves the outbox (see `Manager::on_command`).
            let _ = reports
                .send(Report::Acked {
                    peer,
                    sequence: frame.sequence,
                    outcome,
                })
                .await;
            shared
                .mailbox
                .blocking(move |mailbox| mailbox.remove_answered(&peer, &message))
                .await?;
        }
    }
}

/// Tells a `Send` waiting for message `sequence` that it stays in the outbox.
async fn report_queued(reports: &mpsc::Sender<Report>, peer: PeerId, sequence: u64) {
    let _ = reports
        .send(Report::Acked {
            peer,
            sequence,
            outcome: Outcome::Queued,
        })
        .await;
}

/// Drops the messages that waited longer than allowed for a peer never reached, each reported
/// with a `MessageFailed` event; answers whether none is left for the peer.
async fn expire_unreached(peer: PeerId, shared: &Shared) -> Result<bool, Error> {
    let ttl = shared.unreached_ttl;
    let before_ms = now_ms().saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    loop {
        let expired = shared
            .mailbox
            .blocking(move |mailbox| mailbox.expire_unreached(&peer, before_ms, BATCH))
            .await?;
        let more = expired.len() >= BATCH;
        for frame in &expired {
            let reason = format!(
                "expired: peer {peer} was never reached in {} (never seen here, and not found \
                 in the DHT); send it again with the peer's ticket",
                humantime_secs(ttl)
            );
            warn!(%peer, app_id = frame.app_id, message_id = frame.message_id, "message dropped: {reason}");
            shared.events.publish(Kind::MessageFailed(MessageFailed {
                peer_id: peer.to_string(),
                app_id: frame.app_id.clone(),
                message_id: frame.message_id,
                reason,
            }));
        }
        if !expired.is_empty() {
            shared.mailbox.flush().await?;
        }
        if !more {
            return Ok(!shared.mailbox.has_outgoing(&peer)?);
        }
    }
}

/// `ttl` as a person reads it: "7 days", "90 s".
fn humantime_secs(ttl: Duration) -> String {
    let secs = ttl.as_secs();
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => {
            format!("{} day{}", s / 86_400, if s == 86_400 { "" } else { "s" })
        }
        s if s >= 3_600 && s % 3_600 == 0 => format!("{} h", s / 3_600),
        s => format!("{s} s"),
    }
}

fn publish(events: &EventBus, peer: PeerId, frame: &MessageFrame, outcome: Outcome) {
    let reason = match outcome {
        Outcome::Delivered => {
            events.publish(Kind::MessageDelivered(MessageDelivered {
                inbound: false,
                peer_id: peer.to_string(),
                app_id: frame.app_id.clone(),
                message_id: frame.message_id,
            }));
            return;
        }
        Outcome::UnknownApp => format!("app '{}' is not registered on peer {peer}", frame.app_id),
        Outcome::TooLarge => format!(
            "peer {peer} refused a payload of {} bytes",
            frame.payload.len()
        ),
        Outcome::Queued => return,
    };
    warn!(%peer, app_id = frame.app_id, message_id = frame.message_id, "message dropped: {reason}");
    events.publish(Kind::MessageFailed(MessageFailed {
        peer_id: peer.to_string(),
        app_id: frame.app_id.clone(),
        message_id: frame.message_id,
        reason,
    }));
}

fn broken(peer: PeerId, reason: String) -> Error {
    Error::Protocol {
        peer,
        protocol: wire::MESSAGE_PROTOCOL,
        reason,
    }
}
