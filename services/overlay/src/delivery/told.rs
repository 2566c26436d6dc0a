//! What delivery tells: `MessageDelivered` and `MessageFailed` events for the messages the
//! peer answered, and the messages dropped unreached.

use std::time::Duration;

use libp2p::PeerId;
use p2pos_kernel::{EventBus, events::now_ms};
use p2pos_proto::{
    monitor::v1::{MessageDelivered, MessageFailed, event::Kind},
    wire::v1::MessageFrame,
};
use tracing::warn;

use super::{BATCH, Outcome, Shared};
use crate::Error;

/// Drops the messages that waited longer than allowed for a peer never reached, each reported
/// with a `MessageFailed` event; answers whether none is left for the peer.
pub(super) async fn expire_unreached(peer: PeerId, shared: &Shared) -> Result<bool, Error> {
    let ttl = shared.unreached_ttl;
    let before_ms = now_ms().saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    loop {
        let expired = shared
            .mailbox
            .blocking(move |mailbox| mailbox.expire_unreached(&peer, before_ms, BATCH))
            .await?;
        let more = expired.len() >= BATCH;
        for frame in &expired {
            let reason = format!(
                "expired: peer {peer} was never reached in {} (never seen here, and not found \
                 in the DHT); send it again with the peer's ticket",
                humantime_secs(ttl)
            );
            warn!(%peer, app_id = frame.app_id, message_id = frame.message_id, "message dropped: {reason}");
            shared.events.publish(Kind::MessageFailed(MessageFailed {
                peer_id: peer.to_string(),
                app_id: frame.app_id.clone(),
                message_id: frame.message_id,
                reason,
            }));
        }
        if !expired.is_empty() {
            shared.mailbox.flush().await?;
        }
        if !more {
            return Ok(!shared.mailbox.has_outgoing(&peer)?);
        }
    }
}

/// `ttl` as a person reads it: "7 days", "90 s".
fn humantime_secs(ttl: Duration) -> String {
    let secs = ttl.as_secs();
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => {
            format!("{} day{}", s / 86_400, if s == 86_400 { "" } else { "s" })
        }
        s if s >= 3_600 && s % 3_600 == 0 => format!("{} h", s / 3_600),
        s => format!("{s} s"),
    }
}

pub(super) fn publish(events: &EventBus, peer: PeerId, frame: &MessageFrame, outcome: Outcome) {
    let reason = match outcome {
        Outcome::Delivered => {
            events.publish(Kind::MessageDelivered(MessageDelivered {
                inbound: false,
                peer_id: peer.to_string(),
                app_id: frame.app_id.clone(),
                message_id: frame.message_id,
            }));
            return;
        }
        Outcome::UnknownApp => format!("app '{}' is not registered on peer {peer}", frame.app_id),
        Outcome::TooLarge => format!(
            "peer {peer} refused a payload of {} bytes",
            frame.payload.len()
        ),
        Outcome::Queued | Outcome::Waiting { .. } => return,
    };
    warn!(%peer, app_id = frame.app_id, message_id = frame.message_id, "message dropped: {reason}");
    events.publish(Kind::MessageFailed(MessageFailed {
        peer_id: peer.to_string(),
        app_id: frame.app_id.clone(),
        message_id: frame.message_id,
        reason,
    }));
}
