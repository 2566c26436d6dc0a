//! The channel data path: gRPC frames in, length-delimited frames onto the libp2p stream, and
//! back. One task writes (awaiting each write, so the remote's flow control reaches the
//! client); the response stream reads straight from the libp2p stream. No actor is involved.
//!
//! Shared by `Apps.Channel` and `Services.Channel`: their inputs differ only in the first frame
//! (see [`ChannelFrame`]); their outputs are the same `ChannelOutput`.

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use p2pos_kernel::{
    EventBus,
    protocols::apps::ChannelStream,
    wire::{MAX_CHANNEL_FRAME, MAX_PAYLOAD, codec},
};
use p2pos_proto::{
    app::v1::{ChannelInput, ChannelOpened, ChannelOutput, channel_input, channel_output},
    monitor::v1::{self, event::Kind},
    service::v1::{ServiceChannelInput, service_channel_input},
};
use tokio_util::{
    codec::{FramedRead, FramedWrite},
    sync::CancellationToken,
};
use tonic::{Status, Streaming};
use tracing::debug;

use crate::BoxStream;

/// An input frame of a channel after its first one: data, or a misplaced or empty frame.
pub trait ChannelFrame: Send + 'static {
    /// The frame's bytes, or the status that ends the channel.
    fn into_data(self) -> Result<Bytes, Status>;
}

impl ChannelFrame for ChannelInput {
    fn into_data(self) -> Result<Bytes, Status> {
        match self.kind {
            Some(channel_input::Kind::Data(data)) => Ok(data),
            Some(channel_input::Kind::Open(_) | channel_input::Kind::Accept(_)) => Err(
                Status::invalid_argument("open/accept may only be the first frame of a channel"),
            ),
            None => Err(Status::invalid_argument("empty channel frame")),
        }
    }
}

impl ChannelFrame for ServiceChannelInput {
    fn into_data(self) -> Result<Bytes, Status> {
        match self.kind {
            Some(service_channel_input::Kind::Data(data)) => Ok(data),
            Some(service_channel_input::Kind::Open(_)) => Err(Status::invalid_argument(
                "open may only be the first frame of a channel",
            )),
            None => Err(Status::invalid_argument("empty channel frame")),
        }
    }
}

/// Publishes `ChannelClosed` when the channel's output stream is dropped.
struct ClosedOnDrop {
    events: EventBus,
    event: v1::ChannelClosed,
}

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        self.events
            .publish(Kind::ChannelClosed(std::mem::take(&mut self.event)));
    }
}

/// Splices an open channel onto the rest of the client's input and returns the output.
pub fn splice<I: ChannelFrame>(
    channel: ChannelStream,
    mut input: Streaming<I>,
    events: EventBus,
    stop: CancellationToken,
) -> BoxStream<ChannelOutput> {
    let ChannelStream {
        channel_id,
        peer_id,
        app_id,
        inbound,
        io,
    } = channel;
    events.publish(Kind::ChannelOpened(v1::ChannelOpened {
        channel_id,
        peer_id: peer_id.clone(),
        app_id: app_id.clone(),
        inbound,
    }));
    let closed = ClosedOnDrop {
        events,
        event: v1::ChannelClosed {
            channel_id,
            peer_id: peer_id.clone(),
            app_id: app_id.clone(),
        },
    };
    let (read_half, write_half) = tokio::io::split(io);
    let mut sink = FramedWrite::new(write_half, codec(MAX_CHANNEL_FRAME));
    let (err_tx, err_rx) = tokio::sync::oneshot::channel::<Status>();
    let input_stop = stop.clone();
    // Cancelled when the client's output stream is dropped: the writer must not outlive it
    // (a remote that stops reading would otherwise hold the task and stream for ever).
    let output_gone = CancellationToken::new();
    let output_alive = output_gone.clone().drop_guard();
    let writer_gone = output_gone.clone();
    tokio::spawn(async move {
        let outcome: Result<(), Status> = async {
            let broke = |e: std::io::Error| Status::unavailable(format!("the channel to the peer broke: {e}"));
            // Frames are fed into the writer's buffer and flushed only when the client has no
            // next frame ready, so a burst of small frames leaves in a few network writes.
            let mut unflushed = false;
            loop {
                if input_stop.is_cancelled() || output_gone.is_cancelled() {
                    break;
                }
                let ready = input.message().now_or_never();
                let frame = match ready {
                    Some(frame) => frame?,
                    None => {
                        if unflushed {
                            tokio::select! {
                                flushed = SinkExt::<Bytes>::flush(&mut sink) => flushed.map_err(broke)?,
                                () = writer_gone.cancelled() => break,
                            }
                        }
                        tokio::select! {
                            frame = input.message() => frame?,
                            () = input_stop.cancelled() => break,
                            () = output_gone.cancelled() => break,
                        }
                    }
                };
                let Some(frame) = frame else { break };
                let data = frame.into_data()?;
                if data.len() > MAX_PAYLOAD {
                    return Err(Status::resource_exhausted(format!(
                        "a channel frame of {} bytes exceeds the {MAX_PAYLOAD}-byte limit",
                        data.len()
                    )));
                }
                tokio::select! {
                    fed = sink.feed(data) => fed.map_err(broke)?,
                    () = writer_gone.cancelled() => break,
                }
                unflushed = true;
            }
            Ok(())
        }
        .await;
        match outcome {
            // Half-close: the remote sees the end of our frames.
            Ok(()) => {
                let _ = SinkExt::<Bytes>::close(&mut sink).await;
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
    let opened = ChannelOutput {
        kind: Some(channel_output::Kind::Opened(ChannelOpened {
            channel_id,
            peer_id,
            app_id,
        })),
    };
    let state = OutputState {
        frames: FramedRead::new(read_half, codec(MAX_CHANNEL_FRAME)),
        input_error: Some(err_rx),
        done: false,
        _closed: closed,
        _alive: output_alive,
    };
    let frames = futures::stream::unfold(state, next_output);
    crate::cut_on_stop(
        Box::pin(futures::stream::once(async { Ok(opened) }).chain(frames)),
        stop,
    )
}

struct OutputState {
    frames: FramedRead<
        tokio::io::ReadHalf<Box<dyn p2pos_kernel::protocols::apps::Duplex>>,
        tokio_util::codec::LengthDelimitedCodec,
    >,
    input_error: Option<tokio::sync::oneshot::Receiver<Status>>,
    done: bool,
    _closed: ClosedOnDrop,
    _alive: tokio_util::sync::DropGuard,
}

/// The next output: a frame from the peer, the end of the peer's frames, or the status that
/// failed the client's input (which ends the channel at once).
async fn next_output(mut st: OutputState) -> Option<(Result<ChannelOutput, Status>, OutputState)> {
    if st.done {
        return None;
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
            frame = st.frames.next() => {
                return match frame {
                    Some(Ok(bytes)) => Some((
                        Ok(ChannelOutput { kind: Some(channel_output::Kind::Data(Bytes::from(bytes))) }),
                        st,
                    )),
                    Some(Err(e)) => {
                        st.done = true;
                        Some((Err(Status::unavailable(format!("the channel from the peer broke: {e}"))), st))
                    }
                    None => None,
                };
            }
        }
    }
}
