//! A post: the limits of what it carries, and opening its signed envelope (checking the
//! signature and the fields) wherever it comes from: gossip, catch-up, the store.

use bytes::Bytes;
use p2pos_kernel::{ServiceError, events::now_ms};
use p2pos_proto::wire::v1::GroupPost;
use p2pos_protocols::network::open_signed;
use prost::Message as _;

use crate::{
    op::GroupId,
    pubsub::topic::{Post, TopicKey},
};

/// The signed envelope's payload type of a post.
pub const POST_TYPE: &str = "/p2pos/group/post";
/// Largest data of one post.
pub const MAX_DATA: usize = 64 * 1024;
/// Longest topic name.
pub const MAX_TOPIC: usize = 128;
/// Longest app id in a post.
pub const MAX_APP: usize = 128;
/// A post sent this far in the future (by the receiver's clock) is refused.
const MAX_CLOCK_AHEAD_MS: u64 = 10 * 60 * 1000;

/// Whether `topic` may name a topic.
pub fn check_topic(topic: &str) -> Result<(), ServiceError> {
    if topic.is_empty() || topic.chars().count() > MAX_TOPIC {
        return Err(ServiceError::invalid(format!(
            "a topic is 1 to {MAX_TOPIC} characters (got {})",
            topic.chars().count()
        )));
    }
    Ok(())
}

/// The post in `envelope`, if its signature verifies and it is well formed.
pub fn open_post(envelope: Bytes) -> Result<(TopicKey, Post), String> {
    let (sender, payload) =
        open_signed(POST_TYPE, &envelope).ok_or("its signature does not verify")?;
    let post = GroupPost::decode(payload.as_slice()).map_err(|e| e.to_string())?;
    let group = GroupId::from_bytes(&post.group).ok_or("a bad group id")?;
    if post.app.is_empty() || post.app.len() > MAX_APP || check_topic(&post.topic).is_err() {
        return Err("a bad app or topic".into());
    }
    if post.data.len() > MAX_DATA {
        return Err("too large".into());
    }
    if post.seq == 0 || post.seq >= u64::MAX / 2 || post.prev >= post.seq {
        return Err("numbered 0, too high, or after itself".into());
    }
    if post.sent_ms > now_ms() + MAX_CLOCK_AHEAD_MS {
        return Err("sent in the future".into());
    }
    let key = TopicKey {
        group,
        app: post.app,
        topic: post.topic,
    };
    Ok((
        key,
        Post {
            sender,
            seq: post.seq,
            prev: post.prev,
            sent_ms: post.sent_ms,
            data: post.data,
            report: post.report,
            envelope,
        },
    ))
}
