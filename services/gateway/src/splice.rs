//! The channel data path: gRPC frames in, length-delimited frames onto the libp2p stream, and
//! back. One task writes (awaiting each write, so the remote's flow control reaches the
//! client); the response stream reads straight from the libp2p stream. No actor is involved.
//!
//! Shared by `Apps.Channel` and `Services.Channel`: their inputs differ only in the first frame
//! (see [`ChannelFrame`]); their outputs are the same `ChannelOutput`.
//!
//! A channel that crosses a relay's circuit (its peer was reached only through relays when it
//! opened) stays on it: a frame larger than the circuit can carry is refused before it is
//! written (`RESOURCE_EXHAUSTED`; the channel ends there, the circuit goes on for everything
//! else), and a circuit that ends (its bytes or its time ran out) ends the channel with
//! `UNAVAILABLE`, naming the relay's limits, on both sides: never a clean end.

use std::{
    io::ErrorKind,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::{BufMut, Bytes, BytesMut};
use futures::{FutureExt, Sink, SinkExt, StreamExt};
use p2pos_kernel::EventBus;
use p2pos_proto::{
    app::v1::{
        ChannelInput, ChannelOpened, ChannelOutput, DataSocket, PeerClosed, channel_input,
        channel_output,
    },
    monitor::v1::{self, event::Kind},
    packed::{self, PackedError},
    service::v1::{ServiceChannelInput, service_channel_input},
};
use p2pos_protocols::{
    apps::{ChannelStream, Duplex},
    network::Circuit,
    wire::{FrameCodec, MAX_CHANNEL_FRAME, MAX_PAYLOAD, codec},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::{
    codec::{FramedRead, FramedWrite},
    sync::CancellationToken,
};
use tonic::{Status, Streaming};
use tracing::debug;

use crate::{
    BoxStream,
    relayed::{frame_limit, too_large_for_relay, via},
    server::MAX_GRPC_MESSAGE,
};

/// A batch of frames read from the peer for one output `frames` takes no more frames once it
/// holds this many bytes: it holds at most this plus one whole frame.
const BATCH_BYTES: usize = 64 * 1024;
// The largest batch fits in a gRPC message.
const _: () = assert!(BATCH_BYTES + 2 * packed::HEADER + MAX_CHANNEL_FRAME <= MAX_GRPC_MESSAGE);
/// Room for at least this much is made before each read of a batching output.
const READ_ROOM: usize = 32 * 1024;
/// How long the frames an app wrote before its call ended with the peer's half-close may take
/// to leave.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// The most one read of the peer's stream takes.
const READ_CHUNK: u64 = 16 * 1024;
/// A `data` frame this large goes from the client's message straight to the stream, not
/// through the writer's buffer (one copy less).
const DIRECT_WRITE: usize = 16 * 1024;

/// What one input message after the first carries.
pub enum Input {
    /// One frame (`data`).
    Frame(Bytes),
    /// Frames packed as on the wire (`frames`), not yet checked.
    Packed(Bytes),
}

/// An input message of a channel after its first one: data, or a misplaced or empty message.
pub trait ChannelFrame: Send + 'static {
    /// What the message carries, or the status that ends the channel.
    fn into_input(self) -> Result<Input, Status>;
}

impl ChannelFrame for ChannelInput {
    fn into_input(self) -> Result<Input, Status> {
        match self.kind {
            Some(channel_input::Kind::Data(data)) => Ok(Input::Frame(data)),
            Some(channel_input::Kind::Frames(packed)) => Ok(Input::Packed(packed)),
            Some(channel_input::Kind::Open(_) | channel_input::Kind::Accept(_)) => Err(
                Status::invalid_argument("open/accept may only be the first frame of a channel"),
            ),
            None => Err(Status::invalid_argument("empty channel frame")),
        }
    }
}

impl ChannelFrame for ServiceChannelInput {
    fn into_input(self) -> Result<Input, Status> {
        match self.kind {
            Some(service_channel_input::Kind::Data(data)) => Ok(Input::Frame(data)),
            Some(service_channel_input::Kind::Frames(packed)) => Ok(Input::Packed(packed)),
            Some(service_channel_input::Kind::Open(_)) => Err(Status::invalid_argument(
                "open may only be the first frame of a channel",
            )),
            None => Err(Status::invalid_argument("empty channel frame")),
        }
    }
}

/// An open channel, taken apart: its stream; what publishes `ChannelClosed` when dropped (with
/// the channel's output stream), `ChannelOpened` being published now; the `opened` output
/// (naming `data_socket`, if the channel's bytes go over one); and the relay's circuit it
/// crosses, if any.
pub(crate) fn open(
    channel: ChannelStream,
    events: &EventBus,
    data_socket: Option<DataSocket>,
) -> (
    Box<dyn Duplex>,
    ClosedOnDrop,
    ChannelOutput,
    Option<Circuit>,
) {
    let ChannelStream {
        channel_id,
        peer_id,
        app_id,
        inbound,
        group,
        circuit,
        io,
    } = channel;
    events.publish(Kind::ChannelOpened(v1::ChannelOpened {
        channel_id,
        peer_id: peer_id.clone(),
        app_id: app_id.clone(),
        inbound,
    }));
    let closed = ClosedOnDrop {
        events: events.clone(),
        event: v1::ChannelClosed {
            channel_id,
            peer_id: peer_id.clone(),
            app_id: app_id.clone(),
        },
    };
    let opened = ChannelOutput {
        kind: Some(channel_output::Kind::Opened(ChannelOpened {
            channel_id,
            peer_id,
            app_id,
            group,
            data_socket,
        })),
    };
    (io, closed, opened, circuit)
}

/// Publishes `ChannelClosed` when dropped.
pub(crate) struct ClosedOnDrop {
    events: EventBus,
    event: v1::ChannelClosed,
}

impl ClosedOnDrop {
    /// The channel's id.
    pub(crate) fn channel_id(&self) -> u64 {
        self.event.channel_id
    }
}

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        self.events
            .publish(Kind::ChannelClosed(std::mem::take(&mut self.event)));
    }
}

