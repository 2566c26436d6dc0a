//! The one copy loop between a local socket and a channel's stream ("socket ⇄ libp2p
//! stream"), used by the gateway's data sockets and by port forwarding.
//!
//! Both directions run at once, each through one buffer of [`CHUNK`] bytes, each awaiting its
//! writes (back-pressure reaches the other end both ways), each ended on its own: the end of one
//! side's input shuts the other side's write half down (a half-close). Two framings:
//! - [`Framing::Frames`]: the socket carries the channel's frames as the wire frames them (a
//!   4-byte big-endian length, then the bytes). The bytes are copied as they are read, whole
//!   reads at a time, never decoded or re-framed: only the lengths are checked as they pass, so
//!   a frame over the limit, or an end inside a frame, fails the pipe.
//! - [`Framing::Bytes`]: the socket carries a plain byte stream: each read of the socket becomes
//!   one frame, and frames become bytes (their lengths stripped in place, one write per read).
//!
//! The first failure ends both directions, and says which side caused it ([`PipeError`]): the
//! caller then drops the stream unclosed (a reset for the remote) rather than closing it.

use std::{
    io,
    sync::atomic::{AtomicBool, Ordering},
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wire::{HEADER, MAX_CHANNEL_FRAME, MAX_PAYLOAD};

/// The most bytes one read takes, and so the largest frame [`Framing::Bytes`] writes.
pub const CHUNK: usize = 64 * 1024;

/// What the local socket carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Frames as on the wire: a 4-byte big-endian length, then the bytes.
    Frames,
    /// A plain byte stream.
    Bytes,
}

/// Which end of the pipe failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The local socket (the app, or a forwarded TCP connection).
    Local,
    /// The channel's stream (the remote peer, or the network between).
    Remote,
}

