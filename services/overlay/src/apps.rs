//! The apps protocol on the overlay actor: sessions, channel opens, `Send`, `Receive`, `Ack`
//! and `ListApps`. The actor only keeps the
//! bookkeeping; slow work runs in the futures it returns and channel and message bytes never
//! pass through it. Announced channels wait in [`crate::pending`]; channels between two
//! sessions of this node are in [`crate::local`].

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use actix::prelude::*;
use bytes::Bytes;
use p2pos_kernel::{Call, store::StoreError};
use p2pos_proto::app::v1::{
    AppInfo, DeliveryState, ListAppsReply, ReceivedMessage, Registered, SendReply,
};
use p2pos_protocols::{
    Apps, answer,
    apps::{ChannelStream, Incoming, Request, Session},
    ids::PeerRef,
    wire::MAX_PAYLOAD,
};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::{
    Error, channel,
    counted::count,
    delivery::Outcome,
    mailbox::Mailbox,
    service::{MAX_OPENS, OverlayService},
    task::{AbortOnDrop, Fut, ready, spawn_answer},
};

/// Announcements (incoming channels and calls) buffered per session.
pub(crate) const SESSION_BUFFER: usize = 64;
/// Most live sessions, all apps together.
const MAX_SESSIONS: usize = 1024;
/// Messages buffered between the inbox and a `Receive` stream (they stay in the inbox until
/// the app acknowledges them).
const RECEIVE_BUFFER: usize = 4;
/// Messages read from the inbox at a time.
const RECEIVE_BATCH: usize = 16;
/// How long `Send` waits for the peer's acknowledgement before answering `QUEUED`.
const SEND_WAIT: Duration = Duration::from_secs(3);

/// One live session of an app.
struct SessionSlot {
    id: u64,
    tx: mpsc::Sender<Incoming>,
}

/// The live sessions of one app, oldest first.
#[derive(Default)]
pub(crate) struct AppState {
    sessions: Vec<SessionSlot>,
    /// Dropped when the last session ends (see [`Request::WatchSession`]).
    watchers: Vec<oneshot::Sender<()>>,
}

impl AppState {
    /// Where to announce incoming channels and calls: the newest session still open, and its
    /// id.
    pub(crate) fn newest(&self) -> Option<(u64, &mpsc::Sender<Incoming>)> {
        self.sessions
            .iter()
            .rev()
            .find(|s| !s.tx.is_closed())
            .map(|s| (s.id, &s.tx))
    }
}

impl Handler<Call<Apps>> for OverlayService {
    type Result = ();

    /// Bookkeeping here; every answer that takes time comes from a task of its own.
    fn handle(&mut self, Call(request): Call<Apps>, ctx: &mut Self::Context) {
        match request {
            Request::OpenSession { app_id, reply } => {
                spawn_answer(reply, self.open_session(app_id.into_string(), ctx));
            }
            Request::OpenChannel {
                app_id,
                peer,
                reply,
            } => spawn_answer(reply, self.open_channel(app_id.into_string(), peer, ctx)),
            Request::AcceptChannel {
                app_id,
                channel_id,
                reply,
            } => spawn_answer(
                reply,
                self.accept_channel(app_id.into_string(), channel_id, ctx),
            ),
            Request::Send {
                app_id,
                peer,
                payload,
                reply,
            } => spawn_answer(reply, self.send(app_id.into_string(), peer, payload)),
            Request::Receive { app_id, reply } => {
                answer(reply, self.receive(app_id.into_string()));
            }
            Request::Ack {
                app_id,
                inbox_id,
                reply,
            } => spawn_answer(reply, self.ack(app_id.into_string(), inbox_id)),
            Request::ListApps { only, reply } => answer(reply, self.list_apps(only)),
            Request::WatchSession { app_id, reply } => {
                answer(reply, self.watch_session(&app_id));
            }
        }
    }
}

