//! Inbound channels announced to an app's session and not yet accepted, whether a remote peer
//! opened them (`/p2pos/channel/1`, answered with a welcome) or another session of this node
//! did ([`crate::local`]), to the same app or to a service it provides: announcing, accepting
//! within 30 s, expiring, and refusing those of a session that ended before accepting them
//! (the opener hears it at once and may try another provider).

use std::collections::HashMap;

use actix::prelude::*;
use libp2p::PeerId;
use p2pos_proto::{
    app::v1::IncomingChannel,
    wire::v1::{ChannelWelcome, channel_welcome},
};
use p2pos_protocols::apps::{ChannelStream, Incoming};
use tokio::sync::mpsc;
use tracing::warn;

use crate::{
    Error,
    announced::{PendingChannel, PendingIo, ServiceOrigin, Unannounced},
    channel,
    counted::{Hold, count},
    inbound::{InboundChannel, Refusal, refuse},
    sessions::NoTaker,
    state::OverlayService,
    task::{Fut, ready},
};

impl OverlayService {
    /// Hands the app the pending channel `channel_id` (and the opener its end, or the remote
    /// opener the welcome). `NOT_FOUND` unless it is pending for `app_id`.
    pub(crate) fn accept_channel(
        &mut self,
        app_id: String,
        channel_id: u64,
        ctx: &mut Context<Self>,
    ) -> Fut<ChannelStream> {
        match self.pending.remove(&channel_id) {
            Some(pending) if pending.app_id == app_id => {
                ctx.cancel_future(pending.expiry);
                let PendingChannel {
                    peer,
                    io,
                    permit,
                    origin,
                    group,
                    ..
                } = pending;
                let net = self.net.clone();
                match io {
                    PendingIo::Remote(io) => Box::pin(async move {
                        let to = (origin.is_some(), group);
                        // The opener's stream took a direct connection if there was one.
                        let circuit = channel::relayed(&net, peer).await;
                        let id = (channel_id, circuit);
                        let stream = channel::accept(io, id, peer, app_id, to).await?;
                        Ok(count(stream, permit))
                    }),
                    PendingIo::Local(end) => ready(
                        end.accept(channel_id, peer, app_id, group)
                            .map(|stream| count(stream, permit)),
                    ),
                }
            }
            other => {
                if let Some(pending) = other {
                    self.pending.insert(channel_id, pending);
                }
                ready(Err(Error::ChannelNotFound { app_id, channel_id }))
            }
        }
    }

    fn expire(&mut self, channel_id: u64) {
        let Some(pending) = self.pending.remove(&channel_id) else {
            return;
        };
        let PendingChannel {
            peer, app_id, io, ..
        } = pending;
        match io {
            PendingIo::Remote(io) => {
                let welcome = channel::welcome(
                    channel_welcome::Result::Timeout,
                    format!("app '{app_id}' did not accept the channel within 30 s"),
                );
                // Bounded by the write timeout and by the pending limit.
                tokio::spawn(refuse(Refusal { io, welcome }));
            }
            PendingIo::Local(end) => end.expire(Error::ChannelNotAccepted { app_id, peer }),
        }
    }

