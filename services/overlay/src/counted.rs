//! Counting open channels: a channel's byte stream holds one permit of the node's channel
//! limit (`Config::max_channels`) for as long as it lives, so the permit goes back when whoever
//! owns the stream (the gateway's splice) drops it, however the channel ends.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use p2pos_protocols::apps::{ChannelStream, Duplex};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::OwnedSemaphorePermit,
};

/// A channel's bytes and the permit they count against.
struct CountedIo {
    io: Box<dyn Duplex>,
    _permit: OwnedSemaphorePermit,
}

/// `stream`, now holding `permit` until its bytes are dropped.
pub(crate) fn count(stream: ChannelStream, permit: OwnedSemaphorePermit) -> ChannelStream {
    let ChannelStream {
        channel_id,
        peer_id,
        app_id,
        inbound,
        group,
        io,
    } = stream;
    ChannelStream {
        channel_id,
        peer_id,
        app_id,
        inbound,
        group,
        io: Box::new(CountedIo {
            io,
            _permit: permit,
        }),
    }
}

impl AsyncRead for CountedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
