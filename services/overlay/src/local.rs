//! Local channels: `open` to this node's own peer id connects two sessions on this node (an app
//! and its helper, or two processes of one app). The channel is announced and accepted exactly
//! as a remote one (same limits, same 30 s), but its bytes go through an in-memory pipe
//! carrying the same length-delimited frames as a `/p2pos/channel/1` stream, with no handshake:
//! the gateway's splice cannot tell the difference. Channels to a service provided by an app of
//! this node go the same way (`registry`).

use p2pos_protocols::apps::ChannelStream;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use actix::Context;

use crate::{
    Error,
    announced::{LocalEnd, LocalOpening, PIPE_BUFFER, ServiceOrigin, Unannounced},
    counted::count,
    pending::outside_group,
    sessions::SESSION_BUFFER,
    state::OverlayService,
    task::{Fut, ready},
};

impl OverlayService {
    /// Opens a channel to the newest session of `app_id` on this node. The opener holds
    /// `channel_permit` (its place among the node's channels) and `open_permit` (one of the
    /// opens in progress) until then; the acceptor's end takes a place of its own, as the
    /// receiving end of a remote channel does.
    pub(crate) fn open_local(
        &mut self,
        (app_id, group): (String, Option<String>),
        channel_permit: OwnedSemaphorePermit,
        open_permit: OwnedSemaphorePermit,
        ctx: &mut Context<Self>,
    ) -> Fut<ChannelStream> {
        let opening = match self.announce_local(app_id, (None, group), ctx) {
            Ok(opening) => opening,
            Err(e) => return ready(Err(e)),
        };
        let store = self.ctx.store.clone();
        Box::pin(async move {
            let _open = open_permit;
            let stream = opening.opened(store).await?;
            Ok(count(stream, channel_permit))
        })
    }

    /// Announces a local channel to the newest session of `app_id` that takes it (to a
    /// service it provides when `origin` is set; the opener's stream then names `app_id`, the
    /// provider; in `group`, an id, when given: the gateway checked this node is a member).
    pub(crate) fn announce_local(
        &mut self,
        app_id: String,
        (origin, group): (Option<ServiceOrigin>, Option<String>),
        ctx: &mut Context<Self>,
    ) -> Result<LocalOpening, Error> {
        let local = self.net.local_peer_id();
        let (opener_io, acceptor_io) = tokio::io::duplex(PIPE_BUFFER);
        let (answer, answered) = oneshot::channel();
        let end = LocalEnd {
            io: acceptor_io,
            answer,
        };
        let announced = self.announce(local, app_id.clone(), (origin, group.clone()), end, ctx);
        if let Err((_, why)) = announced {
            return Err(match why {
                // A local channel counts against the node's limit only.
                Unannounced::TooManyChannels | Unannounced::PeerFull(_) => Error::TooManyChannels {
                    limit: usize::try_from(self.config.max_channels).unwrap_or(usize::MAX),
                },
                Unannounced::NotListening => Error::NotRunningHere { app_id },
                Unannounced::OutsideGroup => Error::NotMember {
                    peer: local,
                    message: outside_group(&app_id, local),
                },
                Unannounced::Backlog => Error::Busy {
                    what: "channels waiting to be accepted by this app",
                    limit: SESSION_BUFFER,
                },
                Unannounced::NoId(e) => Error::Store(e),
            });
        }
        Ok(LocalOpening {
            io: opener_io,
            answered,
            app_id,
            local,
            group: group.unwrap_or_default(),
        })
    }
}
