//! The node's pubsub: publishing, following topics (gossip, then catch-up), taking posts in
//! and handing them to subscribers in order, receipts awaited, and what changes with
//! membership.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use libp2p::PeerId;
use p2pos_kernel::{ErrorCode, ServiceError, Store, events::now_ms, store::Writer};
use p2pos_proto::{
    group::v1::{PublishReply, PublishRequest, SubscribeRequest, TopicMessage},
    wire::v1::GroupPost,
};
use p2pos_protocols::{
    groups::Messages,
    network::{GossipSubscription, Network},
};
use prost::Message as _;
use rand::seq::SliceRandom;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use crate::{
    book::Book,
    op::GroupId,
    pubsub::{
        post::{MAX_DATA, POST_TYPE, check_topic, open_post},
        stored,
        topic::{GAP_WAIT, HISTORY_WINDOW, MAX_TOPICS, Out, Post, Taken, Topic, TopicKey},
    },
    rate::RateLimit,
};

/// Topics of one app a node holds.
pub const TOPICS_PER_APP: usize = 64;
/// Subscriptions to one topic at once.
pub const SUBSCRIBERS_PER_TOPIC: usize = 16;
/// Subscriptions of one app at once.
pub const SUBSCRIPTIONS_PER_APP: usize = 64;
/// Messages waiting for a subscriber; one that falls further behind is ended.
pub const SUBSCRIBER_QUEUE: usize = 2048;
/// Longest wait for receipts.
pub const MAX_REPORT_MS: u32 = 60_000;
/// How long after it was sent a post still gets a receipt.
const RECEIPT_WINDOW: Duration = Duration::from_secs(60);
/// Receipts being sent at once; more are dropped.
pub const RECEIPTS_AT_ONCE: usize = 64;
/// Catch-ups under way at once; gap fills past them are skipped (the next post asks again).
const CATCH_UPS_AT_ONCE: usize = 32;
/// Gossip messages waiting for the groups service, per followed topic.
const GOSSIP_QUEUE: usize = 1024;
/// How often waiting posts and gone subscribers are looked at.
const SWEEP: Duration = Duration::from_millis(250);
/// How often posts past the history window are forgotten when no new post comes.
const PRUNE: Duration = Duration::from_secs(60);
/// How long the catch-up at the start of following holds posts of unknown senders back.
const START_HOLD: Duration = Duration::from_secs(3);

/// A subscription.
struct Subscriber {
    app: String,
    tx: mpsc::Sender<Result<TopicMessage, ServiceError>>,
    /// Posts caught up from others go to it only if sent since then (its `since_ms`, or when it
    /// began).
    since_ms: u64,
    /// When it began: a caught-up post sent before is a replay.
    started_ms: u64,
}

/// A topic held, with its followers here.
#[derive(Default)]
pub(crate) struct Held {
    pub(crate) topic: Topic,
    /// Taken while one of this node's posts on it is published.
    publishing: Arc<tokio::sync::Mutex<()>>,
    /// This node's last post on it since the node started (0: none yet).
    own_prev: u64,
    /// When each sender's missing posts were last asked for.
    pub(crate) asked: HashMap<PeerId, Instant>,
    subscribers: Vec<Subscriber>,
    /// Follows the topic's gossip while apps subscribe.
    following: Option<AbortOnDropHandle<()>>,
}

/// Receipts awaited for one of this node's posts.
pub(crate) struct Awaited {
    pub(crate) have: HashSet<PeerId>,
    pub(crate) notify: Arc<Notify>,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) topics: HashMap<TopicKey, Held>,
    pub(crate) awaited: HashMap<(TopicKey, u64), Awaited>,
    /// Receipts gathered per sender and topic, about to go.
    pub(crate) receipts: HashMap<(PeerId, TopicKey), Vec<u64>>,
}

