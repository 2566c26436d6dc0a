//! The tunnel's data path: one TCP connection spliced onto one channel carrying
//! length-delimited frames (`p2pos_protocols::wire`), both ways at once, each direction
//! half-closed on its own. Used on both ends of a tunnel: the forward's listener and the
//! exposure's target.

use std::io;

use p2pos_protocols::{apps::Duplex, wire::MAX_CHANNEL_FRAME};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

/// The most TCP bytes read at once, and so the largest frame this end writes; also the size of
/// the buffer that frames are copied through to TCP.
const CHUNK: usize = 64 * 1024;
/// A frame's length prefix.
const HEADER: usize = 4;

/// Splices `tcp` and `channel` until both directions have ended: TCP bytes become frames (one
/// per read), frames become TCP bytes. The end of TCP's input shuts the channel's write side
/// down, the end of the channel's frames shuts TCP's write side down. The first error ends
/// both directions. Memory stays within two buffers of 64 KiB.
pub(crate) async fn splice(mut tcp: TcpStream, channel: Box<dyn Duplex>) -> io::Result<()> {
    // Small writes (a prompt, a keystroke) should not wait for more.
    tcp.set_nodelay(true)?;
    let (tcp_read, tcp_write) = tcp.split();
    let (frames_in, frames_out) = tokio::io::split(channel);
    tokio::try_join!(
        bytes_to_frames(tcp_read, frames_out),
        frames_to_bytes(frames_in, tcp_write),
    )?;
    Ok(())
}

/// Reads `from` into one buffer and writes each read as one frame, the length prefix written
/// into the same buffer so that a frame is one write; at the end of `from`, shuts `to` down.
async fn bytes_to_frames<R, W>(mut from: R, mut to: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; HEADER + CHUNK];
    loop {
        let n = from.read(&mut buf[HEADER..]).await?;
        if n == 0 {
            break;
        }
        // `n` is at most CHUNK, far below u32::MAX.
        let len = u32::try_from(n).map_err(|_| io::Error::other("read too large"))?;
        buf[..HEADER].copy_from_slice(&len.to_be_bytes());
        to.write_all(&buf[..HEADER + n]).await?;
        to.flush().await?;
    }
    to.shutdown().await
}

/// Reads frames from `from` and writes their bytes to `to`, through one buffer of 64 KiB (a
/// frame is never held whole); at a clean end of frames, shuts `to` down. A frame over
/// [`MAX_CHANNEL_FRAME`] or a stream that ends inside a frame is an error.
async fn frames_to_bytes<R, W>(mut from: R, mut to: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut header = [0u8; HEADER];
        if from.read(&mut header[..1]).await? == 0 {
            break;
        }
        from.read_exact(&mut header[1..]).await?;
        let mut left = u32::from_be_bytes(header) as usize;
        if left > MAX_CHANNEL_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {left} bytes exceeds the {MAX_CHANNEL_FRAME}-byte limit"),
            ));
        }
        while left > 0 {
            let want = left.min(CHUNK);
            let n = from.read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            to.write_all(&buf[..n]).await?;
            left -= n;
        }
    }
    to.shutdown().await
}
