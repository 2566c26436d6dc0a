//! Counting open channels: a channel's byte stream holds one permit of the node's channel
//! limit (`Config::max_channels`) for as long as it lives, so the permit goes back when whoever
//! owns the stream (the gateway's splice) drops it, however the channel ends. An inbound
//! channel from a remote peer also holds its place among that peer's channels
//! ([`PeerChannels`]: `Config::max_channels_per_peer` open or pending, at most
//! [`MAX_PENDING_PER_PEER`] of them pending), and a peer's first channel is taken even when
//! other peers hold every one of the node's permits, from a small pool of its own (an eighth of
//! `max_channels`, [`reserve_for`]): so at most `max_channels` and that pool are open at once,
//! however many identities come and go. A pending channel of a peer whose last connection
//! closed is dropped at once (`pending`), not kept for its accept window.

use std::{
    collections::HashMap,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use libp2p::PeerId;
use p2pos_protocols::apps::{ChannelStream, Duplex};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// Inbound channels from one peer announced to an app and not yet accepted, at most.
pub(crate) const MAX_PENDING_PER_PEER: usize = 16;
/// Inbound channels of each peer taken even when the node's channel limit is reached by
/// others, from the node's reserve ([`reserve_for`]).
const RESERVED_PER_PEER: usize = 1;

/// The reserve of a node that takes `max_channels`: channels taken past it, each a peer's
/// first, at most an eighth of the limit (at least 1).
pub(crate) fn reserve_for(max_channels: usize) -> usize {
    (max_channels / 8).max(1)
}

/// What a channel holds while it is open or pending: a permit of the node's limit (or, for a
/// peer's reserved channel, of the node's reserve) and, for an inbound channel from a remote
/// peer, its place among that peer's channels.
pub(crate) struct Hold {
    _global: Option<OwnedSemaphorePermit>,
    peer: Option<PeerSlot>,
}

impl From<OwnedSemaphorePermit> for Hold {
    fn from(permit: OwnedSemaphorePermit) -> Self {
        Hold {
            _global: Some(permit),
            peer: None,
        }
    }
}

impl Hold {
    /// The channel was accepted: it no longer counts among its peer's pending channels.
    pub(crate) fn accepted(&mut self) {
        if let Some(slot) = &mut self.peer {
            slot.accepted();
        }
    }
}

/// Why an inbound channel from a peer was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerFull {
    /// The node holds as many channels as it may (`max_channels`), and this peer already has
    /// its reserved one.
    Node(usize),
    /// The peer has as many channels open or pending as one peer may.
    Open(usize),
    /// The peer has as many channels waiting to be accepted as one peer may.
    Pending(usize),
}

impl std::fmt::Display for PeerFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerFull::Node(n) => write!(f, "too many open channels (limit {n})"),
            PeerFull::Open(n) => write!(
                f,
                "too many channels open from your node (limit {n} per peer)"
            ),
            PeerFull::Pending(n) => write!(
                f,
                "too many channels from your node waiting to be accepted (limit {n} per peer)"
            ),
        }
    }
}

/// Per peer: channels open or pending, and how many of those are pending.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    open: usize,
    pending: usize,
}

/// Inbound channels per remote peer.
#[derive(Debug, Clone)]
pub(crate) struct PeerChannels {
    counts: Arc<Mutex<HashMap<PeerId, Counts>>>,
    max_per_peer: usize,
    /// The node's limit (`max_channels`), for refusals.
    max_channels: usize,
    /// Permits for peers' first channels past the node's limit ([`reserve_for`]).
    reserve: Arc<Semaphore>,
}

/// One inbound channel's place among its peer's.
struct PeerSlot {
    counts: Arc<Mutex<HashMap<PeerId, Counts>>>,
    peer: PeerId,
    pending: bool,
}

