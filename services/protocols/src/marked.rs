//! The end mark of a channel stream: how the reader of a channel tells a clean end of the
//! frames from a broken channel.
//!
//! Over TCP, libp2p's yamux reads a reset stream, and a connection that went away, as a plain
//! end of stream: a channel cut short would look complete. So both nodes of a channel that
//! agreed on it (`end_mark` in the hello and the welcome) end their frames with a mark, a length
//! prefix no frame can have ([`END_MARK`]), just before they shut their side down. The reader
//! takes the mark out: the end of the stream after it is a clean end, the end of the stream
//! without it an error ([`io::ErrorKind::ConnectionReset`]). [`EndMarked`] does both, under any
//! reader or writer of frames, without copying: it only follows the frames' lengths.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::wire::HEADER;

/// The length prefix that marks the end of a channel's frames.
pub const END_MARK: u32 = u32::MAX;
/// A read buffer smaller than this is read through one of this size.
const SCRATCH: usize = 2 * HEADER;

/// A channel stream whose frames end with the end mark (when `marking`), or a plain one.
#[derive(Debug)]
pub struct EndMarked<S> {
    inner: S,
    marking: bool,
    /// Bytes of the current frame still to come.
    left: u64,
    /// The first bytes of a length prefix, held back until it is whole.
    held: [u8; HEADER],
    held_len: usize,
    /// The mark has been read: only the end of the stream may follow.
    ended: bool,
    /// Bytes of the mark written so far, on shutdown.
    mark_written: usize,
    /// Bytes read for a reader whose buffer was too small, not yet handed on.
    spill: [u8; SCRATCH],
    spill_at: usize,
    spill_len: usize,
}

impl<S> EndMarked<S> {
    /// `inner`, with its frames' end marked if `marking`.
    pub fn new(inner: S, marking: bool) -> Self {
        EndMarked {
            inner,
            marking,
            left: 0,
            held: [0; HEADER],
            held_len: 0,
            ended: false,
            mark_written: 0,
            spill: [0; SCRATCH],
            spill_at: 0,
            spill_len: 0,
        }
    }

    /// Whether the end is marked.
    pub fn marking(&self) -> bool {
        self.marking
    }

    /// Follows the frames in `region`, which starts at a frame boundary or inside a frame's
    /// bytes: how much of it to hand on (a held-back partial length prefix or the mark is
    /// not).
    fn scan(&mut self, region: &[u8]) -> io::Result<usize> {
        let mut at = 0;
        while at < region.len() {
            if self.left > 0 {
                let take = self.left.min((region.len() - at) as u64);
                self.left -= take;
                at += take as usize;
                continue;
            }
            if self.ended {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bytes after the end mark of a channel",
                ));
            }
            let Some(header) = region.get(at..at + HEADER) else {
                let partial = &region[at..];
                self.held[..partial.len()].copy_from_slice(partial);
                self.held_len = partial.len();
                return Ok(at);
            };
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            if len == END_MARK {
                if at + HEADER < region.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bytes after the end mark of a channel",
                    ));
                }
                self.ended = true;
                return Ok(at);
            }
            self.left = u64::from(len);
            at += HEADER;
        }
        Ok(at)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for EndMarked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.marking {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.spill_len > this.spill_at {
            let take = buf.remaining().min(this.spill_len - this.spill_at);
            buf.put_slice(&this.spill[this.spill_at..this.spill_at + take]);
            this.spill_at += take;
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() < SCRATCH {
            // Too small to scan in place: read through a buffer of our own, and keep what
            // does not fit for the next reads (rare: frame readers read far more at once).
            let mut scratch = [0u8; SCRATCH];
            let mut small = ReadBuf::new(&mut scratch);
            ready!(this.poll_read_in_place(cx, &mut small))?;
            let read = small.filled();
            let take = buf.remaining().min(read.len());
            buf.put_slice(&read[..take]);
            this.spill[..read.len() - take].copy_from_slice(&read[take..]);
            this.spill_len = read.len() - take;
            this.spill_at = 0;
            return Poll::Ready(Ok(()));
        }
        this.poll_read_in_place(cx, buf)
    }
}