/// How a client wants its channel's output (`batch` and `half_close` of its open or accept).
#[derive(Clone, Copy, Debug, Default)]
pub struct OutputOptions {
    /// The frames ready at once in one `frames`, rather than one `data` per frame.
    pub batch: bool,
    /// `peer_closed` when the peer half-closes, and the output open until the input ends.
    pub half_close: bool,
}

/// Splices an open channel onto the rest of the client's input and returns the output.
pub fn splice<I: ChannelFrame>(
    channel: ChannelStream,
    options: OutputOptions,
    mut input: Streaming<I>,
    events: EventBus,
    stop: CancellationToken,
) -> BoxStream<ChannelOutput> {
    let (io, closed, opened, circuit) = open(channel, &events, None);
    let channel_id = closed.channel_id();
    let max_frame = frame_limit(circuit.as_ref());
    let crossing: Arc<str> = via(circuit.as_ref()).into();
    let writer_crossing = crossing.clone();
    let (read_half, write_half) = tokio::io::split(io);
    let mut sink = FramedWrite::new(write_half, codec(MAX_CHANNEL_FRAME));
    let (err_tx, err_rx) = tokio::sync::oneshot::channel::<Status>();
    let input_stop = stop.clone();
    // Cancelled when the client's output stream is dropped: the writer must not outlive it
    // (a remote that stops reading would otherwise hold the task and stream for ever).
    let output_gone = CancellationToken::new();
    let output_alive = output_gone.clone().drop_guard();
    // Set when the output ended with the peer's half-close (see `cut_short`).
    let ended_with_peer = Arc::new(AtomicBool::new(false));
    let peer_end = ended_with_peer.clone();
    tokio::spawn(async move {
        let outcome: Result<(), Status> = async {
            let broke = |e: std::io::Error| {
                Status::unavailable(format!(
                    "the channel to the peer broke: {e}{writer_crossing}"
                ))
            };
            // The call (or the node) ended before the client's input did: frames may have been
            // lost on the way, so the remote must not see a clean end.
            let cut_short = || {
                if input_stop.is_cancelled() {
                    Status::unavailable("the node is stopping")
                } else {
                    Status::cancelled("the app's call ended before its input did")
                }
            };
            // Unless the call ended because the peer had half-closed (without `half_close`,
            // that ends the channel both ways by design) while the writer waited for the app's
            // next frame: nothing half written, nothing read and not written, so what was
            // written is the whole.
            let idle_end = || {
                if !input_stop.is_cancelled() && ended_with_peer.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err(cut_short())
                }
            };
            // Frames are fed into the writer's buffer and flushed only when the client has no
            // next frame ready, so a burst of small frames leaves in a few network writes.
            let mut unflushed = false;
            loop {
                if input_stop.is_cancelled() {
                    return Err(cut_short());
                }
                if output_gone.is_cancelled() {
                    // Between frames: clean only if the app has sent nothing more.
                    return match input.message().now_or_never() {
                        None | Some(Ok(None)) => idle_end(),
                        Some(_) => Err(cut_short()),
                    };
                }
                let ready = input.message().now_or_never();
                let frame = match ready {
                    Some(frame) => frame?,
                    None => {
                        if unflushed {
                            tokio::select! {
                                flushed = SinkExt::<Bytes>::flush(&mut sink) => {
                                    flushed.map_err(broke)?;
                                }
                                () = output_gone.cancelled() => return Err(cut_short()),
                            }
                        }
                        tokio::select! {
                            frame = input.message() => frame?,
                            () = input_stop.cancelled() => return Err(cut_short()),
                            () = output_gone.cancelled() => return idle_end(),
                        }
                    }
                };
                let Some(frame) = frame else { break };
                // Wait (watching for the output to go) only when the writer's buffer is full.
                match room(&mut sink).now_or_never() {
                    Some(room) => room.map_err(broke)?,
                    None => tokio::select! {
                        room = room(&mut sink) => room.map_err(broke)?,
                        () = output_gone.cancelled() => return Err(cut_short()),
                    },
                }
                match frame.into_input()? {
                    Input::Frame(data) => {
                        if data.len() > MAX_PAYLOAD {
                            return Err(Status::resource_exhausted(
                                PackedError::TooLarge {
                                    len: data.len(),
                                    max: MAX_PAYLOAD,
                                }
                                .to_string(),
                            ));
                        }
                        if let Some(c) = circuit.filter(|_| data.len() > max_frame) {
                            return Err(too_large_for_relay(data.len(), &c));
                        }
                        if data.len() < DIRECT_WRITE {
                            Pin::new(&mut sink).start_send(data).map_err(broke)?;
                        } else {
                            // The length joins what is buffered, then the bytes follow it.
                            sink.write_buffer_mut().put_u32(data.len() as u32);
                            tokio::select! {
                                written = write_direct(&mut sink, &data) => written.map_err(broke)?,
                                () = output_gone.cancelled() => return Err(cut_short()),
                            }
                        }
                    }
                    // Already in the wire's framing: checked, then passed on whole.
                    Input::Packed(packed) => {
                        packed::check(&packed, max_frame).map_err(|e| match (&e, circuit) {
                            (PackedError::TooLarge { len, .. }, Some(c)) if *len <= MAX_PAYLOAD => {
                                too_large_for_relay(*len, &c)
                            }
                            (PackedError::TooLarge { .. }, _) => {
                                Status::resource_exhausted(e.to_string())
                            }
                            (PackedError::Truncated, _) => Status::invalid_argument(e.to_string()),
                        })?;
                        sink.write_buffer_mut().extend_from_slice(&packed);
                    }
                }
                unflushed = true;
            }
            Ok(())
        }
        .await;
        match outcome {
            // Half-close: the remote sees the end of our frames, once they are all written
            // (unless the client's call ends meanwhile: the writer never outlives it).
            Ok(()) if output_gone.is_cancelled() => {
                let closing = SinkExt::<Bytes>::close(&mut sink);
                let _ = tokio::time::timeout(CLOSE_GRACE, closing).await;
            }
            Ok(()) => {
                tokio::select! {
                    _ = SinkExt::<Bytes>::close(&mut sink) => {}
                    () = output_gone.cancelled() => {}
                }
            }
            // No clean end on a failure (the app crashed, its connection broke, it sent too
            // much): the stream is dropped unclosed once the output ends too, which resets it,
            // so the remote sees an error rather than the end of the frames.
            Err(status) => {
                debug!(channel_id, "channel input ended: {status}");
                let _ = err_tx.send(status);
            }
        }
    });
    let read_half = CappedReads::new(read_half);
    let reader = if options.batch {
        Reader::Packed {
            io: read_half,
            buf: BytesMut::new(),
        }
    } else {
        Reader::Frames(FramedRead::new(read_half, codec(MAX_CHANNEL_FRAME)))
    };
    let state = OutputState {
        reader,
        input_error: Some(err_rx),
        half_close: options.half_close,
        peer_closed: false,
        done: false,
        _closed: closed,
        _alive: output_alive,
        ended_with_peer: peer_end,
        crossing,
    };
    let frames = futures::stream::unfold(state, next_output);
    crate::cut_on_stop(
        Box::pin(futures::stream::once(async { Ok(opened) }).chain(frames)),
        stop,
    )
}