/// Group pubsub on this node: cheap to clone.
#[derive(Clone)]
pub struct Pubsub {
    inner: Arc<Mutex<Inner>>,
    pub(crate) book: Book,
    pub(crate) net: Network,
    pub(crate) local: PeerId,
    writer: Writer,
    pub(crate) asks: RateLimit,
    pub(crate) receipts: Arc<Semaphore>,
    /// Catch-ups under way (each asks a few members).
    pub(crate) catch_ups: Arc<Semaphore>,
}

fn denied(message: String) -> ServiceError {
    ServiceError::new(ErrorCode::PermissionDenied, message)
}

fn exhausted(message: String) -> ServiceError {
    ServiceError::new(ErrorCode::ResourceExhausted, message)
}

fn message(key: &TopicKey, post: &Post, replayed: bool) -> TopicMessage {
    TopicMessage {
        group: key.group.to_string(),
        app: key.app.clone(),
        topic: key.topic.clone(),
        sender: post.sender.to_string(),
        seq: post.seq,
        sent_ms: post.sent_ms,
        data: post.data.clone(),
        replayed,
    }
}

/// Hands `posts` (each with whether it was caught up) to `held`'s subscribers; one whose queue
/// is full is ended.
fn deliver(key: &TopicKey, held: &mut Held, posts: &[Out]) {
    if posts.is_empty() {
        return;
    }
    held.subscribers.retain(|s| {
        posts.iter().all(|(p, caught_up)| {
            if *caught_up && p.sent_ms < s.since_ms {
                return true;
            }
            let replayed = *caught_up && p.sent_ms < s.started_ms;
            s.tx.try_send(Ok(message(key, p, replayed))).is_ok()
        })
    });
}

impl Pubsub {
    /// Over `book`, with what `store` kept; writes through `writer`.
    pub fn load(book: Book, net: Network, store: &dyn Store, writer: Writer) -> Self {
        let posts = stored::load(store);
        let mut topics: HashMap<TopicKey, Held> = HashMap::new();
        for (key, post) in posts {
            if topics.len() >= MAX_TOPICS && !topics.contains_key(&key) {
                continue;
            }
            let held = topics.entry(key).or_default();
            held.topic.own_seq = held
                .topic
                .own_seq
                .max(match post.sender == net.local_peer_id() {
                    true => post.seq,
                    false => 0,
                });
            held.topic.keep_delivered(Arc::new(post));
        }
        Self {
            inner: Arc::new(Mutex::new(Inner {
                topics,
                awaited: HashMap::new(),
                receipts: HashMap::new(),
            })),
            local: net.local_peer_id(),
            book,
            net,
            writer,
            asks: RateLimit::default(),
            receipts: Arc::new(Semaphore::new(RECEIPTS_AT_ONCE)),
            catch_ups: Arc::new(Semaphore::new(CATCH_UPS_AT_ONCE)),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The group `group` names, of which this node is a member.
    fn member_group(&self, group: &str) -> Result<GroupId, ServiceError> {
        let id = self.book.resolve(group)?;
        if !self.book.is_member(id, &self.local) {
            return Err(denied(format!("this node is not a member of group {id}")));
        }
        Ok(id)
    }

    /// The other members of `group`.
    fn others(&self, group: GroupId) -> Vec<PeerId> {
        self.book.others(group, &self.local)
    }

    /// `key`'s topic, held from now on if it was not.
    fn hold<'a>(inner: &'a mut Inner, key: &TopicKey) -> Result<&'a mut Held, ServiceError> {
        if !inner.topics.contains_key(key) {
            if inner.topics.len() >= MAX_TOPICS {
                return Err(exhausted(format!(
                    "this node holds {MAX_TOPICS} topics, the most it may; topics no app \
                     follows are forgotten an hour after their last message"
                )));
            }
            let of_app = inner.topics.keys().filter(|k| k.app == key.app).count();
            if of_app >= TOPICS_PER_APP {
                return Err(exhausted(format!(
                    "app {} has {TOPICS_PER_APP} topics on this node, the most it may; topics \
                     no app follows are forgotten an hour after their last message",
                    key.app
                )));
            }
        }
        Ok(inner.topics.entry(key.clone()).or_default())
    }

