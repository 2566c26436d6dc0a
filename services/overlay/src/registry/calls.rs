//! The calling side of `Services.Call`: one request, one answer, within the call's time (the
//! gRPC deadline, `timeout_ms` and 60 s, whichever is sooner). A provider on this node is
//! called directly; remote ones over `/p2pos/call/2`, one stream per call, telling them how
//! many milliseconds remain (never an absolute time: clocks differ between nodes). At most
//! [`MAX_CALLS_PER_PEER`] calls are in flight to one peer; more wait their turn.
//!
//! Without a named peer the providers are tried as [`try_providers`] says while time
//! remains, moving on when one is not reachable, does not say it took the stream in time, or
//! its node says the service is not provided (or it is busy, or the app registered there now
//! holds no certificate of a key the caller pinned) there. Once a provider's node took a call
//! it is not sent to another, with two exceptions its answer makes: its app's
//! `RESOURCE_EXHAUSTED` (by the contract of `Reply`, declined without acting on it) and junk
//! (a broken or hostile provider). Otherwise a broken stream is `UNAVAILABLE`, since the
//! provider may have seen the call, and so is any answer that names the provider's app.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use libp2p::{Multiaddr, PeerId};
use libp2p_stream::OpenStreamError;
use p2pos_proto::{
    service::v1::CallReply,
    wire::v1::{CallAnswer, CallFrame},
};
use p2pos_protocols::{
    certs::PublisherKey,
    ids::PeerRef,
    network::Network,
    services::OutgoingCall,
    wire::{read_message, write_message},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::oneshot,
    time::Instant,
};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::debug;

use actix::Context;

use super::{
    call::{CALL_PROTOCOL, CALL_TAKEN, CallIn, MAX_CALL_FRAME, MAX_CALL_TIME, PROTOCOL, code},
    find::Here,
    names::validate_payload,
    slots::{MAX_CALLS_PER_PEER, PeerSlots},
    tries::{Attempt, TAKEN_FLOOR, taken_by, try_providers},
    trust::{VerifiedCerts, vouching},
};
use crate::{
    Error,
    registry::actor::ServiceRegistry,
    task::{Fut, ready},
};

/// How long connecting to one provider may take, at most.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// How long opening a stream to a connected provider may take, at most.
const OPEN_LIMIT: Duration = Duration::from_secs(5);
/// How many streams one call opens to one provider, at most, when the far side resets them
/// before the call is sent.
const MAX_OPENS: u32 = 4;
/// How long to wait before opening a stream again, times the opens so far.
const REOPEN_PAUSE: Duration = Duration::from_millis(20);

/// A call as it goes out.
#[derive(Clone)]
struct Outgoing {
    service: String,
    from_app: String,
    payload: Bytes,
    /// The publisher keys the caller pinned, which the provider's node checks again.
    publisher_keys: Vec<PublisherKey>,
}

/// How a call reaches remote providers: the network, streams, and its places per peer.
#[derive(Clone)]
struct Remote {
    net: Network,
    slots: Arc<PeerSlots>,
    /// What providers presented lately: forgotten for one whose node refuses a call for want
    /// of a pinned key's certificate.
    verified: Arc<VerifiedCerts>,
}

