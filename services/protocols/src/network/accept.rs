//! Inbound streams of one protocol, served within limits: an accept loop takes the streams
//! libp2p hands over for a protocol id and serves each in a task of its own, at most so many at
//! once in all and from one peer, so that one peer cannot take every slot (iroh's
//! `Router::accept(alpn, handler)`, with limits). Streams past the limits are refused (answered
//! in a task of their own, or dropped). The loop ends when the network is gone or its
//! [`Accepting`] guard is dropped.
//!
//! The total does not shut a peer out at once: once the total is reached (by other peers), a
//! peer that holds no stream of the protocol is served from a reserve of a quarter of the total
//! ([`Limits::reserve`]), so that identities holding every slot do not starve a peer that asks
//! for one. A protocol serves so at most `total + reserve` streams at once, whatever the number
//! of peers: its memory is bounded by that many frames of `max_frame` bytes (a frame's buffer
//! grows only with the bytes that arrive). Identities that hold a slot each cannot take the
//! reserve; it runs out only when more than `reserve` identities that hold nothing ask, which
//! the network's per-IP limits make costly.

use std::{collections::HashMap, time::Duration};

use futures::{Stream as FuturesStream, StreamExt};
use libp2p::PeerId;
use tokio::task::{self, JoinSet};
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

/// Serves a protocol's inbound streams until dropped.
#[derive(Debug)]
pub struct Accepting {
    /// The accept loop, aborted when this is dropped.
    pub(crate) _accept_loop: AbortOnDropHandle<()>,
}

/// What one protocol's inbound streams may take: how many at once, how long a frame, how long
/// silent. Declared once, where the protocol is accepted.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Streams served at once from all peers together, besides those of the reserve
    /// ([`Limits::reserve`]).
    pub total: usize,
    /// Streams served at once from any one peer, so that one peer cannot take every slot.
    pub per_peer: usize,
    /// The longest frame the handler reads ([`InboundStream::max_frame`](super::InboundStream::max_frame)).
    pub max_frame: usize,
    /// A stream on which no byte moves for this long, while its handler serves it, is closed
    /// (its handler's future is dropped); `Duration::MAX` for no limit.
    pub idle: Duration,
}

/// Which of an accept loop's [`Limits`] a stream found reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// As many streams of the protocol as it serves in all are open.
    Total(usize),
    /// As many streams as it serves from one peer are open from this peer.
    PerPeer(usize),
}

impl Overflow {
    /// The limit's name in metrics: `total` or `per_peer`.
    pub fn label(&self) -> &'static str {
        match self {
            Overflow::Total(_) => "total",
            Overflow::PerPeer(_) => "per_peer",
        }
    }
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Overflow::Total(n) => write!(f, "{n} already open on this node (its limit)"),
            Overflow::PerPeer(n) => write!(f, "{n} already open from your node (the limit)"),
        }
    }
}

/// Most refusals written at once by one accept loop; past them, streams are dropped.
const MAX_REFUSALS: usize = 64;

impl Limits {
    /// Streams served past the total, one each to peers that hold none: a quarter of the total
    /// (at least 1).
    pub fn reserve(&self) -> usize {
        (self.total / 4).max(1)
    }

    /// The most streams served at once: the total and the reserve.
    pub fn most(&self) -> usize {
        self.total.saturating_add(self.reserve())
    }
}

/// Serves each stream of `incoming` with `serve`, within `limits`. A stream past them is given
/// to `refuse` (which may answer it, in a task of its own: at most [`MAX_REFUSALS`] at once,
/// each bounded by its own timeout) or, if it answers `None` or too many are being refused,
/// dropped (the remote sees a reset); each is told to `count`. Ends when the swarm is gone.
pub async fn accept_loop<S, I, F, Fut, R, RFut>(
    mut incoming: I,
    limits: Limits,
    what: String,
    (serve, refuse, count): (F, R, impl Fn(Overflow)),
) where
    I: FuturesStream<Item = (PeerId, S)> + Unpin,
    F: Fn(PeerId, S) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    R: Fn(PeerId, S, Overflow) -> Option<RFut>,
    RFut: Future<Output = ()> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    let mut refusals = JoinSet::new();
    // Each stream served: its peer, and whether it holds a place of the reserve.
    let mut task_peers: HashMap<task::Id, (PeerId, bool)> = HashMap::new();
    let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
    let reserve = limits.reserve();
    // Streams served within the total, and past it from the reserve.
    let (mut shared, mut reserved) = (0usize, 0usize);
    loop {
        tokio::select! {
            // Free the slots of finished streams before taking new ones.
            biased;
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                if let Some((peer, from_reserve)) = task_peers.remove(&id)
                    && let Some(n) = per_peer.get_mut(&peer)
                {
                    if from_reserve {
                        reserved -= 1;
                    } else {
                        shared -= 1;
                    }
                    *n -= 1;
                    if *n == 0 {
                        per_peer.remove(&peer);
                    }
                }
            }
            Some(_) = refusals.join_next(), if !refusals.is_empty() => {}
            next = incoming.next() => match next {
                Some((peer, stream)) => {
                    let from_peer = per_peer.get(&peer).copied().unwrap_or(0);
                    // Within the total if there is room; else, for a peer that holds none,
                    // from the reserve.
                    let place = if from_peer >= limits.per_peer {
                        Err(Overflow::PerPeer(limits.per_peer))
                    } else if shared < limits.total {
                        Ok(false)
                    } else if from_peer == 0 && reserved < reserve {
                        Ok(true)
                    } else {
                        Err(Overflow::Total(limits.total))
                    };
                    match place {
                        Ok(from_reserve) => {
                            let task = tasks.spawn(serve(peer, stream));
                            task_peers.insert(task.id(), (peer, from_reserve));
                            *per_peer.entry(peer).or_default() += 1;
                            if from_reserve {
                                reserved += 1;
                            } else {
                                shared += 1;
                            }
                        }
                        Err(overflow) => {
                            debug!(%peer, "refusing an inbound {what} stream: {overflow}");
                            count(overflow);
                            if refusals.len() < MAX_REFUSALS
                                && let Some(refusal) = refuse(peer, stream, overflow)
                            {
                                refusals.spawn(refusal);
                            }
                        }
                    }
                }
                None => return,
            },
        }
    }
}

