//! What pubsub keeps in the store tree [`TREE`]: each post held (key `p` + topic id + sender +
//! number → its signed envelope, read back and checked at start) and this node's last post
//! number per topic (key `s` + topic id), so that numbers keep growing across restarts. Writes
//! go through the service's [`Writer`], off the tasks that serve requests.

use std::collections::HashMap;

use bytes::Bytes;
use libp2p::PeerId;
use p2pos_kernel::{Store, store::Writer};
use tracing::warn;

use super::{
    MAX_TOPICS, open_post,
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

fn seq_key(key: &TopicKey) -> Vec<u8> {
    [&b"s"[..], &key.id()].concat()
}

/// Keeps `post`.
pub(super) fn save_post(writer: &Writer, key: &TopicKey, post: &Post) {
    writer.insert(TREE, &post_key(key, &post.sender, post.seq), &post.envelope);
}

/// Forgets a post.
pub(super) fn forget_post(writer: &Writer, key: &TopicKey, sender: &PeerId, seq: u64) {
    writer.remove(TREE, &post_key(key, sender, seq));
}

/// Keeps this node's last post number on `key`.
pub(super) fn save_own_seq(writer: &Writer, key: &TopicKey, seq: u64) {
    writer.insert(TREE, &seq_key(key), &seq.to_be_bytes());
}

/// This node's last post numbers, by topic id.
pub(super) type OwnSeqs = HashMap<[u8; 16], u64>;

/// The posts kept (those that still check) and the post numbers, by topic id.
pub(super) fn load(store: &dyn Store) -> (Vec<(TopicKey, Post)>, OwnSeqs) {
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
    let mut seqs = HashMap::new();
    match store.scan_prefix(TREE, b"s", MAX_TOPICS * 64) {
        Ok(pairs) => {
            for (key, value) in pairs {
                let (Ok(id), Ok(seq)) = (
                    <[u8; 16]>::try_from(&key[1..]),
                    <[u8; 8]>::try_from(value.as_slice()),
                ) else {
                    continue;
                };
                seqs.insert(id, u64::from_be_bytes(seq));
            }
        }
        Err(e) => warn!("cannot read the post numbers: {e}"),
    }
    (posts, seqs)
}
