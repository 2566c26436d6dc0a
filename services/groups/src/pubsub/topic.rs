//! One topic as this node holds it: the posts it keeps (its history, bounded), and the order
//! in which posts reach the apps that follow it — each sender's in sequence, a post that comes
//! early waiting at most [`GAP_WAIT`] for those before it. Pure: no I/O, so it is tested alone.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use libp2p::PeerId;
use sha2::{Digest, Sha256};

use crate::op::GroupId;

/// Topics a node holds (followed, or with posts kept).
pub const MAX_TOPICS: usize = 256;
/// Posts a topic keeps.
pub const HISTORY_POSTS: usize = 1000;
/// Bytes a topic keeps (data and envelopes).
pub const HISTORY_BYTES: usize = 8 * 1024 * 1024;
/// How long a post is kept (by its sending time).
pub const HISTORY_WINDOW: Duration = Duration::from_secs(60 * 60);
/// How long a post that came before one it follows waits for it.
pub const GAP_WAIT: Duration = Duration::from_secs(2);
/// Posts waiting for those before them, per topic (beyond, the oldest go out of order).
pub const MAX_PENDING: usize = 256;

/// A topic: a group, an app and a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicKey {
    /// The group.
    pub group: GroupId,
    /// The app whose topic it is.
    pub app: String,
    /// Its name.
    pub topic: String,
}

impl TopicKey {
    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.group.0);
        h.update(self.app.as_bytes());
        h.update([0]);
        h.update(self.topic.as_bytes());
        h.finalize().into()
    }

    /// The gossip topic within the group's scope: a hash, so that peers outside the group
    /// that see subscriptions go by learn neither the app nor the name.
    pub fn gossip_topic(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.digest()[..16])
    }

    /// Its key in the store.
    pub fn id(&self) -> [u8; 16] {
        let d = self.digest();
        let mut id = [0; 16];
        id.copy_from_slice(&d[16..]);
        id
    }
}

/// A post as held: checked, with its signed envelope for others that catch up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    /// The node that published it (its key signed the envelope).
    pub sender: PeerId,
    /// Its number among the sender's posts on the topic: increasing, not contiguous.
    pub seq: u64,
    /// The number of the sender's post before it on the topic, 0 when the sender starts anew
    /// (it has none since it started).
    pub prev: u64,
    /// When it was sent, by the sender's clock.
    pub sent_ms: u64,
    /// What it carries.
    pub data: Bytes,
    /// Whether the sender wants a receipt.
    pub report: bool,
    /// The signed envelope.
    pub envelope: Bytes,
}

/// A post to hand to the apps, and whether it was caught up (missed while away) rather than
/// live.
pub type Out = (Arc<Post>, bool);

impl Post {
    /// The memory it takes: its data, and its envelope (which holds the data again).
    pub fn size(&self) -> usize {
        self.data.len() + self.envelope.len()
    }
}

/// What [`Topic::take`] made of a post.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Held already.
    Duplicate,
    /// Sent before the history window: a replay, not taken.
    Stale,
    /// Kept; these posts (it, and those it let through) go to the apps now, in order.
    Kept(Vec<Out>),
}

/// A topic's posts and order.
#[derive(Debug, Default)]
pub struct Topic {
    history: BTreeMap<(PeerId, u64), Arc<Post>>,
    bytes: usize,
    /// Per sender, the last post handed to the apps.
    delivered: HashMap<PeerId, u64>,
    /// Posts waiting for earlier ones, since when, and whether caught up.
    pending: BTreeMap<(PeerId, u64), (Out, Instant)>,
    /// While set, posts of senders never delivered wait (catch-up at start is under way).
    pub holding: bool,
    /// This node's last post number.
    pub own_seq: u64,
}

impl Topic {
    /// Whether it holds the sender's post `seq`.
    pub fn has(&self, sender: &PeerId, seq: u64) -> bool {
        self.history.contains_key(&(*sender, seq))
    }