    /// Publishes for `app`.
    pub async fn publish(
        &self,
        app: String,
        request: PublishRequest,
    ) -> Result<PublishReply, ServiceError> {
        let group = self.member_group(&request.group)?;
        check_topic(&request.topic)?;
        if request.data.len() > MAX_DATA {
            return Err(ServiceError::invalid(format!(
                "a message is at most {MAX_DATA} bytes (got {}); send larger data over a channel \
                 or as a message to each member",
                request.data.len()
            )));
        }
        if request.report_ms > MAX_REPORT_MS {
            return Err(ServiceError::invalid(format!(
                "report_ms is at most {MAX_REPORT_MS}"
            )));
        }
        let key = TopicKey {
            group,
            app,
            topic: request.topic,
        };
        // One publication of a topic at a time, so that its posts reach the local
        // subscribers and gossip in the order of their numbers.
        let publishing = Self::hold(&mut self.lock(), &key)?.publishing.clone();
        let _turn = publishing.lock().await;
        let sent_ms = now_ms();
        let (seq, prev) = {
            let mut inner = self.lock();
            let held = Self::hold(&mut inner, &key)?;
            // Increasing across restarts with nothing written for it: the clock, in
            // microseconds, unless this node's posts kept (or sent since) went further.
            let seq = (held.topic.own_seq + 1).max(sent_ms.saturating_mul(1000));
            held.topic.own_seq = seq;
            let prev = std::mem::replace(&mut held.own_prev, seq);
            (seq, prev)
        };
        let body = GroupPost {
            group: group.0.to_vec().into(),
            app: key.app.clone(),
            topic: key.topic.clone(),
            seq,
            sent_ms,
            data: request.data.clone(),
            report: request.report_ms > 0,
            prev,
        }
        .encode_to_vec();
        let others = self.others(group);
        let notify = Arc::new(Notify::new());
        if request.report_ms > 0 {
            self.lock().awaited.insert(
                (key.clone(), seq),
                Awaited {
                    have: HashSet::new(),
                    notify: notify.clone(),
                },
            );
        }
        // Signed and sent in one turn of the network's task.
        let published = self
            .net
            .gossip_publish(&group.to_string(), &key.gossip_topic(), POST_TYPE, body)
            .await;
        let (envelope, sent_to) = match published {
            Ok(published) => published,
            Err(e) => {
                let mut inner = self.lock();
                inner.awaited.remove(&(key.clone(), seq));
                // Not sent: the next post names the one before this.
                if let Some(held) = inner.topics.get_mut(&key) {
                    held.own_prev = prev;
                }
                return Err(e.into());
            }
        };
        let post = Arc::new(Post {
            sender: self.local,
            seq,
            prev,
            sent_ms,
            data: request.data,
            report: request.report_ms > 0,
            envelope,
        });
        if let Some(held) = self.lock().topics.get_mut(&key) {
            held.topic.keep_delivered(post.clone());
            deliver(&key, held, &[(post.clone(), false)]);
        }
        drop(_turn);
        stored::save_post(&self.writer, &key, &post);
        let sent_to: Vec<String> = sent_to.iter().map(ToString::to_string).collect();
        let mut reply = PublishReply {
            seq,
            sent_ms,
            sent_to,
            ..PublishReply::default()
        };
        if request.report_ms > 0 {
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(request.report_ms.into());
            let have = loop {
                let notified = notify.notified();
                let have = self
                    .lock()
                    .awaited
                    .get(&(key.clone(), seq))
                    .map(|a| a.have.clone())
                    .unwrap_or_default();
                if others.iter().all(|p| have.contains(p)) {
                    break have;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break have;
                }
            };
            self.lock().awaited.remove(&(key, seq));
            for peer in others {
                match have.contains(&peer) {
                    true => reply.delivered.push(peer.to_string()),
                    false => reply.missing.push(peer.to_string()),
                }
            }
        }
        Ok(reply)
    }

