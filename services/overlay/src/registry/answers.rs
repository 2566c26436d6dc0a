//! The providing side of calls: a call to a service provided here (from a remote node over
//! `/p2pos/call/2`, or from an app of this node) is announced as an `IncomingCall` on the
//! provider app's newest session and waits in a bounded table until the app answers it with
//! `Reply`, its deadline passes (`DEADLINE_EXCEEDED`) or that session ends (`UNAVAILABLE`).
//!
//! Answers carry the wire's `CallAnswer` whether they cross the network or not. Every answer
//! to a call an app was given names that app in `provider_app`, even one the node gives for it
//! (deadline passed, session ended, node stopping); one the node gives for a call no app saw
//! (not provided here, busy) leaves it empty, which tells the caller that another provider may
//! be tried.

use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use libp2p::PeerId;
use p2pos_kernel::{ErrorCode, ServiceError, events::now_ms};
use p2pos_proto::{
    app::v1::IncomingCall,
    service::v1::{ReplyError, ReplyRequest, reply_request},
    wire::v1::{CallAnswer, CallFrame},
};
use p2pos_protocols::{
    apps::Incoming,
    certs::{MAX_PINNED_KEYS, PublisherKey},
    names::root_app,
    network::{Fared, InboundStream, Network},
    wire::{read_message, write_message},
};
use tokio::{
    io::{AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::oneshot,
};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::debug;

use super::{
    call::{CALL_TAKEN, CallIn, Delivered, InboundCall, MAX_CALL_TIME, UNKNOWN, code},
    names::{validate_payload, validate_service},
    state::PendingCall,
    state::service_key,
    trust::vouching,
};
use crate::{
    Error,
    error::validate_app_id,
    inbound::{HELLO_TIMEOUT, WRITE_TIMEOUT},
    registry::actor::ServiceRegistry,
    sessions::SESSION_BUFFER,
};

/// Most calls waiting for their provider's answer on this node.
pub(crate) const MAX_PENDING_CALLS: usize = 1024;
/// Most calls waiting for the answer of one provider app, so that one slow app cannot take
/// every place.
pub(crate) const MAX_PENDING_CALLS_PER_APP: usize = 256;
/// Longest error message passed on from a provider, in bytes.
const MAX_ERROR_MESSAGE: usize = 1024;
/// How much longer than the call's time the server of a remote call waits for the actor to
/// answer (it answers `DEADLINE_EXCEEDED` by itself when the time is up).
const ANSWER_GRACE: Duration = Duration::from_secs(1);
/// How long refusing a call stream (when too many are open) may take.
const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// The longest a call stream may stay silent: the call is read, then nothing moves while the
/// provider works (at most the longest call and its grace), then the answer is written.
pub(crate) const CALL_STREAM_IDLE: Duration = MAX_CALL_TIME
    .saturating_add(ANSWER_GRACE)
    .saturating_add(WRITE_TIMEOUT);
impl Handler<InboundCall> for ServiceRegistry {
    type Result = Result<Delivered, Error>;

    fn handle(&mut self, InboundCall(call): InboundCall, ctx: &mut Self::Context) -> Self::Result {
        if self.gone(ctx) {
            return Err(Error::Restarting);
        }
        self.deliver_call(call, ctx)
    }
}

impl ServiceRegistry {
    /// Announces `call` to the app providing its service here; its answer comes on the
    /// returned receiver. An error means no app saw the call.
    pub(crate) fn deliver_call(
        &mut self,
        call: CallIn,
        ctx: &mut Context<Self>,
    ) -> Result<Delivered, Error> {
        let CallIn {
            service,
            from_peer,
            from_app,
            payload,
            timeout,
            publisher_keys,
        } = call;
        let local = self.net.local_peer_id();
        let not_here = |service: String| Error::NotProvidedThere {
            service,
            peer: local,
        };
        let Some(app_id) = self
            .services
            .registrations
            .get(&service)
            .map(|r| r.app_id.clone())
        else {
            return Err(not_here(service));
        };
        // Keys pinned: only an app whose registration now holds a valid certificate of one of
        // them is given the call (what the caller checked may be out of date).
        if !publisher_keys.is_empty() {
            let certs = self.certificates_here(&service);
            if let Err(why) = vouching(&certs, &service, &local, &publisher_keys) {
                return Err(Error::not_certified(local, &service, why));
            }
        }
        if self.services.calls.len() >= MAX_PENDING_CALLS {
            return Err(Error::Busy {
                what: "calls waiting for their provider's answer on this node",
                limit: MAX_PENDING_CALLS,
            });
        }
        // A provider app and its helpers (`app:helper`) share one budget.
        let of_app = self
            .services
            .calls
            .values()
            .filter(|c| root_app(&c.app_id) == root_app(&app_id))
            .count();
        if of_app >= MAX_PENDING_CALLS_PER_APP {
            return Err(Error::Busy {
                what: "calls waiting for the answer of one provider app",
                limit: MAX_PENDING_CALLS_PER_APP,
            });
        }
        // No live session left: its end is under way, and the registration goes with it.
        let Some((session, tx)) = self.sessions.newest(&app_id) else {
            return Err(not_here(service));
        };
        if from_peer != local {
            self.services.callers.called(&service, from_peer);
        }
        let call_id = self.store.next_id()?;
        let deadline_ms = now_ms().saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(0));
        let announce = IncomingCall {
            call_id,
            service: service.clone(),
            from_peer: from_peer.to_string(),
            from_app,
            payload,
            deadline_ms,
        };
        if tx.try_send(Incoming::Call(announce)).is_err() {
            // Full: the app is not reading its session. Closed: it is ending.
            return Err(Error::Busy {
                what: "channels and calls waiting for the provider app to read them",
                limit: SESSION_BUFFER,
            });
        }
        let (answer, answered) = oneshot::channel();
        let expiry = ctx.run_later(timeout, move |act, _| act.expire_call(call_id));
        self.services.calls.insert(
            call_id,
            PendingCall {
                app_id: app_id.clone(),
                service,
                session,
                answer,
                expiry,
                deadline: std::time::Instant::now() + timeout,
            },
        );
        Ok(Delivered {
            app_id,
            answer: answered,
        })
    }

    /// The call's time is up: its caller hears `DEADLINE_EXCEEDED`.
    fn expire_call(&mut self, call_id: u64) {
        if let Some(call) = self.services.calls.remove(&call_id) {
            let message = format!(
                "app '{}' did not answer the call to '{}' in time",
                call.app_id, call.service
            );
            let answer = app_error(&call.app_id, code(ErrorCode::DeadlineExceeded), message);
            let _ = call.answer.send(answer);
        }
    }

    /// A session ended: the calls announced on it can no longer be answered; their callers
    /// hear `UNAVAILABLE`.
    pub(crate) fn session_ended(&mut self, session: u64) {
        let gone: Vec<u64> = self
            .services
            .calls
            .iter()
            .filter(|(_, c)| c.session == session)
            .map(|(id, _)| *id)
            .collect();
        for call_id in gone {
            if let Some(call) = self.services.calls.remove(&call_id) {
                // Its expiry finds nothing when it fires.
                let message = format!(
                    "the provider went away: app '{}' ended its session before answering the \
                     call to '{}'; try again to reach another provider",
                    call.app_id, call.service
                );
                let answer = app_error(&call.app_id, code(ErrorCode::Unavailable), message);
                let _ = call.answer.send(answer);
            }
        }
    }

    /// `Services.Reply`: the provider's answer to a call announced on its session.
    pub(super) fn reply(
        &mut self,
        request: ReplyRequest,
        ctx: &mut Context<Self>,
    ) -> Result<(), Error> {
        let ReplyRequest {
            app_id,
            call_id,
            result,
        } = request;
        validate_app_id(&app_id)?;
        let answer = match result.ok_or(Error::ReplyWithoutResult)? {
            reply_request::Result::Payload(payload) => {
                validate_payload("a reply payload", payload.len())?;
                CallAnswer {
                    code: 0,
                    message: String::new(),
                    payload,
                    provider_app: app_id.clone(),
                    certificates: Vec::new(),
                }
            }
            reply_request::Result::Error(ReplyError { code, message }) => {
                let code = match code {
                    1..=16 => code,
                    _ => UNKNOWN,
                };
                app_error(&app_id, code, shorten(message, MAX_ERROR_MESSAGE))
            }
        };
        match self.services.calls.get(&call_id) {
            Some(call) if call.app_id == app_id => {
                // Its time is up even if the expiry has not run yet: too late, as the caller
                // was told.
                if std::time::Instant::now() >= call.deadline {
                    // Its expiry, when it runs, finds nothing.
                    self.expire_call(call_id);
                    return Err(Error::CallNotFound { app_id, call_id });
                }
            }
            _ => return Err(Error::CallNotFound { app_id, call_id }),
        }
        if let Some(call) = self.services.calls.remove(&call_id) {
            ctx.cancel_future(call.expiry);
            // A caller that left no longer hears it; the reply was taken all the same.
            let _ = call.answer.send(answer);
        }
        Ok(())
    }
}