    /// Keeps `post` (caught up or live) and says what goes to the apps now: `now_ms` tells
    /// posts older than the history window (a replay), which are not taken.
    pub fn take(&mut self, post: Arc<Post>, caught_up: bool, now: Instant, now_ms: u64) -> Taken {
        let key = (post.sender, post.seq);
        if self.history.contains_key(&key) {
            return Taken::Duplicate;
        }
        if post.sent_ms < now_ms.saturating_sub(HISTORY_WINDOW.as_millis() as u64) {
            return Taken::Stale;
        }
        self.bytes += post.size();
        self.history.insert(key, post.clone());
        let mut out = Vec::new();
        match self.delivered.get(&post.sender).copied() {
            Some(last) if post.seq <= last => {}
            // Its predecessor was handed on (or given up on), or the sender started anew.
            Some(last) if post.prev <= last => {
                self.delivered.insert(post.sender, post.seq);
                out.push((post, caught_up));
                self.release(key.0, &mut out);
            }
            None if !self.holding => {
                self.delivered.insert(post.sender, post.seq);
                out.push((post, caught_up));
                self.release(key.0, &mut out);
            }
            _ => {
                self.pending.insert(key, ((post, caught_up), now));
                if self.pending.len() > MAX_PENDING {
                    out.extend(self.flush_oldest());
                }
            }
        }
        Taken::Kept(out)
    }

    /// Marks `post` (this node's own, or one replayed from the store) as held and handed on.
    pub fn keep_delivered(&mut self, post: Arc<Post>) {
        let key = (post.sender, post.seq);
        if self.history.contains_key(&key) {
            return;
        }
        self.bytes += post.size();
        let last = self.delivered.entry(post.sender).or_default();
        *last = (*last).max(post.seq);
        self.history.insert(key, post);
    }

    /// Hands on the sender's waiting posts that now follow in sequence.
    fn release(&mut self, sender: PeerId, out: &mut Vec<Out>) {
        loop {
            let last = self.delivered.get(&sender).copied().unwrap_or(0);
            let Some((&key, ((post, _), _))) =
                self.pending.range((sender, 0)..=(sender, u64::MAX)).next()
            else {
                return;
            };
            if post.prev > last {
                return;
            }
            let Some((post, _)) = self.pending.remove(&key) else {
                return;
            };
            self.delivered.insert(sender, key.1);
            out.push(post);
        }
    }

    /// Gives up waiting for the earliest gap of the sender with the oldest waiting post.
    fn flush_oldest(&mut self) -> Vec<Out> {
        let Some((&(sender, _), _)) = self.pending.iter().min_by_key(|(_, (_, since))| *since)
        else {
            return Vec::new();
        };
        self.give_up(sender)
    }

    /// Hands on the sender's first waiting post, skipping what is missing before it, and
    /// those that follow it.
    fn give_up(&mut self, sender: PeerId) -> Vec<Out> {
        let Some((&key, _)) = self.pending.range((sender, 0)..=(sender, u64::MAX)).next() else {
            return Vec::new();
        };
        let Some((post, _)) = self.pending.remove(&key) else {
            return Vec::new();
        };
        self.delivered.insert(sender, key.1);
        let mut out = vec![post];
        self.release(sender, &mut out);
        out
    }

    /// Stops holding (catch-up at start is over) and hands on what waited too long (or
    /// everything, once no longer holding, of senders never seen): in order per sender.
    pub fn sweep(&mut self, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        loop {
            let due = self.pending.iter().find(|((sender, _), (_, since))| {
                now.duration_since(*since) >= GAP_WAIT
                    || (!self.holding && !self.delivered.contains_key(sender))
            });
            let Some((&(sender, _), _)) = due else {
                return out;
            };
            out.extend(self.give_up(sender));
        }
    }