impl OverlayService {
    fn open_session(&mut self, app_id: String, ctx: &mut Context<Self>) -> Fut<Session> {
        if let Err(e) = self.mailbox.register_app(&app_id) {
            return ready(Err(e));
        }
        let live: usize = self.apps.values().map(|a| a.sessions.len()).sum();
        if live >= MAX_SESSIONS {
            return ready(Err(Error::Busy {
                what: "live app sessions",
                limit: MAX_SESSIONS,
            }));
        }
        let (tx, incoming) = mpsc::channel(SESSION_BUFFER);
        let id = self.next_session;
        self.next_session += 1;
        self.apps
            .entry(app_id.clone())
            .or_default()
            .sessions
            .push(SessionSlot { id, tx: tx.clone() });
        // The session ends when the client drops its receiver.
        let app = app_id.clone();
        ctx.spawn(
            async move { tx.closed().await }
                .into_actor(self)
                .map(move |(), act, ctx| act.end_session(&app, id, ctx)),
        );
        let registered = Registered {
            app_id,
            peer_id: self.net.local_peer_id().to_string(),
        };
        let mailbox = self.mailbox.clone();
        Box::pin(async move {
            mailbox.flush().await?;
            Ok(Session {
                registered,
                incoming,
            })
        })
    }

    fn end_session(&mut self, app_id: &str, id: u64, ctx: &mut Context<Self>) {
        // Calls announced on this session can no longer be answered, nor its channels
        // accepted.
        self.session_ended(id);
        self.refuse_pending_of(id, ctx);
        if let Some(app) = self.apps.get_mut(app_id) {
            app.sessions.retain(|s| s.id != id);
            if app.sessions.is_empty() {
                // Dropping the app's state drops its watchers' senders: they fire.
                self.apps.remove(app_id);
                // Its services end with its last session.
                self.app_gone(app_id);
            }
        }
    }

    fn watch_session(&mut self, app_id: &str) -> Result<oneshot::Receiver<()>, Error> {
        match self.apps.get_mut(app_id) {
            Some(app) if !app.sessions.is_empty() => {
                let (tx, rx) = oneshot::channel();
                // Senders of watchers that already fired are gone; keep the list short.
                app.watchers.retain(|w| !w.is_closed());
                app.watchers.push(tx);
                Ok(rx)
            }
            _ => Err(Error::NoSession {
                app_id: app_id.to_owned(),
            }),
        }
    }

    fn open_channel(
        &mut self,
        app_id: String,
        peer: PeerRef,
        ctx: &mut Context<Self>,
    ) -> Fut<ChannelStream> {
        let PeerRef { peer, addrs } = peer;
        let Ok(channel_permit) = self.channels.clone().try_acquire_owned() else {
            return ready(Err(Error::TooManyChannels {
                limit: usize::try_from(self.config.max_channels).unwrap_or(usize::MAX),
            }));
        };
        let Ok(permit) = self.opens.clone().try_acquire_owned() else {
            return ready(Err(Error::Busy {
                what: "channel opens in progress",
                limit: MAX_OPENS,
            }));
        };
        if peer == self.net.local_peer_id() {
            return self.open_local(app_id, channel_permit, permit, ctx);
        }
        let (net, store) = (self.net.clone(), self.ctx.store.clone());
        Box::pin(async move {
            let _permit = permit;
            let reach_by = tokio::time::Instant::now() + channel::REACH_TIME;
            let stream = channel::open(net, store, app_id, None, peer, addrs, reach_by).await?;
            Ok(count(stream, channel_permit))
        })
    }