impl ServiceRegistry {
    /// `Services.Call`.
    pub(super) fn call(&mut self, call: OutgoingCall, ctx: &mut Context<Self>) -> Fut<CallReply> {
        let OutgoingCall {
            app_id,
            service,
            payload,
            peer,
            timeout_ms,
            deadline,
            filter,
        } = call;
        if let Err(e) = validate_payload("a call payload", payload.len()) {
            return ready(Err(e));
        }
        let target = peer.map(|PeerRef { peer, addrs }| (peer, addrs));
        if let Some((peer, _)) = &target
            && !filter.allows(peer)
        {
            return ready(Err(Error::PeerNotAllowed(*peer)));
        }
        let (app_id, service) = (app_id.into_string(), service.into_string());
        let limit = time_limit(deadline, timeout_ms);
        let until = Instant::now() + limit;
        let local = self.net.local_peer_id();
        let call = Outgoing {
            service,
            from_app: app_id,
            payload,
            publisher_keys: filter.publisher_keys.clone(),
        };
        let mut failures: Vec<(String, Error)> = Vec::new();
        // A provider on this node is tried first, now, while the actor is at hand; with
        // publisher keys pinned, only if one of them certifies it.
        let pinned = &filter.publisher_keys;
        let certified_here = || {
            pinned.is_empty()
                || vouching(
                    &self.certificates_here(&call.service),
                    &call.service,
                    &local,
                    pinned,
                )
                .is_ok()
        };
        let here = match &target {
            _ if limit.is_zero() => false,
            Some((peer, _)) if *peer == local && !certified_here() => {
                let reason = vouching(
                    &self.certificates_here(&call.service),
                    &call.service,
                    &local,
                    pinned,
                )
                .err()
                .unwrap_or_default();
                failures.push((
                    "this node".to_owned(),
                    Error::not_certified(local, &call.service, reason),
                ));
                false
            }
            Some((peer, _)) => *peer == local,
            None => {
                filter.allows(&local)
                    && matches!(self.provider_here(&call.service), Some(Here::App(_)))
                    && certified_here()
            }
        };
        let mut answered = None;
        if here {
            match self.deliver_call(call.here(local, limit), ctx) {
                Ok(delivered) => answered = Some(delivered.answer),
                Err(e) => failures.push(("this node".to_owned(), e)),
            }
        }
        let remote = Remote {
            net: self.net.clone(),
            slots: self.services.slots.clone(),
            verified: self.services.verified.clone(),
        };
        let checker = self.services.checker(&self.net);
        let service = call.service.clone();
        let calling = async move {
            if let Some(rx) = answered {
                return wait_here(rx, local).await;
            }
            match target {
                // Only this node was asked for, and it said no.
                Some((peer, _)) if peer == local => Err(failures
                    .pop()
                    .map_or_else(|| out_of_time(&call, limit), |(_, e)| e)),
                // The one peer named: its own answer (certified first, if keys are pinned).
                Some((peer, addrs)) => {
                    if !filter.publisher_keys.is_empty() {
                        let pinned = &filter.publisher_keys;
                        checker
                            .certified((peer, addrs.clone()), &call.service, pinned, until)
                            .await?;
                    }
                    match call_remote(&remote, peer, addrs, &call, until, until).await {
                        Attempt::Done(result) => result,
                        Attempt::Next(e) => Err(e),
                    }
                }
                None => {
                    let attempt = |peer, addrs, reach_by| {
                        let (remote, call) = (remote.clone(), call.clone());
                        async move { call_remote(&remote, peer, addrs, &call, reach_by, until).await }
                    };
                    let timed_out = || out_of_time(&call, limit);
                    try_providers(
                        &checker,
                        (&call.service, &filter),
                        until,
                        failures,
                        timed_out,
                        attempt,
                    )
                    .await
                }
            }
        };
        Box::pin(async move {
            match tokio::time::timeout_at(until, calling).await {
                Ok(result) => result,
                Err(_) => Err(Error::Timeout {
                    what: format!("the call to '{service}'"),
                    after: limit,
                }),
            }
        })
    }
}

/// The call ran out of time.
fn out_of_time(call: &Outgoing, limit: Duration) -> Error {
    Error::Timeout {
        what: format!("the call to '{}'", call.service),
        after: limit,
    }
}

impl Outgoing {
    /// The call as a provider on this node takes it.
    fn here(&self, local: PeerId, timeout: Duration) -> CallIn {
        CallIn {
            service: self.service.clone(),
            from_peer: local,
            from_app: self.from_app.clone(),
            payload: self.payload.clone(),
            timeout,
            publisher_keys: self.publisher_keys.clone(),
        }
    }
}

/// The call's time: the gRPC deadline, `timeout_ms` (0: none) and [`MAX_CALL_TIME`], whichever
/// ends first.
fn time_limit(deadline: Option<std::time::Instant>, timeout_ms: u32) -> Duration {
    let mut limit = MAX_CALL_TIME;
    if timeout_ms > 0 {
        limit = limit.min(Duration::from_millis(u64::from(timeout_ms)));
    }
    if let Some(deadline) = deadline {
        limit = limit.min(deadline.saturating_duration_since(std::time::Instant::now()));
    }
    limit
}

