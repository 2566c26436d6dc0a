//! Inbound `/p2pos/...` streams, served in tasks (never in the swarm task or the actor): accept
//! loops with bounded concurrency (in all and per peer), the receiving side of the channel
//! handshake, and the receiving side of store-and-forward messages.

use std::{collections::HashMap, sync::Arc, time::Duration};

use actix::{Message, Recipient};
use futures::{Stream as FuturesStream, StreamExt};
use libp2p::{PeerId, Stream};
use p2pos_kernel::EventBus;
use p2pos_proto::{
    monitor::v1::{MessageDelivered, event::Kind},
    wire::v1::{ChannelHello, ChannelWelcome, MessageAck, MessageFrame, message_ack},
};
use p2pos_protocols::wire;
use tokio::{
    io::AsyncWriteExt,
    task::{self, JoinSet},
};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
use tracing::{debug, warn};

use crate::{
    frame::{read_message, write_message},
    mailbox::{Incoming, Mailbox},
};

/// How long a peer may take to send its `ChannelHello`.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a message stream may stay silent before it is closed.
const MESSAGE_IDLE: Duration = Duration::from_secs(60);
/// How long writing a handshake or acknowledgement frame may take.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A libp2p stream as tokio I/O.
pub(crate) type Io = Compat<Stream>;

/// A remote peer asks for a channel to `app_id`, or from its app `app_id` to `service`; the
/// actor keeps it pending (or hands it to port forwarding) or refuses it.
#[derive(Message)]
#[rtype(result = "Result<(), Refusal>")]
pub(crate) struct InboundChannel {
    /// The remote peer.
    pub(crate) peer: PeerId,
    /// The app it asked for; with `service` set, the opener's app.
    pub(crate) app_id: String,
    /// The service it asked for; empty for a channel to the same app.
    pub(crate) service: String,
    /// The stream, after the hello.
    pub(crate) io: Io,
}

/// The stream of a refused channel, with the answer to write on it.
pub(crate) struct Refusal {
    /// The stream.
    pub(crate) io: Io,
    /// Why it is refused.
    pub(crate) welcome: ChannelWelcome,
}

/// How many inbound streams of one protocol an accept loop serves at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// From all peers together.
    pub(crate) total: usize,
    /// From any one peer, so that one peer cannot take every slot.
    pub(crate) per_peer: usize,
}

/// Which of an accept loop's [`Limits`] a stream found reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// As many streams of the protocol as it serves in all are open.
    Total(usize),
    /// As many streams as it serves from one peer are open from this peer.
    PerPeer(usize),
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Overflow::Total(n) => write!(f, "{n} already open on this node (its limit)"),
            Overflow::PerPeer(n) => write!(f, "{n} already open from your node (the limit)"),
        }
    }
}

/// Most refusals written at once by one accept loop; past them, streams are dropped.
const MAX_REFUSALS: usize = 64;

/// Serves each stream of `incoming` with `serve`, within `limits`. A stream past them is given
/// to `refuse` (which may answer it, in a task of its own: at most [`MAX_REFUSALS`] at once,
/// each bounded by its own timeout) or, if it answers `None` or too many are being refused,
/// dropped (the remote sees a reset). Ends when the swarm is gone.
pub(crate) async fn accept_loop<S, I, F, Fut, R, RFut>(
    mut incoming: I,
    limits: Limits,
    what: &'static str,
    serve: F,
    refuse: R,
) where
    I: FuturesStream<Item = (PeerId, S)> + Unpin,
    F: Fn(PeerId, S) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    R: Fn(PeerId, S, Overflow) -> Option<RFut>,
    RFut: Future<Output = ()> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    let mut refusals = JoinSet::new();
    let mut task_peers: HashMap<task::Id, PeerId> = HashMap::new();
    let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
    loop {
        tokio::select! {
            // Free the slots of finished streams before taking new ones.
            biased;
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                if let Some(peer) = task_peers.remove(&id)
                    && let Some(n) = per_peer.get_mut(&peer)
                {
                    *n -= 1;
                    if *n == 0 {
                        per_peer.remove(&peer);
                    }
                }
            }
            Some(_) = refusals.join_next(), if !refusals.is_empty() => {}
            next = incoming.next() => match next {
                Some((peer, stream)) => {
                    let from_peer = per_peer.get(&peer).copied().unwrap_or(0);
                    let overflow = if tasks.len() >= limits.total {
                        Some(Overflow::Total(limits.total))
                    } else if from_peer >= limits.per_peer {
                        Some(Overflow::PerPeer(limits.per_peer))
                    } else {
                        None
                    };
                    match overflow {
                        None => {
                            let task = tasks.spawn(serve(peer, stream));
                            task_peers.insert(task.id(), peer);
                            *per_peer.entry(peer).or_default() += 1;
                        }
                        Some(overflow) => {
                            warn!(%peer, "refusing an inbound {what} stream: {overflow}");
                            if refusals.len() < MAX_REFUSALS
                                && let Some(refusal) = refuse(peer, stream, overflow)
                            {
                                refusals.spawn(refusal);
                            }
                        }
                    }
                }
                None => return,
            },
        }
    }
}