    /// Session `session` ended: the channels announced on it can no longer be accepted. Their
    /// openers hear it now: a remote one `NOT_PROVIDED` (a service channel: another provider
    /// may be tried) or `APP_NOT_LISTENING`, one on this node "not running here".
    pub(crate) fn refuse_pending_of(&mut self, session: u64, ctx: &mut Context<Self>) {
        let gone: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.session == session)
            .map(|(id, _)| *id)
            .collect();
        let local = self.net.local_peer_id();
        for channel_id in gone {
            let Some(pending) = self.pending.remove(&channel_id) else {
                continue;
            };
            ctx.cancel_future(pending.expiry);
            let PendingChannel {
                app_id, origin, io, ..
            } = pending;
            match io {
                PendingIo::Remote(io) => {
                    let welcome = match origin {
                        Some(ServiceOrigin { service, .. }) => channel::welcome(
                            channel_welcome::Result::NotProvided,
                            Error::NotProvidedThere {
                                service,
                                peer: local,
                            }
                            .to_string(),
                        ),
                        None => channel::welcome(
                            channel_welcome::Result::AppNotListening,
                            format!(
                                "app '{app_id}' ended its session on peer {local} before \
                                 accepting the channel"
                            ),
                        ),
                    };
                    // Bounded by the write timeout and by the channel permits.
                    tokio::spawn(refuse(Refusal { io, welcome }));
                }
                PendingIo::Local(end) => end.expire(Error::NotRunningHere { app_id }),
            }
        }
    }

    /// The channels from remote peers waiting to be accepted, by peer (`only`: of that peer).
    fn pending_by_peer(&self, only: Option<PeerId>) -> HashMap<PeerId, Vec<u64>> {
        let mut by_peer: HashMap<PeerId, Vec<u64>> = HashMap::new();
        for (id, p) in &self.pending {
            if matches!(p.io, PendingIo::Remote(_)) && only.is_none_or(|peer| p.peer == peer) {
                by_peer.entry(p.peer).or_default().push(*id);
            }
        }
        by_peer
    }

    /// Drops the channels of `by_peer` whose peer is not connected once the network is asked
    /// (their streams went with the connection), and their places with them, rather than hold
    /// them for their accept window. Only channels pending when this was called are dropped:
    /// a peer that connected again meanwhile is connected when asked, and its channels stay
    /// (a hello on its new connection may be announced before the old connection's end is
    /// handled).
    fn drop_pending_if_gone(
        &mut self,
        by_peer: HashMap<PeerId, Vec<u64>>,
        ctx: &mut Context<Self>,
    ) {
        if by_peer.is_empty() {
            return;
        }
        let net = self.net.clone();
        let peers: Vec<PeerId> = by_peer.keys().copied().collect();
        let asked = async move { net.connected_among(peers).await };
        ctx.spawn(asked.into_actor(self).map(move |connected, act, ctx| {
            // The network gone: so are its connections.
            let connected = connected.unwrap_or_default();
            let gone = by_peer
                .into_iter()
                .filter(|(peer, _)| !connected.contains(peer))
                .flat_map(|(_, ids)| ids);
            for channel_id in gone {
                if let Some(pending) = act.pending.remove(&channel_id) {
                    ctx.cancel_future(pending.expiry);
                }
            }
        }));
    }

    /// Announces an inbound channel from `peer` (to a service when `origin` is set; in a
    /// group, already checked, when `group` is set) on the newest live session of `app_id`
    /// that takes it and keeps it pending until it is accepted or [`channel::ACCEPT_WINDOW`]
    /// has passed; it counts against `max_channels` from now on. Gives `io` back if it cannot.
    pub(crate) fn announce<I: Into<PendingIo>>(
        &mut self,
        peer: PeerId,
        app_id: String,
        (origin, group): (Option<ServiceOrigin>, Option<String>),
        io: I,
        ctx: &mut Context<Self>,
    ) -> Result<(), (I, Unannounced)> {
        // A pending channel counts as open: it holds a stream to the peer. One from a remote
        // peer counts among that peer's too (and its first is taken past the node's limit).
        let permit = if peer == self.net.local_peer_id() {
            let Ok(permit) = self.channels.clone().try_acquire_owned() else {
                return Err((io, Unannounced::TooManyChannels));
            };
            Hold::from(permit)
        } else {
            match self.peer_channels.admit(peer, &self.channels) {
                Ok(hold) => hold,
                Err(full) => {
                    self.channels_refused.inc();
                    return Err((io, Unannounced::PeerFull(full)));
                }
            }
        };
        let (session_id, session) = match self.directory.newest_taking(&app_id, group.as_deref()) {
            Ok(session) => session,
            Err(NoTaker::NotListening) => return Err((io, Unannounced::NotListening)),
            Err(NoTaker::OutsideGroup) => return Err((io, Unannounced::OutsideGroup)),
        };
        let group = group.unwrap_or_default();
        let channel_id = match self.ctx.store.next_id() {
            Ok(id) => id,
            Err(e) => return Err((io, Unannounced::NoId(e))),
        };
        let (service, from_app) = origin
            .as_ref()
            .map(|o| (o.service.clone(), o.from_app.clone()))
            .unwrap_or_default();
        let announce = IncomingChannel {
            channel_id,
            peer_id: peer.to_string(),
            app_id: app_id.clone(),
            service,
            from_app,
            group: group.clone(),
        };
        if let Err(e) = session.try_send(Incoming::Channel(announce)) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => Unannounced::Backlog,
                mpsc::error::TrySendError::Closed(_) => Unannounced::NotListening,
            };
            return Err((io, why));
        }
        let expiry = ctx.run_later(channel::ACCEPT_WINDOW, move |act, _| act.expire(channel_id));
        self.pending.insert(
            channel_id,
            PendingChannel {
                peer,
                app_id,
                session: session_id,
                origin,
                group,
                io: io.into(),
                permit,
                expiry,
            },
        );
        Ok(())
    }
}

