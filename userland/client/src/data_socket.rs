//! A channel's frames over its data socket (`ChannelTransport::SocketFrames`): the connection
//! and handshake, a framed writer and a framed reader, and the channel's call kept as its
//! control (`peer_closed`, then the final status).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::{Sink, Stream};
use p2pos_proto::app::v1::{ChannelOutput, DataSocket, channel_output};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream, tcp, unix};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::either::Either;
use tonic::{Status, Streaming};

/// Largest frame an app may send: 1 MiB.
pub(crate) const MAX_FRAME: usize = 1024 * 1024;
/// Largest frame the node passes on from a peer (a peer's own framing allows a little more).
const MAX_PEER_FRAME: usize = MAX_FRAME + 64;
/// The node's answer to a secret it took.
const ACCEPTED: u8 = 0;
/// The longest refusal read.
const MAX_REFUSAL: u64 = 1024;

type Conn = Either<UnixStream, TcpStream>;
/// The socket's read half.
type ReadConn = Either<unix::OwnedReadHalf, tcp::OwnedReadHalf>;
/// Its write half, which shuts the socket down for writing when dropped: a half-close.
type WriteConn = Either<unix::OwnedWriteHalf, tcp::OwnedWriteHalf>;

fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max)
        .new_codec()
}

/// Connects to the data socket and presents its secret; the node's refusal is the error.
pub(crate) async fn connect(
    socket: &DataSocket,
    control: Streaming<ChannelOutput>,
) -> Result<(SocketSender, SocketReceiver), Status> {
    let broke = |e: std::io::Error| Status::unavailable(format!("the data socket: {e}"));
    let mut conn: Conn = if !socket.unix_path.is_empty() {
        Either::Left(UnixStream::connect(&socket.unix_path).await.map_err(|e| {
            Status::unavailable(format!(
                "cannot connect to the data socket {}: {e}",
                socket.unix_path
            ))
        })?)
    } else if !socket.tcp_address.is_empty() {
        let tcp = TcpStream::connect(&socket.tcp_address).await.map_err(|e| {
            Status::unavailable(format!(
                "cannot connect to the data socket {}: {e}",
                socket.tcp_address
            ))
        })?;
        tcp.set_nodelay(true).map_err(broke)?;
        Either::Right(tcp)
    } else {
        return Err(Status::internal(
            "the node offered a data socket with no address",
        ));
    };
    conn.write_all(&socket.secret).await.map_err(broke)?;
    let answer = conn.read_u8().await.map_err(broke)?;
    if answer != ACCEPTED {
        let mut why = String::new();
        let _ = (&mut conn).take(MAX_REFUSAL).read_to_string(&mut why).await;
        return Err(Status::permission_denied(format!(
            "the node refused the data socket: {why}"
        )));
    }
    let (read, write): (ReadConn, WriteConn) = match conn {
        Either::Left(unix) => {
            let (read, write) = unix.into_split();
            (Either::Left(read), Either::Left(write))
        }
        Either::Right(tcp) => {
            let (read, write) = tcp.into_split();
            (Either::Right(read), Either::Right(write))
        }
    };
    let ended = Ended::default();
    let sender = SocketSender {
        frames: FramedWrite::new(write, codec(MAX_FRAME)),
        ended: ended.clone(),
    };
    let receiver = SocketReceiver {
        frames: FramedRead::new(read, codec(MAX_PEER_FRAME)),
        ended,
        control: Some(control),
        broken: None,
        done: false,
    };
    Ok((sender, receiver))
}

/// Frames to the peer, written to the data socket as the wire frames them.
#[derive(Debug)]
pub(crate) struct SocketSender {
    frames: FramedWrite<WriteConn, LengthDelimitedCodec>,
    /// How the channel broke, once the call said so.
    ended: Ended,
}

/// The status that ended a channel, told by the call (to the receiver, or to the task that
/// keeps the call after `peer_closed`), for the sender's errors.
#[derive(Debug, Default, Clone)]
struct Ended(std::sync::Arc<std::sync::Mutex<Option<Status>>>);

