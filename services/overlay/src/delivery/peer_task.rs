//! One peer's delivery task: drains the peer's outbox over `/p2pos/msg/1`, one frame and one
//! acknowledgement at a time, in sequence order, within what the path to the peer can carry;
//! waits (holds, back-off) when it cannot go on.
//!
//! Over a relay: before it opens a stream the task asks the network how the peer is reached
//! (`Network::path`). A message larger than a fresh circuit of the relay can carry (its data
//! limit, less room for what else crosses it) is never sent into one, where it would end the
//! circuit in its middle: its app is held back (its later messages wait behind it, in order;
//! other apps go on), the `Send` waiting for it hears why (`SendReply.waiting`) and so does a
//! `MessageWaiting` event, once; it goes once the peer is reached directly. A circuit with
//! little time left is waited out, so that a message does not start into it. A circuit that
//! ends in the middle of a message anyway (other traffic used its bytes) costs one attempt: the
//! message was not acknowledged, so it stays first in the outbox and goes again after the
//! back-off, which the new connection does not cut short.

use std::{collections::HashSet, sync::Arc, time::Duration};

use libp2p::PeerId;
use libp2p_stream::OpenStreamError;
use p2pos_proto::{
    monitor::v1::{MessageWaiting, event::Kind},
    wire::v1::{MessageAck, MessageFrame, message_ack},
};
use p2pos_protocols::{
    network::{Circuit, Path},
    wire::{self, read_message, write_message},
};
use prost::Message;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::{debug, warn};

use super::{
    BATCH, Outcome, Report, Shared,
    holds::{Backoff, Holds, Kick, RETRY_BUSY, too_large_for},
    told::{expire_unreached, publish},
};
use crate::{Error, mailbox::NextBatch};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the peer may take to store and acknowledge one message.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Times in a row a connected peer that does not take messages (its overlay is restarting, say)
/// is retried after [`RETRY_BUSY`] rather than with back-off.
const NOT_SERVING_RETRIES: u32 = 5;
/// No message starts into a circuit with less than this left (or a quarter of its duration,
/// if less): it waits for the next circuit.
const CIRCUIT_END_MARGIN: Duration = Duration::from_secs(5);
/// Messages whose wait was told (`MessageWaiting`) remembered, at most.
const MAX_TOLD: usize = 4096;

/// What one peer's delivery keeps between attempts.
#[derive(Default)]
struct PeerState {
    holds: Holds,
    backoff: Backoff,
    /// Messages (app, sequence) whose wait for a path was told already.
    told: HashSet<(String, u64)>,
}