/// The refusal of an accept loop that answers nothing: the stream is dropped.
pub(crate) fn drop_stream<S>(_: PeerId, _: S, _: Overflow) -> Option<std::future::Ready<()>> {
    None
}

/// Reads the hello of an inbound channel and hands the stream to the actor.
pub(crate) async fn serve_channel(peer: PeerId, stream: Stream, actor: Recipient<InboundChannel>) {
    let mut io = stream.compat();
    let hello: ChannelHello =
        match read_message(&mut io, wire::MAX_CONTROL_FRAME, HELLO_TIMEOUT).await {
            Ok(hello) => hello,
            Err(e) => {
                debug!(%peer, "bad channel hello: {e}");
                return;
            }
        };
    let ChannelHello { app_id, service } = hello;
    let inbound = InboundChannel {
        peer,
        app_id,
        service,
        io,
    };
    let refusal = match actor.send(inbound).await {
        Ok(Ok(())) => return,
        Ok(Err(refusal)) => refusal,
        Err(_) => return, // the service is going away; the stream closes
    };
    refuse(refusal).await;
}

/// Writes a refusal on a channel stream and closes it.
pub(crate) async fn refuse(refusal: Refusal) {
    let Refusal { mut io, welcome } = refusal;
    if write_message(&mut io, &welcome, WRITE_TIMEOUT)
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, io.shutdown()).await;
    }
}