impl PeerChannels {
    /// Counts at most `max_per_peer` channels of each peer, on a node that takes
    /// `max_channels` in all.
    pub(crate) fn new(max_per_peer: usize, max_channels: usize) -> Self {
        Self {
            counts: Arc::default(),
            max_per_peer,
            max_channels,
            reserve: Arc::new(Semaphore::new(
                reserve_for(max_channels).min(Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// Takes a pending inbound channel from `peer`, with a permit of `node` (the node's limit)
    /// or, for the peer's first when `node` has none left, of the reserve.
    pub(crate) fn admit(&self, peer: PeerId, node: &Arc<Semaphore>) -> Result<Hold, PeerFull> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let now = counts.get(&peer).copied().unwrap_or_default();
        if now.open >= self.max_per_peer {
            return Err(PeerFull::Open(self.max_per_peer));
        }
        if now.pending >= MAX_PENDING_PER_PEER {
            return Err(PeerFull::Pending(MAX_PENDING_PER_PEER));
        }
        let global = match node.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if now.open < RESERVED_PER_PEER => {
                match self.reserve.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => return Err(PeerFull::Node(self.max_channels)),
                }
            }
            Err(_) => return Err(PeerFull::Node(self.max_channels)),
        };
        let entry = counts.entry(peer).or_default();
        entry.open += 1;
        entry.pending += 1;
        Ok(Hold {
            _global: global,
            peer: Some(PeerSlot {
                counts: self.counts.clone(),
                peer,
                pending: true,
            }),
        })
    }

    /// Channels open or pending from `peer`, and of those pending.
    #[cfg(test)]
    fn of(&self, peer: &PeerId) -> (usize, usize) {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let c = counts.get(peer).copied().unwrap_or_default();
        (c.open, c.pending)
    }
}

impl PeerSlot {
    fn accepted(&mut self) {
        if !self.pending {
            return;
        }
        self.pending = false;
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = counts.get_mut(&self.peer) {
            c.pending = c.pending.saturating_sub(1);
        }
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = counts.get_mut(&self.peer) {
            c.open = c.open.saturating_sub(1);
            if self.pending {
                c.pending = c.pending.saturating_sub(1);
            }
            if c.open == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// A channel's bytes and what they count against.
struct CountedIo {
    io: Box<dyn Duplex>,
    _permit: Hold,
}

/// `stream`, now holding `permit` until its bytes are dropped.
pub(crate) fn count(stream: ChannelStream, permit: impl Into<Hold>) -> ChannelStream {
    let mut permit = permit.into();
    permit.accepted();
    let ChannelStream {
        channel_id,
        peer_id,
        app_id,
        inbound,
        group,
        circuit,
        io,
    } = stream;
    ChannelStream {
        channel_id,
        peer_id,
        app_id,
        inbound,
        group,
        circuit,
        io: Box::new(CountedIo {
            io,
            _permit: permit,
        }),
    }
}

impl AsyncRead for CountedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_held_to_its_share_and_always_gets_its_first() {
        let node = Arc::new(Semaphore::new(3));
        let channels = PeerChannels::new(2, 3);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut held = vec![
            channels.admit(a, &node).expect("a's first"),
            channels.admit(a, &node).expect("a's second"),
        ];
        assert_eq!(channels.admit(a, &node).err(), Some(PeerFull::Open(2)));
        held.push(channels.admit(b, &node).expect("b's first"));
        // The node's permits are gone: C's first is still taken, B's second is not.
        held.push(channels.admit(c, &node).expect("c's first, reserved"));
        assert_eq!(channels.admit(b, &node).err(), Some(PeerFull::Node(3)));
        assert_eq!(channels.of(&c), (1, 1));
        // Accepted, a channel is no longer pending; dropped, it is no longer counted.
        held[3].accepted();
        assert_eq!(channels.of(&c), (1, 0));
        held.truncate(3);
        assert_eq!(channels.of(&c), (0, 0));
        held.truncate(1);
        assert_eq!(channels.of(&a), (1, 1));
        assert_eq!(node.available_permits(), 2);
    }

    #[test]
    fn first_channels_past_the_limit_come_from_a_bounded_reserve() {
        // A node of 16 channels keeps 2 for peers' first ones.
        let node = Arc::new(Semaphore::new(16));
        let channels = PeerChannels::new(64, 16);
        let mut held: Vec<Hold> = (0..16)
            .map(|_| channels.admit(PeerId::random(), &node).expect("room"))
            .collect();
        // Fresh identities, one channel each: two more are taken, then none.
        held.push(channels.admit(PeerId::random(), &node).expect("reserved"));
        held.push(channels.admit(PeerId::random(), &node).expect("reserved"));
        assert_eq!(
            channels.admit(PeerId::random(), &node).err(),
            Some(PeerFull::Node(16))
        );
        // One reserved channel ends: its place is free again.
        held.pop();
        assert!(channels.admit(PeerId::random(), &node).is_ok());
    }

    #[test]
    fn pending_channels_are_bounded_per_peer() {
        let node = Arc::new(Semaphore::new(1000));
        let channels = PeerChannels::new(1000, 1000);
        let peer = PeerId::random();
        let mut held: Vec<Hold> = (0..MAX_PENDING_PER_PEER)
            .map(|_| channels.admit(peer, &node).expect("room"))
            .collect();
        assert_eq!(
            channels.admit(peer, &node).err(),
            Some(PeerFull::Pending(MAX_PENDING_PER_PEER))
        );
        held[0].accepted();
        assert!(channels.admit(peer, &node).is_ok());
    }
}
