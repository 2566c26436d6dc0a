//! Store-and-forward messages for apps — `Send`, `Receive`, `Ack` — behind a cheap handle of
//! their own: requests come straight from the kernel's route (never through the overlay
//! actor's mailbox), each is served in a task of its own (at most [`MAX_IN_FLIGHT`] at once),
//! and every store write and flush runs on the blocking pool, never on a thread that serves
//! other requests. When the overlay instance that made the part goes, its waits end with it
//! (a `Send` already stored answers `QUEUED`, a `Receive` stream ends) and new requests that
//! still reach it hear `UNAVAILABLE`; a store write in progress finishes, under the one
//! mailbox every instance shares.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio_util::task::AbortOnDropHandle;

use bytes::Bytes;
use p2pos_kernel::events::now_ms;
use p2pos_proto::app::v1::{DeliveryState, ReceivedMessage, SendReply};
use p2pos_protocols::{
    answer,
    apps::Request,
    ids::{AppId, PeerRef},
    network::Network,
    wire::MAX_PAYLOAD,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{info, warn};

use crate::{
    Error,
    delivery::{Delivery, Outcome},
    mailbox::{Enqueued, Mailbox},
};

/// Messages buffered between the inbox and a `Receive` stream (they stay in the inbox until
/// the app acknowledges them).
const RECEIVE_BUFFER: usize = 4;
/// Messages read from the inbox at a time.
const RECEIVE_BATCH: usize = 16;
/// How long `Send` waits for the peer's acknowledgement before answering `QUEUED`.
const SEND_WAIT: Duration = Duration::from_secs(3);
/// `Receive` streams one app may hold open at once (each gets every message).
pub(crate) const MAX_RECEIVES_PER_APP: usize = 8;
/// A stream behind the acknowledgement mark that has taken no message for this long is ended
/// (its app may open another, from the mark): one stalled copy of an app must not hold back
/// the messages every other copy has acknowledged, and fill the inbox.
const STALLED: Duration = Duration::from_secs(30);
/// How often acknowledged messages held back by streams are looked at.
const SWEEP: Duration = Duration::from_secs(10);
/// `Send`, `Receive` and `Ack` requests served at once, all apps together; more are refused
/// with `RESOURCE_EXHAUSTED` (each app's gRPC calls are bounded by the gateway too).
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// The messages part of the overlay: a cheap, cloneable handle.
#[derive(Clone)]
pub(crate) struct Messages {
    mailbox: Arc<Mailbox>,
    delivery: Delivery,
    net: Network,
    /// The open `Receive` streams per app, each following the app's inbox on its own;
    /// finished ones are dropped whenever the app's list changes.
    receivers: Arc<Mutex<HashMap<String, Vec<Follower>>>>,
    /// The apps whose acknowledged messages some open stream still holds back: a stream of
    /// one of them that moves on removes what it passed (no other stream reads the store).
    held_back: Arc<Mutex<HashSet<String>>>,
    /// Requests being served.
    in_flight: Arc<Semaphore>,
    /// Cancelled when the overlay instance that owns the part goes: every task ends.
    stopping: CancellationToken,
}

impl Messages {
    /// The part over `mailbox`, delivering with `delivery` on `net`, and the guard that ends
    /// its work when dropped (the overlay actor holds it).
    pub(crate) fn new(
        mailbox: Arc<Mailbox>,
        delivery: Delivery,
        net: Network,
    ) -> (Self, DropGuard) {
        let stopping = CancellationToken::new();
        let guard = stopping.clone().drop_guard();
        let messages = Self {
            mailbox,
            delivery,
            net,
            receivers: Arc::default(),
            held_back: Arc::default(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            stopping,
        };
        // Acknowledged messages kept for streams of an earlier run, and those held back by a
        // stream that stalled: swept at start, then now and then.
        let sweeping = messages.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SWEEP);
            loop {
                tokio::select! {
                    () = sweeping.stopping.cancelled() => return,
                    _ = ticks.tick() => sweeping.sweep().await,
                }
            }
        });
        (messages, guard)
    }

    /// Serves one of `Send`, `Receive`, `Ack` in a task of its own; any other request is not
    /// this part's (it is dropped, and its caller hears so).
    pub(crate) fn handle(&self, request: Request) {
        let messages = self.clone();
        match request {
            Request::Send {
                app_id,
                peer,
                payload,
                idempotency_key,
                reply,
            } => self.serve(reply, async move {
                messages.send(app_id, peer, payload, idempotency_key).await
            }),
            Request::Receive { app_id, reply } => {
                self.serve(reply, async move { messages.receive(app_id).await })
            }
            Request::Ack {
                app_id,
                inbox_id,
                reply,
            } => self.serve(reply, async move { messages.ack(app_id, inbox_id).await }),
            other => warn!("the messages part was handed {other:?}"),
        }
    }

    /// Answers `reply` with `work`'s outcome from a task of its own, unless too many requests
    /// are in flight, the caller has gone already, or the instance has gone. Work already
    /// started is finished (a store write is never cut in half); only waits end early when the
    /// instance goes.
    fn serve<T: Send + 'static>(
        &self,
        reply: p2pos_protocols::Reply<T>,
        work: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) {
        if reply.is_closed() {
            return;
        }
        let permit: OwnedSemaphorePermit = match self.in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let busy = Error::Busy {
                    what: "message requests in flight",
                    limit: MAX_IN_FLIGHT,
                };
                return answer(reply, Err::<T, _>(busy));
            }
        };
        // A request that reached this instance's route after the instance went.
        if self.stopping.is_cancelled() {
            return answer(reply, Err::<T, _>(Error::Restarting));
        }
        tokio::spawn(async move {
            answer(reply, work.await);
            drop(permit);
        });
    }

    /// `Send`: durable in the outbox first, then delivered (waiting briefly for the outcome).
    /// With an idempotency key that already names a message, that message's id and state.
    async fn send(
        &self,
        app_id: AppId,
        peer: PeerRef,
        payload: Bytes,
        idempotency_key: Option<Bytes>,
    ) -> Result<SendReply, Error> {
        let PeerRef { peer, addrs } = peer;
        let size = payload.len();
        if size > MAX_PAYLOAD {
            return Err(Error::MessageTooLarge { size });
        }
        if peer == self.net.local_peer_id() {
            return Err(Error::SelfTarget(peer));
        }
        self.net.remember(peer, addrs);
        let app = app_id.into_string();
        let queued = app.clone();
        let enqueued = self
            .mailbox
            .blocking(move |mailbox| {
                mailbox.register_app(&queued)?;
                mailbox.enqueue_once(&peer, &queued, payload, idempotency_key.as_deref())
            })
            .await;
        // For a key found too (answered, or refused as naming another message): the write of
        // the `Send` that gave it may not be durable yet, if that `Send` is still being served.
        if matches!(enqueued, Ok(_) | Err(Error::SendKeyReused { .. })) {
            self.mailbox.flush().await?;
        }
        let (message_id, sequence) = match enqueued? {
            Enqueued::New(frame) => (frame.message_id, frame.sequence),
            Enqueued::Again(record) => {
                let (app, sequence) = (app.clone(), record.sequence);
                let (waiting, reached) = self
                    .mailbox
                    .blocking(move |m| {
                        Ok((m.is_waiting(&peer, &app, sequence)?, m.was_reached(&peer)?))
                    })
                    .await?;
                if !waiting {
                    // It left the outbox: the peer answered it, or it was dropped unreached.
                    if !reached {
                        return Err(Error::SendKeyDropped {
                            message_id: record.message_id,
                            peer,
                        });
                    }
                    return Ok(SendReply {
                        message_id: record.message_id,
                        state: DeliveryState::Delivered.into(),
                        waiting: String::new(),
                    });
                }
                (record.message_id, record.sequence)
            }
        };
        // Stored: from here the message is the outbox's, and goes out whatever happens to this
        // instance. Its caller is told so at once if the instance goes during the wait.
        let delivered = tokio::select! {
            biased;
            () = self.stopping.cancelled() => Outcome::Queued,
            outcome = self.delivery.deliver(peer, app.clone(), sequence, SEND_WAIT) => outcome,
        };
        let (state, waiting) = match delivered {
            Outcome::Delivered => (DeliveryState::Delivered, String::new()),
            Outcome::Queued => (DeliveryState::Queued, String::new()),
            Outcome::Waiting {
                size,
                circuit,
                behind,
            } => {
                let why = crate::delivery::too_large_for(peer, size, &circuit);
                let why = match behind {
                    true => format!("it waits behind an earlier message of this app: {why}"),
                    false => why,
                };
                (DeliveryState::Queued, why)
            }
            Outcome::UnknownApp => return Err(Error::AppNotRegistered { app_id: app, peer }),
            Outcome::TooLarge => return Err(Error::MessageTooLarge { size }),
        };
        Ok(SendReply {
            message_id,
            state: state.into(),
            waiting,
        })
    }

    /// `Receive`: one more follower of the app's inbox, beside those already open; it starts
    /// after the acknowledgement mark.
    async fn receive(&self, app_id: AppId) -> Result<mpsc::Receiver<ReceivedMessage>, Error> {
        let app = app_id.into_string();
        let registering = app.clone();
        let mark = self
            .mailbox
            .blocking(move |mailbox| {
                mailbox.register_app(&registering)?;
                mailbox.acked(&registering)
            })
            .await?;
        let next = Arc::new(AtomicU64::new(mark.map_or(0, |m| m.saturating_add(1))));
        let (tx, rx) = mpsc::channel(RECEIVE_BUFFER);
        let mut receivers = self.receivers.lock().unwrap_or_else(|e| e.into_inner());
        let open = receivers.entry(app.clone()).or_default();
        open.retain(|follower| !follower.task.is_finished());
        if open.len() >= MAX_RECEIVES_PER_APP {
            return Err(Error::Busy {
                what: "open Receive streams of this app",
                limit: MAX_RECEIVES_PER_APP,
            });
        }
        let stopping = self.stopping.clone();
        let moved_ms = Arc::new(AtomicU64::new(now_ms()));
        let feed = self
            .clone()
            .follow(app, mark, (next.clone(), moved_ms.clone()), tx);
        let task = AbortOnDropHandle::new(tokio::spawn(async move {
            tokio::select! {
                () = feed => {}
                () = stopping.cancelled() => {}
            }
        }));
        open.push(Follower {
            next,
            moved_ms,
            task,
        });
        Ok(rx)
    }

    /// `Ack`: raises the app's acknowledgement mark, durably; the messages up to it leave the
    /// inbox once every open `Receive` stream has had them.
    async fn ack(&self, app_id: AppId, inbox_id: u64) -> Result<(), Error> {
        let app = app_id.into_string();
        let marking = app.clone();
        self.mailbox
            .blocking(move |mailbox| mailbox.mark_acked(&marking, inbox_id))
            .await?;
        self.mailbox.flush().await?;
        self.remove_acked(app).await
    }

    /// Every app's acknowledged messages that no open stream still needs (every app known
    /// here: at start, what streams of an earlier run held back); messages held too long for
    /// apps not registered here, and dedupe marks unused too long.
    async fn sweep(&self) {
        let now = now_ms();
        match self.mailbox.blocking(move |m| m.expire_old(now)).await {
            Ok((0, 0, 0)) => {}
            Ok((unclaimed, marks, keys)) => info!(
                unclaimed,
                marks,
                keys,
                "dropped messages for unregistered apps, dedupe marks and idempotency keys past \
                 their time"
            ),
            Err(e) => warn!("cannot expire old inbox state: {e}"),
        }
        let apps = self.mailbox.blocking(|mailbox| mailbox.apps()).await;
        match apps {
            Ok(apps) => {
                for app in apps {
                    if let Err(e) = self.remove_acked(app.clone()).await {
                        warn!(app, "cannot remove acknowledged messages: {e}");
                    }
                }
            }
            Err(e) => warn!("cannot list the apps: {e}"),
        }
    }

    /// Removes the acknowledged messages of `app` that every open `Receive` stream has had,
    /// ending first the streams that stalled behind the mark. Not flushed: the mark is what is
    /// durable, and a message under it is never streamed to a new `Receive`.
    async fn remove_acked(&self, app: String) -> Result<(), Error> {
        let reading = app.clone();
        let Some(mark) = self
            .mailbox
            .blocking(move |mailbox| mailbox.acked(&reading))
            .await?
        else {
            return Ok(());
        };
        // Each stream's position only grows, and a new one starts above the mark: a floor read
        // now stays safe while the removal runs.
        let floor = {
            let mut receivers = self.receivers.lock().unwrap_or_else(|e| e.into_inner());
            let open = receivers.entry(app.clone()).or_default();
            let now = now_ms();
            let stalled_ms = u64::try_from(STALLED.as_millis()).unwrap_or(u64::MAX);
            open.retain(|follower| {
                let behind = follower.next.load(Ordering::Acquire) <= mark;
                let still = now.saturating_sub(follower.moved_ms.load(Ordering::Acquire));
                if behind && still > stalled_ms {
                    info!(
                        app,
                        "ending a Receive stream that took no message for {STALLED:?} while \
                         the app acknowledged past it"
                    );
                    // Dropped: its task is aborted and its stream ends.
                    return false;
                }
                !follower.task.is_finished()
            });
            let floor = open.iter().map(|f| f.next.load(Ordering::Acquire)).min();
            if open.is_empty() {
                receivers.remove(&app);
            }
            floor
        };
        let upto = match floor {
            None => u64::MAX,
            Some(next) => next.saturating_sub(1),
        };
        {
            let mut held_back = self.held_back.lock().unwrap_or_else(|e| e.into_inner());
            if floor.is_some_and(|next| next <= mark) {
                held_back.insert(app.clone());
            } else {
                held_back.remove(&app);
            }
        }
        if floor == Some(0) {
            return Ok(());
        }
        self.mailbox
            .blocking(move |mailbox| mailbox.remove_acked(&app, upto))
            .await?;
        Ok(())
    }

    /// Streams the inbox of `app` after `mark` into `tx`, oldest first, then new messages as
    /// they arrive; each once, none removed here. `next` tells how far the stream has got;
    /// acknowledged messages this stream was holding back leave the inbox as it passes them.
    async fn follow(
        self,
        app: String,
        mark: Option<u64>,
        (next, moved_ms): (Arc<AtomicU64>, Arc<AtomicU64>),
        tx: mpsc::Sender<ReceivedMessage>,
    ) {
        let mailbox = self.mailbox.clone();
        let mut arrivals = mailbox.subscribe(&app);
        // The inbox id of the last message handed to `tx`.
        let mut cursor = mark;
        loop {
            arrivals.borrow_and_update();
            let batch = match mailbox.inbox_after(&app, cursor, RECEIVE_BATCH) {
                Ok(batch) => batch,
                Err(e) => {
                    warn!(app, "cannot read the inbox: {e}");
                    break;
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    changed = arrivals.changed() => if changed.is_err() { break },
                    _ = tx.closed() => break,
                }
                continue;
            }
            let mut sent = true;
            for message in batch {
                let inbox_id = message.inbox_id;
                if tx.send(message).await.is_err() {
                    sent = false;
                    break;
                }
                cursor = Some(inbox_id);
                next.store(inbox_id.saturating_add(1), Ordering::Release);
                moved_ms.store(now_ms(), Ordering::Release);
            }
            if !sent {
                break;
            }
            self.remove_behind(&app).await;
        }
        // Gone: it holds nothing back any more.
        next.store(u64::MAX, Ordering::Release);
        self.remove_behind(&app).await;
    }

    /// After a stream of `app` moved on (or ended): if acknowledged messages of the app were
    /// held back by its streams, removes those none still needs.
    async fn remove_behind(&self, app: &str) {
        let held_back = self
            .held_back
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(app);
        if held_back && let Err(e) = self.remove_acked(app.to_owned()).await {
            warn!(app, "cannot remove acknowledged messages: {e}");
        }
    }
}

/// One open `Receive` stream of an app.
struct Follower {
    /// Every message below this inbox id has been handed to the stream (or was acknowledged
    /// before it opened); `u64::MAX` once it has ended.
    next: Arc<AtomicU64>,
    /// When it last took a message (or opened), ms since the Unix epoch.
    moved_ms: Arc<AtomicU64>,
    /// Feeds the stream; aborted when dropped.
    task: AbortOnDropHandle<()>,
}
