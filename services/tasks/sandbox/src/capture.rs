//! Bounded capture of the job's stdout or stderr: keeps the first `capacity` bytes, drops the
//! rest and remembers that it did.
//!
//! Unlike wasmtime-wasi's `MemoryOutputPipe`, a full capture keeps accepting writes (and drops
//! them), so a job that prints too much is not broken by its output limit: it runs on, and the
//! report says its output was truncated.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The permit a write is given: any size is accepted, this is how much at a time.
const WRITE_PERMIT: usize = 64 * 1024;

/// One captured stream; clones share the same buffer.
#[derive(Clone, Debug)]
pub(crate) struct Capture {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Debug)]
struct Captured {
    capacity: usize,
    bytes: Vec<u8>,
    truncated: bool,
}

impl Capture {
    /// A capture keeping at most `capacity` bytes.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Captured {
                capacity,
                bytes: Vec::new(),
                truncated: false,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Captured> {
        // A panic while holding the lock cannot leave the buffer half-written in a way that
        // matters: keep what is there.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append(&self, buf: &[u8]) {
        let mut captured = self.lock();
        let room = captured.capacity.saturating_sub(captured.bytes.len());
        let kept = buf.len().min(room);
        captured.bytes.extend_from_slice(&buf[..kept]);
        if kept < buf.len() {
            captured.truncated = true;
        }
    }

    /// What was captured so far, and whether anything was dropped.
    pub(crate) fn snapshot(&self) -> (Vec<u8>, bool) {
        let captured = self.lock();
        (captured.bytes.clone(), captured.truncated)
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_bytes_and_flags_the_rest() {
        let capture = Capture::new(4);
        capture.append(b"ab");
        assert_eq!(capture.snapshot(), (b"ab".to_vec(), false));
        capture.append(b"cd");
        assert_eq!(capture.snapshot(), (b"abcd".to_vec(), false));
        capture.append(b"e");
        assert_eq!(capture.snapshot(), (b"abcd".to_vec(), true));
    }
}