    fn send(&mut self, app_id: String, peer: PeerRef, payload: Bytes) -> Fut<SendReply> {
        let PeerRef { peer, addrs } = peer;
        if payload.len() > MAX_PAYLOAD {
            return ready(Err(Error::MessageTooLarge {
                size: payload.len(),
            }));
        }
        if peer == self.net.local_peer_id() {
            return ready(Err(Error::SelfTarget(peer)));
        }
        self.net.remember(peer, addrs);
        let size = payload.len();
        let frame = match self
            .mailbox
            .register_app(&app_id)
            .and_then(|()| self.mailbox.enqueue(&peer, &app_id, payload))
        {
            Ok(frame) => frame,
            Err(e) => return ready(Err(e)),
        };
        let (mailbox, delivery) = (self.mailbox.clone(), self.delivery.clone());
        Box::pin(async move {
            mailbox.flush().await?;
            let state = match delivery.deliver(peer, frame.sequence, SEND_WAIT).await {
                Outcome::Delivered => DeliveryState::Delivered,
                Outcome::Queued => DeliveryState::Queued,
                Outcome::UnknownApp => return Err(Error::AppNotRegistered { app_id, peer }),
                Outcome::TooLarge => return Err(Error::MessageTooLarge { size }),
            };
            Ok(SendReply {
                message_id: frame.message_id,
                state: state.into(),
            })
        })
    }

    fn receive(&mut self, app_id: String) -> Result<mpsc::Receiver<ReceivedMessage>, Error> {
        self.mailbox.register_app(&app_id)?;
        let (tx, rx) = mpsc::channel(RECEIVE_BUFFER);
        let feeder = AbortOnDrop::spawn(feed_inbox(app_id.clone(), self.mailbox.clone(), tx));
        // A new `Receive` replaces the old one, which ends (dropping the old feeder aborts it).
        self.receivers.insert(app_id, feeder);
        Ok(rx)
    }

    fn ack(&mut self, app_id: String, inbox_id: u64) -> Fut<()> {
        let mailbox = self.mailbox.clone();
        Box::pin(async move {
            // Off the actor: a cumulative acknowledgement may read many entries.
            let removing = mailbox.clone();
            tokio::task::spawn_blocking(move || removing.ack(&app_id, inbox_id))
                .await
                .map_err(|e| StoreError::Io(format!("ack task: {e}")))??;
            mailbox.flush().await?;
            Ok(())
        })
    }

    fn list_apps(&self, only: Option<String>) -> Result<ListAppsReply, Error> {
        let mut names: BTreeSet<String> = match &only {
            Some(app) => BTreeSet::from([app.clone()]),
            None => self.mailbox.apps()?.into_iter().collect(),
        };
        names.extend(
            self.apps
                .keys()
                .filter(|a| only.as_ref().is_none_or(|o| o == *a))
                .cloned(),
        );
        let mut apps = Vec::new();
        for app_id in names {
            let sessions = self.apps.get(&app_id).map_or(0, |a| a.sessions.len());
            if only.is_some() && sessions == 0 && !self.mailbox.is_app_known(&app_id)? {
                continue;
            }
            apps.push(AppInfo {
                sessions: u32::try_from(sessions).unwrap_or(u32::MAX),
                inbox: self.mailbox.inbox_count(&app_id)?,
                outbox: self.mailbox.outbox_count(&app_id)?,
                app_id,
            });
        }
        Ok(ListAppsReply { apps })
    }
}

/// Streams the inbox of `app_id` into `tx`, oldest first, then new messages as they arrive;
/// each once, and none removed (the app acknowledges them with `Ack`).
async fn feed_inbox(app_id: String, mailbox: Arc<Mailbox>, tx: mpsc::Sender<ReceivedMessage>) {
    let mut arrivals = mailbox.subscribe(&app_id);
    // The inbox id of the last message handed to `tx`.
    let mut cursor = None;
    loop {
        arrivals.borrow_and_update();
        let batch = match mailbox.inbox_after(&app_id, cursor, RECEIVE_BATCH) {
            Ok(batch) => batch,
            Err(e) => {
                warn!(app_id, "cannot read the inbox: {e}");
                return;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                changed = arrivals.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
            continue;
        }
        for message in batch {
            let inbox_id = message.inbox_id;
            if tx.send(message).await.is_err() {
                return;
            }
            cursor = Some(inbox_id);
        }
    }
}
