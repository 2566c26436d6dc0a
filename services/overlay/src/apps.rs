//! The apps protocol on the overlay actor: sessions, channel opens, `ListApps` and
//! `WatchSession` (`Send`, `Receive` and `Ack` are the messages part's, [`crate::messages`]).
//! The actor only keeps the bookkeeping; slow work runs in tasks that answer each request, and
//! channel bytes never pass through it. Announced channels wait in [`crate::pending`]; channels
//! between two sessions of this node are in [`crate::local`].

use std::collections::{BTreeMap, BTreeSet};

use actix::prelude::*;
use p2pos_kernel::{Call, store::StoreError};
use p2pos_proto::app::v1::{AppInfo, ListAppsReply, Registered};
use p2pos_protocols::{
    Apps, answer,
    apps::{ChannelStream, Request, Session},
    ids::PeerRef,
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Error, channel,
    counted::count,
    registry::actor::{AppGone, SessionEnded},
    sessions::{MAX_SESSIONS, MAX_SESSIONS_PER_APP, SESSION_BUFFER, SessionSlot},
    state::OverlayService,
    task::{Fut, ready, spawn_answer},
};

impl Handler<Call<Apps>> for OverlayService {
    type Result = ();

    /// Bookkeeping here; every answer that takes time comes from a task of its own.
    fn handle(&mut self, Call(request): Call<Apps>, ctx: &mut Self::Context) {
        match request {
            Request::OpenSession {
                app_id,
                group,
                reply,
            } => {
                spawn_answer(reply, self.open_session(app_id.into_string(), group, ctx));
            }
            Request::OpenChannel {
                app_id,
                peer,
                group,
                reply,
            } => spawn_answer(
                reply,
                self.open_channel((app_id.into_string(), group), peer, ctx),
            ),
            Request::AcceptChannel {
                app_id,
                channel_id,
                reply,
            } => spawn_answer(
                reply,
                self.accept_channel(app_id.into_string(), channel_id, ctx),
            ),
            // Routed to the messages part, never here (see `service::route_apps`); answered
            // there all the same if one comes this way.
            request @ (Request::Send { .. } | Request::Receive { .. } | Request::Ack { .. }) => {
                self.messages.handle(request);
            }
            Request::ListApps { only, reply } => spawn_answer(reply, self.list_apps(only)),
            Request::WatchSession { app_id, reply } => {
                answer(reply, self.watch_session(&app_id));
            }
        }
    }
}

impl OverlayService {
    fn open_session(
        &mut self,
        app_id: String,
        group: Option<String>,
        ctx: &mut Context<Self>,
    ) -> Fut<Session> {
        if self.directory.live() >= MAX_SESSIONS {
            return ready(Err(Error::Busy {
                what: "live app sessions",
                limit: MAX_SESSIONS,
            }));
        }
        if self.directory.live_of_app(&app_id) >= MAX_SESSIONS_PER_APP {
            return ready(Err(Error::Busy {
                what: "live sessions of one app and its helpers",
                limit: MAX_SESSIONS_PER_APP,
            }));
        }
        let (tx, incoming) = mpsc::channel(SESSION_BUFFER);
        let id = self.next_session;
        self.next_session += 1;
        self.directory.open(
            &app_id,
            SessionSlot {
                id,
                tx: tx.clone(),
                group,
            },
        );
        // The session ends when the client drops its receiver.
        let app = app_id.clone();
        ctx.spawn(
            async move { tx.closed().await }
                .into_actor(self)
                .map(move |(), act, ctx| act.end_session(&app, id, ctx)),
        );
        let registered = Registered {
            app_id: app_id.clone(),
            peer_id: self.net.local_peer_id().to_string(),
        };
        let mailbox = self.mailbox.clone();
        Box::pin(async move {
            // An app with a session accepts messages from then on, even between sessions.
            mailbox.register_app_durably(app_id).await?;
            Ok(Session {
                registered,
                incoming,
            })
        })
    }

    fn end_session(&mut self, app_id: &str, id: u64, ctx: &mut Context<Self>) {
        // Its channels can no longer be accepted, nor (the registry hears, once the directory
        // says so) the calls announced on it answered.
        self.refuse_pending_of(id, ctx);
        let last = self.directory.end(app_id, id);
        self.registry.do_send(SessionEnded(id));
        if last {
            // Its services end with its last session: the registry hears it before the app's
            // watchers do, so that whatever they ask the registry next comes after.
            self.registry.do_send(AppGone(app_id.to_owned(), id));
            // Dropping its watchers' senders fires them.
            self.watchers.remove(app_id);
        }
    }

    fn watch_session(&mut self, app_id: &str) -> Result<oneshot::Receiver<()>, Error> {
        if !self.directory.has(app_id) {
            return Err(Error::NoSession {
                app_id: app_id.to_owned(),
            });
        }
        let (tx, rx) = oneshot::channel();
        let watchers = self.watchers.entry(app_id.to_owned()).or_default();
        // Senders of watchers whose caller gave up are closed; keep the list short.
        watchers.retain(|w| !w.is_closed());
        watchers.push(tx);
        Ok(rx)
    }

    fn open_channel(
        &mut self,
        (app_id, group): (String, Option<String>),
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
                limit: self.config.max_opens as usize,
            }));
        };
        if peer == self.net.local_peer_id() {
            return self.open_local((app_id, group), channel_permit, permit, ctx);
        }
        let (net, store) = (self.net.clone(), self.ctx.store.clone());
        Box::pin(async move {
            let _permit = permit;
            let reach_by = tokio::time::Instant::now() + channel::REACH_TIME;
            let to = (None, group, &[][..]);
            let reach = (reach_by, false);
            let stream = channel::open(net, store, app_id, to, peer, addrs, reach).await?;
            Ok(count(stream, channel_permit))
        })
    }

    /// `ListApps`: the session counts are the actor's; the store is read off it.
    fn list_apps(&self, only: Option<String>) -> Fut<ListAppsReply> {
        let sessions: BTreeMap<String, usize> = self.directory.counts(only.as_deref());
        let mailbox = self.mailbox.clone();
        Box::pin(async move {
            let listing = move || -> Result<ListAppsReply, Error> {
                let mut names: BTreeSet<String> = match &only {
                    Some(app) => BTreeSet::from([app.clone()]),
                    None => mailbox.apps()?.into_iter().collect(),
                };
                names.extend(sessions.keys().cloned());
                let mut apps = Vec::new();
                for app_id in names {
                    let live = sessions.get(&app_id).copied().unwrap_or(0);
                    if only.is_some() && live == 0 && !mailbox.is_app_known(&app_id)? {
                        continue;
                    }
                    apps.push(AppInfo {
                        sessions: u32::try_from(live).unwrap_or(u32::MAX),
                        inbox: mailbox.inbox_count(&app_id)?,
                        outbox: mailbox.outbox_count(&app_id)?,
                        app_id,
                    });
                }
                Ok(ListAppsReply { apps })
            };
            tokio::task::spawn_blocking(listing)
                .await
                .map_err(|e| StoreError::Io(format!("list task: {e}")))?
        })
    }
}