/// Writes out what the writer has buffered, then `bytes` straight to its stream.
async fn write_direct<W, C>(sink: &mut FramedWrite<W, C>, bytes: &[u8]) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
    FramedWrite<W, C>: Sink<Bytes, Error = std::io::Error>,
{
    SinkExt::<Bytes>::flush(sink).await?;
    sink.get_mut().write_all(bytes).await
}

/// Ready when the writer has room for another frame (its buffer is flushed past a limit).
fn room<S: Sink<Bytes> + Unpin>(sink: &mut S) -> impl Future<Output = Result<(), S::Error>> + '_ {
    std::future::poll_fn(move |cx| Pin::new(&mut *sink).poll_ready(cx))
}

/// The read half of a channel's stream, read at most [`READ_CHUNK`] at a time: the libp2p
/// stream's compat layer zeroes all the room a read is given before filling it, which for a
/// buffer grown to a large frame is far more than one read brings.
type PeerReadHalf = CappedReads<tokio::io::ReadHalf<Box<dyn p2pos_protocols::apps::Duplex>>>;

/// Hands each read at most [`READ_CHUNK`] bytes of room.
struct CappedReads<R>(tokio::io::Take<R>);

impl<R: tokio::io::AsyncRead + Unpin> CappedReads<R> {
    fn new(io: R) -> Self {
        CappedReads(io.take(READ_CHUNK))
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CappedReads<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.0.set_limit(READ_CHUNK);
        Pin::new(&mut this.0).poll_read(cx, buf)
    }
}

