//! The chat's I/O tasks: each talks to one gRPC stream (or stdin) and reports [`Event`]s to the
//! loop in `run` through one bounded channel (back-pressure: a task waits while the loop is busy).
//! The call task (in `call`) reports through the same channel.
//! The acknowledging task takes the newest inbox id to acknowledge from a `watch` instead:
//! acknowledgements are cumulative, so only the newest matters.

use futures::{Stream, StreamExt};
use p2pos_client::{AuthChannel, SessionUpdate, describe_status, next_update};
use p2pos_proto::app::v1::apps_client::AppsClient;
use p2pos_proto::app::v1::{
    AckRequest, ChannelInput, ChannelOutput, DeliveryState, ListAppsRequest, ReceiveRequest,
    ReceivedMessage, SendRequest, SessionEvent, channel_input, channel_output,
};
use p2pos_proto::monitor::v1::monitor_client::MonitorClient;
use p2pos_proto::monitor::v1::{EventsRequest, MessageDelivered, MessageWaiting, event};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Code;

use crate::machine::{APP_ID, Failure, Link, Sent, Stored};
use crate::plugin::Report;

/// Something that happened, for the loop.
#[derive(Debug)]
pub(crate) enum Event {
    /// A typed line, without its line ending.
    Line(String),
    /// Stdin ended.
    Eof,
    /// The session is registered.
    Registered { peer_id: String },
    /// An incoming channel was announced on the session.
    Incoming { channel_id: u64, peer_id: String },
    /// The session stream ended: the node is gone.
    SessionEnded(String),
    /// A stored message arrived.
    Received(Stored),
    /// The receive stream ended; another is tried after `retry_in`, if given.
    ReceiveEnded {
        reason: String,
        retry_in: Option<std::time::Duration>,
    },
    /// A channel opened.
    Opened { link: Link, peer_id: String },
    /// A channel did not open.
    OpenFailed { link: Link, failure: Failure },
    /// A data frame arrived on a channel.
    Frame { link: Link, text: String },
    /// An open channel's output ended.
    Closed { link: Link },
    /// A channel's input stream waits for its next frame on `reply` (dropping it ends the input).
    WriterReady {
        link: Link,
        reply: oneshot::Sender<String>,
    },
    /// The outstanding `Send` finished.
    SendDone(Result<Sent, Failure>),
    /// The node delivered one of the chat's messages from its outbox.
    Delivered(u64),
    /// One of the chat's messages waits in the node's outbox, for this reason.
    Waiting { message_id: u64, reason: String },
    /// The node's outbox holds none of the chat's messages.
    OutboxEmpty,
    /// The voice plug-in has the call.
    CallStarted,
    /// The voice plug-in reported something.
    CallReport(Report),
    /// The call task is done and the helper stopped (`Err`: why the call failed).
    CallEnded(Result<(), String>),
}

/// Where tasks report.
pub(crate) type Events = mpsc::Sender<Event>;

/// Whether a failed call may succeed later.
pub(crate) fn classify(status: &tonic::Status) -> Failure {
    let reason = describe_status(status);
    match status.code() {
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented => Failure::Fatal(reason),
        Code::FailedPrecondition => Failure::Refused(reason),
        Code::NotFound => Failure::Unknown(reason),
        _ => Failure::Retry(reason),
    }
}

/// Reads stdin on its own thread (blocking reads must not hold up the runtime or its shutdown).
pub(crate) fn spawn_stdin(events: Events) {
    spawn_lines(events, Event::Line, Event::Eof);
}

/// Reads stdin on its own thread, reporting each line as `line(text)` and its end as `eof`.
pub(crate) fn spawn_lines<E: Send + 'static>(
    events: mpsc::Sender<E>,
    line: fn(String) -> E,
    eof: E,
) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                        if buf.last() == Some(&b'\r') {
                            buf.pop();
                        }
                    }
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if events.blocking_send(line(text)).is_err() {
                        return;
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        // The loop may be gone already; nothing to do then.
        let _ = events.blocking_send(eof);
    });
}

