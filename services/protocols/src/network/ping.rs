//! Fresh pings of peers, for [`Network::ping`](super::Network::ping): one round trip on a new
//! `/ipfs/ping/1.0.0` stream, which every libp2p node's ping handler answers.
//!
//! libp2p-ping's handler keeps one inbound stream per connection, and a new one replaces the
//! old: each fresh ping ends the stream on which the remote answers this node's periodic ping,
//! and two fresh pings of one peer at once end each other. Hence: at most one fresh ping per
//! peer is in flight, and every caller that asks meanwhile shares it (they all get its
//! result); at most [`MAX_PINGS`] are in flight on the node, past which callers get the last
//! periodic round trip; and a fresh ping that fails (its stream ended, or no echo) leaves the
//! caller to that periodic figure too.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use libp2p::PeerId;
use libp2p_stream::{Control, OpenStreamError};
use tokio::sync::Semaphore;

/// The bytes a ping carries, as libp2p's.
const PING_SIZE: usize = 32;
/// Most fresh pings in flight on the node, all peers together.
pub const MAX_PINGS: usize = 64;
/// Longest a fresh ping waits for its echo (so that one always ends, whoever waits for it).
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// A fresh ping's outcome: the round trip, `None` if the peer does not answer the protocol, or
/// why it failed.
pub(crate) type Outcome = Result<Option<Duration>, String>;
/// A fresh ping in flight, which every caller that asks for the peer meanwhile awaits.
pub(crate) type InFlight = Shared<BoxFuture<'static, Outcome>>;

/// The fresh pings in flight: shared by every clone of a network handle.
#[derive(Clone)]
pub(crate) struct Pings {
    inner: Arc<Inner>,
}

struct Inner {
    /// The ping in flight per peer: inserted under the lock that its task takes to remove it,
    /// so the task always finds its own entry.
    in_flight: Mutex<HashMap<PeerId, InFlight>>,
    /// One permit per ping in flight.
    slots: Arc<Semaphore>,
}

impl Default for Pings {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                in_flight: Mutex::new(HashMap::new()),
                slots: Arc::new(Semaphore::new(MAX_PINGS)),
            }),
        }
    }
}

impl Pings {
    /// The fresh ping of `peer` in flight, or a new one over `control`; `None` when
    /// [`MAX_PINGS`] are in flight already. The ping runs in its own task, to its end (at most
    /// [`PING_TIMEOUT`]), whether or not anyone still waits for it.
    pub(crate) fn start(&self, peer: PeerId, control: &Control) -> Option<InFlight> {
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(ping) = in_flight.get(&peer) {
            return Some(ping.clone());
        }
        let permit = self.inner.slots.clone().try_acquire_owned().ok()?;
        let inner = self.inner.clone();
        let control = control.clone();
        let task = tokio::spawn(async move {
            let outcome = tokio::time::timeout(PING_TIMEOUT, ping_once(control, peer))
                .await
                .unwrap_or_else(|_| Err(format!("no echo within {PING_TIMEOUT:?}")));
            inner
                .in_flight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&peer);
            drop(permit);
            outcome
        });
        let ping = async move {
            task.await
                .unwrap_or_else(|e| Err(format!("the ping's task failed: {e}")))
        }
        .boxed()
        .shared();
        in_flight.insert(peer, ping.clone());
        Some(ping)
    }

    /// How many fresh pings are in flight.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        MAX_PINGS - self.inner.slots.available_permits()
    }
}

/// One round trip on a fresh `/ipfs/ping/1.0.0` stream to `peer`: [`PING_SIZE`] random bytes,
/// timed from their write to their echo.
async fn ping_once(mut control: Control, peer: PeerId) -> Outcome {
    use futures::{AsyncReadExt, AsyncWriteExt};
    let protocol = libp2p::ping::PROTOCOL_NAME;
    let mut stream = match control.open_stream(peer, protocol).await {
        Ok(stream) => stream,
        Err(OpenStreamError::UnsupportedProtocol(_)) => return Ok(None),
        Err(e) => return Err(format!("cannot open a ping stream: {e}")),
    };
    let payload: [u8; PING_SIZE] = rand::random();
    let mut echo = [0u8; PING_SIZE];
    let started = tokio::time::Instant::now();
    stream
        .write_all(&payload)
        .await
        .map_err(|e| format!("ping: {e}"))?;
    stream.flush().await.map_err(|e| format!("ping: {e}"))?;
    stream
        .read_exact(&mut echo)
        .await
        .map_err(|e| format!("ping: {e}"))?;
    let rtt = started.elapsed();
    let _ = stream.close().await;
    if echo != payload {
        return Err("the ping's echo differs from what was sent".into());
    }
    Ok(Some(rtt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn callers_of_one_peer_share_a_ping_and_the_node_holds_a_bounded_number() {
        // A control with no swarm behind it: a ping's stream never opens, so pings stay in
        // flight until their timeout.
        let control = libp2p_stream::Behaviour::new().new_control();
        let pings = Pings::default();
        let peer = PeerId::random();
        let first = pings.start(peer, &control).expect("a slot");
        let second = pings.start(peer, &control).expect("shared");
        assert_eq!(pings.in_flight(), 1, "one ping for both callers");
        assert!(first.peek().is_none() && second.peek().is_none());
        for _ in 1..MAX_PINGS {
            assert!(pings.start(PeerId::random(), &control).is_some());
        }
        assert_eq!(pings.in_flight(), MAX_PINGS);
        assert!(
            pings.start(PeerId::random(), &control).is_none(),
            "past the bound: the caller falls back to the last periodic figure"
        );
        // A peer with a ping in flight is still served by it.
        assert!(pings.start(peer, &control).is_some());
    }
}
