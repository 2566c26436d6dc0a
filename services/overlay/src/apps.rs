//! The apps protocol on the overlay actor: sessions, channel opens, `Send`, `Receive`, `Ack`
//! and `ListApps`. The actor only keeps the
//! bookkeeping; slow work runs in the futures it returns and channel and message bytes never
//! pass through it. Announced channels wait in [`crate::pending`]; channels between two
//! sessions of this node are in [`crate::local`].

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use actix::prelude::*;
use bytes::Bytes;
use futures::future::LocalBoxFuture;
use p2pos_kernel::{Call, ServiceError, store::StoreError};
use p2pos_proto::app::v1::{
    AppInfo, DeliveryState, ListAppsReply, ReceivedMessage, Registered, SendReply,
};
use p2pos_protocols::{
    Apps,
    apps::{Incoming, Request, Response, Session},
    wire::MAX_PAYLOAD,
};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::{
    Error, channel,
    counted::count,
    delivery::Outcome,
    error::{parse_target, validate_app_id},
    mailbox::Mailbox,
    service::{MAX_OPENS, OverlayService},
    task::AbortOnDrop,
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

pub(crate) type Reply = LocalBoxFuture<'static, Result<Response, Error>>;

pub(crate) fn ready(result: Result<Response, Error>) -> Reply {
    Box::pin(futures::future::ready(result))
}

impl Handler<Call<Apps>> for OverlayService {
    type Result = ResponseFuture<Result<Response, ServiceError>>;

    fn handle(&mut self, Call(request): Call<Apps>, ctx: &mut Self::Context) -> Self::Result {
        let reply = match request {
            Request::OpenSession { app_id } => self.open_session(app_id, ctx),
            Request::OpenChannel { app_id, peer } => self.open_channel(app_id, &peer, ctx),
            Request::AcceptChannel { app_id, channel_id } => {
                self.accept_channel(app_id, channel_id, ctx)
            }
            Request::Send {
                app_id,
                peer,
                payload,
            } => self.send(app_id, &peer, payload),
            Request::Receive { app_id } => self.receive(app_id),
            Request::Ack { app_id, inbox_id } => self.ack(app_id, inbox_id),
            Request::ListApps { only } => ready(self.list_apps(only)),
            Request::WatchSession { app_id } => ready(self.watch_session(&app_id)),
        };
        Box::pin(async move { reply.await.map_err(ServiceError::from) })
    }
}

impl OverlayService {
    fn open_session(&mut self, app_id: String, ctx: &mut Context<Self>) -> Reply {
        if let Err(e) = validate_app_id(&app_id).and_then(|()| self.mailbox.register_app(&app_id)) {
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
            Ok(Response::Session(Session {
                registered,
                incoming,
            }))
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

    fn watch_session(&mut self, app_id: &str) -> Result<Response, Error> {
        match self.apps.get_mut(app_id) {
            Some(app) if !app.sessions.is_empty() => {
                let (tx, rx) = oneshot::channel();
                // Senders of watchers that already fired are gone; keep the list short.
                app.watchers.retain(|w| !w.is_closed());
                app.watchers.push(tx);
                Ok(Response::SessionEnd(rx))
            }
            _ => Err(Error::NoSession {
                app_id: app_id.to_owned(),
            }),
        }
    }

    fn open_channel(&mut self, app_id: String, peer: &str, ctx: &mut Context<Self>) -> Reply {
        let target = validate_app_id(&app_id).and_then(|()| parse_target(peer));
        let (peer, addrs) = match target {
            Ok(t) => t,
            Err(e) => return ready(Err(e)),
        };
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
            Ok(Response::Channel(count(stream, channel_permit)))
        })
    }

    fn send(&mut self, app_id: String, peer: &str, payload: Bytes) -> Reply {
        let checked = validate_app_id(&app_id).and_then(|()| {
            if payload.len() > MAX_PAYLOAD {
                return Err(Error::MessageTooLarge {
                    size: payload.len(),
                });
            }
            let (peer, addrs) = parse_target(peer)?;
            if peer == self.net.local_peer_id() {
                return Err(Error::SelfTarget(peer));
            }
            Ok((peer, addrs))
        });
        let (peer, addrs) = match checked {
            Ok(t) => t,
            Err(e) => return ready(Err(e)),
        };
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
            Ok(Response::Sent(SendReply {
                message_id: frame.message_id,
                state: state.into(),
            }))
        })
    }

    fn receive(&mut self, app_id: String) -> Reply {
        if let Err(e) = validate_app_id(&app_id).and_then(|()| self.mailbox.register_app(&app_id)) {
            return ready(Err(e));
        }
        let (tx, rx) = mpsc::channel(RECEIVE_BUFFER);
        let feeder = AbortOnDrop::spawn(feed_inbox(app_id.clone(), self.mailbox.clone(), tx));
        // A new `Receive` replaces the old one, which ends (dropping the old feeder aborts it).
        self.receivers.insert(app_id, feeder);
        ready(Ok(Response::Inbox(rx)))
    }

    fn ack(&mut self, app_id: String, inbox_id: u64) -> Reply {
        if let Err(e) = validate_app_id(&app_id) {
            return ready(Err(e));
        }
        let mailbox = self.mailbox.clone();
        Box::pin(async move {
            // Off the actor: a cumulative acknowledgement may read many entries.
            let removing = mailbox.clone();
            tokio::task::spawn_blocking(move || removing.ack(&app_id, inbox_id))
                .await
                .map_err(|e| StoreError::Io(format!("ack task: {e}")))??;
            mailbox.flush().await?;
            Ok(Response::Acked)
        })
    }

    fn list_apps(&self, only: Option<String>) -> Result<Response, Error> {
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
        Ok(Response::Apps(ListAppsReply { apps }))
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
