//! Channels (`Apps.Channel`, `Services.Channel`) as a sink and a stream of frames.
//!
//! ```no_run
//! # async fn demo(client: p2pos_client::Client) -> Result<(), tonic::Status> {
//! use bytes::Bytes;
//! use futures::{SinkExt, StreamExt};
//! use p2pos_proto::app::v1::OpenChannel;
//!
//! let open = OpenChannel {
//!     app_id: "chat".into(),
//!     peer: "12D3Koo...".into(),
//!     ..Default::default()
//! };
//! let mut channel = client.open_channel(open).await?;
//! for line in ["hello", "world"] {
//!     channel.sender.feed(Bytes::from(line)).await?; // gathered...
//! }
//! channel.sender.flush().await?; // ...and written at once
//! while let Some(frame) = channel.receiver.next().await {
//!     println!("{:?}", frame?);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! By default a channel's frames travel over its **data socket** (`transport` left
//! unspecified, or `CHANNEL_TRANSPORT_SOCKET_FRAMES`): a plain local socket the node names when
//! the channel opens, carrying frames as the wire frames them; the call stays open as the
//! channel's control. [`ChannelSender`] is then a framed writer (`feed` buffers, `flush`
//! writes), and [`ChannelReceiver`] reads frames until the socket ends, then asks the call
//! whether the peer half-closed or the channel broke. `half_close` is implied and `batch` has
//! no effect.
//!
//! With `CHANNEL_TRANSPORT_GRPC` the frames travel as messages of the call instead:
//! [`ChannelSender`] packs frames fed between flushes into one `frames` batch (a single frame
//! as `data`), and a batch that reaches [`BATCH_BYTES`] goes out by itself; `send` is `feed`
//! plus `flush`. A frame of [`DIRECT_BYTES`] or more is not copied into a batch: it goes as
//! `data` of its own, after what was packed before it. A flush completes once the messages are
//! queued for the gRPC transport (a few deep), not when the peer has them. [`ChannelReceiver`]
//! yields frames one by one whether the node delivers them as `data` or in `frames` batches.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures::channel::mpsc;
use futures::{Sink, Stream};
use p2pos_proto::app::v1::{
    AcceptChannel, ChannelInput, ChannelOpened, ChannelOutput, ChannelTransport, OpenChannel,
    channel_input, channel_output,
};
use p2pos_proto::packed::{self, Unpack};
use p2pos_proto::service::v1::{OpenServiceChannel, ServiceChannelInput, service_channel_input};
use tonic::{Status, Streaming};

use crate::Client;
use crate::data_socket::{self, SocketReceiver, SocketSender};

/// A batch is sent once it holds this many bytes.
pub const BATCH_BYTES: usize = 64 * 1024;
/// Frames this large go as `data` of their own rather than being copied into a batch.
pub const DIRECT_BYTES: usize = 16 * 1024;
/// Input messages waiting for the gRPC transport; past it, writes wait.
const QUEUE: usize = 8;

/// An open channel: what the node said when it opened, and its two halves.
#[derive(Debug)]
pub struct Channel<I> {
    /// The channel id, the peer and the app at the other end.
    pub opened: ChannelOpened,
    /// Frames to the peer. `close` it after the last frame to half-close the channel; dropping
    /// it half-closes too, but frames fed and not yet flushed are lost.
    pub sender: ChannelSender<I>,
    /// Frames from the peer; it ends when the peer half-closes. Dropping it before that ends
    /// the call: frames still on their way to the peer are lost and the peer sees the channel
    /// break, so read it to its end first. With `half_close` set on open or accept, the sender
    /// still works after the receiver's end, until it is closed.
    pub receiver: ChannelReceiver,
}

/// The input messages of a channel call: `ChannelInput` or `ServiceChannelInput`.
pub trait ChannelMessage: Send + 'static {
    /// One frame.
    fn data(frame: Bytes) -> Self;
    /// Frames packed as in [`p2pos_proto::packed`].
    fn frames(packed: Bytes) -> Self;
}

impl ChannelMessage for ChannelInput {
    fn data(frame: Bytes) -> Self {
        ChannelInput {
            kind: Some(channel_input::Kind::Data(frame)),
        }
    }
    fn frames(packed: Bytes) -> Self {
        ChannelInput {
            kind: Some(channel_input::Kind::Frames(packed)),
        }
    }
}