/// The refusal of an accept loop that answers nothing: the stream is dropped.
pub fn drop_stream<S>(_: PeerId, _: S, _: Overflow) -> Option<std::future::Ready<()>> {
    None
}

#[cfg(test)]
mod tests {
    use tokio::sync::{mpsc, oneshot};
    use tokio_stream::wrappers::ReceiverStream;

    use std::time::Duration;

    use super::*;

    /// A stand-in for a stream: its serving task lasts until the sender of the `oneshot` is
    /// dropped, and reports its start (`true`) and end (`false`).
    type Held = (oneshot::Receiver<()>, mpsc::UnboundedSender<(PeerId, bool)>);

    #[tokio::test]
    async fn one_peer_cannot_take_every_slot() {
        let (streams, incoming) = mpsc::channel::<(PeerId, Held)>(16);
        let limits = Limits {
            total: 3,
            per_peer: 2,
            max_frame: 1024,
            idle: Duration::from_secs(60),
        };
        assert_eq!(limits.reserve(), 1);
        let (refused_tx, mut refused) = mpsc::unbounded_channel();
        let serving = tokio::spawn(accept_loop(
            ReceiverStream::new(incoming),
            limits,
            "test".to_owned(),
            (
                |peer, (hold, events): Held| async move {
                    let _ = events.send((peer, true));
                    let _ = hold.await;
                    let _ = events.send((peer, false));
                },
                move |peer, held, overflow| {
                    let _ = refused_tx.send(peer);
                    drop_stream(peer, held, overflow)
                },
                |_| {},
            ),
        ));
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (a, b, c, d) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        // Offers a stream from `peer`; dropping the answer ends it.
        let offer = |peer| {
            let (hold, held) = oneshot::channel::<()>();
            streams
                .try_send((peer, (held, events_tx.clone())))
                .expect("room");
            hold
        };
        // A's third stream is refused (its own limit) while B still gets in; then the total is
        // reached: B's second is refused, C (which holds none) is served from the reserve, and
        // D finds the reserve taken.
        let mut holds: Vec<_> = [a, a, a, b, b, c, d].into_iter().map(offer).collect();
        let mut started = Vec::new();
        for _ in 0..4 {
            started.push(events.recv().await.expect("event"));
        }
        assert_eq!(started, vec![(a, true), (a, true), (b, true), (c, true)]);
        // The other three were refused, so every offer was decided: none is served later.
        let mut gone = Vec::new();
        for _ in 0..3 {
            gone.push(refused.recv().await.expect("a refusal"));
        }
        assert_eq!(gone, vec![a, b, d]);
        assert!(events.try_recv().is_err(), "no fifth stream is served");
        // One stream of A ends: A may open another.
        drop(holds.remove(0));
        assert_eq!(events.recv().await, Some((a, false)));
        holds.push(offer(a));
        let next = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
        assert_eq!(next.expect("served in time"), Some((a, true)));
        serving.abort();
    }

    #[tokio::test]
    async fn streams_past_the_limits_are_handed_to_the_refusal() {
        let (streams, incoming) = mpsc::channel::<(PeerId, oneshot::Receiver<()>)>(16);
        let limits = Limits {
            total: 1,
            per_peer: 1,
            max_frame: 1024,
            idle: Duration::from_secs(60),
        };
        let (refused_tx, mut refused) = mpsc::unbounded_channel();
        let serving = tokio::spawn(accept_loop(
            ReceiverStream::new(incoming),
            limits,
            "test".to_owned(),
            (
                |_, hold: oneshot::Receiver<()>| async move {
                    let _ = hold.await;
                },
                move |peer, _, overflow| {
                    let refused = refused_tx.clone();
                    Some(async move {
                        let _ = refused.send((peer, overflow));
                    })
                },
                |_| {},
            ),
        ));
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut holds = Vec::new();
        for peer in [a, a, b, b, c] {
            let (hold, held) = oneshot::channel::<()>();
            streams.try_send((peer, held)).expect("room");
            holds.push(hold);
        }
        // Per peer 1, total 1, reserve 1: A's first takes the total, B's the reserve; their
        // seconds are past their own limit, and C finds both taken.
        for expected in [
            (a, Overflow::PerPeer(1)),
            (b, Overflow::PerPeer(1)),
            (c, Overflow::Total(1)),
        ] {
            let next = tokio::time::timeout(Duration::from_secs(5), refused.recv()).await;
            assert_eq!(next.expect("in time"), Some(expected));
        }
        serving.abort();
    }
}