/// Serves one `/p2pos/call/2` stream: reads the call, has the actor announce it, and writes
/// the answer (the provider's, or this node's refusal) before closing. A withdrawal notice
/// (the peer no longer provides a service) goes to the network's ranking of providers and is
/// answered OK.
pub(crate) async fn serve_call(
    peer: PeerId,
    stream: InboundStream,
    actor: Addr<ServiceRegistry>,
    net: Network,
) {
    let stream_max_frame = stream.max_frame();
    let mut io = stream.compat();
    if let Err(e) = take(&mut io).await {
        debug!(%peer, "cannot take a call stream: {e}");
        return;
    }
    let frame: CallFrame = match read_message(&mut io, stream_max_frame, HELLO_TIMEOUT).await {
        Ok(frame) => frame,
        Err(e) => {
            debug!(%peer, "bad call frame: {e}");
            return;
        }
    };
    let answer = match checked(peer, frame) {
        Err(e) => node_error(e),
        Ok(Checked::Withdrawn(service)) => {
            debug!(%peer, %service, "the peer no longer provides the service");
            net.provider_fared(&service_key(&service), peer, Fared::NotProviding);
            CallAnswer::default()
        }
        Ok(Checked::Certificates(service)) => match actor.send(CertificatesOf(service)).await {
            Ok(Ok(certificates)) => CallAnswer {
                certificates,
                ..CallAnswer::default()
            },
            Ok(Err(e)) => node_error(e),
            Err(_) => return, // the service is going away; the stream closes
        },
        Ok(Checked::Call(call)) => {
            let limit = call.timeout + ANSWER_GRACE;
            let service = call.service.clone();
            match actor.send(InboundCall(call)).await {
                Ok(Ok(Delivered { app_id, answer })) => {
                    let waited = tokio::time::timeout(limit, answer).await.ok();
                    answer_of(&app_id, &service, waited)
                }
                Ok(Err(e)) => node_error(e),
                Err(_) => return, // the service is going away; the stream closes
            }
        }
    };
    let answer = fit_relay(&net, peer, answer).await;
    if let Err(e) = write_message(&mut io, &answer, WRITE_TIMEOUT).await {
        debug!(%peer, "cannot answer a call: {e}");
        return;
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, io.shutdown()).await;
}