impl ChannelMessage for ServiceChannelInput {
    fn data(frame: Bytes) -> Self {
        ServiceChannelInput {
            kind: Some(service_channel_input::Kind::Data(frame)),
        }
    }
    fn frames(packed: Bytes) -> Self {
        ServiceChannelInput {
            kind: Some(service_channel_input::Kind::Frames(packed)),
        }
    }
}

/// The transport a channel of this client uses: a data socket carrying frames unless the app
/// asked for the call (`CHANNEL_TRANSPORT_GRPC`). Byte streams are not frames.
fn framed_transport(asked: i32) -> Result<i32, Status> {
    match ChannelTransport::try_from(asked) {
        Ok(ChannelTransport::Unspecified) => Ok(ChannelTransport::SocketFrames as i32),
        Ok(ChannelTransport::Grpc | ChannelTransport::SocketFrames) => Ok(asked),
        Ok(ChannelTransport::SocketBytes) | Err(_) => Err(Status::invalid_argument(format!(
            "a Channel carries frames: its transport is CHANNEL_TRANSPORT_SOCKET_FRAMES (the default) or CHANNEL_TRANSPORT_GRPC, not {asked}"
        ))),
    }
}

impl Client {
    /// `Apps.Channel` with `open`: a channel to the same app on a peer (or a helper's session
    /// on this node), once the peer's app accepted it.
    pub async fn open_channel(
        &self,
        mut open: OpenChannel,
    ) -> Result<Channel<ChannelInput>, Status> {
        open.transport = framed_transport(open.transport)?;
        self.apps_channel(channel_input::Kind::Open(open)).await
    }

    /// `Apps.Channel` with `accept`: takes a channel announced on the app's session.
    pub async fn accept_channel(
        &self,
        mut accept: AcceptChannel,
    ) -> Result<Channel<ChannelInput>, Status> {
        accept.transport = framed_transport(accept.transport)?;
        self.apps_channel(channel_input::Kind::Accept(accept)).await
    }

    async fn apps_channel(
        &self,
        first: channel_input::Kind,
    ) -> Result<Channel<ChannelInput>, Status> {
        let first = ChannelInput { kind: Some(first) };
        let mut apps = self.apps();
        start(first, |input| async move { apps.channel(input).await }).await
    }

    /// `Services.Channel`: a channel to a provider of a service.
    pub async fn open_service_channel(
        &self,
        mut open: OpenServiceChannel,
    ) -> Result<Channel<ServiceChannelInput>, Status> {
        open.transport = framed_transport(open.transport)?;
        let first = ServiceChannelInput {
            kind: Some(service_channel_input::Kind::Open(open)),
        };
        let mut services = self.services();
        start(first, |input| async move { services.channel(input).await }).await
    }
}

