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

/// When bytes last moved on a stream, in milliseconds since it was accepted (or made): what
/// accept loops close idle inbound streams by, and port forwarding idle tunnels.
#[derive(Debug, Clone)]
pub struct Activity(Arc<(Instant, AtomicU64)>);

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// Bytes moved now, as far as it knows.
    pub fn new() -> Self {
        Self(Arc::new((Instant::now(), AtomicU64::new(0))))
    }

    /// Bytes moved now.
    pub fn touch(&self) {
        let (since, last) = &*self.0;
        let now = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Never backwards, should two tasks read and write halves of the stream.
        last.fetch_max(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        let (since, last) = &*self.0;
        *since + Duration::from_millis(last.load(Ordering::Relaxed))
    }

    /// Ends once no byte has moved for `idle` (never, for an idle time too long to count).
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let Some(deadline) = self.last().checked_add(idle) else {
                return std::future::pending().await;
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_time_counts_from_the_last_byte_and_may_be_unlimited() {
        let activity = Activity::new();
        tokio::time::sleep(Duration::from_secs(5)).await;
        activity.touch();
        let started = Instant::now();
        activity.idle_for(Duration::from_secs(10)).await;
        // Idle time counts from the last byte (the touch), not from the stream's start.
        assert_eq!(started.elapsed().as_secs(), 10);

        let unlimited = tokio::time::timeout(
            Duration::from_secs(365 * 24 * 3600),
            activity.idle_for(Duration::MAX),
        )
        .await;
        assert!(unlimited.is_err(), "Duration::MAX never closes a stream");
    }
}