    /// The senders whose posts wait for earlier ones, with the last post handed on.
    pub fn gaps(&self) -> Vec<(PeerId, u64)> {
        let mut gaps: Vec<(PeerId, u64)> = self
            .pending
            .keys()
            .map(|(sender, _)| (*sender, self.delivered.get(sender).copied().unwrap_or(0)))
            .collect();
        gaps.dedup();
        gaps
    }

    /// Per sender, the last post handed on.
    pub fn marks(&self) -> Vec<(PeerId, u64)> {
        self.delivered.iter().map(|(p, s)| (*p, *s)).collect()
    }

    /// Drops the oldest posts beyond the limits; answers those dropped (to remove from the
    /// store).
    pub fn prune(&mut self, now_ms: u64) -> Vec<(PeerId, u64)> {
        let oldest = now_ms.saturating_sub(HISTORY_WINDOW.as_millis() as u64);
        let mut by_age: Vec<(u64, PeerId, u64)> = Vec::new();
        if self.history.len() > HISTORY_POSTS
            || self.bytes > HISTORY_BYTES
            || self.history.values().any(|p| p.sent_ms < oldest)
        {
            by_age = self
                .history
                .values()
                .map(|p| (p.sent_ms, p.sender, p.seq))
                .collect();
            by_age.sort_unstable();
        }
        let mut dropped = Vec::new();
        for (sent_ms, sender, seq) in by_age {
            if self.history.len() <= HISTORY_POSTS
                && self.bytes <= HISTORY_BYTES
                && sent_ms >= oldest
            {
                break;
            }
            if let Some(post) = self.history.remove(&(sender, seq)) {
                self.bytes -= post.size();
                dropped.push((sender, seq));
            }
        }
        dropped
    }

    /// The posts handed on that were sent at or after `since_ms`, oldest first (those still
    /// waiting for earlier ones come when they are handed on).
    pub fn since(&self, since_ms: u64) -> Vec<Arc<Post>> {
        let mut posts: Vec<Arc<Post>> = self
            .history
            .values()
            .filter(|p| p.sent_ms >= since_ms)
            .filter(|p| !self.pending.contains_key(&(p.sender, p.seq)))
            .cloned()
            .collect();
        posts.sort_by_key(|p| (p.sent_ms, p.sender, p.seq));
        posts
    }

    /// The posts another node lacks: sent at or after `since_ms` and after the seq `marks`
    /// names for their sender (with `only_named`, only senders it names); each sender's in
    /// order, at most `limit`.
    pub fn lacking(
        &self,
        since_ms: u64,
        marks: &HashMap<PeerId, u64>,
        only_named: bool,
        limit: usize,
    ) -> Vec<Arc<Post>> {
        self.history
            .values()
            .filter(|p| p.sent_ms >= since_ms)
            .filter(|p| match marks.get(&p.sender) {
                Some(seq) => p.seq > *seq,
                None => !only_named,
            })
            .take(limit)
            .cloned()
            .collect()
    }

    /// Posts held.
    pub fn len(&self) -> usize {
        self.history.len()
    }

    /// Whether it holds no post.
    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(sender: PeerId, seq: u64, sent_ms: u64) -> Arc<Post> {
        Arc::new(Post {
            sender,
            seq,
            prev: seq - 1,
            sent_ms,
            data: Bytes::from(vec![0; 10]),
            report: false,
            envelope: Bytes::new(),
        })
    }

    fn seqs(posts: &[Arc<Post>]) -> Vec<u64> {
        posts.iter().map(|p| p.seq).collect()
    }

    fn out_seqs(out: &[Out]) -> Vec<u64> {
        out.iter().map(|(p, _)| p.seq).collect()
    }

    fn kept(taken: Taken) -> Vec<u64> {
        match taken {
            Taken::Kept(out) => out_seqs(&out),
            other => panic!("not kept: {other:?}"),
        }
    }

