//! Framing shared by the node-to-node protocols (`proto/p2pos/wire/v1/wire.proto`) and the
//! gateway's channel splice: a 4-byte big-endian length, then the bytes. Reads take exactly one
//! frame and never read ahead, so a stream can be handed on (to the channel splice) right after
//! a handshake.

use std::{io, time::Duration};

use bytes::Bytes;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::LengthDelimitedCodec;

/// Protocol id of application channels.
pub const CHANNEL_PROTOCOL: &str = "/p2pos/channel/1";
/// Protocol id of store-and-forward messages.
pub const MESSAGE_PROTOCOL: &str = "/p2pos/msg/1";
/// Largest application payload: one channel frame or one message.
pub const MAX_PAYLOAD: usize = 1024 * 1024;
/// Largest handshake or acknowledgement frame.
pub const MAX_CONTROL_FRAME: usize = 4 * 1024;
/// Largest data frame on a channel stream.
pub const MAX_CHANNEL_FRAME: usize = MAX_PAYLOAD + 64;
/// Largest message frame on a message stream.
pub const MAX_MESSAGE_FRAME: usize = MAX_PAYLOAD + 4 * 1024;

/// A codec for frames of at most `max` bytes.
pub fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max)
        .new_codec()
}

/// Reads one frame of at most `max` bytes; `None` on a clean end of stream before a frame.
pub async fn read_frame<R>(io: &mut R, max: usize) -> io::Result<Option<Bytes>>
where
    R: AsyncRead + Unpin,
{
    let mut len = [0u8; 4];
    if io.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    io.read_exact(&mut len[1..]).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {max}-byte limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
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

    #[tokio::test]
    async fn a_clean_end_is_none() {
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert_eq!(read_frame(&mut b, 8).await.expect("read"), None);
    }
}
