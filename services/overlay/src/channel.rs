//! App and service channels over `/p2pos/channel/1`: opening one to a peer (connect, hello,
//! welcome) and accepting a pending inbound one. Both end in a [`ChannelStream`] that the
//! gateway splices onto the client's gRPC stream; no channel byte passes through the actor.

use std::{sync::Arc, time::Duration};

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use libp2p_stream::OpenStreamError;
use p2pos_kernel::Store;
use p2pos_proto::wire::v1::{ChannelHello, ChannelWelcome, channel_welcome};
use p2pos_protocols::{
    apps::ChannelStream,
    certs::PublisherKey,
    marked::EndMarked,
    network::{Circuit, Network},
    wire::{self, read_message, write_message},
};
use tokio::{io::AsyncReadExt, time::Instant};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::debug;

use crate::{
    Error,
    error::validate_app_id,
    inbound::{CHANNEL_TAKEN, Io},
    registry::tries,
};

/// `/p2pos/channel/1`.
pub(crate) const CHANNEL_PROTOCOL: StreamProtocol = StreamProtocol::new(wire::CHANNEL_PROTOCOL);

/// How long connecting to the peer may take, at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening the stream and writing the hello may take, at most.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reaching the peer (connecting, opening the stream, writing the hello) may take
/// when the caller gives no shorter time.
pub(crate) const REACH_TIME: Duration = Duration::from_secs(20);
/// How long the remote app may take to accept (it has 30 s, plus the way there and back).
const WELCOME_TIMEOUT: Duration = Duration::from_secs(40);
/// How long writing the welcome may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many streams one open tries, at most, when the responder resets them before the hello.
const MAX_OPENS: u32 = 4;
/// How long to wait before opening a stream again, times the opens so far.
const REOPEN_PAUSE: Duration = Duration::from_millis(20);
/// How long an inbound channel may wait to be accepted.
pub(crate) const ACCEPT_WINDOW: Duration = Duration::from_secs(30);