/// Receives messages from `peer`: stores each at most once, durably, then acknowledges it.
pub(crate) async fn serve_messages(
    peer: PeerId,
    stream: Stream,
    mailbox: Arc<Mailbox>,
    events: EventBus,
) {
    let mut io = stream.compat();
    loop {
        let frame: MessageFrame =
            match read_message(&mut io, wire::MAX_MESSAGE_FRAME, MESSAGE_IDLE).await {
                Ok(frame) => frame,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::UnexpectedEof {
                        debug!(%peer, "message stream ended: {e}");
                    }
                    break;
                }
            };
        let sequence = frame.sequence;
        let (app_id, message_id) = (frame.app_id.clone(), frame.message_id);
        let result = match mailbox.accept_incoming(&peer, frame) {
            Ok(result) => result,
            Err(e) => {
                // Not acknowledged: the sender keeps it and retries later.
                warn!(%peer, "cannot store a message: {e}");
                break;
            }
        };
        let ack = match result {
            Incoming::Stored => {
                if let Err(e) = mailbox.flush().await {
                    warn!(%peer, "cannot store a message: {e}");
                    break;
                }
                events.publish(Kind::MessageDelivered(MessageDelivered {
                    inbound: true,
                    peer_id: peer.to_string(),
                    app_id: app_id.clone(),
                    message_id,
                }));
                mailbox.signal(&app_id);
                message_ack::Result::Stored
            }
            Incoming::Duplicate => {
                // Stored earlier, perhaps by another stream from this peer whose flush is still
                // under way: acknowledge only what is durable.
                if let Err(e) = mailbox.flush().await {
                    warn!(%peer, "cannot store a message: {e}");
                    break;
                }
                // Its first arrival may have failed to flush and so never woke a Receive.
                mailbox.signal(&app_id);
                message_ack::Result::Stored
            }
            Incoming::UnknownApp => message_ack::Result::UnknownApp,
            Incoming::TooLarge => message_ack::Result::TooLarge,
            Incoming::InboxFull => {
                // Not stored: the sender keeps it and tries again later.
                debug!(%peer, app_id, "inbox full; asking the sender to retry later");
                message_ack::Result::RetryLater
            }
        };
        let retry_later = ack == message_ack::Result::RetryLater;
        let ack = MessageAck {
            sequence,
            result: ack.into(),
        };
        if let Err(e) = write_message(&mut io, &ack, WRITE_TIMEOUT).await {
            debug!(%peer, "cannot acknowledge a message: {e}");
            break;
        }
        if retry_later {
            break;
        }
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, io.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use tokio::sync::{mpsc, oneshot};
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;

    /// A stand-in for a stream: its serving task lasts until the sender of the `oneshot` is
    /// dropped, and reports its start (`true`) and end (`false`).
    type Held = (oneshot::Receiver<()>, mpsc::UnboundedSender<(PeerId, bool)>);

    #[tokio::test]
    async fn one_peer_cannot_take_every_slot() {
        let (streams, incoming) = mpsc::channel::<(PeerId, Held)>(16);
        let limits = Limits {
            total: 3,
            per_peer: 2,
        };
        let serving = tokio::spawn(accept_loop(
            ReceiverStream::new(incoming),
            limits,
            "test",
            |peer, (hold, events): Held| async move {
                let _ = events.send((peer, true));
                let _ = hold.await;
                let _ = events.send((peer, false));
            },
            drop_stream,
        ));
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        // Offers a stream from `peer`; dropping the answer ends it.
        let offer = |peer| {
            let (hold, held) = oneshot::channel::<()>();
            streams
                .try_send((peer, (held, events_tx.clone())))
                .expect("room");
            hold
        };
        // A's third stream is refused while B still gets in; then the total is reached (C).
        let mut holds: Vec<_> = [a, a, a, b, c].into_iter().map(offer).collect();
        let mut started = Vec::new();
        for _ in 0..3 {
            started.push(events.recv().await.expect("event"));
        }
        assert_eq!(started, vec![(a, true), (a, true), (b, true)]);
        // One stream of A ends: A may open another.
        drop(holds.remove(0));
        assert_eq!(events.recv().await, Some((a, false)));
        holds.push(offer(a));
        let next = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
        assert_eq!(next.expect("served in time"), Some((a, true)));
        serving.abort();
    }

    #[tokio::test]
    async fn streams_past_the_limits_are_handed_to_the_refusal() {
        let (streams, incoming) = mpsc::channel::<(PeerId, oneshot::Receiver<()>)>(16);
        let limits = Limits {
            total: 2,
            per_peer: 1,
        };
        let (refused_tx, mut refused) = mpsc::unbounded_channel();
        let serving = tokio::spawn(accept_loop(
            ReceiverStream::new(incoming),
            limits,
            "test",
            |_, hold: oneshot::Receiver<()>| async move {
                let _ = hold.await;
            },
            move |peer, _, overflow| {
                let refused = refused_tx.clone();
                Some(async move {
                    let _ = refused.send((peer, overflow));
                })
            },
        ));
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut holds = Vec::new();
        for peer in [a, a, b, c] {
            let (hold, held) = oneshot::channel::<()>();
            streams.try_send((peer, held)).expect("room");
            holds.push(hold);
        }
        for expected in [(a, Overflow::PerPeer(1)), (c, Overflow::Total(2))] {
            let next = tokio::time::timeout(Duration::from_secs(5), refused.recv()).await;
            assert_eq!(next.expect("in time"), Some(expected));
        }
        serving.abort();
    }
}