/// Waits for the answer of a provider on this node (it always comes: the actor expires the
/// call at its deadline).
async fn wait_here(rx: oneshot::Receiver<CallAnswer>, local: PeerId) -> Result<CallReply, Error> {
    match rx.await {
        Ok(answer) => match outcome(answer, local) {
            Attempt::Done(result) => result,
            Attempt::Next(e) => Err(e),
        },
        Err(_) => Err(Error::NetworkStopped),
    }
}

/// Calls the provider on `peer`: reaches it (a place among the calls in flight to it, a
/// connection, a stream) by `reach_by`, then waits for its answer until `until`.
async fn call_remote(
    remote: &Remote,
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    call: &Outgoing,
    reach_by: Instant,
    until: Instant,
) -> Attempt<CallReply> {
    let left = || until.saturating_duration_since(Instant::now());
    let to_reach = || reach_by.saturating_duration_since(Instant::now());
    let busy = || {
        Attempt::Next(Error::Busy {
            what: "calls in flight from this node to one peer",
            limit: MAX_CALLS_PER_PEER,
        })
    };
    // Held until the answer is read.
    let slot = match tokio::time::timeout_at(reach_by, remote.slots.acquire(peer)).await {
        Ok(Some(slot)) => slot,
        Ok(None) | Err(_) => return busy(),
    };
    if let Err(e) = remote
        .net
        .connect(peer, addrs, to_reach().min(CONNECT_LIMIT))
        .await
    {
        return Attempt::Next(e.into());
    }
    let unreachable = |reason: String| Attempt::Next(Error::Unreachable { peer, reason });
    // Over a relay only: a call its circuit cannot carry is not sent into it (another provider
    // may be reached directly).
    if let Some(circuit) = crate::channel::relayed(&remote.net, peer).await {
        let size = call_size(call);
        if !circuit.fits(size) {
            return Attempt::Next(Error::TooLargeForRelay {
                peer,
                what: format!("a call of {size} bytes ({})", circuit.describe()),
            });
        }
    }
    let mut opens = 0;
    let mut io = loop {
        opens += 1;
        let opening = async {
            let _one_at_a_time = slot.opening().await;
            remote.net.open_stream(peer, CALL_PROTOCOL).await
        };
        let stream = match tokio::time::timeout(to_reach().min(OPEN_LIMIT), opening).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(OpenStreamError::UnsupportedProtocol(_))) => {
                return unreachable(format!("it does not speak {PROTOCOL} (an older node?)"));
            }
            Ok(Err(e)) => return unreachable(e.to_string()),
            Err(_) => return unreachable("no stream in time".into()),
        };
        let mut io = stream.compat();
        // What remains when the frame leaves: the provider counts from when it arrives.
        let frame = frame_of(
            call,
            u32::try_from(left().as_millis()).unwrap_or(u32::MAX).max(1),
        );
        // Reached: sending the call may take the time left (a large payload on a slow link).
        // Then the far side says it took the stream, within the time to reach it (at least
        // TAKEN_FLOOR after the call was sent: a provider that says nothing is skipped, not
        // waited on till the end); a stream reset or ended before that was never served (see
        // `slots`), so no app can have seen the call: again, while there is time to reach the
        // provider.
        // How long its node was given to say it took the call (cut short by the call's end,
        // its silence is not held against it).
        let mut given = Duration::ZERO;
        let sent = async {
            write_message(&mut io, &frame, left()).await?;
            // Half-close: the call is complete.
            io.shutdown().await?;
            let now = Instant::now();
            let taken_by = taken_by(now, reach_by, until);
            given = taken_by.saturating_duration_since(now);
            match tokio::time::timeout_at(taken_by, io.read_u8()).await {
                Ok(Ok(CALL_TAKEN)) => Ok(()),
                Ok(Ok(other)) => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the stream began with {other:#04x}, not the call-taken byte"),
                )),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
            }
        };
        match tokio::time::timeout(left(), sent).await {
            Ok(Ok(())) => break io,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                return junk(peer, format!("it does not speak {PROTOCOL}: {e}"));
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return silent(peer, given);
            }
            Ok(Err(e)) if opens < MAX_OPENS && !to_reach().is_zero() => {
                debug!(%peer, "a call stream was not taken ({e}); again");
                tokio::time::sleep(REOPEN_PAUSE * opens).await;
            }
            Ok(Err(e)) => return unreachable(format!("it did not take the call: {e}")),
            // The call's own time ran out while it was being sent: nothing against the
            // provider.
            Err(_) => return silent(peer, Duration::ZERO),
        }
    };
    // The answer is waited for until the call's end exactly (not a moment later, so that a
    // provider that took the call and stays silent is held against it before the call ends).
    let taken_at = Instant::now();
    let reading = read_message::<CallAnswer, _>(&mut io, MAX_CALL_FRAME, left() + TAKEN_FLOOR);
    let Ok(read) = tokio::time::timeout_at(until, reading).await else {
        return Attempt::Done(Err(Error::Timeout {
            what: format!(
                "the answer of peer {peer} to the call to '{}'",
                call.service
            ),
            after: taken_at.elapsed(),
        }));
    };
    match read {
        // Its node says the app registered there now holds no certificate of a pinned key:
        // what was checked is out of date.
        Ok(answer) if !call.publisher_keys.is_empty() && refused_uncertified(&answer) => {
            remote.verified.forget(peer, &call.service);
            Attempt::Next(Error::not_certified(
                peer,
                &call.service,
                format!(
                    "its node refused the call: {}",
                    shorten(&answer.message, MAX_ECHOED)
                ),
            ))
        }
        Ok(answer) => outcome(answer, peer),
        // Not an answer at all (a frame too long, or not a `CallAnswer`): no honest provider
        // sends that, so the call goes on to another (and this one is tried last for a while).
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            junk(peer, format!("its answer is not a CallAnswer: {e}"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Attempt::Done(Err(Error::Timeout {
            what: format!(
                "the answer of peer {peer} to the call to '{}'",
                call.service
            ),
            after: MAX_CALL_TIME.min(left()),
        })),
        Err(e) => Attempt::Done(Err(Error::Broken {
            peer,
            protocol: PROTOCOL,
            reason: format!("the call broke before its answer (the provider went away?): {e}"),
        })),
    }
}

/// The frame that carries `call`, with `timeout_ms` left for it.
fn frame_of(call: &Outgoing, timeout_ms: u32) -> CallFrame {
    CallFrame {
        service: call.service.clone(),
        from_app: call.from_app.clone(),
        payload: call.payload.clone(),
        timeout_ms,
        withdrawn: false,
        certificates: false,
        publisher_keys: call
            .publisher_keys
            .iter()
            .map(|k| Bytes::copy_from_slice(k.as_bytes()))
            .collect(),
    }
}

/// The size of `call`'s frame on the wire, near enough (its timeout aside).
fn call_size(call: &Outgoing) -> u64 {
    let frame = frame_of(call, u32::MAX);
    u64::try_from(prost::Message::encoded_len(&frame) + p2pos_protocols::wire::HEADER)
        .unwrap_or(u64::MAX)
}

/// A provider that did not say it took the call within `given` (it may be a Sybil that
/// accepts streams and stays silent): the next one is tried, and this one is held back for a
/// while if `given` was at least its floor.
fn silent(peer: PeerId, given: Duration) -> Attempt<CallReply> {
    Attempt::Next(Error::Silent {
        peer,
        waited: given,
        // Every node that speaks /p2pos/call/2 writes the call-taken byte.
        older_may_answer: false,
    })
}

/// Longest part of a peer's message repeated in this node's errors, in characters.
pub(crate) const MAX_ECHOED: usize = 200;

/// `text` cut to at most `max` characters.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Whether `answer` is a node's refusal of a call that pinned publisher keys its provider's
/// current registration holds no certificate of: `PERMISSION_DENIED`, no app named.
fn refused_uncertified(answer: &CallAnswer) -> bool {
    answer.code == code(p2pos_kernel::ErrorCode::PermissionDenied) && answer.provider_app.is_empty()
}

/// A provider that broke the protocol: the next one is tried.
fn junk(peer: PeerId, reason: String) -> Attempt<CallReply> {
    Attempt::Next(Error::Protocol {
        peer,
        protocol: PROTOCOL,
        reason,
    })
}

/// What a provider's (or its node's) answer means for the call.
///
/// The provider's fault, so the next provider is tried: its node answered by itself `NOT_FOUND`,
/// `RESOURCE_EXHAUSTED` or `UNAVAILABLE` (no app saw the call); its app refused the call
/// with `RESOURCE_EXHAUSTED` (busy: it did not act on it); a code that is not a gRPC code
/// (junk). Everything else is the service's answer, returned to the caller.
fn outcome(answer: CallAnswer, peer: PeerId) -> Attempt<CallReply> {
    let CallAnswer {
        code: status,
        message,
        payload,
        provider_app,
        certificates: _,
    } = answer;
    if status > 16 {
        return junk(
            peer,
            format!("it answered code {status}, which is no gRPC code"),
        );
    }
    if status == code(p2pos_kernel::ErrorCode::ResourceExhausted) && !provider_app.is_empty() {
        return Attempt::Next(Error::Provider {
            code: status,
            message: format!("app '{provider_app}' is busy: {message}"),
        });
    }
    if status == 0 {
        return Attempt::Done(Ok(CallReply {
            payload,
            peer_id: peer.to_string(),
            provider_app,
        }));
    }
    if provider_app.is_empty() {
        // The node answered by itself: no app saw the call.
        let retry = [
            code(p2pos_kernel::ErrorCode::NotFound),
            code(p2pos_kernel::ErrorCode::ResourceExhausted),
            code(p2pos_kernel::ErrorCode::Unavailable),
        ];
        let refused = Error::Provider {
            code: status,
            message,
        };
        return match retry.contains(&status) {
            true => Attempt::Next(refused),
            false => Attempt::Done(Err(refused)),
        };
    }
    Attempt::Done(Err(Error::Provider {
        code: status,
        message,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soonest_limit_wins() {
        assert_eq!(time_limit(None, 0), MAX_CALL_TIME);
        assert_eq!(time_limit(None, 1500), Duration::from_millis(1500));
        assert_eq!(time_limit(None, 600_000), MAX_CALL_TIME);
        let soon = std::time::Instant::now() + Duration::from_millis(200);
        assert!(time_limit(Some(soon), 1500) <= Duration::from_millis(200));
        let past = std::time::Instant::now();
        assert!(time_limit(Some(past), 0).is_zero());
    }

    #[test]
    fn node_refusals_move_on_and_app_answers_do_not() {
        let peer = PeerId::random();
        let answer = |code, app: &str| CallAnswer {
            code,
            message: "m".into(),
            payload: Bytes::new(),
            provider_app: app.into(),
            certificates: Vec::new(),
        };
        assert!(matches!(
            outcome(answer(0, "a"), peer),
            Attempt::Done(Ok(_))
        ));
        assert!(matches!(outcome(answer(5, ""), peer), Attempt::Next(_)));
        assert!(matches!(outcome(answer(8, ""), peer), Attempt::Next(_)));
        assert!(matches!(
            outcome(answer(3, ""), peer),
            Attempt::Done(Err(Error::Provider { code: 3, .. }))
        ));
        assert!(matches!(
            outcome(answer(5, "a"), peer),
            Attempt::Done(Err(Error::Provider { code: 5, .. }))
        ));
        assert!(
            matches!(outcome(answer(8, "a"), peer), Attempt::Next(_)),
            "an app that is busy did not act: another provider is tried"
        );
        assert!(matches!(
            outcome(answer(14, "a"), peer),
            Attempt::Done(Err(Error::Provider { code: 14, .. }))
        ));
        assert!(
            matches!(
                outcome(answer(99, "a"), peer),
                Attempt::Next(Error::Protocol { .. })
            ),
            "junk"
        );
    }
}