/// Opens a channel to `app_id` on `peer` (in `group`, an id, when given), or with `service`
/// set, from app `app_id` to the provider of `service` on `peer`, and waits until the remote
/// app accepts it. The peer must
/// be reached (connected, stream open, hello written) by `reach_by`; with `quick_take` (other
/// providers may follow), its node must then say it took the hello within 1–2 s (else
/// [`Error::Silent`]); accepting may then take the app's 30 s. The stream of a service channel names the providing app (which the welcome
/// tells), or is empty when the responder did not say.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn open(
    net: Network,
    store: Arc<dyn Store>,
    app_id: String,
    (service, group, pinned): (Option<String>, Option<String>, &[PublisherKey]),
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    (reach_by, quick_take): (Instant, bool),
) -> Result<ChannelStream, Error> {
    let to_reach = || reach_by.saturating_duration_since(Instant::now());
    net.connect(peer, addrs, to_reach().min(CONNECT_TIMEOUT))
        .await?;
    // New streams take a direct connection when there is one: else the channel crosses a
    // relay's circuit, and stays on it.
    let circuit = relayed(&net, peer).await;
    let broken = |reason: String| Error::Protocol {
        peer,
        protocol: wire::CHANNEL_PROTOCOL,
        reason,
    };
    let hello = ChannelHello {
        app_id: app_id.clone(),
        service: service.clone().unwrap_or_default(),
        group: group.clone().unwrap_or_default(),
        end_mark: true,
        taken_byte: true,
        publisher_keys: pinned
            .iter()
            .map(|k| bytes::Bytes::copy_from_slice(k.as_bytes()))
            .collect(),
    };
    let mut opens = 0;
    let mut io = loop {
        opens += 1;
        let limit = to_reach().min(OPEN_TIMEOUT);
        let stream = tokio::time::timeout(limit, net.open_stream(peer, CHANNEL_PROTOCOL))
            .await
            .map_err(|_| Error::Unreachable {
                peer,
                reason: format!("no stream within {limit:?}"),
            })?
            .map_err(|e| match e {
                OpenStreamError::UnsupportedProtocol(_) => Error::Unreachable {
                    peer,
                    reason: "it does not speak /p2pos/channel/1 (not a P2P OS node?)".into(),
                },
                other => Error::Unreachable {
                    peer,
                    reason: other.to_string(),
                },
            })?;
        let mut io = stream.compat();
        match write_message(&mut io, &hello, to_reach().min(OPEN_TIMEOUT)).await {
            Ok(()) => break io,
            // Reset before the hello was written: the responder's `libp2p-stream` dropped it
            // (it takes inbound streams through a channel of one, and drops those that come
            // while the previous one waits); nothing was announced there. Again, while there
            // is time.
            Err(e) if opens < MAX_OPENS && !to_reach().is_zero() => {
                debug!(%peer, "a channel stream was reset before its hello ({e}); again");
                tokio::time::sleep(REOPEN_PAUSE * opens).await;
            }
            Err(e) => return Err(broken(e.to_string())),
        }
    };
    let not_accepted = |app_id: String| match &service {
        Some(service) => Error::Timeout {
            what: format!("the provider of '{service}' on peer {peer} accepting the channel"),
            after: ACCEPT_WINDOW,
        },
        None => Error::ChannelNotAccepted { app_id, peer },
    };
    // Its node says at once that it took the hello (an older node writes the welcome first,
    // when its app accepts). With other providers to try, one that says nothing within
    // 1–2 s is skipped (and held back); else it is waited for as long as the welcome.
    // One deadline for the whole answer, taken byte and welcome: a responder that says it
    // took the hello and then nothing holds the open no longer than one that says nothing.
    let now = Instant::now();
    let answer_by = now + WELCOME_TIMEOUT;
    let (taken_by, given) = match quick_take {
        true => {
            let by = tries::taken_by(now, reach_by, answer_by);
            (by, by.saturating_duration_since(now))
        }
        false => (answer_by, WELCOME_TIMEOUT),
    };
    let first = match tokio::time::timeout_at(taken_by, io.read_u8()).await {
        Ok(Ok(first)) => first,
        Ok(Err(e)) => return Err(broken(e.to_string())),
        Err(_) if quick_take => {
            return Err(Error::Silent {
                peer,
                waited: given,
                older_may_answer: true,
            });
        }
        Err(_) => return Err(not_accepted(app_id.clone())),
    };
    // A frame's length begins with 0x00 (the frame is at most 4 KiB): an older node's welcome.
    let before: &[u8] = match first {
        CHANNEL_TAKEN => &[],
        0x00 => &[0x00],
        other => {
            return Err(broken(format!(
                "the answer to the hello began with {other:#04x}"
            )));
        }
    };
    let mut reading = before.chain(&mut io);
    let welcome: ChannelWelcome = read_message(
        &mut reading,
        wire::MAX_CONTROL_FRAME,
        answer_by.saturating_duration_since(Instant::now()),
    )
    .await
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => not_accepted(app_id.clone()),
        _ => broken(e.to_string()),
    })?;
    let ChannelWelcome {
        result,
        message,
        end_mark,
    } = welcome;
    let not_provided = |service: String| Error::NotProvidedThere { service, peer };
    match (
        channel_welcome::Result::try_from(result),
        service.as_deref(),
    ) {
        (Ok(channel_welcome::Result::Accepted), to_service) => Ok(ChannelStream {
            channel_id: store.next_id()?,
            peer_id: peer.to_string(),
            // A responder names the providing app in the welcome of a service channel.
            app_id: match to_service {
                Some(_) => validate_app_id(&message).map_or_else(|_| String::new(), |()| message),
                None => app_id,
            },
            inbound: false,
            group: group.unwrap_or_default(),
            circuit,
            io: Box::new(EndMarked::new(io, end_mark)),
        }),
        // The provider's app is gone (its services went with it), or never was.
        (Ok(channel_welcome::Result::AppNotListening), Some(service))
        | (Ok(channel_welcome::Result::NotProvided), Some(service)) => {
            Err(not_provided(service.to_owned()))
        }
        (Ok(channel_welcome::Result::AppNotListening), None) => {
            Err(Error::AppNotListening { app_id, peer })
        }
        (Ok(channel_welcome::Result::Timeout), _) => Err(not_accepted(app_id)),
        (Ok(channel_welcome::Result::Busy), _) => Err(Error::ChannelRefused { peer, message }),
        (Ok(channel_welcome::Result::NotMember), _) => Err(Error::NotMember { peer, message }),
        // The app registered there now holds no certificate of a pinned key (the opener's
        // side forgets what it knew of the responder's certificates).
        (Ok(channel_welcome::Result::NotCertified), Some(service)) => Err(Error::not_certified(
            peer,
            service,
            format!(
                "its node refused the channel: {}",
                crate::registry::calls::shorten(&message, crate::registry::calls::MAX_ECHOED)
            ),
        )),
        (Ok(channel_welcome::Result::NotCertified), None) => Err(broken(message)),
        // Only service channels are answered so.
        (Ok(channel_welcome::Result::NotProvided), None) => Err(broken(message)),
        (Err(_), _) => Err(broken(format!(
            "unknown welcome result {result}: {message}"
        ))),
    }
}

/// Accepts a pending inbound channel: answers the opener and hands over the stream. The
/// welcome of a channel to a service names the providing app, `app_id`, in its message.
pub(crate) async fn accept(
    mut io: Io,
    (channel_id, circuit): (u64, Option<Circuit>),
    peer: PeerId,
    app_id: String,
    (to_service, group): (bool, String),
) -> Result<ChannelStream, Error> {
    let welcome = ChannelWelcome {
        result: channel_welcome::Result::Accepted.into(),
        message: if to_service {
            app_id.clone()
        } else {
            String::new()
        },
        end_mark: io.marking(),
    };
    write_message(&mut io, &welcome, WRITE_TIMEOUT)
        .await
        .map_err(|e| Error::Protocol {
            peer,
            protocol: wire::CHANNEL_PROTOCOL,
            reason: format!("the opener went away: {e}"),
        })?;
    Ok(ChannelStream {
        channel_id,
        peer_id: peer.to_string(),
        app_id,
        inbound: true,
        group,
        circuit,
        io: Box::new(io),
    })
}

/// The circuit new streams to `peer` cross, if only relays reach it.
pub(crate) async fn relayed(net: &Network, peer: PeerId) -> Option<Circuit> {
    net.path(peer).await.ok()?.circuit().copied()
}

/// A refusal to write on an inbound channel.
pub(crate) fn welcome(result: channel_welcome::Result, message: String) -> ChannelWelcome {
    ChannelWelcome {
        result: result.into(),
        message,
        end_mark: false,
    }
}