impl<S: AsyncRead + Unpin> EndMarked<S> {
    /// Reads into `buf` (room for at least a length prefix and a held-back one), then takes
    /// out what is not the frames' bytes. Never returns an empty read but at the end.
    fn poll_read_in_place(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let start = buf.filled().len();
            let held = self.held_len;
            // A partial length prefix held back goes first, to be scanned whole this time.
            if held > 0 && buf.remaining() <= held {
                // `poll_read_in_place` is only called with room for more than one prefix.
                return Poll::Ready(Err(io::Error::other("read buffer too small")));
            }
            buf.put_slice(&self.held[..held]);
            self.held_len = 0;
            let before = buf.filled().len();
            let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
            if !matches!(polled, Poll::Ready(Ok(()))) {
                // Nothing read: the held bytes wait again.
                buf.set_filled(start);
                self.held_len = held;
                return polled;
            }
            if buf.filled().len() == before {
                buf.set_filled(start);
                return Poll::Ready(if self.ended {
                    Ok(())
                } else if held > 0 || self.left > 0 {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the channel's stream ended inside a frame",
                    ))
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "the channel's stream ended without its end mark: the peer reset it, \
                         or its node or the connection went away",
                    ))
                });
            }
            let kept = self.scan(&buf.filled()[start..])?;
            buf.set_filled(start + kept);
            if kept > 0 {
                return Poll::Ready(Ok(()));
            }
            // Only a held-back prefix or the mark: read on.
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for EndMarked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    /// Writes the mark (when marking), then shuts the stream down.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.marking {
            let mark = END_MARK.to_be_bytes();
            while this.mark_written < HEADER {
                let n =
                    ready!(Pin::new(&mut this.inner).poll_write(cx, &mark[this.mark_written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                this.mark_written += n;
            }
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    fn frames() -> Vec<u8> {
        let mut bytes = Vec::new();
        for frame in [&b"hello"[..], b"", &[0xff; 300]] {
            bytes.extend(u32::try_from(frame.len()).unwrap().to_be_bytes());
            bytes.extend_from_slice(frame);
        }
        bytes
    }

    /// Reads `sent` (written in pieces of `piece` bytes) through a marked reader, in reads of
    /// at most `room` bytes.
    async fn read_through(sent: Vec<u8>, piece: usize, room: usize) -> io::Result<Vec<u8>> {
        let (mut near, far) = duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            for chunk in sent.chunks(piece) {
                near.write_all(chunk).await.unwrap();
                near.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut reader = EndMarked::new(far, true);
        let mut got = Vec::new();
        let mut buf = vec![0u8; room];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        Ok(got)
    }

    #[tokio::test]
    async fn the_mark_is_taken_out_wherever_the_reads_cut_it() {
        let mut sent = frames();
        sent.extend(END_MARK.to_be_bytes());
        for piece in [1, 2, 3, 5, 7, 64, 1000] {
            for room in [1, 3, 8, 9, 64 * 1024] {
                let got = read_through(sent.clone(), piece, room).await.unwrap();
                assert_eq!(got, frames(), "pieces of {piece}, reads of {room}");
            }
        }
    }

    #[tokio::test]
    async fn an_end_without_the_mark_is_a_reset_not_an_end() {
        for piece in [1, 4, 1000] {
            let err = read_through(frames(), piece, 64 * 1024).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        }
        let mut cut = frames();
        cut.truncate(cut.len() - 10);
        let err = read_through(cut, 1000, 64 * 1024).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[tokio::test]
    async fn bytes_after_the_mark_are_an_error() {
        let mut sent = frames();
        sent.extend(END_MARK.to_be_bytes());
        sent.extend(b"\0\0\0\x01x");
        let err = read_through(sent, 1000, 64 * 1024).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[tokio::test]
    async fn shutdown_writes_the_mark_and_a_marked_reader_sees_a_clean_end() {
        let (near, far) = duplex(1024);
        let mut writer = EndMarked::new(near, true);
        let mut reader = EndMarked::new(far, true);
        writer.write_all(&frames()).await.unwrap();
        writer.shutdown().await.unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, frames());
    }

    #[tokio::test]
    async fn an_unmarked_stream_passes_everything_through() {
        let (near, far) = duplex(1024);
        let mut writer = EndMarked::new(near, false);
        let mut reader = EndMarked::new(far, false);
        writer.write_all(b"\xff\xff\xff\xff").await.unwrap();
        writer.shutdown().await.unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"\xff\xff\xff\xff");
    }
}
