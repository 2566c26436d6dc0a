//! Outbound store-and-forward: a manager task keeps one delivery task per peer with messages
//! waiting; each drains that peer's outbox over `/p2pos/msg/1` in sequence order, one frame and
//! one acknowledgement at a time, and deletes what the peer acknowledged.
//!
//! The outbox is one queue per (peer, app): an app whose inbox on the peer is over a quota
//! (`APP_FULL`), or whose next message is larger than the relay the peer is reached through
//! can carry, is held back on its own, its messages kept in order, while the other apps'
//! messages go on; a peer that is over its quota for this node (`RETRY_LATER`) is held back
//! whole. A delivery task runs while its peer has messages waiting: it tries at once, then
//! backs off (5 s doubling to 60 s, back to 5 s only once a message goes through; a held-back
//! app or peer: 2 s doubling to 60 s). It retries early when a new message comes while the
//! peer is not known to be failing, when the peer connects after it could not be reached
//! (which also ends every hold), and when a direct connection to a peer reached through relays
//! opens; but an attempt that broke on an established connection (a relay's circuit that
//! ended in its middle) waits its back-off out, whatever connects meanwhile. A task that
//! panics is replaced after 60 s. `Send` waits (briefly) for the outcome of its own message
//! through [`Delivery::deliver`].
//!
//! # Layout
//! - this file: the manager, its commands and the delivery tasks' reports.
//! - `peer_task`: one peer's delivery task, and what the path to the peer lets it send.
//! - `holds`: wake-ups, holds and back-off.
//! - `told`: the events delivery publishes, and messages dropped unreached.
//! - `waiters`: `Send` calls waiting for their message's outcome.

use std::{collections::HashMap, sync::Arc, time::Duration};

use libp2p::{PeerId, StreamProtocol};
use p2pos_kernel::EventBus;
use p2pos_protocols::{
    network::{NetEvent, Network},
    wire,
};
use tokio::{
    sync::{broadcast, mpsc, oneshot},
    task::{self, JoinSet},
};
use tracing::{error, warn};

use crate::mailbox::Mailbox;

mod holds;
mod peer_task;
mod told;
mod waiters;

pub(crate) use holds::too_large_for;
use holds::{Kick, RETRY_MAX};
pub(crate) use waiters::Outcome;
use waiters::Waiters;

/// Messages read from the outbox at a time.
const BATCH: usize = 16;
/// `/p2pos/msg/1`.
pub(crate) const MESSAGE_PROTOCOL: StreamProtocol = StreamProtocol::new(wire::MESSAGE_PROTOCOL);
/// Commands waiting for the manager.
const COMMAND_BUFFER: usize = 64;
/// Reports from delivery tasks waiting for the manager.
const REPORT_BUFFER: usize = 256;
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
    /// An app's next message waits for a path a relay does not limit (`Some`, how a `Send` of
    /// the app's is answered meanwhile), or no longer (`None`).
    Waiting {
        peer: PeerId,
        app_id: String,
        outcome: Option<Outcome>,
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
    /// Apps whose next message waits for a path no relay limits: a `Send` of theirs is
    /// answered at once (it waits behind that message).
    waiting: HashMap<String, Outcome>,
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
                    Ok(NetEvent::Direct(peer)) => self.on_direct(peer),
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
        if let Some(outcome) = self
            .slots
            .get(&peer)
            .and_then(|s| s.waiting.get(&app_id).copied())
        {
            // Behind a message that waits for a path, in order.
            let _ = reply.send(outcome);
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
            Report::Waiting {
                peer,
                app_id,
                outcome,
            } => {
                if let Some(slot) = self.slots.get_mut(&peer) {
                    match outcome {
                        Some(outcome) => slot.waiting.insert(app_id, outcome),
                        None => slot.waiting.remove(&app_id),
                    };
                }
            }
        }
    }

    fn on_connected(&mut self, peer: PeerId) {
        if let Some(slot) = self.slots.get_mut(&peer) {
            slot.failing = false;
            slot.waiting.clear();
            slot.kick.connected();
        } else if self.shared.mailbox.has_outgoing(&peer).unwrap_or(false) {
            self.ensure(peer, Duration::ZERO);
        }
    }

    /// A direct connection to `peer`, reached only through relays until now, opened: what a
    /// relay could not carry may go, and a back-off after a circuit ended need not run out.
    fn on_direct(&mut self, peer: PeerId) {
        if let Some(slot) = self.slots.get_mut(&peer) {
            slot.failing = false;
            slot.waiting.clear();
            slot.kick.direct();
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
                waiting: HashMap::new(),
            },
        );
        let shared = self.shared.clone();
        let reports = self.reports_tx.clone();
        let task = self
            .tasks
            .spawn(peer_task::deliver_to(peer, kick, delay, shared, reports));
        self.task_peers.insert(task.id(), peer);
    }
}