/// Why a pipe ended before both directions ended cleanly.
#[derive(Debug, thiserror::Error)]
pub enum PipeError {
    /// A frame announced more bytes than its side may send.
    #[error("a frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The side that sent it.
        side: Side,
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A side's input ended inside a frame.
    #[error("the input ended inside a frame")]
    Truncated {
        /// The side whose input it was.
        side: Side,
    },
    /// The local socket was closed whole while the remote still sent (see
    /// [`Ends::local_closed`]).
    #[error("the socket was closed before the remote's frames ended")]
    Abandoned,
    /// Reading from or writing to a side failed.
    #[error("{1}")]
    Io(Side, #[source] io::Error),
}

impl PipeError {
    /// The side that caused it.
    pub fn side(&self) -> Side {
        match self {
            PipeError::TooLarge { side, .. } | PipeError::Truncated { side } => *side,
            PipeError::Abandoned => Side::Local,
            PipeError::Io(side, _) => *side,
        }
    }
}

/// What a pipe's owner learns and tells while it runs.
pub trait Ends {
    /// The remote's input has ended cleanly; the local write half is shut down next (so what
    /// the owner says here comes before the local side sees the end).
    fn remote_ended(&mut self) {}
    /// Whether the local socket, whose input just ended, was closed whole rather than only
    /// shut down for writing (a unix socket can tell). While the remote still sends, a closed
    /// socket abandons the channel ([`PipeError::Abandoned`]) rather than half-closing it.
    fn local_closed(&self) -> bool {
        false
    }
}

/// No owner to tell, and a socket that cannot tell a close from a shutdown (TCP).
impl Ends for () {}

/// Copies between `local` and `remote` until both directions have ended, telling `ends` what
/// happens. Frames from the local side may hold [`MAX_PAYLOAD`] bytes, from the remote
/// [`MAX_CHANNEL_FRAME`].
pub async fn pipe<L, R>(
    local: &mut L,
    remote: &mut R,
    framing: Framing,
    ends: impl Ends,
) -> Result<(), PipeError>
where
    L: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + AsyncWrite + Unpin,
{
    pipe_within(local, remote, framing, ends, MAX_PAYLOAD).await
}

/// As [`pipe`], but frames from the local side may hold at most `local_max` bytes (at most
/// [`MAX_PAYLOAD`]): what the remote's path can carry, over a relay's circuit.
pub async fn pipe_within<L, R>(
    local: &mut L,
    remote: &mut R,
    framing: Framing,
    ends: impl Ends,
    local_max: usize,
) -> Result<(), PipeError>
where
    L: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + AsyncWrite + Unpin,
{
    let (local_in, local_out) = tokio::io::split(local);
    let (remote_in, remote_out) = tokio::io::split(remote);
    // Both directions run in this task (never contended); the task may move between threads.
    let ends = std::sync::Mutex::new(ends);
    let lock = || {
        ends.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let remote_done = AtomicBool::new(false);
    let local_end = || {
        if !remote_done.load(Ordering::Relaxed) && lock().local_closed() {
            return Err(PipeError::Abandoned);
        }
        Ok(())
    };
    let remote_end = || {
        remote_done.store(true, Ordering::Relaxed);
        lock().remote_ended();
        Ok(())
    };
    let up = copy(
        local_in,
        remote_out,
        Side::Local,
        framing,
        local_max.min(MAX_PAYLOAD),
        local_end,
    );
    let down = copy(
        remote_in,
        local_out,
        Side::Remote,
        framing,
        MAX_CHANNEL_FRAME,
        remote_end,
    );
    tokio::try_join!(up, down)?;
    Ok(())
}

/// One direction: from the `from` side's input to the other side's output, then, at the clean
/// end of the input, `at_end` and a shutdown of that output. With [`Framing::Frames`] the bytes
/// pass as they are; with [`Framing::Bytes`] the socket's side is framed or unframed on the way.
async fn copy<I, O>(
    mut input: I,
    mut output: O,
    from: Side,
    framing: Framing,
    max: usize,
    at_end: impl FnOnce() -> Result<(), PipeError>,
) -> Result<(), PipeError>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let to = match from {
        Side::Local => Side::Remote,
        Side::Remote => Side::Local,
    };
    let write_err = |e| PipeError::Io(to, e);
    // Bytes read from the local socket get a length prefix, written into the same buffer so
    // that a frame is one write.
    let framed = framing == Framing::Bytes && from == Side::Local;
    let unframed = framing == Framing::Bytes && from == Side::Remote;
    let start = if framed { HEADER } else { 0 };
    let mut buf = vec![0u8; start + CHUNK];
    let mut frames = FrameCursor::default();
    loop {
        let n = input
            .read(&mut buf[start..])
            .await
            .map_err(|e| PipeError::Io(from, e))?;
        if n == 0 {
            break;
        }
        if framed {
            // `n` is at most CHUNK.
            buf[..HEADER].copy_from_slice(&(n as u32).to_be_bytes());
            output
                .write_all(&buf[..HEADER + n])
                .await
                .map_err(write_err)?;
        } else {
            let scanned = if unframed {
                frames.unframe(&mut buf[..n], max)
            } else {
                frames.scan(&buf[..n], max)
            };
            // What came before a bad header still goes: the frames before it were good.
            let (good, failure) = match scanned {
                Ok(good) => (good, None),
                Err((good, len)) => (good, Some(len)),
            };
            output.write_all(&buf[..good]).await.map_err(write_err)?;
            if let Some(len) = failure {
                let _ = output.flush().await;
                return Err(PipeError::TooLarge {
                    side: from,
                    len,
                    max,
                });
            }
        }
        output.flush().await.map_err(write_err)?;
    }
    if !frames.at_boundary() {
        return Err(PipeError::Truncated { side: from });
    }
    at_end()?;
    output.shutdown().await.map_err(write_err)
}

/// Where a stream of frames stands between reads: inside a length prefix, or inside a frame's
/// bytes.
#[derive(Debug, Default)]
pub struct FrameCursor {
    /// The bytes of a length prefix read so far.
    header: [u8; HEADER],
    /// How many of them.
    have: usize,
    /// Bytes of the current frame still to come.
    left: usize,
}

impl FrameCursor {
    /// Whether the frames so far are whole: no length prefix or frame is cut off.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Walks the next `chunk` of the stream, checking each length against `max`. `Ok(len)`:
    /// all of it is good. `Err((good, len))`: a frame announces `len` bytes, more than `max`;
    /// the first `good` bytes came before its length prefix.
    pub fn scan(&mut self, chunk: &[u8], max: usize) -> Result<usize, (usize, usize)> {
        let mut at = 0;
        while at < chunk.len() {
            if self.left > 0 {
                let take = self.left.min(chunk.len() - at);
                self.left -= take;
                at += take;
                continue;
            }
            // A prefix begun in an earlier chunk began before this one.
            let header_start = at;
            if let Some(len) = self.take_header(chunk, &mut at)
                && len > max
            {
                return Err((header_start, len));
            }
        }
        Ok(chunk.len())
    }

