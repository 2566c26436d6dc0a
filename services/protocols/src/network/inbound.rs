//! An inbound stream as an accept loop hands it to its handler: the libp2p stream, the
//! longest frame the protocol's [`Limits`](super::Limits) allow, and a note of when bytes last
//! moved, by which the loop closes a stream idle longer than its limits allow.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::{AsyncRead, AsyncWrite};
use libp2p::Stream;
use tokio::time::Instant;

/// When bytes last moved on a stream, in milliseconds since it was accepted.
#[derive(Debug, Clone)]
pub(crate) struct Activity(Arc<(Instant, AtomicU64)>);

impl Activity {
    pub(crate) fn new() -> Self {
        Self(Arc::new((Instant::now(), AtomicU64::new(0))))
    }

    fn touch(&self) {
        let (since, last) = &*self.0;
        let now = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
        last.store(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        let (since, last) = &*self.0;
        *since + Duration::from_millis(last.load(Ordering::Relaxed))
    }

    /// Ends once no byte has moved for `idle`.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.last() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// An inbound stream of a protocol served with [`Network::accept`](super::Network::accept):
/// reads and writes as the libp2p stream does (`futures` I/O; `.compat()` for tokio's).
pub struct InboundStream {
    stream: Stream,
    activity: Activity,
    max_frame: usize,
}

impl std::fmt::Debug for InboundStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundStream")
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

impl InboundStream {
    pub(crate) fn new(stream: Stream, activity: Activity, max_frame: usize) -> Self {
        Self {
            stream,
            activity,
            max_frame,
        }
    }

    /// The longest frame the protocol's limits allow: what a handler reads at most at once.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl AsyncRead for InboundStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        read
    }
}

impl AsyncWrite for InboundStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}
