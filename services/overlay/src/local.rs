//! Local channels: `open` to this node's own peer id connects two sessions on this node (an app
//! and its helper, or two processes of one app). The channel is announced and accepted exactly
//! as a remote one (same limits, same 30 s), but its bytes go through an in-memory pipe
//! carrying the same length-delimited frames as a `/p2pos/channel/1` stream, with no handshake:
//! the gateway's splice cannot tell the difference. Channels to a service provided by an app of
//! this node go the same way (`registry`).

use std::sync::Arc;

use libp2p::PeerId;
use p2pos_kernel::Store;
use p2pos_protocols::apps::ChannelStream;
use tokio::{
    io::DuplexStream,
    sync::{OwnedSemaphorePermit, oneshot},
};

use actix::Context;

use crate::{
    Error,
    apps::SESSION_BUFFER,
    counted::count,
    pending::{ServiceOrigin, Unannounced},
    service::OverlayService,
    task::{Fut, ready},
};

/// Bytes buffered in each direction of a local channel's pipe before the writer waits for the
/// reader (the flow control a libp2p stream has from yamux or QUIC).
pub(crate) const PIPE_BUFFER: usize = 256 * 1024;

/// The acceptor's side of a local channel while it is pending: its end of the pipe, and the
/// opener waiting to hear whether it was accepted.
pub(crate) struct LocalEnd {
    io: DuplexStream,
    answer: oneshot::Sender<Result<(), Error>>,
}

impl LocalEnd {
    /// The app accepted: the opener gets its end, the acceptor this one.
    pub(crate) fn accept(
        self,
        channel_id: u64,
        peer: PeerId,
        app_id: String,
    ) -> Result<ChannelStream, Error> {
        let LocalEnd { io, answer } = self;
        if answer.send(Ok(())).is_err() {
            return Err(Error::OpenerGone { app_id, channel_id });
        }
        Ok(ChannelStream {
            channel_id,
            peer_id: peer.to_string(),
            app_id,
            inbound: true,
            io: Box::new(io),
        })
    }

    /// The app did not accept in time: the opener gets `why`.
    pub(crate) fn expire(self, why: Error) {
        let _ = self.answer.send(Err(why));
    }
}

/// The opener's side of a local channel announced to the acceptor's session: its end of the
/// pipe, and the answer it waits for.
pub(crate) struct LocalOpening {
    io: DuplexStream,
    answered: oneshot::Receiver<Result<(), Error>>,
    app_id: String,
    local: PeerId,
}

impl LocalOpening {
    /// Waits until the app accepts the channel (or it expires, or the session it was
    /// announced on ends): the opener's end, to be counted among the node's channels.
    pub(crate) async fn opened(self, store: Arc<dyn Store>) -> Result<ChannelStream, Error> {
        let LocalOpening {
            io,
            answered,
            app_id,
            local,
        } = self;
        // The sender goes only with the pending channel: accepted, expired, refused because
        // its session ended, or the service stopping (which drops every pending channel).
        answered.await.map_err(|_| Error::NetworkStopped)??;
        Ok(ChannelStream {
            channel_id: store.next_id()?,
            peer_id: local.to_string(),
            app_id,
            inbound: false,
            io: Box::new(io),
        })
    }
}

impl OverlayService {
    /// Opens a channel to the newest session of `app_id` on this node. The opener holds
    /// `channel_permit` (its place among the node's channels) and `open_permit` (one of the
    /// opens in progress) until then; the acceptor's end takes a place of its own, as the
    /// receiving end of a remote channel does.
    pub(crate) fn open_local(
        &mut self,
        app_id: String,
        channel_permit: OwnedSemaphorePermit,
        open_permit: OwnedSemaphorePermit,
        ctx: &mut Context<Self>,
    ) -> Fut<ChannelStream> {
        let opening = match self.announce_local(app_id, None, ctx) {
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

    /// Announces a local channel to the newest session of `app_id` (to a service it provides
    /// when `origin` is set; the opener's stream then names `app_id`, the provider).
    pub(crate) fn announce_local(
        &mut self,
        app_id: String,
        origin: Option<ServiceOrigin>,
        ctx: &mut Context<Self>,
    ) -> Result<LocalOpening, Error> {
        let local = self.net.local_peer_id();
        let (opener_io, acceptor_io) = tokio::io::duplex(PIPE_BUFFER);
        let (answer, answered) = oneshot::channel();
        let end = LocalEnd {
            io: acceptor_io,
            answer,
        };
        if let Err((_, why)) = self.announce(local, app_id.clone(), origin, end, ctx) {
            return Err(match why {
                Unannounced::TooManyChannels => Error::TooManyChannels {
                    limit: usize::try_from(self.config.max_channels).unwrap_or(usize::MAX),
                },
                Unannounced::NotListening => Error::NotRunningHere { app_id },
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
        })
    }
}