/// A remote peer's last connection closed (from the network's events), or, with `None`, some
/// may have: the follower of those events lagged and missed some.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct PeerDisconnected(pub(crate) Option<PeerId>);

impl Handler<PeerDisconnected> for OverlayService {
    type Result = ();

    fn handle(&mut self, PeerDisconnected(peer): PeerDisconnected, ctx: &mut Self::Context) {
        let by_peer = self.pending_by_peer(peer);
        self.drop_pending_if_gone(by_peer, ctx);
    }
}

impl Handler<InboundChannel> for OverlayService {
    type Result = Result<(), Refusal>;

    fn handle(&mut self, msg: InboundChannel, ctx: &mut Self::Context) -> Self::Result {
        let InboundChannel {
            peer,
            app_id,
            service,
            group,
            publisher_keys,
            io,
        } = msg;
        if !service.is_empty() {
            return self
                .inbound_service_channel(peer, (app_id, service, publisher_keys), io, ctx)
                .map_or(Ok(()), Err);
        }
        let group = (!group.is_empty()).then_some(group);
        let Err((io, why)) = self.announce(peer, app_id.clone(), (None, group), io, ctx) else {
            return Ok(());
        };
        Err(Refusal {
            io,
            welcome: self.unannounced_welcome(&app_id, why),
        })
    }
}

/// Why an app whose sessions take only channels in a group did not take one.
pub(crate) fn outside_group(app_id: &str, local: PeerId) -> String {
    format!(
        "app '{app_id}' on peer {local} takes only channels in a group (Apps.Session's group), \
         and not this one's"
    )
}

impl OverlayService {
    /// The welcome that tells a remote opener why its channel to `app_id` was not announced.
    pub(crate) fn unannounced_welcome(&self, app_id: &str, why: Unannounced) -> ChannelWelcome {
        let local = self.net.local_peer_id();
        let max = self.config.max_channels;
        let (result, message) = match why {
            Unannounced::TooManyChannels => (
                channel_welcome::Result::Busy,
                format!("too many open channels (limit {max})"),
            ),
            Unannounced::PeerFull(full) => (channel_welcome::Result::Busy, full.to_string()),
            Unannounced::NotListening => (
                channel_welcome::Result::AppNotListening,
                format!("app '{app_id}' is not running on peer {local}"),
            ),
            Unannounced::OutsideGroup => (
                channel_welcome::Result::NotMember,
                outside_group(app_id, local),
            ),
            Unannounced::Backlog => (
                channel_welcome::Result::Busy,
                format!("app '{app_id}' has too many channels waiting to be accepted"),
            ),
            Unannounced::NoId(e) => {
                warn!("cannot number a channel: {e}");
                let why = "the node cannot take channels now".to_owned();
                (channel_welcome::Result::Busy, why)
            }
        };
        channel::welcome(result, message)
    }
}