    /// Follows a topic for `app`.
    pub fn subscribe(
        &self,
        app: String,
        request: SubscribeRequest,
    ) -> Result<Messages, ServiceError> {
        let group = self.member_group(&request.group)?;
        check_topic(&request.topic)?;
        let key = TopicKey {
            group,
            app,
            topic: request.topic,
        };
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let start = {
            let mut inner = self.lock();
            let of_app = inner
                .topics
                .values()
                .flat_map(|h| &h.subscribers)
                .filter(|s| s.app == key.app && !s.tx.is_closed())
                .count();
            if of_app >= SUBSCRIPTIONS_PER_APP {
                return Err(exhausted(format!(
                    "app {} follows {SUBSCRIPTIONS_PER_APP} topics, the most it may at once",
                    key.app
                )));
            }
            let held = Self::hold(&mut inner, &key)?;
            held.subscribers.retain(|s| !s.tx.is_closed());
            if held.subscribers.len() >= SUBSCRIBERS_PER_TOPIC {
                return Err(exhausted(format!(
                    "topic {:?} has {SUBSCRIBERS_PER_TOPIC} subscriptions here, the most it may",
                    key.topic
                )));
            }
            if request.since_ms > 0 {
                for post in held.topic.since(request.since_ms) {
                    // The queue is larger than a topic's history: this cannot fill it.
                    let _ = tx.try_send(Ok(message(&key, &post, true)));
                }
            }
            let started_ms = now_ms();
            held.subscribers.push(Subscriber {
                app: key.app.clone(),
                tx,
                since_ms: match request.since_ms {
                    0 => started_ms,
                    since => since,
                },
                started_ms,
            });
            let start = held.following.is_none();
            if start {
                held.topic.holding = true;
                let this = self.clone();
                let followed = key.clone();
                held.following = Some(AbortOnDropHandle::new(tokio::spawn(async move {
                    this.follow(followed).await;
                })));
            }
            start
        };
        if start {
            debug!(topic = %key.topic, group = %key.group, "following a topic");
        }
        Ok(rx)
    }

