//! The calling side of `Services.Call`: one request, one answer, within the call's time (the
//! gRPC deadline, `timeout_ms` and 60 s, whichever is sooner). A provider on this node is
//! called directly; remote ones over `/p2pos/call/1`, one stream per call, telling them how
//! many milliseconds remain (never an absolute time: clocks differ between nodes).
//!
//! Without a named peer the providers are tried in `FindService` order while time remains,
//! moving on when one is not reachable or says the service is not provided (or it is busy)
//! there. Once a call has been written to a provider it is not sent to another: a broken
//! stream then is `UNAVAILABLE`, since the provider may have seen the call.

use std::time::Duration;

use bytes::Bytes;
use libp2p::{Multiaddr, PeerId};
use libp2p_stream::{Control, OpenStreamError};
use p2pos_kernel::protocols::services::Response;
use p2pos_proto::{
    service::v1::{CallReply, CallRequest},
    wire::v1::{CallAnswer, CallFrame},
};
use tokio::{io::AsyncWriteExt, sync::oneshot, time::Instant};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use actix::Context;

use super::{
    Reply,
    answers::{CallIn, MAX_CALL_FRAME, code},
    find::{CANDIDATES_WAIT, Here, MAX_TRIES, none_worked, remote_providers},
    names::{validate_payload, validate_service},
    ready,
};
use crate::{
    Error,
    error::validate_app_id,
    frame::{read_message, write_message},
    network::{CALL_PROTOCOL, NetHandle},
    service::OverlayService,
    ticket::parse_target,
};

/// The longest a call waits for its answer.
pub(crate) const MAX_CALL_TIME: Duration = Duration::from_secs(60);
/// How long connecting to one provider may take, at most.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// How long opening a stream to a connected provider may take, at most.
const OPEN_LIMIT: Duration = Duration::from_secs(5);
/// The protocol's name in errors.
const PROTOCOL: &str = "/p2pos/call/1";

/// What one provider did with a call.
enum Attempt {
    /// The call is over: answered, refused by the provider, out of time, or broken after it
    /// was sent.
    Done(Result<CallReply, Error>),
    /// No app saw the call there: the next provider may be tried.
    Next(Error),
}

/// A call as it goes out.
#[derive(Clone)]
struct Outgoing {
    service: String,
    from_app: String,
    payload: Bytes,
}

impl OverlayService {
    /// `Services.Call`.
    pub(super) fn call(
        &mut self,
        request: CallRequest,
        deadline: Option<std::time::Instant>,
        ctx: &mut Context<Self>,
    ) -> Reply {
        let CallRequest {
            app_id,
            service,
            payload,
            peer,
            timeout_ms,
        } = request;
        let checked = validate_app_id(&app_id)
            .and_then(|()| validate_service(&service))
            .and_then(|()| validate_payload("a call payload", payload.len()))
            .and_then(|()| match peer.trim() {
                "" => Ok(None),
                peer => parse_target(peer).map(Some),
            });
        let target = match checked {
            Ok(target) => target,
            Err(e) => return ready(Err(e)),
        };
        let limit = time_limit(deadline, timeout_ms);
        let until = Instant::now() + limit;
        let local = self.net.local_peer_id();
        let call = Outgoing {
            service,
            from_app: app_id,
            payload,
        };
        let mut failures: Vec<(String, Error)> = Vec::new();
        // A provider on this node is tried first, now, while the actor is at hand.
        let here = match &target {
            _ if limit.is_zero() => false,
            Some((peer, _)) => *peer == local,
            None => matches!(self.provider_here(&call.service), Some(Here::App(_))),
        };
        let mut answered = None;
        if here {
            match self.deliver_call(call.here(local, limit), ctx) {
                Ok(rx) => answered = Some(rx),
                Err(e) => failures.push(("this node".to_owned(), e)),
            }
        }
        let (net, control) = (self.net.clone(), self.control.clone());
        let service = call.service.clone();
        let calling = async move {
            if let Some(rx) = answered {
                return wait_here(rx, local).await;
            }
            let (candidates, named) = match target {
                // Only this node was asked for, and it said no.
                Some((peer, _)) if peer == local => {
                    return Err(failures
                        .pop()
                        .map_or_else(|| out_of_time(&call, limit), |(_, e)| e));
                }
                Some((peer, addrs)) => (vec![(peer, addrs)], true),
                None => {
                    let wait = until.saturating_duration_since(Instant::now());
                    let found = remote_providers(&net, &call.service, wait.min(CANDIDATES_WAIT))
                        .await?
                        .into_iter()
                        .map(|peer| (peer, Vec::new()))
                        .collect();
                    (found, false)
                }
            };
            for (peer, addrs) in candidates.into_iter().take(MAX_TRIES) {
                match call_remote(&net, control.clone(), peer, addrs, &call, until).await {
                    Attempt::Done(result) => return result,
                    // The one peer named: its own answer.
                    Attempt::Next(e) if named => return Err(e),
                    Attempt::Next(e) => failures.push((format!("peer {peer}"), e)),
                }
                if Instant::now() >= until {
                    return Err(out_of_time(&call, limit));
                }
            }
            Err(none_worked(call.service, failures))
        };
        Box::pin(async move {
            match tokio::time::timeout_at(until, calling).await {
                Ok(result) => result.map(Response::Called),
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

/// Calls the provider on `peer`, within `until`.
async fn call_remote(
    net: &NetHandle,
    mut control: Control,
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    call: &Outgoing,
    until: Instant,
) -> Attempt {
    let left = || until.saturating_duration_since(Instant::now());
    if let Err(e) = net.connect(peer, addrs, left().min(CONNECT_LIMIT)).await {
        return Attempt::Next(e);
    }
    let unreachable = |reason: String| Attempt::Next(Error::Unreachable { peer, reason });
    let stream = match tokio::time::timeout(
        left().min(OPEN_LIMIT),
        control.open_stream(peer, CALL_PROTOCOL),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(OpenStreamError::UnsupportedProtocol(_))) => {
            return unreachable(format!("it does not speak {PROTOCOL} (an older node?)"));
        }
        Ok(Err(e)) => return unreachable(e.to_string()),
        Err(_) => return unreachable("no stream in time".into()),
    };
    let mut io = stream.compat();
    // What remains when the frame leaves: the provider counts from when it arrives.
    let frame = CallFrame {
        service: call.service.clone(),
        from_app: call.from_app.clone(),
        payload: call.payload.clone(),
        timeout_ms: u32::try_from(left().as_millis()).unwrap_or(u32::MAX).max(1),
    };
    if let Err(e) = write_message(&mut io, &frame, left()).await {
        return unreachable(format!("cannot send the call: {e}"));
    }
    // Half-close: the call is complete.
    let _ = io.shutdown().await;
    match read_message::<CallAnswer, _>(&mut io, MAX_CALL_FRAME, left()).await {
        Ok(answer) => outcome(answer, peer),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Attempt::Done(Err(Error::Timeout {
            what: format!(
                "the answer of peer {peer} to the call to '{}'",
                call.service
            ),
            after: MAX_CALL_TIME.min(left()),
        })),
        Err(e) => Attempt::Done(Err(Error::Protocol {
            peer,
            protocol: PROTOCOL,
            reason: format!("the call broke before its answer (the provider went away?): {e}"),
        })),
    }
}

/// What a provider's (or its node's) answer means for the call.
fn outcome(answer: CallAnswer, peer: PeerId) -> Attempt {
    let CallAnswer {
        code: status,
        message,
        payload,
        provider_app,
    } = answer;
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
    }
}
