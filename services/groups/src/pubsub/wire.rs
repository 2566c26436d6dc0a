//! `/p2pos/pubsub/1`: one ask per stream, from a member's node only. A receipt says the asker
//! has some of this node's posts (no answer). A catch-up asks for a topic's posts the asker
//! lacks; the answer is [`PubsubPosts`] frames, at most [`MAX_FRAME`] bytes each and
//! [`MAX_ANSWER`] posts in all, until one with `more` false.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use futures::StreamExt;
use libp2p::{PeerId, StreamProtocol};
use p2pos_proto::wire::v1::{
    PubsubAsk, PubsubCatchUp, PubsubMark, PubsubPosts, PubsubReceipt, pubsub_ask,
};
use p2pos_protocols::{
    network::{InboundStream, Network},
    wire::{read_message, write_message},
};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::debug;

use crate::{
    op::GroupId,
    pubsub::{
        hub::Pubsub,
        post::{MAX_DATA, check_topic, open_post},
        topic::{Post, TopicKey},
    },
};

/// `/p2pos/pubsub/1`.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pos/pubsub/1");
/// Largest frame either side sends.
pub const MAX_FRAME: usize = 1024 * 1024;
/// How long one side may take to send a frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);
/// Posts one catch-up answers, at most.
pub const MAX_ANSWER: usize = 2000;
/// Senders or numbers one ask names, at most.
const MAX_NAMED: usize = 1024;
/// Members asked at once by one catch-up (each on its own time: a slow one holds no other).
const PEERS_AT_ONCE: usize = 8;
/// How long one exchange with a member may take.
const EXCHANGE_WAIT: Duration = Duration::from_secs(15);
/// How long receipts for one sender and topic are gathered before they go.
const RECEIPT_BATCH: Duration = Duration::from_millis(5);
/// Tries of one exchange.
const TRIES: u32 = 4;

