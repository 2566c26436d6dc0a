//! The tunnel's data path: one TCP connection spliced onto one channel carrying
//! length-delimited frames, both ways at once, each direction half-closed on its own. Used on
//! both ends of a tunnel: the forward's listener and the exposure's target. The copy loop is
//! the one data sockets use ([`p2pos_protocols::pipe`]), with the socket as a byte stream. A
//! tunnel on which no byte moves either way for [`TUNNEL_IDLE`] is reset, so that idle tunnels
//! (a peer that opened many and went quiet) do not hold their places for ever.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use p2pos_protocols::{
    apps::Duplex,
    network::Activity,
    pipe::{Framing, PipeError, Side, pipe},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// How long a tunnel may carry no byte either way before it is reset.
pub(crate) const TUNNEL_IDLE: Duration = Duration::from_secs(30 * 60);

/// Splices `tcp` and `channel` until both directions have ended: TCP bytes become frames (one
/// per read), frames become TCP bytes. The first error ends both directions, and so does
/// `idle` without a byte either way (an error that [`is_idle`] tells apart). Memory stays within
/// two buffers of 64 KiB.
pub(crate) async fn splice(
    tcp: TcpStream,
    mut channel: Box<dyn Duplex>,
    idle: Duration,
) -> Result<(), PipeError> {
    // Small writes (a prompt, a keystroke) should not wait for more.
    tcp.set_nodelay(true)
        .map_err(|e| PipeError::Io(Side::Local, e))?;
    // Every byte of the tunnel, either way, passes the TCP side.
    let activity = Activity::new();
    let mut tcp = Touching {
        io: tcp,
        activity: activity.clone(),
    };
    let piped = tokio::select! {
        piped = pipe(&mut tcp, &mut channel, Framing::Bytes, ()) => piped,
        () = activity.idle_for(idle) => Err(PipeError::Io(
            Side::Remote,
            io::Error::new(io::ErrorKind::TimedOut, Idle(idle)),
        )),
    };
    if piped.is_err() {
        // A broken tunnel must not look like a clean end to the TCP side: it gets a reset.
        let _ = tcp.io.set_zero_linger();
    }
    piped
}

/// The tunnel was idle for so long: the one error [`is_idle`] answers yes to (a `TimedOut` of
/// the socket itself, ETIMEDOUT, is a broken tunnel).
#[derive(Debug)]
struct Idle(Duration);

impl std::fmt::Display for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no byte either way for {} s", self.0.as_secs())
    }
}

impl std::error::Error for Idle {}

/// Whether `e` is a tunnel ended for being idle.
pub(crate) fn is_idle(e: &PipeError) -> bool {
    matches!(e, PipeError::Io(_, e) if e.get_ref().is_some_and(|inner| inner.is::<Idle>()))
}

/// A TCP connection that notes when bytes move on it.
struct Touching {
    io: TcpStream,
    activity: Activity,
}

impl AsyncRead for Touching {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        read
    }
}

impl AsyncWrite for Touching {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    #[tokio::test]
    async fn a_tunnel_idle_either_way_is_reset_and_a_busy_one_is_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut client, (server, _)) = (client.expect("connect"), accepted.expect("accept"));
        let (channel, mut remote) = tokio::io::duplex(64 * 1024);
        let idle = Duration::from_millis(300);
        let started = tokio::time::Instant::now();
        let splicing = tokio::spawn(splice(server, Box::new(channel), idle));
        // Bytes keep the tunnel open past its idle time: one way, then the other.
        for i in 0..4 {
            tokio::time::sleep(idle / 2).await;
            if i % 2 == 0 {
                client.write_all(b"ping").await.expect("write");
                let mut header = [0u8; 4];
                remote.read_exact(&mut header).await.expect("a frame");
                let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
                remote.read_exact(&mut body).await.expect("its bytes");
                assert_eq!(body, b"ping");
            } else {
                let mut frame = 4u32.to_be_bytes().to_vec();
                frame.extend_from_slice(b"pong");
                remote.write_all(&frame).await.expect("write a frame");
                let mut body = [0u8; 4];
                client.read_exact(&mut body).await.expect("its bytes");
                assert_eq!(&body, b"pong");
            }
        }
        assert!(!splicing.is_finished(), "a busy tunnel stays open");
        // Then nothing moves: the tunnel is reset once the idle time has passed.
        let ended = tokio::time::timeout(Duration::from_secs(5), splicing)
            .await
            .expect("ends in time")
            .expect("joined");
        let e = ended.expect_err("an idle tunnel is an error");
        assert!(is_idle(&e), "{e}");
        // The socket's own time-out is not idleness.
        let timed_out = PipeError::Io(Side::Local, io::ErrorKind::TimedOut.into());
        assert!(!is_idle(&timed_out));
        assert!(started.elapsed() >= idle * 2 + idle);
        let mut rest = Vec::new();
        // The TCP side sees a reset or an end, never more bytes.
        let _ = client.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
    }
}
