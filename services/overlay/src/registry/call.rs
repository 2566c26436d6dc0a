//! What a call is, on both sides: `/p2pos/call/2` and its limits, the call-taken byte, the
//! call as a provider on this node takes it, and gRPC codes in answers.

use std::time::Duration;

use actix::Message;
use bytes::Bytes;
use libp2p::{PeerId, StreamProtocol};
use p2pos_kernel::{ErrorCode, ServiceError};
use p2pos_proto::wire::v1::CallAnswer;
use p2pos_protocols::{certs::PublisherKey, wire};
use tokio::sync::oneshot;

use crate::Error;

/// The protocol's name in errors.
pub(crate) const PROTOCOL: &str = "/p2pos/call/2";
/// The first byte a provider's node writes on a call stream it serves: the stream was taken,
/// so an end before it means the call was never seen there.
pub(crate) const CALL_TAKEN: u8 = 0x01;
/// `/p2pos/call/2`: one unary service call per stream.
pub(crate) const CALL_PROTOCOL: StreamProtocol = StreamProtocol::new(PROTOCOL);
/// The longest a call waits for its answer.
pub(crate) const MAX_CALL_TIME: Duration = Duration::from_secs(60);
/// Largest `CallFrame` or `CallAnswer`: a payload and its envelope.
pub(crate) const MAX_CALL_FRAME: usize = wire::MAX_PAYLOAD + 4 * 1024;
/// gRPC `UNKNOWN`, for a provider's error code outside 1–16.
pub(crate) const UNKNOWN: u32 = 2;

/// A call for a provider on this node, checked.
pub(crate) struct CallIn {
    pub(crate) service: String,
    pub(crate) from_peer: PeerId,
    pub(crate) from_app: String,
    pub(crate) payload: Bytes,
    /// How long the caller waits from now.
    pub(crate) timeout: Duration,
    /// The publisher keys the caller pinned: the call is given to the app only if the
    /// service's registration here presents a valid certificate of one of them (none: any).
    pub(crate) publisher_keys: Vec<PublisherKey>,
}

/// A call announced to the app providing its service here.
pub(crate) struct Delivered {
    /// The app that was given the call.
    pub(crate) app_id: String,
    /// Where its answer (or the node's, on its behalf) comes.
    pub(crate) answer: oneshot::Receiver<CallAnswer>,
}

/// A remote node's call, read from its `/p2pos/call/2` stream: announced, or refused by this
/// node (the answer to write back).
#[derive(Message)]
#[rtype(result = "Result<Delivered, Error>")]
pub(crate) struct InboundCall(pub(crate) CallIn);

/// The gRPC status code of `code`.
pub(crate) fn code(code: ErrorCode) -> u32 {
    let status = tonic::Status::from(ServiceError::new(code, String::new()));
    u32::try_from(i32::from(status.code())).unwrap_or(UNKNOWN)
}