/// Delivers everything waiting for `peer`, retrying with back-off; ends once the outbox for
/// `peer` is empty.
pub(super) async fn deliver_to(
    peer: PeerId,
    kick: Arc<Kick>,
    delay: Duration,
    shared: Arc<Shared>,
    reports: mpsc::Sender<Report>,
) {
    if !delay.is_zero() {
        tokio::select! {
            _ = kick.wait() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
    let mut not_serving = 0;
    let mut state = PeerState::default();
    loop {
        if kick.take_connected() {
            state.holds.connected();
        }
        let drained = drain(peer, &shared, &reports, &mut state).await;
        if !matches!(drained, Ok(Drained::NotServing)) {
            not_serving = 0;
        }
        match drained {
            Ok(Drained::Empty) => return,
            Ok(Drained::NotServing) if not_serving < NOT_SERVING_RETRIES => {
                // Connected, but its messages protocol is not served right now: most likely
                // its overlay is restarting, back in a moment.
                not_serving += 1;
                debug!(%peer, "the peer does not take messages right now; retrying soon");
                tokio::select! {
                    _ = kick.wait() => {}
                    _ = tokio::time::sleep(RETRY_BUSY) => {}
                }
            }
            Ok(Drained::NotServing) => {
                debug!(%peer, "the peer does not take messages; will retry");
                let _ = reports.send(Report::Failed { peer }).await;
                let wait = state.backoff.failed();
                tokio::select! {
                    _ = kick.wait() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Ok(Drained::Held) => {
                // The peer is reachable and asked to wait (for some apps, or all), or a relay
                // cannot carry an app's next message: retry when the first hold ends, without
                // counting the peer as failing. A new message wakes the task too (it may be
                // for an app not held), and so does a (direct) connection.
                let until = state
                    .holds
                    .next_end()
                    .unwrap_or_else(|| Instant::now() + RETRY_BUSY);
                tokio::select! {
                    _ = kick.wait() => {}
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
            Ok(Drained::CircuitEnding(at)) => {
                debug!(%peer, "the relayed connection ends soon; waiting for the next one");
                tokio::select! {
                    _ = kick.wait_direct() => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            Err(Failure { error, connected }) => {
                let _ = reports.send(Report::Failed { peer }).await;
                match expire_unreached(peer, &shared).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => warn!(%peer, "cannot expire old messages: {e}"),
                }
                let wait = state.backoff.failed();
                if connected {
                    // It broke on an established connection: only the back-off, or a direct
                    // connection (no relay in the way), ends the wait.
                    debug!(%peer, "message delivery broke off; retrying in {wait:?}: {error}");
                    tokio::select! {
                        _ = kick.wait_direct() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                    kick.forget();
                } else {
                    // Not reached: a connection from the peer (it is back) or a new message
                    // ends the wait early.
                    debug!(%peer, "message delivery failed; retrying in {wait:?}: {error}");
                    tokio::select! {
                        _ = kick.wait() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

/// How a drain ended without error.
enum Drained {
    /// The outbox for the peer is empty.
    Empty,
    /// What is left waits for holds to end (the peer asked to retry later: some apps, or all;
    /// or a relay cannot carry an app's next message).
    Held,
    /// The peer is connected but does not serve the messages protocol now.
    NotServing,
    /// The only path is a relay's circuit that ends at this instant, too soon to start on.
    CircuitEnding(Instant),
}

/// An attempt that failed, and whether it failed on an established connection (rather than
/// in reaching the peer).
struct Failure {
    error: Error,
    connected: bool,
}

impl From<Error> for Failure {
    /// A failure of this node's own (its store), not of the connection.
    fn from(error: Error) -> Self {
        Failure {
            error,
            connected: false,
        }
    }
}

/// A failure on the established connection to `peer`.
fn broke(peer: PeerId, reason: String) -> Failure {
    Failure {
        error: broken(peer, reason),
        connected: true,
    }
}

/// One attempt: connects, then sends the outbox for `peer` in sequence order, but the apps
/// held back, until nothing but held messages is left.
async fn drain(
    peer: PeerId,
    shared: &Shared,
    reports: &mpsc::Sender<Report>,
    state: &mut PeerState,
) -> Result<Drained, Failure> {
    let mut io = None;
    // The circuit the stream crosses, when only relays reach the peer.
    let mut circuit: Option<Circuit> = None;
    loop {
        if state.holds.peer.is_some_and(|h| h.until > Instant::now()) {
            return Ok(Drained::Held);
        }
        let held = state.holds.held_now();
        let NextBatch {
            messages,
            lowest_waiting,
            apps,
        } = shared
            .mailbox
            .blocking(move |mailbox| mailbox.next_batch(&peer, &held, BATCH))
            .await?;
        state.holds.apps.retain(|app, _| apps.contains(app));
        if messages.is_empty() {
            if let Some(mut io) = io {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
            }
            return Ok(if apps.is_empty() {
                Drained::Empty
            } else {
                Drained::Held
            });
        }
        // What is sent must be durable first (read, then flush: a message enqueued in between
        // is not in this batch): a sequence number the peer has seen must never be handed out
        // again after a crash.
        shared.mailbox.flush().await?;
        if io.is_none() {
            shared
                .net
                .connect(peer, Vec::new(), CONNECT_TIMEOUT)
                .await
                .map_err(|e| Failure {
                    error: e.into(),
                    connected: false,
                })?;
            circuit = match shared.net.path(peer).await {
                Ok(Path::Relayed(c)) => Some(c),
                Ok(Path::Direct | Path::NotConnected) | Err(_) => None,
            };
            if let Some(at) = circuit.as_ref().and_then(ending_soon) {
                return Ok(Drained::CircuitEnding(at));
            }
            let stream = tokio::time::timeout(
                CONNECT_TIMEOUT,
                shared.net.open_stream(peer, super::MESSAGE_PROTOCOL),
            )
            .await
            .map_err(|_| broke(peer, "no stream within 10 s".into()))?;
            let stream = match stream {
                Ok(stream) => stream,
                Err(OpenStreamError::UnsupportedProtocol(_)) => return Ok(Drained::NotServing),
                Err(e) => return Err(broke(peer, e.to_string())),
            };
            io = Some(stream.compat());
        }
        let Some(stream) = io.as_mut() else {
            continue; // just set above
        };
        // Apps refused in this batch: their later messages stay behind the refused one.
        let mut refused: HashSet<String> = HashSet::new();
        for message in messages {
            if refused.contains(&message.frame.app_id) {
                continue;
            }
            let frame = MessageFrame {
                answered_below: lowest_waiting,
                ..message.frame.clone()
            };
            let size = u64::try_from(frame.encoded_len() + wire::HEADER).unwrap_or(u64::MAX);
            if let Some(c) = circuit.filter(|c| !c.fits(size)) {
                // It would end the circuit in its middle: it waits for a direct connection,
                // and its app's later messages behind it.
                state.holds.hold_for_relay(&frame.app_id);
                refused.insert(frame.app_id.clone());
                let reason = too_large_for(peer, size, &c);
                debug!(%peer, app_id = frame.app_id, "a message waits: {reason}");
                tell_waiting(shared, state, peer, &frame, &reason);
                let waiting = Outcome::Waiting {
                    size,
                    circuit: c,
                    behind: false,
                };
                report(reports, peer, frame.sequence, waiting).await;
                let app_id = frame.app_id.clone();
                let behind = Outcome::Waiting {
                    size,
                    circuit: c,
                    behind: true,
                };
                let held = Report::Waiting {
                    peer,
                    app_id,
                    outcome: Some(behind),
                };
                let _ = reports.send(held).await;
                continue;
            }
            write_message(stream, &frame, ACK_TIMEOUT)
                .await
                .map_err(|e| broke(peer, e.to_string()))?;
            let ack: MessageAck = read_message(stream, wire::MAX_CONTROL_FRAME, ACK_TIMEOUT)
                .await
                .map_err(|e| broke(peer, e.to_string()))?;
            if ack.sequence != frame.sequence {
                return Err(broke(
                    peer,
                    format!(
                        "acknowledged {} instead of {}",
                        ack.sequence, frame.sequence
                    ),
                ));
            }
            let outcome = match message_ack::Result::try_from(ack.result) {
                Ok(message_ack::Result::RetryLater) => {
                    // Over this node's quota there: every app waits, and the peer closes the
                    // stream.
                    debug!(%peer, reason = ack.reason, "the peer asks to retry later");
                    state.holds.hold_peer();
                    report(reports, peer, frame.sequence, Outcome::Queued).await;
                    return Ok(Drained::Held);
                }
                Ok(message_ack::Result::AppFull) => {
                    // This app's inbox there is full: its messages wait, the others go on.
                    debug!(%peer, app_id = frame.app_id, reason = ack.reason, "the peer asks to retry an app later");
                    state.holds.hold_app(&frame.app_id);
                    refused.insert(frame.app_id.clone());
                    report(reports, peer, frame.sequence, Outcome::Queued).await;
                    continue;
                }
                Ok(message_ack::Result::Stored) => Outcome::Delivered,
                Ok(message_ack::Result::UnknownApp) => Outcome::UnknownApp,
                Ok(message_ack::Result::TooLarge) => Outcome::TooLarge,
                Err(_) => {
                    return Err(broke(peer, format!("unknown ack result {}", ack.result)));
                }
            };
            state.holds.peer = None;
            if state.holds.apps.remove(&frame.app_id).is_some() {
                let app_id = frame.app_id.clone();
                let released = Report::Waiting {
                    peer,
                    app_id,
                    outcome: None,
                };
                let _ = reports.send(released).await;
            }
            state.backoff.succeeded();
            state.told.remove(&(frame.app_id.clone(), frame.sequence));
            publish(&shared.events, peer, &frame, outcome);
            // Reported before it leaves the outbox (see `Manager::on_command`).
            report(reports, peer, frame.sequence, outcome).await;
            shared
                .mailbox
                .blocking(move |mailbox| mailbox.remove_answered(&peer, &message))
                .await?;
        }
    }
}

/// When a circuit with too little time left for a message to start on it ends. One past its
/// end is not waited for again: its relay has ended it, or does not (the message then goes,
/// and an end in its middle costs a retry).
fn ending_soon(circuit: &Circuit) -> Option<Instant> {
    let (left, duration) = (circuit.left()?, circuit.duration?);
    let margin = CIRCUIT_END_MARGIN.min(duration / 4);
    (!left.is_zero() && left < margin).then(|| Instant::now() + left + Duration::from_millis(100))
}

/// Publishes `MessageWaiting` for `frame`, once.
fn tell_waiting(
    shared: &Shared,
    state: &mut PeerState,
    peer: PeerId,
    frame: &MessageFrame,
    reason: &str,
) {
    if state.told.len() >= MAX_TOLD {
        state.told.clear();
    }
    if !state.told.insert((frame.app_id.clone(), frame.sequence)) {
        return;
    }
    shared.events.publish(Kind::MessageWaiting(MessageWaiting {
        peer_id: peer.to_string(),
        app_id: frame.app_id.clone(),
        message_id: frame.message_id,
        reason: reason.to_owned(),
    }));
}

/// Tells a `Send` waiting for message `sequence` how it fared (or that it stays queued).
async fn report(reports: &mpsc::Sender<Report>, peer: PeerId, sequence: u64, outcome: Outcome) {
    let _ = reports
        .send(Report::Acked {
            peer,
            sequence,
            outcome,
        })
        .await;
}

fn broken(peer: PeerId, reason: String) -> Error {
    Error::Protocol {
        peer,
        protocol: wire::MESSAGE_PROTOCOL,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(secs_left: u64, duration: u64) -> Circuit {
        Circuit {
            relay: PeerId::random(),
            data_limit: Some(128 * 1024),
            ends_at: Some(Instant::now() + Duration::from_secs(secs_left)),
            duration: Some(Duration::from_secs(duration)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_message_starts_into_a_circuit_about_to_end() {
        assert!(ending_soon(&circuit(100, 120)).is_none());
        assert!(ending_soon(&circuit(4, 120)).is_some());
        // A short circuit: a quarter of it is the margin.
        assert!(ending_soon(&circuit(1, 3)).is_none());
        let almost = Circuit {
            ends_at: Some(Instant::now() + Duration::from_millis(500)),
            ..circuit(0, 3)
        };
        assert!(ending_soon(&almost).is_some());
        assert!(ending_soon(&circuit(0, 3)).is_none(), "past its end");
        let unknown = Circuit {
            ends_at: None,
            duration: None,
            ..circuit(0, 3)
        };
        assert!(ending_soon(&unknown).is_none());
    }

    #[test]
    fn the_reason_names_the_size_the_relay_and_what_fits() {
        let c = circuit(100, 120);
        let reason = too_large_for(PeerId::random(), 204_900, &c);
        assert!(reason.contains("204900 bytes"), "{reason}");
        assert!(
            reason.contains("131072 bytes and 120 s per circuit"),
            "{reason}"
        );
        assert!(reason.contains("directly"), "{reason}");
    }
}
