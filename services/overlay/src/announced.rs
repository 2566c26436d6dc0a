//! What an inbound channel holds while it is announced and not yet accepted: the remote
//! opener's stream after its hello, or, for a channel between two sessions of this node, the
//! acceptor's end of an in-memory pipe and the opener waiting for the answer; and why a channel
//! could not be announced. The overlay actor keeps these (`pending`, `local`).

use std::sync::Arc;

use actix::SpawnHandle;
use libp2p::PeerId;
use p2pos_kernel::{Store, store::StoreError};
use p2pos_protocols::{apps::ChannelStream, marked::EndMarked};
use tokio::{io::DuplexStream, sync::oneshot};

use crate::{Error, inbound::Io};

/// An inbound channel announced to a session and not yet accepted.
pub(crate) struct PendingChannel {
    pub(crate) peer: PeerId,
    pub(crate) app_id: String,
    /// The session it was announced on.
    pub(crate) session: u64,
    /// Set for a channel to a service the app provides.
    pub(crate) origin: Option<ServiceOrigin>,
    /// The group it is in (its id), checked at its hello; empty: none.
    pub(crate) group: String,
    pub(crate) io: PendingIo,
    /// Its place among the node's channels (and its peer's), handed on to the open channel.
    pub(crate) permit: crate::counted::Hold,
    pub(crate) expiry: SpawnHandle,
}

/// The acceptor's side of a pending channel.
pub(crate) enum PendingIo {
    /// A remote peer's `/p2pos/channel/1` stream, after its hello; it waits for the welcome.
    Remote(Io),
    /// A channel opened on this node: the acceptor's end of the pipe, and the opener waiting.
    Local(LocalEnd),
}

impl From<Io> for PendingIo {
    fn from(io: Io) -> Self {
        PendingIo::Remote(io)
    }
}

impl From<LocalEnd> for PendingIo {
    fn from(end: LocalEnd) -> Self {
        PendingIo::Local(end)
    }
}

/// Who opened a channel to a service, and to which: told to the providing app.
pub(crate) struct ServiceOrigin {
    /// The service (`name/version`).
    pub(crate) service: String,
    /// The opener's app.
    pub(crate) from_app: String,
}

/// Why an inbound channel was not announced to the app.
pub(crate) enum Unannounced {
    /// The node has `max_channels` channels open or waiting.
    TooManyChannels,
    /// The remote peer has as many channels open or waiting as one peer may, or the node is
    /// full and the peer has its reserved one.
    PeerFull(crate::counted::PeerFull),
    /// No live session of the app.
    NotListening,
    /// The app's live sessions take only channels in a group, and not this one's.
    OutsideGroup,
    /// The app's newest session has [`crate::sessions::SESSION_BUFFER`] announcements it has not
    /// read.
    Backlog,
    /// The channel could not be numbered.
    NoId(StoreError),
}

/// Bytes buffered in each direction of a local channel's pipe before the writer waits for the
/// reader (the flow control a libp2p stream has from yamux or QUIC).
pub(crate) const PIPE_BUFFER: usize = 256 * 1024;

/// The acceptor's side of a local channel while it is pending: its end of the pipe, and the
/// opener waiting to hear whether it was accepted.
pub(crate) struct LocalEnd {
    pub(crate) io: DuplexStream,
    pub(crate) answer: oneshot::Sender<Result<(), Error>>,
}

impl LocalEnd {
    /// The app accepted: the opener gets its end, the acceptor this one.
    pub(crate) fn accept(
        self,
        channel_id: u64,
        peer: PeerId,
        app_id: String,
        group: String,
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
            group,
            circuit: None,
            // Both ends are this node's: their ends are marked.
            io: Box::new(EndMarked::new(io, true)),
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
    pub(crate) io: DuplexStream,
    pub(crate) answered: oneshot::Receiver<Result<(), Error>>,
    pub(crate) app_id: String,
    pub(crate) local: PeerId,
    pub(crate) group: String,
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
            group,
        } = self;
        // The sender goes only with the pending channel: accepted, expired, refused because
        // its session ended, or the service stopping (which drops every pending channel).
        answered.await.map_err(|_| Error::NetworkStopped)??;
        Ok(ChannelStream {
            channel_id: store.next_id()?,
            peer_id: local.to_string(),
            app_id,
            inbound: false,
            group,
            circuit: None,
            // Both ends are this node's: their ends are marked.
            io: Box::new(EndMarked::new(io, true)),
        })
    }
}
