//! What an app sends across the lab, checked as its user would: a channel's frames and `Send`'s
//! messages arrive, each once, in order. Each check answers what went wrong rather than
//! panicking, so that a test can run all of them and report every failure.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use p2pos_client::Client;
use p2pos_proto::app::v1::{
    AcceptChannel, ChannelInput, ChannelOutput, OpenChannel, SessionEvent, channel_input,
    channel_output, session_event,
};

use crate::{
    messages::{receive, send},
    open_session,
};

/// How long each step of a check may take (a frame, a message, the channel's opening).
pub const STEP: Duration = Duration::from_secs(30);

/// The next item of `stream` within [`STEP`]; `what` names it in the error.
async fn next<T, S>(stream: &mut S, what: &str) -> Result<Option<T>, String>
where
    S: futures::Stream<Item = Result<T, tonic::Status>> + Unpin,
{
    match tokio::time::timeout(STEP, stream.next()).await {
        Err(_) => Err(format!("{what}: nothing within {STEP:?}")),
        Ok(None) => Ok(None),
        Ok(Some(Err(status))) => Err(format!("{what}: {status}")),
        Ok(Some(Ok(item))) => Ok(Some(item)),
    }
}

/// Opens a channel of app `app` from `from`'s node to `to`'s node (peer `to_peer`, by peer id
/// alone), sends `frames` and half-closes; `to`'s app accepts it and reads until the channel
/// ends. Ok if it read exactly `frames`, in order, and the channel ended cleanly.
pub async fn channel_carries(
    from: &Client,
    to: &Client,
    to_peer: &str,
    app: &str,
    frames: &[Bytes],
) -> Result<(), String> {
    let mut session = open_session(to, app).await;
    let (mut from_tx, from_rx) = futures::channel::mpsc::channel::<ChannelInput>(4);
    let open = ChannelInput {
        kind: Some(channel_input::Kind::Open(OpenChannel {
            app_id: app.to_owned(),
            peer: to_peer.to_owned(),
            ..OpenChannel::default()
        })),
    };
    from_tx.send(open).await.map_err(|e| e.to_string())?;
    let client = from.clone();
    let opening = tokio::spawn(async move { client.apps().channel(from_rx).await });

    let incoming = loop {
        let event: Option<SessionEvent> = next(&mut session, "the incoming channel").await?;
        match event.and_then(|e| e.kind) {
            Some(session_event::Kind::Incoming(incoming)) => break incoming,
            Some(_) => continue,
            None => return Err("the receiving app's session ended".to_owned()),
        }
    };
    let (mut to_tx, to_rx) = futures::channel::mpsc::channel::<ChannelInput>(4);
    let accept = ChannelInput {
        kind: Some(channel_input::Kind::Accept(AcceptChannel {
            channel_id: incoming.channel_id,
            app_id: app.to_owned(),
            ..AcceptChannel::default()
        })),
    };
    to_tx.send(accept).await.map_err(|e| e.to_string())?;
    let mut to_out = to
        .apps()
        .channel(to_rx)
        .await
        .map_err(|e| format!("accept: {e}"))?
        .into_inner();
    let mut from_out = match tokio::time::timeout(STEP, opening).await {
        Ok(Ok(Ok(response))) => response.into_inner(),
        Ok(Ok(Err(status))) => return Err(format!("open: {status}")),
        Ok(Err(e)) => return Err(format!("open: {e}")),
        Err(_) => return Err(format!("open: no answer within {STEP:?}")),
    };
    for (out, side) in [(&mut from_out, "opener"), (&mut to_out, "acceptor")] {
        let opened: Option<ChannelOutput> = next(out, side).await?;
        if !matches!(
            opened.and_then(|o| o.kind),
            Some(channel_output::Kind::Opened(_))
        ) {
            return Err(format!("the {side}'s first output is not `opened`"));
        }
    }

    // Sent from a task of its own: the frames may wait for the receiver's reading.
    let sending = {
        let frames = frames.to_vec();
        tokio::spawn(async move {
            for frame in frames {
                let data = ChannelInput {
                    kind: Some(channel_input::Kind::Data(frame)),
                };
                if from_tx.send(data).await.is_err() {
                    return;
                }
            }
            // Dropping the input half-closes the channel.
        })
    };
    let mut got = Vec::new();
    loop {
        let output: Option<ChannelOutput> = next(&mut to_out, &format!("frame {}", got.len()))
            .await
            .map_err(|e| format!("{e} (after {} frames)", got.len()))?;
        match output.and_then(|o| o.kind) {
            Some(channel_output::Kind::Data(frame)) => got.push(frame),
            Some(other) => return Err(format!("unexpected output {other:?}")),
            None => break,
        }
    }
    let _ = sending.await;
    drop((to_tx, from_out));
    compare("frame", frames, &got)
}

/// Sends `payloads` with `Send` from `from`'s node to app `app` on `to_peer` (by peer id), and
/// reads them from `to`'s `Receive`, followed by a last message that says they are all sent.
/// Ok if `to`'s app got exactly `payloads`, in order, then the last one.
pub async fn messages_arrive(
    from: &Client,
    to: &Client,
    to_peer: &str,
    app: &str,
    payloads: &[Bytes],
) -> Result<(), String> {
    // The receiving app is there (registered) for as long as this check runs.
    let _session = open_session(to, app).await;
    let mut inbox = receive(to, app).await;
    let last = Bytes::from_static(b"that was all");
    for payload in payloads.iter().chain([&last]) {
        send(from, app, to_peer, payload.clone()).await;
    }
    let mut got = Vec::new();
    loop {
        let what = format!("message {}", got.len());
        let message = next(&mut inbox, &what)
            .await
            .map_err(|e| format!("{e} (after {} messages)", got.len()))?
            .ok_or("the Receive stream ended")?;
        if message.payload == last {
            break;
        }
        got.push(message.payload);
    }
    compare("message", payloads, &got)
}

/// Ok if `got` is `sent`; else which one differs, by index and size.
fn compare(what: &str, sent: &[Bytes], got: &[Bytes]) -> Result<(), String> {
    if got == sent {
        return Ok(());
    }
    let sizes = |items: &[Bytes]| items.iter().map(Bytes::len).collect::<Vec<_>>();
    Err(format!(
        "{what}s sent (sizes) {:?}, received {:?}",
        sizes(sent),
        sizes(got)
    ))
}