    /// As [`FrameCursor::scan`], moving the frames' bytes (not their lengths) to the start of
    /// `chunk` as it goes: `Ok(len)` and `Err((len, _))` say how many bytes of frames are there.
    pub fn unframe(&mut self, chunk: &mut [u8], max: usize) -> Result<usize, (usize, usize)> {
        let mut at = 0;
        let mut kept = 0;
        while at < chunk.len() {
            if self.left > 0 {
                let take = self.left.min(chunk.len() - at);
                chunk.copy_within(at..at + take, kept);
                kept += take;
                self.left -= take;
                at += take;
                continue;
            }
            if let Some(len) = self.take_header(chunk, &mut at)
                && len > max
            {
                return Err((kept, len));
            }
        }
        Ok(kept)
    }

    /// Takes what `chunk` has, from `at`, of the length prefix that starts (or goes on) there;
    /// once it is whole, the length it announces (whose bytes are then expected).
    fn take_header(&mut self, chunk: &[u8], at: &mut usize) -> Option<usize> {
        let take = (HEADER - self.have).min(chunk.len() - *at);
        self.header[self.have..self.have + take].copy_from_slice(&chunk[*at..*at + take]);
        self.have += take;
        *at += take;
        if self.have < HEADER {
            return None;
        }
        self.have = 0;
        self.left = u32::from_be_bytes(self.header) as usize;
        Some(self.left)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;

    fn frame(bytes: &[u8]) -> Vec<u8> {
        let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        framed
    }

    /// A pipe between two in-memory sockets; returns the app's end and the remote's end.
    fn spawn_pipe(
        framing: Framing,
    ) -> (
        DuplexStream,
        DuplexStream,
        tokio::task::JoinHandle<Result<(), PipeError>>,
    ) {
        let (app, mut local) = duplex(256 * 1024);
        let (peer, mut remote) = duplex(256 * 1024);
        let task = tokio::spawn(async move { pipe(&mut local, &mut remote, framing, ()).await });
        (app, peer, task)
    }

    #[test]
    fn the_cursor_follows_frames_cut_anywhere() {
        let mut stream = frame(b"hello");
        stream.extend(frame(b""));
        stream.extend(frame(&[7u8; 300]));
        for cut in 0..stream.len() {
            let mut cursor = FrameCursor::default();
            cursor.scan(&stream[..cut], 1000).unwrap();
            cursor.scan(&stream[cut..], 1000).unwrap();
            assert!(cursor.at_boundary(), "cut at {cut}");
            let mut cursor = FrameCursor::default();
            cursor.scan(&stream[..cut], 1000).unwrap();
            let whole = [0, 9, 13, stream.len()].contains(&cut);
            assert_eq!(cursor.at_boundary(), whole, "cut at {cut}");
        }
    }

    #[test]
    fn unframing_in_place_keeps_the_bytes_of_frames_cut_anywhere() {
        let parts: [&[u8]; 5] = [b"a", b"", b"bc", &[9u8; 70], b"d"];
        let mut stream = Vec::new();
        for part in parts {
            stream.extend(frame(part));
        }
        let whole: Vec<u8> = parts.concat();
        for cut in 0..stream.len() {
            let mut cursor = FrameCursor::default();
            let mut got = Vec::new();
            for piece in [&stream[..cut], &stream[cut..]] {
                let mut chunk = piece.to_vec();
                let kept = cursor.unframe(&mut chunk, 1000).unwrap();
                got.extend_from_slice(&chunk[..kept]);
            }
            assert_eq!(got, whole, "cut at {cut}");
            assert!(cursor.at_boundary());
        }
    }

    #[test]
    fn an_oversized_length_is_caught_even_split_across_reads() {
        let mut stream = frame(b"ok");
        stream.extend(1001u32.to_be_bytes());
        for cut in 6..stream.len() {
            let mut cursor = FrameCursor::default();
            let first = cursor.scan(&stream[..cut], 1000);
            let second = cursor.scan(&stream[cut..], 1000);
            assert_eq!(first.and(second), Err((0, 1001)), "cut at {cut}");
        }
        let mut cursor = FrameCursor::default();
        assert_eq!(cursor.scan(&stream, 1000), Err((6, 1001)));
    }

    #[tokio::test]
    async fn frames_pass_unchanged_both_ways_and_half_close_on_its_own() {
        let (mut app, mut peer, task) = spawn_pipe(Framing::Frames);
        let mut sent = Vec::new();
        for i in 0..1000u32 {
            sent.extend(frame(&i.to_be_bytes()));
        }
        sent.extend(frame(&vec![9u8; MAX_PAYLOAD]));
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                app.write_all(&sent).await.unwrap();
                app.shutdown().await.unwrap();
                app
            })
        };
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, sent, "the app's half-close ends the remote's input");
        let mut app = writer.await.unwrap();
        // The remote still sends after the app's half-close.
        peer.write_all(&frame(b"late")).await.unwrap();
        peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        app.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, frame(b"late"));
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_app_frame_over_the_limit_fails_after_the_good_ones() {
        let (mut app, mut peer, task) = spawn_pipe(Framing::Frames);
        let mut sent = frame(b"fine");
        sent.extend(u32::try_from(MAX_PAYLOAD + 1).unwrap().to_be_bytes());
        app.write_all(&sent).await.unwrap();
        let err = task.await.unwrap().unwrap_err();
        assert!(
            matches!(err, PipeError::TooLarge { side: Side::Local, len, .. } if len == MAX_PAYLOAD + 1),
            "{err:?}"
        );
        let mut got = Vec::new();
        let _ = peer.read_to_end(&mut got).await;
        assert_eq!(got, frame(b"fine"), "the frame before the bad one went");
    }

    #[tokio::test]
    async fn an_end_inside_a_frame_is_the_app_s_failure_not_a_clean_end() {
        let (mut app, _peer, task) = spawn_pipe(Framing::Frames);
        app.write_all(&frame(b"cut short")[..6]).await.unwrap();
        app.shutdown().await.unwrap();
        let err = task.await.unwrap().unwrap_err();
        assert!(
            matches!(err, PipeError::Truncated { side: Side::Local }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn bytes_become_frames_and_frames_become_bytes() {
        let (mut app, mut peer, task) = spawn_pipe(Framing::Bytes);
        app.write_all(b"plain bytes").await.unwrap();
        app.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, frame(b"plain bytes"));
        let mut sent = frame(b"one, ");
        sent.extend(frame(b""));
        sent.extend(frame(b"two"));
        peer.write_all(&sent).await.unwrap();
        peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        app.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"one, two");
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_remote_frame_over_the_limit_is_the_remote_s_failure() {
        let (_app, mut peer, task) = spawn_pipe(Framing::Bytes);
        peer.write_all(&u32::try_from(MAX_CHANNEL_FRAME + 1).unwrap().to_be_bytes())
            .await
            .unwrap();
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.side(), Side::Remote, "{err:?}");
    }
}