/// Runs `exchange` (a stream to `peer`: an ask and its answer) up to [`TRIES`] times. The node
/// at the other end drops an inbound stream past its accept buffer (libp2p-stream's: 64 streams
/// per protocol with the vendored patch) or its limits, and a stream may open on a connection
/// that is closing (a relayed one a direct one replaced): the ask is then simply sent again, a
/// little later. Asks are idempotent.
async fn with_retries<T, F, Fut>(peer: PeerId, what: &str, mut exchange: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut tries = 0;
    loop {
        match tokio::time::timeout(EXCHANGE_WAIT, exchange()).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) if tries + 1 < TRIES => {
                debug!(%peer, "{what}: {e}; trying again");
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("no answer in time".into()),
        }
        tries += 1;
        let pause = 20 * (1 << tries) + rand::random::<u64>() % 20;
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Opens a `/p2pos/pubsub/1` stream to `peer`, sends `ask`, and reads answer frames until the
/// last.
async fn exchange(net: &Network, peer: PeerId, ask: &PubsubAsk) -> Result<Vec<Bytes>, String> {
    let stream = net
        .open_stream(peer, PROTOCOL)
        .await
        .map_err(|e| format!("no pubsub there ({e})"))?;
    let mut io = stream.compat();
    write_message(&mut io, ask, FRAME_WAIT)
        .await
        .map_err(|e| e.to_string())?;
    let mut posts = Vec::new();
    loop {
        let frame: PubsubPosts = read_message(&mut io, MAX_FRAME, FRAME_WAIT)
            .await
            .map_err(|e| e.to_string())?;
        if !frame.refused.is_empty() {
            return Err(format!("refused: {}", frame.refused));
        }
        posts.extend(frame.posts);
        if posts.len() > MAX_ANSWER {
            return Err("too many posts".into());
        }
        if !frame.more {
            return Ok(posts);
        }
    }
}

fn topic_of(group: &[u8], app: String, topic: String) -> Option<TopicKey> {
    let group = GroupId::from_bytes(group)?;
    (!app.is_empty() && check_topic(&topic).is_ok()).then_some(TopicKey { group, app, topic })
}

impl Pubsub {
    /// Serves one inbound stream.
    pub async fn serve(self, peer: PeerId, stream: InboundStream) {
        let max = stream.max_frame();
        let mut io = stream.compat();
        let ask: PubsubAsk = match read_message(&mut io, max, FRAME_WAIT).await {
            Ok(ask) => ask,
            Err(e) => {
                debug!(%peer, "a bad pubsub ask: {e}");
                return;
            }
        };
        let written = match ask.kind {
            Some(pubsub_ask::Kind::Receipt(receipt)) => {
                self.receipt(peer, receipt);
                write_message(&mut io, &PubsubPosts::default(), FRAME_WAIT).await
            }
            Some(pubsub_ask::Kind::CatchUp(ask)) => self.serve_catch_up(peer, ask, &mut io).await,
            None => Ok(()),
        };
        if let Err(e) = written {
            debug!(%peer, "cannot answer a pubsub ask: {e}");
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
    }

    /// `peer` has some of this node's posts: counted for publishers that wait for receipts.
    fn receipt(&self, peer: PeerId, receipt: PubsubReceipt) {
        let Some(key) = topic_of(&receipt.group, receipt.app, receipt.topic) else {
            return;
        };
        if !self.book.is_member(key.group, &peer) {
            return;
        }
        let mut inner = self.lock();
        for seq in receipt.seqs.into_iter().take(MAX_NAMED) {
            if let Some(awaited) = inner.awaited.get_mut(&(key.clone(), seq))
                && awaited.have.insert(peer)
            {
                awaited.notify.notify_waiters();
            }
        }
    }

    async fn serve_catch_up<W>(
        &self,
        peer: PeerId,
        ask: PubsubCatchUp,
        io: &mut W,
    ) -> std::io::Result<()>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        let refuse = |why: &str| PubsubPosts {
            refused: why.to_owned(),
            ..PubsubPosts::default()
        };
        let Some(key) = topic_of(&ask.group, ask.app, ask.topic) else {
            return write_message(io, &refuse("a bad topic"), FRAME_WAIT).await;
        };
        if !self.book.is_member(key.group, &peer) || !self.book.is_member(key.group, &self.local) {
            return write_message(io, &refuse("not a member of the group here"), FRAME_WAIT).await;
        }
        if !self.asks.allow(peer) {
            return write_message(io, &refuse("too many asks; try again later"), FRAME_WAIT).await;
        }
        let marks: HashMap<PeerId, u64> = ask
            .marks
            .into_iter()
            .take(MAX_NAMED)
            .filter_map(|m| Some((PeerId::from_bytes(&m.sender).ok()?, m.seq)))
            .collect();
        let posts: Vec<Bytes> = self
            .lock()
            .topics
            .get(&key)
            .map(|held| {
                held.topic
                    .lacking(ask.since_ms, &marks, ask.only_named, MAX_ANSWER)
                    .iter()
                    .map(|p| p.envelope.clone())
                    .collect()
            })
            .unwrap_or_default();
        // Frames of at most MAX_FRAME bytes (a post is at most MAX_DATA plus its envelope).
        let mut frame = PubsubPosts::default();
        let mut size = 0;
        for envelope in posts {
            if size + envelope.len() > MAX_FRAME - MAX_DATA / 2 && !frame.posts.is_empty() {
                frame.more = true;
                write_message(io, &frame, FRAME_WAIT).await?;
                frame = PubsubPosts::default();
                size = 0;
            }
            size += envelope.len() + 8;
            frame.posts.push(envelope);
        }
        frame.more = false;
        write_message(io, &frame, FRAME_WAIT).await
    }

    /// Asks `peers` (members, at most [`PEERS_AT_ONCE`] at once) for the posts of `key` sent
    /// since `since_ms` that this node lacks: after its marks, or after `only` for the senders
    /// it names.
    pub(crate) async fn catch_up(
        &self,
        key: &TopicKey,
        peers: Vec<PeerId>,
        since_ms: u64,
        only: Option<Vec<(PeerId, u64)>>,
    ) {
        let (marks, only_named) = match only {
            Some(named) => (named, true),
            None => {
                let marks = self
                    .lock()
                    .topics
                    .get(key)
                    .map(|h| h.topic.marks())
                    .unwrap_or_default();
                (marks, false)
            }
        };
        let ask = PubsubAsk {
            kind: Some(pubsub_ask::Kind::CatchUp(PubsubCatchUp {
                group: key.group.0.to_vec().into(),
                app: key.app.clone(),
                topic: key.topic.clone(),
                since_ms,
                marks: marks
                    .iter()
                    .take(MAX_NAMED)
                    .map(|(sender, seq)| PubsubMark {
                        sender: sender.to_bytes().into(),
                        seq: *seq,
                    })
                    .collect(),
                only_named,
            })),
        };
        let peers: Vec<PeerId> = peers
            .into_iter()
            .filter(|p| *p != self.local && self.book.is_member(key.group, p))
            .collect();
        let ask = &ask;
        futures::stream::iter(peers)
            .for_each_concurrent(PEERS_AT_ONCE, |peer| async move {
                let asked = with_retries(peer, "catch-up", || async {
                    self.net
                        .connect(peer, Vec::new(), EXCHANGE_WAIT / 2)
                        .await
                        .map_err(|e| e.to_string())?;
                    exchange(&self.net, peer, ask).await
                })
                .await;
                match asked {
                    Ok(posts) => self.take_caught_up(key, peer, posts, since_ms),
                    Err(why) => debug!(%peer, "catch-up: {why}"),
                }
            })
            .await;
    }

    /// Checks caught-up posts and takes those of `key` sent since `since_ms`.
    fn take_caught_up(&self, key: &TopicKey, peer: PeerId, envelopes: Vec<Bytes>, since_ms: u64) {
        let mut posts: Vec<Post> = Vec::new();
        for envelope in envelopes {
            match open_post(envelope) {
                Ok((got, post)) if got == *key && post.sent_ms >= since_ms => posts.push(post),
                Ok(_) => debug!(%peer, "catch-up: a post of another topic"),
                Err(why) => debug!(%peer, "catch-up: a bad post: {why}"),
            }
        }
        posts.sort_by_key(|p| (p.sender, p.seq));
        self.take(key, posts, true, None);
    }

    /// Tells `sender` in the background that this node has its post `seq` of `key`: receipts
    /// for one sender and topic made within [`RECEIPT_BATCH`] go together in one ask (at most
    /// [`MAX_NAMED`]); dropped when `RECEIPTS_AT_ONCE` asks are under way.
    pub(crate) fn send_receipt(&self, key: TopicKey, sender: PeerId, seq: u64) {
        let first = {
            let mut inner = self.lock();
            let batch = inner.receipts.entry((sender, key.clone())).or_default();
            if batch.len() < MAX_NAMED {
                batch.push(seq);
            }
            batch.len() == 1
        };
        if !first {
            return;
        }
        let Ok(permit) = self.receipts.clone().try_acquire_owned() else {
            self.lock().receipts.remove(&(sender, key));
            debug!(%sender, "receipts are dropped: too many under way");
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::time::sleep(RECEIPT_BATCH).await;
            let seqs = this
                .lock()
                .receipts
                .remove(&(sender, key.clone()))
                .unwrap_or_default();
            let ask = PubsubAsk {
                kind: Some(pubsub_ask::Kind::Receipt(PubsubReceipt {
                    group: key.group.0.to_vec().into(),
                    app: key.app,
                    topic: key.topic,
                    seqs,
                })),
            };
            let sent =
                with_retries(sender, "a receipt", || exchange(&this.net, sender, &ask)).await;
            if let Err(e) = sent {
                debug!(%sender, "a receipt was not sent: {e}");
            }
        });
    }
}
