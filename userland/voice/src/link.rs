//! The plug-in's gRPC tasks: the app session, and channels (the control channel from the app,
//! the voice channel to or from the peer's plug-in). Each reports [`Event`]s to the call loop
//! through one bounded channel; the loop writes to a channel through the bounded sender handed
//! over in [`Event::Opened`] (dropping it half-closes the channel).

use bytes::Bytes;
use futures::StreamExt;
use p2pos_client::{AuthChannel, SessionUpdate, describe_status, next_update};
use p2pos_proto::app::v1::apps_client::AppsClient;
use p2pos_proto::app::v1::{
    AcceptChannel, ChannelInput, ChannelOutput, ChannelTransport, OpenChannel, SessionEvent,
    channel_input, channel_output,
};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Wait between attempts to open the voice channel while the peer's plug-in is not up.
const OPEN_RETRY: Duration = Duration::from_millis(250);

/// Which channel an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    /// The local channel from the app that started the plug-in.
    Control,
    /// The channel to the peer's plug-in.
    Voice,
}

/// Something that happened, for the call loop.
#[derive(Debug)]
pub(crate) enum Event {
    /// The session is registered; `peer_id` is this node's.
    Registered { peer_id: String },
    /// A channel was announced on the session.
    Incoming { channel_id: u64, peer_id: String },
    /// The session stream ended.
    SessionEnded(String),
    /// A channel is open; write to it through `input` (at most `capacity` frames queued).
    Opened {
        which: Which,
        peer_id: String,
        input: mpsc::Sender<Bytes>,
    },
    /// A channel did not open.
    OpenFailed { which: Which, reason: String },
    /// A data frame arrived.
    Frame { which: Which, data: Bytes },
    /// The channel's output ended: `None` at a clean end of stream.
    Closed { which: Which, error: Option<String> },
}

/// Where tasks report.
pub(crate) type Events = mpsc::Sender<Event>;

/// Forwards session events; reports `SessionEnded` when the stream stops.
pub(crate) async fn session(mut stream: tonic::Streaming<SessionEvent>, events: Events) {
    loop {
        let event = match next_update(&mut stream).await {
            SessionUpdate::Registered { peer_id } => Event::Registered { peer_id },
            SessionUpdate::Incoming(incoming) => Event::Incoming {
                channel_id: incoming.channel_id,
                peer_id: incoming.peer_id,
            },
            // The plug-in provides no service, so no call comes.
            SessionUpdate::Call(_) => continue,
            SessionUpdate::Ended(reason) => Event::SessionEnded(reason),
        };
        let ended = matches!(event, Event::SessionEnded(_));
        if events.send(event).await.is_err() || ended {
            return;
        }
    }
}

/// Accepts an announced channel and runs it.
pub(crate) async fn accept(
    mut apps: AppsClient<AuthChannel>,
    app_id: String,
    channel_id: u64,
    which: Which,
    capacity: usize,
    events: Events,
) {
    let first = channel_input::Kind::Accept(AcceptChannel {
        channel_id,
        app_id,
        batch: false,
        half_close: false,
        transport: ChannelTransport::Grpc as i32,
    });
    match attempt(&mut apps, first, capacity).await {
        Ok(open) => run(open, which, events).await,
        Err(status) => {
            let reason = describe_status(&status);
            let _ = events.send(Event::OpenFailed { which, reason }).await;
        }
    }
}

/// Opens a channel to `app_id` on `peer` and runs it, retrying until `deadline` while the app
/// is not running there (`FAILED_PRECONDITION`) or the peer is out of reach (`UNAVAILABLE`).
pub(crate) async fn open(
    mut apps: AppsClient<AuthChannel>,
    app_id: String,
    peer: String,
    deadline: Instant,
    which: Which,
    capacity: usize,
    events: Events,
) {
    loop {
        let first = channel_input::Kind::Open(OpenChannel {
            app_id: app_id.clone(),
            peer: peer.clone(),
            batch: false,
            half_close: false,
            group: String::new(),
            transport: ChannelTransport::Grpc as i32,
        });
        match attempt(&mut apps, first, capacity).await {
            Ok(open) => return run(open, which, events).await,
            Err(status) => {
                let transient =
                    matches!(status.code(), Code::FailedPrecondition | Code::Unavailable);
                if !transient || Instant::now() + OPEN_RETRY >= deadline {
                    let reason = describe_status(&status);
                    let _ = events.send(Event::OpenFailed { which, reason }).await;
                    return;
                }
            }
        }
        tokio::time::sleep(OPEN_RETRY).await;
    }
}

/// An open channel: its peer, its input and its output.
struct Open {
    peer_id: String,
    input: mpsc::Sender<Bytes>,
    output: tonic::Streaming<ChannelOutput>,
}

/// One `Apps.Channel` call up to its `opened` output.
async fn attempt(
    apps: &mut AppsClient<AuthChannel>,
    first: channel_input::Kind,
    capacity: usize,
) -> Result<Open, tonic::Status> {
    let (input, frames) = mpsc::channel::<Bytes>(capacity);
    let first = ChannelInput { kind: Some(first) };
    let stream = futures::stream::once(async move { first }).chain(
        ReceiverStream::new(frames).map(|data| ChannelInput {
            kind: Some(channel_input::Kind::Data(data)),
        }),
    );
    let mut output = apps.channel(stream).await?.into_inner();
    match output.message().await? {
        Some(ChannelOutput {
            kind: Some(channel_output::Kind::Opened(opened)),
        }) => Ok(Open {
            peer_id: opened.peer_id,
            input,
            output,
        }),
        Some(_) => Err(tonic::Status::internal("the node sent data before opening")),
        None => Err(tonic::Status::unavailable(
            "the channel closed before opening",
        )),
    }
}

/// Reports `Opened`, then forwards data frames until the output ends.
async fn run(open: Open, which: Which, events: Events) {
    let Open {
        peer_id,
        input,
        mut output,
    } = open;
    let opened = Event::Opened {
        which,
        peer_id,
        input,
    };
    if events.send(opened).await.is_err() {
        return;
    }
    let error = loop {
        match output.message().await {
            Ok(Some(ChannelOutput {
                kind: Some(channel_output::Kind::Data(data)),
            })) => {
                if events.send(Event::Frame { which, data }).await.is_err() {
                    return;
                }
            }
            Ok(Some(_)) => continue,
            Ok(None) => break None,
            Err(status) => break Some(describe_status(&status)),
        }
    };
    let _ = events.send(Event::Closed { which, error }).await;
}