/// Forwards session events; reports `SessionEnded` when the stream stops.
pub(crate) async fn session(mut stream: tonic::Streaming<SessionEvent>, events: Events) {
    loop {
        let event = match next_update(&mut stream).await {
            SessionUpdate::Registered { peer_id } => Event::Registered { peer_id },
            SessionUpdate::Incoming(incoming) => Event::Incoming {
                channel_id: incoming.channel_id,
                peer_id: incoming.peer_id,
            },
            // The chat provides no service, so no call comes.
            SessionUpdate::Call(_) => continue,
            SessionUpdate::Ended(reason) => Event::SessionEnded(reason),
        };
        let ended = matches!(event, Event::SessionEnded(_));
        if events.send(event).await.is_err() || ended {
            return;
        }
    }
}

/// The first wait before `Receive` is tried again after its stream ended; it doubles up to
/// [`RECEIVE_RETRY_MAX`].
const RECEIVE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);
const RECEIVE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(15);

/// Receives stored messages for the chat app, for as long as the chat runs: a stream the node
/// ended (its service restarted, say) is opened again, after a wait that grows while it keeps
/// failing; the machine drops the messages it has shown already.
pub(crate) async fn receive(apps: AppsClient<AuthChannel>, events: Events) {
    let mut wait = RECEIVE_RETRY;
    loop {
        let (reason, retry) = match receive_once(apps.clone(), &events).await {
            None => return,
            Some(ended) => ended,
        };
        let retry_in = retry.then_some(wait);
        if events
            .send(Event::ReceiveEnded { reason, retry_in })
            .await
            .is_err()
            || !retry
        {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RECEIVE_RETRY_MAX);
    }
}

/// One `Receive` stream, until it ends: why, and whether another is worth trying; `None` once
/// the chat has gone.
async fn receive_once(
    mut apps: AppsClient<AuthChannel>,
    events: &Events,
) -> Option<(String, bool)> {
    let request = ReceiveRequest {
        app_id: APP_ID.to_owned(),
    };
    // Refusals that another try would meet again.
    let lasting = |status: &tonic::Status| {
        matches!(
            status.code(),
            Code::PermissionDenied
                | Code::InvalidArgument
                | Code::Unauthenticated
                | Code::Unimplemented
        )
    };
    let mut stream = match apps.receive(request).await {
        Err(status) => return Some((describe_status(&status), !lasting(&status))),
        Ok(response) => response.into_inner(),
    };
    loop {
        match stream.message().await {
            Ok(Some(ReceivedMessage {
                from_peer,
                sequence,
                sender_epoch,
                inbox_id,
                payload,
                ..
            })) => {
                let event = Event::Received(Stored {
                    from: from_peer,
                    epoch: sender_epoch,
                    sequence,
                    inbox_id,
                    text: String::from_utf8_lossy(&payload).into_owned(),
                });
                events.send(event).await.ok()?;
            }
            Ok(None) => return Some(("the node ended the stream".to_owned(), true)),
            Err(status) => return Some((describe_status(&status), !lasting(&status))),
        }
    }
}

