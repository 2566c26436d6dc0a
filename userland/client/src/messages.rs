//! Store-and-forward messages sent exactly once: a [`KeyedMessage`] carries the app's
//! idempotency key, and [`Client::send_until_answered`] retries it with that key until the node
//! answers, so a `Send` whose answer was lost (the node was killed mid-call, the connection
//! broke) is neither lost nor sent twice.
//!
//! ```no_run
//! # async fn demo(client: p2pos_client::Client) -> Result<(), tonic::Status> {
//! use std::time::Duration;
//! use p2pos_client::KeyedMessage;
//!
//! let order = KeyedMessage::new("shop", "12D3KooW...", "order 7: 2 apples", "order-7");
//! let sent = client.send_until_answered(&order, Duration::from_secs(60)).await?;
//! println!("message {} is {:?}", sent.message_id, sent.state());
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use bytes::Bytes;
use p2pos_proto::app::v1::{SendReply, SendRequest};
use tokio::time::Instant;
use tonic::Code;

use crate::Client;

/// Longest idempotency key, in bytes (the node refuses longer ones).
pub const MAX_IDEMPOTENCY_KEY: usize = 64;
/// How long one attempt may take before it is given up and tried again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// First and longest pause between attempts.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// One message for `Apps.Send`, named by an idempotency key of the app's choosing (an order
/// number, a UUID: 1 to [`MAX_IDEMPOTENCY_KEY`] bytes), unique among the app's messages of
/// the last 24 h.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedMessage {
    /// The app id (sender's and receiver's).
    pub app_id: String,
    /// Peer id, ticket, multiaddr with `/p2p/`, or `NAME@GROUP`.
    pub peer: String,
    /// At most 1 MiB.
    pub payload: Bytes,
    /// The idempotency key.
    pub key: Bytes,
}

impl KeyedMessage {
    /// A message of `app_id` for `peer`, named `key`.
    pub fn new(
        app_id: impl Into<String>,
        peer: impl Into<String>,
        payload: impl Into<Bytes>,
        key: impl Into<Bytes>,
    ) -> Self {
        Self {
            app_id: app_id.into(),
            peer: peer.into(),
            payload: payload.into(),
            key: key.into(),
        }
    }

    /// The `Send` request, key included.
    pub fn request(&self) -> SendRequest {
        SendRequest {
            app_id: self.app_id.clone(),
            peer: self.peer.clone(),
            payload: self.payload.clone(),
            idempotency_key: self.key.clone(),
        }
    }
}

/// Whether a failed `Send` may have lost its answer (or never reached the node), so that the
/// same request with the same key is retried: the node is down or restarting, the connection
/// broke, the call took too long. Any other status is the node's answer.
pub fn is_retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Internal
    )
}

impl Client {
    /// Sends `message` and answers the node's reply, retrying with the same idempotency key
    /// while the node cannot be reached or the answer is lost ([`is_retryable`]), for up to
    /// `deadline`: the message is stored and sent once, whichever attempt the answer comes
    /// from. The client reconnects by itself once the node is back. Answers the node's error
    /// if it gave one, or the last failure once `deadline` has passed. A `RESOURCE_EXHAUSTED`
    /// refusal (outbox full, too many `Send`s in flight, keys full) stored nothing: it is
    /// answered, and the app may send the same message with the same key again later.
    pub async fn send_until_answered(
        &self,
        message: &KeyedMessage,
        deadline: Duration,
    ) -> Result<SendReply, tonic::Status> {
        if message.key.is_empty() || message.key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(tonic::Status::invalid_argument(format!(
                "an idempotency key of {} bytes: it must be 1 to {MAX_IDEMPOTENCY_KEY} bytes",
                message.key.len()
            )));
        }
        let until = Instant::now() + deadline;
        let mut pause = RETRY_MIN;
        loop {
            let mut request = tonic::Request::new(message.request());
            let left = until.saturating_duration_since(Instant::now());
            request.set_timeout(left.clamp(Duration::from_millis(1), ATTEMPT_TIMEOUT));
            let failed = match self.apps().send(request).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) if !is_retryable(&status) => return Err(status),
                Err(status) => status,
            };
            if Instant::now() + pause >= until {
                return Err(failed);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_carries_the_key_and_only_lost_answers_are_retried() {
        let message = KeyedMessage::new("shop", "peer", "order 7", "order-7");
        let request = message.request();
        assert_eq!(&request.idempotency_key[..], b"order-7");
        assert_eq!(&request.payload[..], b"order 7");
        assert!(is_retryable(&tonic::Status::unavailable("node restarting")));
        assert!(is_retryable(&tonic::Status::unknown("transport error")));
        assert!(!is_retryable(&tonic::Status::failed_precondition(
            "key used for another message"
        )));
        assert!(!is_retryable(&tonic::Status::resource_exhausted(
            "outbox full"
        )));
    }
}