    #[test]
    fn each_senders_posts_go_out_in_order_and_a_duplicate_is_dropped() {
        let (a, now) = (PeerId::random(), Instant::now());
        let mut t = Topic::default();
        assert_eq!(kept(t.take(post(a, 5, 1), false, now, 0)), vec![5]);
        assert_eq!(
            kept(t.take(post(a, 7, 3), false, now, 0)),
            Vec::<u64>::new()
        );
        assert_eq!(
            kept(t.take(post(a, 8, 4), false, now, 0)),
            Vec::<u64>::new()
        );
        assert_eq!(t.gaps(), vec![(a, 5)]);
        assert_eq!(kept(t.take(post(a, 6, 2), false, now, 0)), vec![6, 7, 8]);
        assert_eq!(t.take(post(a, 6, 2), false, now, 0), Taken::Duplicate);
        assert!(t.gaps().is_empty());
    }

    #[test]
    fn a_gap_is_skipped_after_the_wait_and_a_late_post_is_only_kept() {
        let (a, now) = (PeerId::random(), Instant::now());
        let mut t = Topic::default();
        kept(t.take(post(a, 1, 1), false, now, 0));
        kept(t.take(post(a, 3, 3), false, now, 0));
        assert!(t.sweep(now + GAP_WAIT / 2).is_empty());
        assert_eq!(out_seqs(&t.sweep(now + GAP_WAIT)), vec![3]);
        assert_eq!(
            kept(t.take(post(a, 2, 2), false, now, 0)),
            Vec::<u64>::new()
        );
        assert!(t.has(&a, 2));
    }

    #[test]
    fn a_sender_that_started_anew_is_not_waited_for_and_a_replay_is_stale() {
        let (a, now) = (PeerId::random(), Instant::now());
        let mut t = Topic::default();
        kept(t.take(post(a, 1, 1), false, now, 0));
        kept(t.take(post(a, 2, 2), false, now, 0));
        // Restarted: numbers jump ahead, and it names no predecessor.
        let fresh = Arc::new(Post {
            prev: 0,
            ..(*post(a, 9_000, 3)).clone()
        });
        assert_eq!(kept(t.take(fresh, false, now, 0)), vec![9_000]);
        // One that waits is not replayed to a new subscriber before it is handed on.
        kept(t.take(post(a, 9_002, 5), false, now, 0));
        assert_eq!(seqs(&t.since(0)), vec![1, 2, 9_000]);
        let now_ms = HISTORY_WINDOW.as_millis() as u64 + 10;
        assert_eq!(t.take(post(a, 3, 9), false, now, now_ms), Taken::Stale);
    }

    #[test]
    fn while_holding_new_senders_wait_and_go_out_in_order_after() {
        let (a, now) = (PeerId::random(), Instant::now());
        let mut t = Topic {
            holding: true,
            ..Topic::default()
        };
        kept(t.take(post(a, 9, 9), false, now, 0));
        kept(t.take(post(a, 8, 8), false, now, 0));
        assert!(t.sweep(now).is_empty());
        t.holding = false;
        assert_eq!(out_seqs(&t.sweep(now)), vec![8, 9]);
    }

    #[test]
    fn history_keeps_the_newest_within_its_limits() {
        let a = PeerId::random();
        let mut t = Topic::default();
        let now_ms = HISTORY_WINDOW.as_millis() as u64 * 2;
        for seq in 1..=(HISTORY_POSTS as u64 + 10) {
            t.keep_delivered(post(a, seq, now_ms - 1000 + seq));
        }
        t.keep_delivered(post(PeerId::random(), 1, 1));
        let dropped = t.prune(now_ms);
        assert_eq!(dropped.len(), 11);
        assert_eq!(t.len(), HISTORY_POSTS);
        assert!(!t.has(&a, 10) && t.has(&a, 11));
        let lacking = t.lacking(0, &HashMap::from([(a, HISTORY_POSTS as u64)]), true, 100);
        assert_eq!(
            seqs(&lacking),
            (HISTORY_POSTS as u64 + 1..=HISTORY_POSTS as u64 + 10).collect::<Vec<_>>()
        );
    }
}