/// Follows what the node says of the chat's own messages in its outbox (monitor events): which
/// were delivered and which wait, for as long as the chat runs; a stream that ends is opened
/// again after a wait that grows while it keeps failing. Whenever it (re)opens, or missed
/// events, the outbox is looked at: empty, nothing is left to wait for.
pub(crate) async fn outbox(
    mut monitor: MonitorClient<AuthChannel>,
    apps: AppsClient<AuthChannel>,
    events: Events,
) {
    let mut wait = RECEIVE_RETRY;
    loop {
        if let Ok(response) = monitor.events(EventsRequest {}).await {
            wait = RECEIVE_RETRY;
            let mut stream = response.into_inner();
            if !outbox_check(apps.clone(), &events).await {
                return;
            }
            while let Ok(Some(e)) = stream.message().await {
                let event = match e.kind {
                    Some(event::Kind::MessageDelivered(MessageDelivered {
                        inbound: false,
                        app_id,
                        message_id,
                        ..
                    })) if app_id == APP_ID => Event::Delivered(message_id),
                    Some(event::Kind::MessageWaiting(MessageWaiting {
                        app_id,
                        message_id,
                        reason,
                        ..
                    })) if app_id == APP_ID => Event::Waiting { message_id, reason },
                    Some(event::Kind::Lagged(_)) => {
                        if !outbox_check(apps.clone(), &events).await {
                            return;
                        }
                        continue;
                    }
                    _ => continue,
                };
                if events.send(event).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RECEIVE_RETRY_MAX);
    }
}

/// Tells the loop when the node's outbox holds none of the chat's messages; `false` once the
/// chat has gone.
async fn outbox_check(mut apps: AppsClient<AuthChannel>, events: &Events) -> bool {
    let Ok(listed) = apps.list_apps(ListAppsRequest {}).await else {
        return true;
    };
    let empty = listed
        .into_inner()
        .apps
        .iter()
        .all(|a| a.app_id != APP_ID || a.outbox == 0);
    !empty || events.send(Event::OutboxEmpty).await.is_ok()
}

/// Acknowledges stored messages: each time `upto` changes, every message up to its value. Ends
/// once `upto` is dropped and its last value is acknowledged. A failed `Ack` is not retried
/// by itself: the node hands those messages over again and the machine does not print them
/// twice.
pub(crate) async fn ack(mut apps: AppsClient<AuthChannel>, mut upto: watch::Receiver<u64>) {
    let mut acked = 0;
    loop {
        let open = upto.changed().await.is_ok();
        let inbox_id = *upto.borrow_and_update();
        if inbox_id > acked {
            let request = AckRequest {
                app_id: APP_ID.to_owned(),
                inbox_id,
            };
            if apps.ack(request).await.is_ok() {
                acked = inbox_id;
            }
        }
        if !open {
            return;
        }
    }
}

/// Hands one line to `Apps.Send` and reports the outcome.
pub(crate) async fn send(
    mut apps: AppsClient<AuthChannel>,
    peer: String,
    text: String,
    events: Events,
) {
    let request = SendRequest {
        app_id: APP_ID.to_owned(),
        peer,
        payload: text.into(),
        idempotency_key: Default::default(),
    };
    let outcome = match apps.send(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            Ok(Sent {
                message_id: reply.message_id,
                delivered: reply.state() == DeliveryState::Delivered,
                waiting: reply.waiting,
            })
        }
        Err(status) => Err(classify(&status)),
    };
    let _ = events.send(Event::SendDone(outcome)).await;
}

/// Runs one channel: `first` is the `open` or `accept` input; frames then come one at a time
/// from the loop (see [`Event::WriterReady`]).
pub(crate) async fn channel(
    mut apps: AppsClient<AuthChannel>,
    link: Link,
    first: channel_input::Kind,
    events: Events,
) {
    let input = input_stream(link, first, events.clone());
    let mut output = match apps.channel(input).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let failure = classify(&status);
            let _ = events.send(Event::OpenFailed { link, failure }).await;
            return;
        }
    };
    let opened = match output.message().await {
        Ok(Some(ChannelOutput {
            kind: Some(channel_output::Kind::Opened(opened)),
        })) => Ok(opened.peer_id),
        Ok(Some(_)) => Err(Failure::Retry("the node sent data before opening".into())),
        Ok(None) => Err(Failure::Retry("the channel closed before opening".into())),
        Err(status) => Err(classify(&status)),
    };
    let event = match opened {
        Ok(peer_id) => Event::Opened { link, peer_id },
        Err(failure) => Event::OpenFailed { link, failure },
    };
    let failed = matches!(event, Event::OpenFailed { .. });
    if events.send(event).await.is_err() || failed {
        return;
    }
    loop {
        match output.message().await {
            Ok(Some(ChannelOutput {
                kind: Some(channel_output::Kind::Data(data)),
            })) => {
                let text = String::from_utf8_lossy(&data).into_owned();
                if events.send(Event::Frame { link, text }).await.is_err() {
                    return;
                }
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        }
    }
    let _ = events.send(Event::Closed { link }).await;
}

/// The channel's input: `first`, then one data frame each time the loop answers a
/// `WriterReady`. Asking only when the transport polls means a line is taken off the queue
/// exactly when it is written, so none sits in a buffer that could be lost when the channel
/// closes.
fn input_stream(
    link: Link,
    first: channel_input::Kind,
    events: Events,
) -> impl Stream<Item = ChannelInput> + Send + 'static {
    let first = ChannelInput { kind: Some(first) };
    futures::stream::once(async move { first }).chain(futures::stream::unfold(
        events,
        move |events| async move {
            let (reply, frame) = oneshot::channel();
            events.send(Event::WriterReady { link, reply }).await.ok()?;
            let text = frame.await.ok()?;
            let input = ChannelInput {
                kind: Some(channel_input::Kind::Data(text.into())),
            };
            Some((input, events))
        },
    ))
}