/// `answer`, or, when the caller is reached only through a relay whose circuit cannot carry
/// it (it would end the circuit in its middle), the error that says so, from the app that
/// answered (it saw the call: the caller must not try another provider).
async fn fit_relay(net: &Network, peer: PeerId, answer: CallAnswer) -> CallAnswer {
    let size = u64::try_from(prost::Message::encoded_len(&answer) + p2pos_protocols::wire::HEADER)
        .unwrap_or(u64::MAX);
    match crate::channel::relayed(net, peer).await {
        Some(circuit) if !circuit.fits(size) => {
            let e = Error::TooLargeForRelay {
                peer,
                what: format!(
                    "the answer to a call, of {size} bytes ({}),",
                    circuit.describe()
                ),
            };
            // Not RESOURCE_EXHAUSTED, which would have the caller try another provider: the
            // app did the call.
            let failed = code(p2pos_kernel::ErrorCode::FailedPrecondition);
            app_error(&answer.provider_app, failed, e.to_string())
        }
        _ => answer,
    }
}

/// Refuses a `/p2pos/call/2` stream this node will not serve now (too many at once): answers
/// `RESOURCE_EXHAUSTED` from the node (no app saw the call, so the caller may try another
/// provider), then reads and drops the caller's frame so that its writing ends cleanly. All
/// within [`REFUSAL_TIME`].
pub(crate) async fn refuse_call(peer: PeerId, stream: InboundStream, why: String) {
    let max_frame = stream.max_frame();
    let mut io = stream.compat();
    let answer = CallAnswer {
        code: code(ErrorCode::ResourceExhausted),
        message: why,
        payload: Bytes::new(),
        provider_app: String::new(),
        certificates: Vec::new(),
    };
    let refusing = async {
        take(&mut io).await?;
        write_message(&mut io, &answer, REFUSAL_TIME).await?;
        io.shutdown().await?;
        let mut sink = tokio::io::sink();
        let mut rest = (&mut io).take(u64::try_from(max_frame + 4).unwrap_or(u64::MAX));
        tokio::io::copy(&mut rest, &mut sink).await
    };
    match tokio::time::timeout(REFUSAL_TIME, refusing).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => debug!(%peer, "cannot refuse a call: {e}"),
        Err(_) => debug!(%peer, "refusing a call took too long"),
    }
}

