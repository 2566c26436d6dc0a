//! A [`Pipe`]: one framed, bidirectional stream of frames, whatever carries it (a P2P OS channel,
//! a bare libp2p stream, a TCP connection), and the [`respond`]er that serves the far end of
//! every benchmark in the same way.
//!
//! The responder's first frame from the driver names its job: `e` echoes every frame back;
//! `s` followed by a big-endian `u64` N swallows N frames and answers one 8-byte frame with the
//! number of bytes it received; `t` followed by a big-endian `u64` N takes N frames that each
//! begin with their sending time ([`stamp_ns`], big-endian `u64`) and answers one frame of N
//! big-endian `u64`s: each frame's one-way time in nanoseconds, by the same clock.

use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// Largest frame any side accepts: a P2P OS channel data frame is at most 1 MiB.
pub(crate) const MAX_FRAME: usize = 1024 * 1024 + 64;

/// Most frames a timed job may take (its report is one frame of 8 bytes each).
pub(crate) const MAX_TIMED: u64 = (MAX_FRAME / 8) as u64;

/// Nanoseconds since this process first asked: one monotonic clock for the sender and the
/// receiver of a timed frame, exact when both are in this process (the responders of the
/// P2P OS nodes and the group subscribers are: they are the bench's gRPC clients).
pub(crate) fn stamp_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The sending time at the start of a timed frame.
pub(crate) fn read_stamp(frame: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = frame.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The sending half of a pipe.
pub(crate) type FrameSink = Pin<Box<dyn Sink<Bytes, Error = anyhow::Error> + Send>>;
/// The receiving half of a pipe.
pub(crate) type FrameStream = Pin<Box<dyn Stream<Item = anyhow::Result<Bytes>> + Send>>;

/// A bidirectional stream of whole frames.
pub(crate) struct Pipe {
    /// Frames to the far end.
    pub(crate) tx: FrameSink,
    /// Frames from the far end.
    pub(crate) rx: FrameStream,
}

impl Pipe {
    /// Frames a byte stream with 4-byte big-endian lengths (the P2P OS wire framing).
    pub(crate) fn framed<R, W>(read: R, write: W) -> Pipe
    where
        R: AsyncRead + Send + 'static,
        W: AsyncWrite + Send + 'static,
    {
        let codec = || {
            LengthDelimitedCodec::builder()
                .max_frame_length(MAX_FRAME)
                .new_codec()
        };
        let tx =
            SinkExt::<Bytes>::sink_map_err(FramedWrite::new(write, codec()), anyhow::Error::from);
        let rx = FramedRead::new(read, codec())
            .map(|frame| frame.map(BytesMut::freeze).map_err(anyhow::Error::from));
        Pipe {
            tx: Box::pin(tx),
            rx: Box::pin(rx),
        }
    }

    /// The next frame; the end of the stream is an error here.
    pub(crate) async fn recv(&mut self) -> anyhow::Result<Bytes> {
        self.rx
            .next()
            .await
            .ok_or_else(|| anyhow!("the stream ended early"))?
    }
}

/// The first frame asking the responder to echo.
pub(crate) fn echo_request() -> Bytes {
    Bytes::from_static(b"e")
}

/// The first frame asking the responder to swallow `frames` frames and report their bytes.
pub(crate) fn sink_request(frames: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(9);
    buf.put_u8(b's');
    buf.put_u64(frames);
    buf.freeze()
}

/// The first frame asking the responder to time `frames` frames one way.
pub(crate) fn timed_request(frames: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(9);
    buf.put_u8(b't');
    buf.put_u64(frames);
    buf.freeze()
}

/// Serves the far end of one pipe until the driver closes it.
pub(crate) async fn respond(mut pipe: Pipe) -> anyhow::Result<()> {
    let job = pipe.recv().await.context("no job frame")?;
    match job.first() {
        Some(b'e') => {
            while let Some(frame) = pipe.rx.next().await {
                pipe.tx.send(frame?).await?;
            }
            Ok(())
        }
        Some(b's') if job.len() == 9 => {
            let mut count = [0u8; 8];
            count.copy_from_slice(&job[1..]);
            let frames = u64::from_be_bytes(count);
            let mut bytes = 0u64;
            for _ in 0..frames {
                bytes += pipe.recv().await?.len() as u64;
            }
            pipe.tx
                .send(Bytes::copy_from_slice(&bytes.to_be_bytes()))
                .await?;
            // Keep the pipe open until the driver is done with it.
            while pipe.rx.next().await.is_some() {}
            Ok(())
        }
        Some(b't') if job.len() == 9 => {
            let mut count = [0u8; 8];
            count.copy_from_slice(&job[1..]);
            let frames = u64::from_be_bytes(count);
            if frames > MAX_TIMED {
                bail!("a timed job takes at most {MAX_TIMED} frames, not {frames}");
            }
            let mut report = BytesMut::with_capacity(frames as usize * 8);
            for _ in 0..frames {
                let frame = pipe.recv().await?;
                let now = stamp_ns();
                let sent = read_stamp(&frame).context("a timed frame without its time")?;
                report.put_u64(now.saturating_sub(sent));
            }
            pipe.tx.send(report.freeze()).await?;
            while pipe.rx.next().await.is_some() {}
            Ok(())
        }
        _ => bail!("unknown job frame {job:?}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn duplex_pair() -> (Pipe, Pipe) {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let (r1, w1) = tokio::io::split(near);
        let (r2, w2) = tokio::io::split(far);
        (Pipe::framed(r1, w1), Pipe::framed(r2, w2))
    }

    #[tokio::test]
    async fn echo_job_echoes_frames_whole() {
        let (mut driver, far) = duplex_pair();
        let responder = tokio::spawn(respond(far));
        driver.tx.send(echo_request()).await.unwrap();
        for frame in [Bytes::new(), Bytes::from_static(b"hello")] {
            driver.tx.send(frame.clone()).await.unwrap();
            assert_eq!(driver.recv().await.unwrap(), frame);
        }
        drop(driver);
        responder.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn sink_job_reports_the_bytes_it_got() {
        let (mut driver, far) = duplex_pair();
        let responder = tokio::spawn(respond(far));
        driver.tx.send(sink_request(3)).await.unwrap();
        for len in [1usize, 10, 100] {
            driver.tx.feed(Bytes::from(vec![0; len])).await.unwrap();
        }
        driver.tx.flush().await.unwrap();
        assert_eq!(driver.recv().await.unwrap().as_ref(), 111u64.to_be_bytes());
        drop(driver);
        responder.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn timed_job_reports_each_frames_one_way_time() {
        let (mut driver, far) = duplex_pair();
        let responder = tokio::spawn(respond(far));
        driver.tx.send(timed_request(2)).await.unwrap();
        let before = stamp_ns();
        for _ in 0..2 {
            let frame = Bytes::copy_from_slice(&stamp_ns().to_be_bytes());
            driver.tx.send(frame).await.unwrap();
        }
        let report = driver.recv().await.unwrap();
        let elapsed = stamp_ns() - before;
        assert_eq!(report.len(), 16);
        for one_way in report.chunks(8) {
            assert!(read_stamp(one_way).unwrap() <= elapsed);
        }
        drop(driver);
        responder.await.unwrap().unwrap();
    }
}