/// Makes the call with `first` as the first input and waits for `opened`.
async fn start<I, F, Fut>(first: I, call: F) -> Result<Channel<I>, Status>
where
    I: ChannelMessage,
    F: FnOnce(mpsc::Receiver<I>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Streaming<ChannelOutput>>, Status>>,
{
    let (mut input, rx) = mpsc::channel(QUEUE);
    input
        .try_send(first)
        .map_err(|_| Status::internal("the channel's input queue refused its first frame"))?;
    let mut output = call(rx).await?.into_inner();
    let opened = match output.message().await? {
        Some(ChannelOutput {
            kind: Some(channel_output::Kind::Opened(opened)),
        }) => opened,
        Some(other) => {
            return Err(Status::internal(format!(
                "the node's first channel output was not `opened`: {other:?}"
            )));
        }
        None => return Err(Status::unavailable("the channel ended before it opened")),
    };
    let (sender, receiver) = match &opened.data_socket {
        Some(socket) => {
            // The frames go over the socket; the call stays open as the channel's control.
            let (sender, receiver) = data_socket::connect(socket, output).await?;
            (SenderKind::Socket(sender), ReceiverKind::Socket(receiver))
        }
        None => (
            SenderKind::Grpc(GrpcSender::new(input)),
            ReceiverKind::Grpc(GrpcReceiver {
                output: Some(output),
                batch: Unpack::default(),
            }),
        ),
    };
    Ok(Channel {
        opened,
        sender: ChannelSender(sender),
        receiver: ChannelReceiver(receiver),
    })
}

/// Frames to the peer: a `Sink<Bytes>`. Over the call it batches what is fed between flushes;
/// over a data socket it writes frames as the wire frames them, flushing on `flush`.
#[derive(Debug)]
pub struct ChannelSender<I>(SenderKind<I>);

#[derive(Debug)]
enum SenderKind<I> {
    Grpc(GrpcSender<I>),
    Socket(SocketSender),
}

/// Frames to the peer as `data` and `frames` messages of the call.
#[derive(Debug)]
struct GrpcSender<I> {
    input: mpsc::Sender<I>,
    /// Frames fed since the last batch went, packed.
    packed: BytesMut,
    /// How many.
    count: usize,
    /// A large frame fed after them, to go on its own.
    large: Option<Bytes>,
}

impl<I: ChannelMessage> GrpcSender<I> {
    fn new(input: mpsc::Sender<I>) -> Self {
        GrpcSender {
            input,
            packed: BytesMut::new(),
            count: 0,
            large: None,
        }
    }

    /// Hands what was fed to the gRPC transport once it has room: the packed frames, then the
    /// large frame after them.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        loop {
            let message = if self.count > 0 {
                ready!(self.input.poll_ready(cx)).map_err(|_| ended())?;
                let packed = self.packed.split().freeze();
                let count = std::mem::take(&mut self.count);
                if count == 1 {
                    I::data(packed.slice(packed::HEADER..))
                } else {
                    I::frames(packed)
                }
            } else if self.large.is_some() {
                ready!(self.input.poll_ready(cx)).map_err(|_| ended())?;
                I::data(self.large.take().unwrap_or_default())
            } else {
                return Poll::Ready(Ok(()));
            };
            self.input.start_send(message).map_err(|_| ended())?;
        }
    }
}

fn ended() -> Status {
    Status::unavailable("the channel has ended (its status comes on the receiver)")
}