    /// Follows `key`'s gossip: catches up from the members first, then takes what comes.
    async fn follow(self, key: TopicKey) {
        let subscription = self
            .net
            .gossip_subscribe(&key.group.to_string(), &key.gossip_topic(), GOSSIP_QUEUE)
            .await;
        let mut subscription: GossipSubscription = match subscription {
            Ok(s) => s,
            Err(e) => {
                self.end(&key, ServiceError::from(e));
                return;
            }
        };
        // Catch up first from the members connected now (others are asked when they connect),
        // holding back posts of senders never seen here meanwhile, so that they come in order.
        let since = now_ms().saturating_sub(HISTORY_WINDOW.as_millis() as u64);
        let catch_up = {
            let this = self.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let others: HashSet<PeerId> = this.others(key.group).into_iter().collect();
                let connected: Vec<PeerId> = match this.net.peers().await {
                    Ok(peers) => peers
                        .iter()
                        .filter_map(|p| p.peer_id.parse().ok())
                        .filter(|p| others.contains(p))
                        .collect(),
                    Err(_) => Vec::new(),
                };
                // The hold ends when the catch-up does, or after START_HOLD; the catch-up
                // itself goes on (slow members are still asked).
                let asked = this.catch_up(&key, connected, since, None);
                tokio::pin!(asked);
                let finished = tokio::time::timeout(START_HOLD, &mut asked).await.is_ok();
                if let Some(held) = this.lock().topics.get_mut(&key) {
                    held.topic.holding = false;
                }
                this.sweep_topic(&key);
                if !finished {
                    asked.await;
                }
            })
        };
        let _catch_up = AbortOnDropHandle::new(catch_up);
        while let Some(message) = subscription.recv().await {
            match open_post(message.data) {
                Ok((got, post)) if got == key && post.sender == message.author => {
                    self.take(&key, vec![post], false, Some(message.from));
                }
                Ok(_) => {
                    debug!(from = %message.from, "a post on the wrong topic or by another signer")
                }
                Err(why) => debug!(from = %message.from, "a bad post: {why}"),
            }
        }
        // The network stopped (the kernel restarts this service with it).
        self.end(
            &key,
            ServiceError::unavailable("the network service stopped; subscribe again in a moment"),
        );
    }

    /// Ends every subscription to `key` with `why`.
    fn end(&self, key: &TopicKey, why: ServiceError) {
        if let Some(held) = self.lock().topics.get_mut(key) {
            for s in held.subscribers.drain(..) {
                let _ = s.tx.try_send(Err(why.clone()));
            }
            held.following = None;
        }
    }

    /// Takes posts of `key` in (from gossip when `from` is set, else caught up): keeps the
    /// new ones, hands on what is in order, sends receipts, and asks for what is missing.
    pub(crate) fn take(
        &self,
        key: &TopicKey,
        posts: Vec<Post>,
        replayed: bool,
        from: Option<PeerId>,
    ) {
        let now = Instant::now();
        let now_ms = now_ms();
        let members: HashSet<PeerId> = self
            .book
            .with(key.group, |log| log.state().members)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut receipts = Vec::new();
        let mut gaps = Vec::new();
        {
            let mut inner = self.lock();
            let Some(held) = inner.topics.get_mut(key) else {
                return;
            };
            for post in posts {
                if post.sender == self.local || !members.contains(&post.sender) {
                    continue;
                }
                let post = Arc::new(post);
                let Taken::Kept(out) = held.topic.take(post.clone(), replayed, now, now_ms) else {
                    continue;
                };
                stored::save_post(&self.writer, key, &post);
                if post.report
                    && now_ms.saturating_sub(post.sent_ms) < RECEIPT_WINDOW.as_millis() as u64
                {
                    receipts.push((post.sender, post.seq));
                }
                deliver(key, held, &out);
            }
            for (sender, seq) in held.topic.prune(now_ms) {
                stored::forget_post(&self.writer, key, &sender, seq);
            }
            if from.is_some() {
                // Each sender's missing posts are asked for once per wait, not at every post.
                held.asked
                    .retain(|_, at| now.duration_since(*at) < GAP_WAIT);
                gaps = held
                    .topic
                    .gaps()
                    .into_iter()
                    .filter(|(sender, _)| !held.asked.contains_key(sender))
                    .collect();
                for (sender, _) in &gaps {
                    held.asked.insert(*sender, now);
                }
            }
        }
        for (sender, seq) in receipts {
            self.send_receipt(key.clone(), sender, seq);
        }
        if let (Some(from), false) = (from, gaps.is_empty()) {
            let Ok(permit) = self.catch_ups.clone().try_acquire_owned() else {
                debug!("missing posts are not asked for: too many catch-ups under way");
                return;
            };
            let mut peers: Vec<PeerId> = gaps.iter().map(|(s, _)| *s).collect();
            peers.push(from);
            peers.sort();
            peers.dedup();
            let this = self.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let _permit = permit;
                this.catch_up(&key, peers, 0, Some(gaps)).await;
            });
        }
    }

    /// Hands on what waited too long in `key`.
    fn sweep_topic(&self, key: &TopicKey) {
        let mut inner = self.lock();
        if let Some(held) = inner.topics.get_mut(key) {
            let out = held.topic.sweep(Instant::now());
            deliver(key, held, &out);
        }
    }

    /// Every [`SWEEP`]: hands on what waited too long, stops following topics no app follows,
    /// forgets topics with nothing left.
    pub async fn sweep_forever(self) {
        let mut ticks = tokio::time::interval(SWEEP);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pruned = Instant::now();
        loop {
            ticks.tick().await;
            let now = Instant::now();
            let prune = now.duration_since(pruned) >= PRUNE;
            if prune {
                pruned = now;
            }
            let mut followed = Vec::new();
            {
                let mut inner = self.lock();
                for (key, held) in &mut inner.topics {
                    if prune {
                        for (sender, seq) in held.topic.prune(now_ms()) {
                            stored::forget_post(&self.writer, key, &sender, seq);
                        }
                    }
                    let out = held.topic.sweep(now);
                    deliver(key, held, &out);
                    held.subscribers.retain(|s| !s.tx.is_closed());
                    if held.subscribers.is_empty() {
                        held.following = None;
                        held.topic.holding = false;
                    } else if prune {
                        followed.push(key.clone());
                    }
                }
                inner
                    .topics
                    .retain(|_, held| held.following.is_some() || !held.topic.is_empty());
            }
            // Now and then, a catch-up from a follower or two, for what gossip dropped (a
            // queue that was full) with no later post to show the gap.
            for key in followed {
                self.resync(key);
            }
        }
    }

    /// Catches up on `key` from two of its followers, in the background.
    fn resync(&self, key: TopicKey) {
        let Ok(permit) = self.catch_ups.clone().try_acquire_owned() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut followers = this
                .net
                .gossip_followers(&key.group.to_string(), &key.gossip_topic())
                .await
                .unwrap_or_default();
            followers.shuffle(&mut rand::thread_rng());
            followers.truncate(2);
            let since = now_ms().saturating_sub(HISTORY_WINDOW.as_millis() as u64);
            this.catch_up(&key, followers, since, None).await;
        });
    }

    /// Ends every subscription (the service is going): `UNAVAILABLE`, and stops following.
    pub fn close(&self) {
        let mut inner = self.lock();
        for held in inner.topics.values_mut() {
            for s in held.subscribers.drain(..) {
                let _ = s.tx.try_send(Err(ServiceError::unavailable(
                    "the groups service is restarting; subscribe again in a moment",
                )));
            }
            held.following = None;
        }
    }

    /// The groups held or their members changed: tells the network who may take part in each
    /// group's gossip, and ends the subscriptions of groups this node is no longer in.
    pub async fn membership_changed(&self, scopes: &mut HashMap<GroupId, HashSet<PeerId>>) {
        let held: HashSet<GroupId> = self.book.ids().into_iter().collect();
        let mut now: HashMap<GroupId, HashSet<PeerId>> = HashMap::new();
        for group in &held {
            if self.book.is_member(*group, &self.local) {
                now.insert(*group, self.others(*group).into_iter().collect());
            }
        }
        for (group, members) in &now {
            if scopes.get(group) != Some(members) {
                let _ = self
                    .net
                    .gossip_scope(&group.to_string(), members.clone())
                    .await;
            }
        }
        for group in scopes.keys().filter(|g| !now.contains_key(g)) {
            let _ = self
                .net
                .gossip_scope(&group.to_string(), HashSet::new())
                .await;
        }
        *scopes = now;
        let gone: Vec<TopicKey> = self
            .lock()
            .topics
            .keys()
            .filter(|k| !scopes.contains_key(&k.group))
            .cloned()
            .collect();
        for key in gone {
            let why = denied(format!(
                "this node is no longer a member of group {}: the subscription ended",
                key.group
            ));
            self.end(&key, why);
        }
    }

    /// A peer connected: catch up, from it, on the topics followed here of its groups.
    pub fn connected(&self, peer: PeerId) {
        let keys: Vec<TopicKey> = self
            .lock()
            .topics
            .iter()
            .filter(|(k, h)| h.following.is_some() && self.book.is_member(k.group, &peer))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        let since = now_ms().saturating_sub(HISTORY_WINDOW.as_millis() as u64);
        let this = self.clone();
        tokio::spawn(async move {
            for key in keys {
                this.catch_up(&key, vec![peer], since, None).await;
            }
        });
    }
}