/// Tells the caller its stream was taken (before the call is read, so that a stream dropped
/// unserved is one the caller knows it may open again).
async fn take<W: AsyncWrite + Unpin>(io: &mut W) -> std::io::Result<()> {
    let taking = async {
        io.write_all(&[CALL_TAKEN]).await?;
        io.flush().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, taking)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write blocked"))?
}

/// What to answer for a call app `app_id` was given: its answer, or the node's on its behalf
/// when the actor dropped the call (`Some(Err)`: the service is stopping) or did not answer
/// in time (`None`). The node's answer names the app all the same, so that the caller does
/// not send a call the app may have handled to another provider.
fn answer_of(
    app_id: &str,
    service: &str,
    waited: Option<Result<CallAnswer, oneshot::error::RecvError>>,
) -> CallAnswer {
    match waited {
        Some(Ok(answer)) => answer,
        Some(Err(_)) => app_error(
            app_id,
            code(ErrorCode::Unavailable),
            format!(
                "the node of app '{app_id}' stopped before it answered the call to '{service}'"
            ),
        ),
        None => app_error(
            app_id,
            code(ErrorCode::DeadlineExceeded),
            format!("app '{app_id}' did not answer the call to '{service}' in time"),
        ),
    }
}

/// What a `/p2pos/call/2` stream brought, checked.
enum Checked {
    /// A call, as the actor takes it.
    Call(CallIn),
    /// The peer no longer provides this service.
    Withdrawn(String),
    /// The peer asks for the certificates presented as a provider of this service.
    Certificates(String),
}

/// The certificates the provider of a service here presents (encoded), or why there are
/// none to ask for (it is not provided here).
#[derive(Message)]
#[rtype(result = "Result<Vec<Bytes>, Error>")]
pub(crate) struct CertificatesOf(pub(crate) String);

impl Handler<CertificatesOf> for ServiceRegistry {
    type Result = Result<Vec<Bytes>, Error>;

