//! Framing shared by the node-to-node protocols (`proto/p2pos/wire/v1/wire.proto`) and the
//! gateway's channel splice: a 4-byte big-endian length, then the bytes. Reads take exactly one
//! frame and never read ahead, so a stream can be handed on (to the channel splice) right after
//! a handshake. A frame's buffer grows with the bytes that arrive, never with the length a peer
//! announces: a peer that announces 1 MiB and sends 10 bytes costs the node about 10 bytes.

use std::{io, time::Duration};

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Protocol id of application channels.
pub const CHANNEL_PROTOCOL: &str = "/p2pos/channel/1";
/// Protocol id of store-and-forward messages.
pub const MESSAGE_PROTOCOL: &str = "/p2pos/msg/1";
/// Protocol id of address-record asks (`WhoisAsk`, `WhoisAnswer`).
pub const WHOIS_PROTOCOL: &str = "/p2pos/whois/1";
/// Largest application payload: one channel frame or one message.
pub const MAX_PAYLOAD: usize = 1024 * 1024;
/// Longest idempotency key an app may give a `Send`, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 64;
/// Largest handshake or acknowledgement frame.
pub const MAX_CONTROL_FRAME: usize = 4 * 1024;
/// Largest data frame on a channel stream.
pub const MAX_CHANNEL_FRAME: usize = MAX_PAYLOAD + 64;
/// Largest message frame on a message stream.
pub const MAX_MESSAGE_FRAME: usize = MAX_PAYLOAD + 4 * 1024;

/// Bytes of a frame's length prefix.
pub const HEADER: usize = 4;
/// The room a frame's buffer gets first; it then at most doubles with each read that fills it,
/// up to the frame's length.
const FIRST_ROOM: usize = 8 * 1024;

/// A codec for frames of at most `max` bytes.
pub fn codec(max: usize) -> FrameCodec {
    FrameCodec {
        max,
        encoder: LengthDelimitedCodec::builder()
            .length_field_length(HEADER)
            .max_frame_length(max)
            .new_codec(),
    }
}

/// Frames of at most `max` bytes for `Framed`, `FramedRead` and `FramedWrite` (see [`codec`]).
/// It writes as tokio-util's `LengthDelimitedCodec` does, but reads without reserving room for
/// the length a frame announces (which that codec does): the read buffer grows only with the
/// bytes that arrive.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max: usize,
    encoder: LengthDelimitedCodec,
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        let Some(&[a, b, c, d]) = src.get(..HEADER) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len > self.max {
            return Err(too_large(len, self.max));
        }
        if src.len() - HEADER < len {
            return Ok(None);
        }
        src.advance(HEADER);
        Ok(Some(src.split_to(len)))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        self.encoder.encode(frame, dst)
    }
}

fn too_large(len: usize, max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("frame of {len} bytes exceeds the {max}-byte limit"),
    )
}

/// Reads one frame of at most `max` bytes; `None` on a clean end of stream before a frame.
pub async fn read_frame<R>(io: &mut R, max: usize) -> io::Result<Option<Bytes>>
where
    R: AsyncRead + Unpin,
{
    let mut len = [0u8; HEADER];
    if io.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    io.read_exact(&mut len[1..]).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(too_large(len, max));
    }
    let mut buf = Vec::with_capacity(len.min(FIRST_ROOM));
    while buf.len() < len {
        if buf.len() == buf.capacity() {
            buf.reserve_exact((len - buf.len()).min(buf.len()));
        }
        // This frame's bytes and no more: the stream may be handed on after it.
        let rest = (len - buf.len()) as u64;
        if (&mut *io).take(rest).read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the stream ended inside a frame of {len} bytes"),
            ));
        }
    }
    Ok(Some(Bytes::from(buf)))
}

/// Writes one frame and flushes it.
pub async fn write_frame<W>(io: &mut W, bytes: &[u8]) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.flush().await
}

/// Reads and decodes one protobuf frame of at most `max` bytes within `limit`.
pub async fn read_message<M, R>(io: &mut R, max: usize, limit: Duration) -> io::Result<M>
where
    M: Message + Default,
    R: AsyncRead + Unpin,
{
    let frame = tokio::time::timeout(limit, read_frame(io, max))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {limit:?}"),
            )
        })??
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended"))?;
    M::decode(frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Encodes and writes one protobuf frame within `limit`.
pub async fn write_message<M, W>(io: &mut W, msg: &M, limit: Duration) -> io::Result<()>
where
    M: Message,
    W: AsyncWrite + Unpin,
{
    tokio::time::timeout(limit, write_frame(io, &msg.encode_to_vec()))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("write blocked for {limit:?}"),
            )
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_keep_boundaries_and_limits() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            write_frame(&mut a, b"hello").await.expect("write");
            write_frame(&mut a, b"").await.expect("write");
            write_frame(&mut a, &[1u8; 20]).await.expect("write");
        });
        assert_eq!(
            read_frame(&mut b, 8).await.expect("read"),
            Some(Bytes::from_static(b"hello"))
        );
        assert_eq!(
            read_frame(&mut b, 8).await.expect("read"),
            Some(Bytes::new())
        );
        let err = read_frame(&mut b, 8).await.expect_err("too big");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        writer.await.expect("join");
    }

    #[test]
    fn the_codec_takes_no_room_for_a_frame_before_it_arrives() {
        let mut codec = codec(MAX_MESSAGE_FRAME);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(MAX_MESSAGE_FRAME as u32).to_be_bytes());
        buf.extend_from_slice(b"abc");
        let room = buf.capacity();
        assert_eq!(codec.decode(&mut buf).expect("decode"), None);
        assert_eq!(buf.capacity(), room);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 2, b'h', b'i', 0][..]);
        assert_eq!(
            codec.decode(&mut buf).expect("decode").as_deref(),
            Some(&b"hi"[..])
        );
        assert_eq!(&buf[..], [0]);
        buf.clear();
        buf.extend_from_slice(&(MAX_MESSAGE_FRAME as u32 + 1).to_be_bytes());
        let err = codec.decode(&mut buf).expect_err("too large");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_frame_that_ends_early_is_unexpected_eof() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 9, 1, 2, 3]).await.expect("write");
        drop(a);
        let err = read_frame(&mut b, 1 << 20).await.expect_err("cut short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_clean_end_is_none() {
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert_eq!(read_frame(&mut b, 8).await.expect("read"), None);
    }
}