impl Ended {
    fn set(&self, status: &Status) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(status.clone());
    }

    fn get(&self) -> Option<Status> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl SocketSender {
    /// A failed write as a status: the channel's own, if the call told it.
    fn failed(&self, e: std::io::Error) -> Status {
        match self.ended.get() {
            Some(status) if e.kind() != std::io::ErrorKind::InvalidInput => status,
            _ => write_status(e),
        }
    }
}

/// A write that failed: a frame too large is the app's mistake; anything else means the
/// channel has ended, and the receiver has its status.
fn write_status(e: std::io::Error) -> Status {
    if e.kind() == std::io::ErrorKind::InvalidInput {
        Status::resource_exhausted(format!("{e} (frames are at most {MAX_FRAME} bytes)"))
    } else {
        Status::unavailable(format!(
            "the channel has ended (its status comes on the receiver): {e}"
        ))
    }
}

impl Sink<Bytes> for SocketSender {
    type Error = Status;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        let this = self.get_mut();
        Sink::<Bytes>::poll_ready(Pin::new(&mut this.frames), cx).map_err(|e| this.failed(e))
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> Result<(), Status> {
        let this = self.get_mut();
        Sink::<Bytes>::start_send(Pin::new(&mut this.frames), frame).map_err(|e| this.failed(e))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        let this = self.get_mut();
        Sink::<Bytes>::poll_flush(Pin::new(&mut this.frames), cx).map_err(|e| this.failed(e))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        let this = self.get_mut();
        Sink::<Bytes>::poll_close(Pin::new(&mut this.frames), cx).map_err(|e| this.failed(e))
    }
}

/// Frames from the peer, read from the data socket; at its end, the call says whether the peer
/// half-closed (`peer_closed`) or the channel broke (its status).
#[derive(Debug)]
pub(crate) struct SocketReceiver {
    frames: FramedRead<ReadConn, LengthDelimitedCodec>,
    /// Shared with the sender.
    ended: Ended,
    /// The channel's call, until it said how the frames ended.
    control: Option<Streaming<ChannelOutput>>,
    /// The socket's own error, if reading it failed (used when the call says nothing better).
    broken: Option<std::io::Error>,
    done: bool,
}

impl Stream for SocketReceiver {
    type Item = Result<Bytes, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.broken.is_none() {
            match ready!(Pin::new(&mut this.frames).poll_next(cx)) {
                Some(Ok(frame)) => return Poll::Ready(Some(Ok(frame.freeze()))),
                // A frame the node should never pass on: the channel is still open there.
                Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Status::internal(format!(
                        "the node sent a malformed frame: {e}"
                    )))));
                }
                Some(Err(e)) => this.broken = Some(e),
                // The end of the socket: the call says why.
                None => {
                    this.broken = Some(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the data socket ended without peer_closed",
                    ));
                }
            }
        }
        let Some(control) = this.control.as_mut() else {
            this.done = true;
            return Poll::Ready(None);
        };
        let said = ready!(Pin::new(control).poll_next(cx));
        this.done = true;
        match said {
            Some(Ok(ChannelOutput {
                kind: Some(channel_output::Kind::PeerClosed(_)),
            })) => {
                // The call lives on until the sender is closed too: keep it to its end in a
                // task of its own, so that dropping this receiver does not cut it.
                if let Some(mut control) = this.control.take() {
                    let ended = this.ended.clone();
                    tokio::spawn(async move {
                        loop {
                            match control.message().await {
                                Ok(Some(_)) => {}
                                Ok(None) => return,
                                Err(status) => return ended.set(&status),
                            }
                        }
                    });
                }
                Poll::Ready(None)
            }
            Some(Err(status)) => {
                this.ended.set(&status);
                Poll::Ready(Some(Err(status)))
            }
            Some(Ok(other)) => Poll::Ready(Some(Err(Status::internal(format!(
                "the node sent an unexpected output on a data socket channel: {other:?}"
            ))))),
            None => {
                let e = this
                    .broken
                    .take()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                Poll::Ready(Some(Err(Status::unavailable(format!(
                    "the channel ended without a status: {e}"
                )))))
            }
        }
    }
}