    fn handle(
        &mut self,
        CertificatesOf(service): CertificatesOf,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        if self.gone(ctx) {
            return Err(Error::Restarting);
        }
        if self.provider_here(&service).is_none() {
            let peer = self.net.local_peer_id();
            return Err(Error::NotProvidedThere { service, peer });
        }
        Ok(self
            .certificates_here(&service)
            .iter()
            .map(|c| Bytes::from(c.to_bytes()))
            .collect())
    }
}

/// A remote call as the actor takes it (or a withdrawal notice), or why it is refused.
fn checked(from_peer: PeerId, frame: CallFrame) -> Result<Checked, Error> {
    let CallFrame {
        service,
        from_app,
        payload,
        timeout_ms,
        withdrawn,
        certificates,
        publisher_keys,
    } = frame;
    validate_service(&service)?;
    if withdrawn {
        return Ok(Checked::Withdrawn(service));
    }
    if certificates {
        return Ok(Checked::Certificates(service));
    }
    validate_app_id(&from_app)?;
    validate_payload("a call payload", payload.len())?;
    if timeout_ms == 0 {
        return Err(Error::Timeout {
            what: format!("the call to '{service}'"),
            after: Duration::ZERO,
        });
    }
    if publisher_keys.len() > MAX_PINNED_KEYS {
        return Err(Error::InvalidCertificate(format!(
            "a call pins at most {MAX_PINNED_KEYS} publisher keys"
        )));
    }
    let publisher_keys = publisher_keys
        .iter()
        .map(|key| PublisherKey::from_bytes(key))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidCertificate(format!("a pinned publisher key: {e}")))?;
    Ok(Checked::Call(CallIn {
        service,
        from_peer,
        from_app,
        payload,
        timeout: Duration::from_millis(u64::from(timeout_ms)).min(MAX_CALL_TIME),
        publisher_keys,
    }))
}

/// This node's own answer to a call no app saw.
pub(crate) fn node_error(e: Error) -> CallAnswer {
    let ServiceError { code: c, message } = ServiceError::from(e);
    CallAnswer {
        code: code(c),
        message,
        payload: Bytes::new(),
        provider_app: String::new(),
        certificates: Vec::new(),
    }
}