impl<I: ChannelMessage> Sink<Bytes> for ChannelSender<I> {
    type Error = Status;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        match &mut self.get_mut().0 {
            SenderKind::Grpc(grpc) => Pin::new(grpc).poll_ready(cx),
            SenderKind::Socket(socket) => Pin::new(socket).poll_ready(cx),
        }
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> Result<(), Status> {
        match &mut self.get_mut().0 {
            SenderKind::Grpc(grpc) => Pin::new(grpc).start_send(frame),
            SenderKind::Socket(socket) => Pin::new(socket).start_send(frame),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        match &mut self.get_mut().0 {
            SenderKind::Grpc(grpc) => Pin::new(grpc).poll_flush(cx),
            SenderKind::Socket(socket) => Pin::new(socket).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        match &mut self.get_mut().0 {
            SenderKind::Grpc(grpc) => Pin::new(grpc).poll_close(cx),
            SenderKind::Socket(socket) => Pin::new(socket).poll_close(cx),
        }
    }
}

impl<I: ChannelMessage> Sink<Bytes> for GrpcSender<I> {
    type Error = Status;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        let this = self.get_mut();
        if this.packed.len() >= BATCH_BYTES || this.large.is_some() {
            ready!(this.poll_send_pending(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> Result<(), Status> {
        let this = self.get_mut();
        // `poll_ready` makes room first; without it a frame would be lost or reordered.
        if this.large.is_some() || this.packed.len() >= BATCH_BYTES {
            return Err(Status::internal(
                "ChannelSender::start_send without poll_ready (use feed or send)",
            ));
        }
        if frame.len() >= DIRECT_BYTES {
            this.large = Some(frame);
        } else {
            packed::push(&mut this.packed, &frame);
            this.count += 1;
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        let this = self.get_mut();
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.input)
            .poll_flush(cx)
            .map_err(|_| ended())
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        let this = self.get_mut();
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.input)
            .poll_close(cx)
            .map_err(|_| ended())
    }
}

/// Frames from the peer, one by one.
#[derive(Debug)]
pub struct ChannelReceiver(ReceiverKind);

#[derive(Debug)]
enum ReceiverKind {
    Grpc(GrpcReceiver),
    Socket(SocketReceiver),
}

/// Frames from the peer in `data` and `frames` messages of the call.
#[derive(Debug)]
struct GrpcReceiver {
    /// The call's output, until the peer has half-closed.
    output: Option<Streaming<ChannelOutput>>,
    batch: Unpack,
}

impl ChannelReceiver {
    /// The next frame; `None` once the peer has half-closed.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }
}

impl Stream for ChannelReceiver {
    type Item = Result<Bytes, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.get_mut().0 {
            ReceiverKind::Grpc(grpc) => Pin::new(grpc).poll_next(cx),
            ReceiverKind::Socket(socket) => Pin::new(socket).poll_next(cx),
        }
    }
}

impl Stream for GrpcReceiver {
    type Item = Result<Bytes, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.batch.next() {
                return Poll::Ready(Some(frame.map_err(|e| {
                    Status::internal(format!("the node sent a malformed batch: {e}"))
                })));
            }
            let Some(output) = this.output.as_mut() else {
                return Poll::Ready(None);
            };
            let output = match ready!(Pin::new(output).poll_next(cx)) {
                Some(Ok(output)) => output,
                Some(Err(status)) => return Poll::Ready(Some(Err(status))),
                None => return Poll::Ready(None),
            };
            match output.kind {
                Some(channel_output::Kind::Data(frame)) => return Poll::Ready(Some(Ok(frame))),
                Some(channel_output::Kind::Frames(packed)) => {
                    this.batch = Unpack::new(packed);
                }
                // The peer is done; the call lives on until our input ends. It is kept to its
                // end in a task of its own, so dropping this receiver now does not cut it.
                Some(channel_output::Kind::PeerClosed(_)) => {
                    if let Some(mut output) = this.output.take() {
                        tokio::spawn(
                            async move { while let Ok(Some(_)) = output.message().await {} },
                        );
                    }
                    return Poll::Ready(None);
                }
                Some(channel_output::Kind::Opened(_)) | None => {
                    return Poll::Ready(Some(Err(Status::internal(
                        "the node sent a channel output that is neither data nor frames",
                    ))));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures::{SinkExt, StreamExt};

    use super::*;

    fn sender() -> (ChannelSender<ChannelInput>, mpsc::Receiver<ChannelInput>) {
        let (input, rx) = mpsc::channel(QUEUE);
        (ChannelSender(SenderKind::Grpc(GrpcSender::new(input))), rx)
    }

    fn kind(message: Option<ChannelInput>) -> channel_input::Kind {
        message.unwrap().kind.unwrap()
    }

    #[tokio::test]
    async fn fed_frames_leave_packed_and_large_ones_alone_in_order() {
        let (mut sender, mut rx) = sender();
        let large = Bytes::from(vec![7u8; DIRECT_BYTES]);
        for frame in [&b"a"[..], b"", b"bc"] {
            sender.feed(Bytes::copy_from_slice(frame)).await.unwrap();
        }
        sender.feed(large.clone()).await.unwrap();
        sender.feed(Bytes::from_static(b"d")).await.unwrap();
        sender.close().await.unwrap();
        let channel_input::Kind::Frames(packed) = kind(rx.next().await) else {
            panic!("the small frames fed first go as one batch");
        };
        let frames: Vec<Bytes> = Unpack::new(packed).map(Result::unwrap).collect();
        assert_eq!(frames, [&b"a"[..], b"", b"bc"]);
        assert_eq!(kind(rx.next().await), channel_input::Kind::Data(large));
        assert_eq!(
            kind(rx.next().await),
            channel_input::Kind::Data(Bytes::from_static(b"d")),
            "a lone frame goes as data"
        );
        assert!(rx.next().await.is_none(), "close ends the input");
    }

    #[tokio::test]
    async fn a_batch_leaves_by_itself_once_it_is_full() {
        let (mut sender, mut rx) = sender();
        let frame = Bytes::from(vec![1u8; 1000]);
        let per_batch = BATCH_BYTES.div_ceil(packed::HEADER + frame.len());
        for _ in 0..per_batch + 1 {
            sender.feed(frame.clone()).await.unwrap();
        }
        let channel_input::Kind::Frames(packed) = kind(rx.next().await) else {
            panic!("a full batch goes without a flush");
        };
        assert_eq!(Unpack::new(packed).count(), per_batch);
        assert!(rx.try_recv().is_err(), "the last frame waits for a flush");
    }

    #[test]
    fn start_send_without_poll_ready_is_an_error_not_a_lost_frame() {
        let (mut sender, _rx) = sender();
        let large = Bytes::from(vec![0u8; DIRECT_BYTES]);
        Pin::new(&mut sender).start_send(large.clone()).unwrap();
        let err = Pin::new(&mut sender).start_send(large).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
    }
}
