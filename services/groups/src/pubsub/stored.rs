//! What pubsub keeps in the store tree [`TREE`]: each post held (key `p` + topic id + sender +
//! number → its signed envelope, read back and checked at start; this node's own tell how far
//! its post numbers went). Writes go through the service's [`Writer`], off the tasks that serve
//! requests.

use bytes::Bytes;
use libp2p::PeerId;
use p2pos_kernel::{Store, store::Writer};
use tracing::warn;

use crate::pubsub::{
    post::open_post,
    topic::{HISTORY_POSTS, Post, TopicKey},
};

/// The store tree.
pub const TREE: &str = "pubsub";
/// Posts read back at start, at most.
const MAX_LOADED: usize = 64 * HISTORY_POSTS;

fn post_key(key: &TopicKey, sender: &PeerId, seq: u64) -> Vec<u8> {
    let sender = sender.to_bytes();
    let mut k = Vec::with_capacity(1 + 16 + 1 + sender.len() + 8);
    k.push(b'p');
    k.extend_from_slice(&key.id());
    k.push(sender.len() as u8);
    k.extend_from_slice(&sender);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Keeps `post`.
pub(crate) fn save_post(writer: &Writer, key: &TopicKey, post: &Post) {
    writer.insert(TREE, &post_key(key, &post.sender, post.seq), &post.envelope);
}

/// Forgets a post.
pub(crate) fn forget_post(writer: &Writer, key: &TopicKey, sender: &PeerId, seq: u64) {
    writer.remove(TREE, &post_key(key, sender, seq));
}

/// The posts kept that still check.
pub(crate) fn load(store: &dyn Store) -> Vec<(TopicKey, Post)> {
    let mut posts = Vec::new();
    match store.scan_prefix(TREE, b"p", MAX_LOADED) {
        Ok(pairs) => {
            for (_, envelope) in pairs {
                match open_post(Bytes::from(envelope)) {
                    Ok(post) => posts.push(post),
                    Err(why) => warn!("a kept post is dropped: {why}"),
                }
            }
        }
        Err(e) => warn!("cannot read the kept posts: {e}"),
    }
    posts
}
