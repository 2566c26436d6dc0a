//! Gossip (libp2p gossipsub) confined to scopes: every topic belongs to a scope (a group),
//! and the network lets only the scope's members follow it and accepts only messages whose
//! author is one of them. The names here are shared by the network, which enforces it, and
//! the services that use it.

use bytes::Bytes;
use libp2p::PeerId;

use super::error::Error;

/// Every gossip topic's full name starts with this, then the scope, `/`, the topic.
pub const TOPIC_PREFIX: &str = "/p2pos/gossip/1/";
/// Longest scope or topic part.
pub const MAX_PART: usize = 128;
/// Largest message gossip carries.
pub const MAX_MESSAGE: usize = 96 * 1024;

/// Whether `part` may be a scope or a topic.
pub fn check_part(part: &str) -> Result<(), Error> {
    if part.is_empty() || part.len() > MAX_PART || part.contains('/') {
        return Err(Error::InvalidTopic(part.chars().take(80).collect()));
    }
    Ok(())
}

/// The full name of `topic` in `scope`.
pub fn topic_name(scope: &str, topic: &str) -> Result<String, Error> {
    check_part(scope)?;
    check_part(topic)?;
    Ok(format!("{TOPIC_PREFIX}{scope}/{topic}"))
}

/// The scope of a full topic name, if it is one.
pub fn scope_of(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix(TOPIC_PREFIX)?;
    let (scope, topic) = rest.split_once('/')?;
    (check_part(scope).is_ok() && check_part(topic).is_ok()).then_some(scope)
}

/// A gossip message whose author the network found in the topic's scope.
#[derive(Debug, Clone)]
pub struct GossipMessage {
    /// The node that published it (gossip checked its signature).
    pub author: PeerId,
    /// The peer it came from.
    pub from: PeerId,
    /// What it carries.
    pub data: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_name_gives_back_its_scope_and_bad_parts_are_refused() {
        let name = topic_name("g1", "t").unwrap();
        assert_eq!(scope_of(&name), Some("g1"));
        assert!(topic_name("a/b", "t").is_err());
        assert!(topic_name("", "t").is_err());
        assert!(topic_name("g", &"x".repeat(MAX_PART + 1)).is_err());
        assert_eq!(scope_of("/p2pos/gossip/1/g"), None);
        assert_eq!(scope_of("/other/g/t"), None);
        assert_eq!(scope_of("/p2pos/gossip/1/g/t/u"), None);
    }
}