/// An error answered by (or for) the providing app.
fn app_error(app_id: &str, code: u32, message: String) -> CallAnswer {
    CallAnswer {
        code,
        message,
        payload: Bytes::new(),
        provider_app: app_id.to_owned(),
        certificates: Vec::new(),
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn shorten(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_grpc_codes() {
        assert_eq!(code(ErrorCode::NotFound), 5);
        assert_eq!(code(ErrorCode::DeadlineExceeded), 4);
        assert_eq!(code(ErrorCode::Unavailable), 14);
        assert_eq!(code(ErrorCode::Passed(7)), 7);
        assert_eq!(code(ErrorCode::Passed(99)), UNKNOWN);
    }

    #[test]
    fn remote_calls_are_checked() {
        let frame = |service: &str, payload: usize, timeout_ms| CallFrame {
            service: service.into(),
            from_app: "client".into(),
            payload: Bytes::from(vec![0u8; payload]),
            timeout_ms,
            withdrawn: false,
            certificates: false,
            publisher_keys: Vec::new(),
        };
        let peer = PeerId::random();
        let Ok(Checked::Call(call)) = checked(peer, frame("echo/1", 3, 120_000)) else {
            panic!("a valid call");
        };
        assert_eq!(call.timeout, MAX_CALL_TIME, "clamped to 60 s");
        let mut notice = frame("echo/1", 0, 0);
        notice.withdrawn = true;
        notice.from_app = String::new();
        assert!(matches!(
            checked(peer, notice),
            Ok(Checked::Withdrawn(s)) if s == "echo/1"
        ));
        let refused = |f| node_error(checked(peer, f).err().expect("refused")).code;
        assert_eq!(refused(frame("echo", 3, 100)), 3);
        assert_eq!(
            refused(frame("echo/1", p2pos_protocols::wire::MAX_PAYLOAD + 1, 100)),
            8
        );
        assert_eq!(refused(frame("echo/1", 3, 0)), 4);
    }

    #[tokio::test]
    async fn once_an_app_has_a_call_every_answer_names_it() {
        let (dropped, gone) = oneshot::channel::<CallAnswer>();
        drop(dropped);
        let stopped = answer_of("provider", "echo/1", Some(gone.await));
        assert_eq!(
            (stopped.code, stopped.provider_app.as_str()),
            (14, "provider")
        );
        let late = answer_of("provider", "echo/1", None);
        assert_eq!((late.code, late.provider_app.as_str()), (4, "provider"));
        let own = app_error("provider", 0, String::new());
        assert_eq!(answer_of("provider", "echo/1", Some(Ok(own.clone()))), own);
    }

    /// Fuzz target `call_checks` (`tools/fuzz`): any call frame a peer sends is a call within
    /// the limits, a withdrawal of a valid service, or the node's refusal; never a panic.
    #[test]
    fn call_checks() {
        use p2pos_protocols::{ids::ServiceName, names::check_app_id, wire::MAX_PAYLOAD};
        use proptest::prelude::*;

        let text = || {
            prop_oneof![
                "[a-zA-Z0-9._:-]{0,70}(/[0-9]{0,10})?",
                "\\PC{0,40}",
                "[a-z]{1,9}".prop_map(|s| s.repeat(40)),
            ]
        };
        let size = prop_oneof![0usize..64, MAX_PAYLOAD - 2..=MAX_PAYLOAD + 2];
        let time = prop_oneof![Just(0u32), 1..120_000u32, any::<u32>()];
        let frame = (text(), text(), size, time, any::<bool>(), any::<bool>()).prop_map(
            |(service, from_app, size, timeout_ms, withdrawn, certificates)| CallFrame {
                service,
                from_app,
                payload: Bytes::from(vec![0u8; size]),
                timeout_ms,
                withdrawn,
                certificates,
                publisher_keys: Vec::new(),
            },
        );
        let peer = PeerId::random();
        p2pos_fuzz::fuzz("call_checks", frame, |frame| {
            let sent = frame.clone();
            let service_ok = ServiceName::parse(&sent.service).is_ok();
            match checked(peer, frame) {
                Ok(Checked::Call(call)) => {
                    prop_assert!(!sent.withdrawn && !sent.certificates && service_ok);
                    prop_assert!(check_app_id(&sent.from_app).is_ok());
                    prop_assert!(call.payload.len() <= MAX_PAYLOAD);
                    prop_assert!(!call.timeout.is_zero() && call.timeout <= MAX_CALL_TIME);
                    prop_assert_eq!(call.from_peer, peer);
                    prop_assert_eq!(call.service, sent.service);
                }
                Ok(Checked::Withdrawn(service)) => {
                    prop_assert!(sent.withdrawn && service_ok);
                    prop_assert_eq!(service, sent.service);
                }
                Ok(Checked::Certificates(service)) => {
                    prop_assert!(sent.certificates && !sent.withdrawn && service_ok);
                    prop_assert_eq!(service, sent.service);
                }
                Err(e) => {
                    let answer = node_error(e);
                    prop_assert!(answer.code != 0 && !answer.message.is_empty());
                    prop_assert!(answer.provider_app.is_empty(), "no app saw it");
                    // Any text a peer sends comes back shortened, whole characters only.
                    let cut = shorten(answer.message.clone(), sent.service.len() % 200);
                    prop_assert!(answer.message.starts_with(&cut));
                }
            }
            Ok(())
        });
    }

    #[test]
    fn long_messages_are_cut_on_a_boundary() {
        assert_eq!(shorten("héllo".into(), 2), "h");
        assert_eq!(shorten("hello".into(), 10), "hello");
    }
}