/// Reads what the peer sends, for the output.
enum Reader {
    /// One frame per output (`data`).
    Frames(FramedRead<PeerReadHalf, FrameCodec>),
    /// Every whole frame read so far, up to [`BATCH_BYTES`], per output (`frames`), passed on
    /// in the wire's framing without being cut apart.
    Packed { io: PeerReadHalf, buf: BytesMut },
}

impl Reader {
    /// The next output; `None` at the end of the peer's frames. Cancel-safe.
    async fn next(&mut self) -> Option<std::io::Result<channel_output::Kind>> {
        let (io, buf) = match self {
            Reader::Frames(frames) => {
                return frames
                    .next()
                    .await
                    .map(|frame| frame.map(|bytes| channel_output::Kind::Data(bytes.freeze())));
            }
            Reader::Packed { io, buf } => (io, buf),
        };
        loop {
            match packed::whole_frames(buf, BATCH_BYTES, MAX_CHANNEL_FRAME) {
                Err(e) => return Some(Err(std::io::Error::new(ErrorKind::InvalidData, e))),
                // Room for what arrives, not for what the next frame announces: a peer that
                // announces a large frame and sends little of it costs little.
                Ok((0, _)) => buf.reserve(READ_ROOM),
                Ok((whole, _)) => {
                    return Some(Ok(channel_output::Kind::Frames(
                        buf.split_to(whole).freeze(),
                    )));
                }
            }
            match io.read_buf(buf).await {
                Ok(0) if buf.is_empty() => return None,
                Ok(0) => {
                    let e = std::io::Error::new(ErrorKind::UnexpectedEof, PackedError::Truncated);
                    return Some(Err(e));
                }
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

struct OutputState {
    reader: Reader,
    input_error: Option<tokio::sync::oneshot::Receiver<Status>>,
    /// Say `peer_closed` and wait for the input's end, rather than end with the peer's.
    half_close: bool,
    /// `peer_closed` was said: only the input's end (or failure) is left to wait for.
    peer_closed: bool,
    done: bool,
    _closed: ClosedOnDrop,
    _alive: tokio_util::sync::DropGuard,
    /// Set when the output ends because the peer half-closed.
    ended_with_peer: Arc<AtomicBool>,
    /// What a broken channel's status adds about the relay it crossed ([`via`]).
    crossing: Arc<str>,
}

/// The next output: a frame (or batch) from the peer, the end of the peer's frames, or the
/// status that failed the client's input (which ends the channel at once).
async fn next_output(mut st: OutputState) -> Option<(Result<ChannelOutput, Status>, OutputState)> {
    if st.done {
        return None;
    }
    if st.peer_closed {
        // The output ends with the input: cleanly, or with what failed it.
        let failed = match st.input_error.as_mut() {
            Some(rx) => rx.await.ok(),
            None => None,
        };
        st.done = true;
        return failed.map(|status| (Err(status), st));
    }
    loop {
        let input_failed = async {
            match st.input_error.as_mut() {
                Some(rx) => rx.await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // A failed input wins over whatever the peer sent meanwhile.
            biased;
            failed = input_failed => match failed {
                Some(status) => {
                    st.done = true;
                    return Some((Err(status), st));
                }
                // The input ended cleanly: keep reading until the peer closes.
                None => st.input_error = None,
            },
            output = st.reader.next() => {
                return match output {
                    Some(Ok(kind)) => Some((Ok(ChannelOutput { kind: Some(kind) }), st)),
                    Some(Err(e)) => {
                        st.done = true;
                        let status = Status::unavailable(format!(
                            "the channel from the peer broke: {e}{}",
                            st.crossing
                        ));
                        Some((Err(status), st))
                    }
                    // The peer is done, the app may still send: say so, and end with its input.
                    None if st.half_close && st.input_error.is_some() => {
                        st.peer_closed = true;
                        let closed = channel_output::Kind::PeerClosed(PeerClosed {});
                        Some((Ok(ChannelOutput { kind: Some(closed) }), st))
                    }
                    None => {
                        st.ended_with_peer.store(true, Ordering::Relaxed);
                        None
                    }
                };
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A batching reader of what `peer` writes.
    fn packed_reader() -> (Reader, tokio::io::DuplexStream) {
        let (near, peer) = tokio::io::duplex(4 * 1024 * 1024);
        let io: Box<dyn p2pos_protocols::apps::Duplex> = Box::new(near);
        let (read_half, _write_half) = tokio::io::split(io);
        let reader = Reader::Packed {
            io: CappedReads::new(read_half),
            buf: BytesMut::new(),
        };
        (reader, peer)
    }

    fn frame(len: usize) -> Vec<u8> {
        let mut framed = u32::try_from(len).unwrap().to_be_bytes().to_vec();
        framed.resize(packed::HEADER + len, 0x5a);
        framed
    }

    async fn next_batch(reader: &mut Reader) -> Vec<usize> {
        match reader.next().await {
            Some(Ok(channel_output::Kind::Frames(batch))) => packed::Unpack::new(batch)
                .map(|frame| frame.unwrap().len())
                .collect(),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn small_frames_then_a_large_one_fit_one_grpc_message() {
        let (mut reader, mut peer) = packed_reader();
        let mut sent = Vec::new();
        for _ in 0..1000 {
            sent.extend(frame(100));
        }
        sent.extend(frame(MAX_PAYLOAD));
        peer.write_all(&sent).await.unwrap();
        drop(peer);
        let mut lens = Vec::new();
        loop {
            match reader.next().await {
                Some(Ok(channel_output::Kind::Frames(batch))) => {
                    assert!(batch.len() <= MAX_GRPC_MESSAGE, "{} bytes", batch.len());
                    lens.extend(packed::Unpack::new(batch).map(|f| f.unwrap().len()));
                }
                None => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(lens.len(), 1001);
        assert_eq!(lens.last(), Some(&MAX_PAYLOAD));
    }

    #[tokio::test]
    async fn frames_before_a_bad_header_come_then_the_error() {
        let (mut reader, mut peer) = packed_reader();
        let mut sent = frame(3);
        sent.extend(u32::try_from(MAX_CHANNEL_FRAME + 1).unwrap().to_be_bytes());
        peer.write_all(&sent).await.unwrap();
        assert_eq!(next_batch(&mut reader).await, [3]);
        let err = reader.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[tokio::test]
    async fn a_frame_announced_but_not_sent_takes_no_room() {
        let (mut reader, mut peer) = packed_reader();
        let mut sent = u32::try_from(MAX_CHANNEL_FRAME)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        sent.extend([7u8; 10]);
        peer.write_all(&sent).await.unwrap();
        // The peer sends no more: the reader waits, holding room for what arrived.
        assert!(futures::poll!(Box::pin(reader.next())).is_pending());
        let Reader::Packed { buf, .. } = &reader else {
            unreachable!("a batching reader")
        };
        assert_eq!(buf.len(), 14);
        assert!(buf.capacity() <= 2 * READ_ROOM, "{} bytes", buf.capacity());
    }

    #[tokio::test]
    async fn an_end_inside_a_frame_is_an_error_and_a_clean_end_is_none() {
        let (mut reader, mut peer) = packed_reader();
        let mut sent = frame(5);
        sent.extend(&frame(10)[..7]);
        peer.write_all(&sent).await.unwrap();
        drop(peer);
        assert_eq!(next_batch(&mut reader).await, [5]);
        let err = reader.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof);

        let (mut reader, peer) = packed_reader();
        drop(peer);
        assert!(reader.next().await.is_none());
    }
}
