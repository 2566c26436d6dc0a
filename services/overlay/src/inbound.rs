//! Inbound `/p2pos/...` streams, served in tasks (never in the swarm task or the actor) by the
//! network's accept loops (`p2pos_protocols::network::accept`): the receiving side of the
//! channel handshake, and the receiving side of store-and-forward messages.

use std::{sync::Arc, time::Duration};

use actix::{Message, Recipient};
use libp2p::PeerId;
use p2pos_kernel::{EventBus, Registry};
use p2pos_proto::{
    monitor::v1::{MessageDelivered, event::Kind},
    wire::v1::{
        ChannelHello, ChannelWelcome, MessageAck, MessageFrame, channel_welcome, message_ack,
    },
};
use p2pos_protocols::{
    Groups, groups,
    marked::EndMarked,
    network::InboundStream,
    wire::{read_message, write_message},
};
use tokio::io::AsyncWriteExt;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
use tracing::{debug, warn};

use crate::mailbox::{Incoming, Mailbox};

/// The byte a responder's node writes as soon as it took a channel's hello, when the hello
/// asks for it (`taken_byte`).
pub(crate) const CHANNEL_TAKEN: u8 = 0x01;
/// How long a peer may take to send its `ChannelHello`.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a message stream may stay silent before it is closed.
pub(crate) const MESSAGE_IDLE: Duration = Duration::from_secs(60);
/// How long writing a handshake or acknowledgement frame may take.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// An inbound stream as tokio I/O.
pub(crate) type Io = EndMarked<Compat<InboundStream>>;

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
    /// The group it is in (its id), where the peer's membership was checked; empty: none.
    pub(crate) group: String,
    /// With `service` set: the publisher keys the opener pinned, as the hello carries them
    /// (checked by the actor against the service's registration); empty: any provider.
    pub(crate) publisher_keys: Vec<bytes::Bytes>,
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

/// Reads the hello of an inbound channel and hands the stream to the actor; a channel in a
/// group only once the groups service has admitted it (both ends members there), else it is
/// refused `NOT_MEMBER` here and the actor never sees it.
pub(crate) async fn serve_channel(
    peer: PeerId,
    stream: InboundStream,
    actor: Recipient<InboundChannel>,
    registry: Registry,
) {
    let max_frame = stream.max_frame();
    let mut io = stream.compat();
    let hello: ChannelHello = match read_message(&mut io, max_frame, HELLO_TIMEOUT).await {
        Ok(hello) => hello,
        Err(e) => {
            debug!(%peer, "bad channel hello: {e}");
            return;
        }
    };
    let ChannelHello {
        app_id,
        service,
        group,
        end_mark,
        publisher_keys,
        taken_byte,
    } = hello;
    // The opener asked to hear at once that this node took its hello (it skips a silent
    // responder quickly); the welcome follows.
    if taken_byte {
        let taken = async {
            io.write_all(&[CHANNEL_TAKEN]).await?;
            io.flush().await
        };
        if let Err(e) = tokio::time::timeout(WRITE_TIMEOUT, taken)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        {
            debug!(%peer, "the opener of a channel went away: {e}");
            return;
        }
    }
    // The frames' ends are marked both ways when the opener asks (the welcome says so).
    let io = EndMarked::new(io, end_mark);
    if !group.is_empty() {
        let asked = group.clone();
        let admitted = registry
            .ask::<Groups, ()>(|reply| groups::Request::Admit {
                group: asked,
                peer,
                reply,
            })
            .await;
        if let Err(e) = admitted {
            debug!(%peer, group, "a channel in a group refused: {}", e.message);
            let welcome = ChannelWelcome {
                result: channel_welcome::Result::NotMember.into(),
                message: e.message,
                end_mark: false,
            };
            refuse(Refusal { io, welcome }).await;
            return;
        }
    }
    let inbound = InboundChannel {
        peer,
        app_id,
        service,
        group,
        publisher_keys,
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
    stream: InboundStream,
    mailbox: Arc<Mailbox>,
    events: EventBus,
) {
    let max_frame = stream.max_frame();
    let mut io = stream.compat();
    loop {
        let frame: MessageFrame = match read_message(&mut io, max_frame, MESSAGE_IDLE).await {
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
        // Stored off the async threads: the store write may block.
        let result = match mailbox
            .blocking(move |mailbox| mailbox.accept_incoming(&peer, frame))
            .await
        {
            Ok(result) => result,
            Err(e) => {
                // Not acknowledged: the sender keeps it and retries later.
                warn!(%peer, "cannot store a message: {e}");
                break;
            }
        };
        let (ack, reason) = match result {
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
                (message_ack::Result::Stored, String::new())
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
                (message_ack::Result::Stored, String::new())
            }
            Incoming::UnknownApp => (message_ack::Result::UnknownApp, String::new()),
            Incoming::TooLarge => (message_ack::Result::TooLarge, String::new()),
            Incoming::AppFull(reason) => {
                // Not stored: the sender keeps it, holds that app back and goes on with others.
                debug!(%peer, app_id, reason, "an app's inbox is over a quota; asking the sender to retry it later");
                (message_ack::Result::AppFull, reason)
            }
            Incoming::SenderFull(reason) => {
                // Not stored: the sender keeps it and tries again later.
                debug!(%peer, reason, "the sender is over its quota; asking it to retry later");
                (message_ack::Result::RetryLater, reason)
            }
        };
        let retry_later = ack == message_ack::Result::RetryLater;
        let ack = MessageAck {
            sequence,
            result: ack.into(),
            reason,
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
