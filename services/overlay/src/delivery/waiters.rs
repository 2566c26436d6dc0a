//! `Send` calls waiting for the outcome of their message, and the recent outcomes nobody was
//! waiting for yet (a `Send` may start waiting after its message was delivered). Both bounded.

use std::collections::{HashMap, VecDeque};

use libp2p::PeerId;
use tokio::sync::oneshot;

/// What became of one message, as a `Send` call learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The peer stored it.
    Delivered,
    /// The peer does not know the app; the message is dropped.
    UnknownApp,
    /// The peer refused the payload's size; the message is dropped.
    TooLarge,
    /// Still in the outbox.
    Queued,
    /// Still in the outbox: larger (`size` bytes, framed) than the circuit of the relay the
    /// peer is reached through can carry; it waits for a direct connection.
    Waiting {
        /// Its size on the wire.
        size: u64,
        /// The circuit it does not fit.
        circuit: p2pos_protocols::network::Circuit,
        /// This message is behind the one that does not fit (of the same app), rather than
        /// that one.
        behind: bool,
    },
}

/// Most `Send` calls waiting for their outcome at once.
const MAX_WAITERS: usize = 4096;
/// Outcomes kept for a `Send` whose wait starts after its message was delivered.
const RECENT_OUTCOMES: usize = 256;

/// A message: its peer and sequence number.
type Key = (PeerId, u64);

#[derive(Default)]
pub(super) struct Waiters {
    waiting: HashMap<Key, oneshot::Sender<Outcome>>,
    recent: VecDeque<(Key, Outcome)>,
}

impl Waiters {
    /// The outcome of `key`, if it came recently.
    pub(super) fn known(&self, key: Key) -> Option<Outcome> {
        self.recent
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, outcome)| *outcome)
    }

    /// Keeps `reply` until the outcome of `key` comes. At the bound, waiters that stopped
    /// waiting are dropped first; if none did, `reply` is dropped (its `Send` answers `QUEUED`).
    pub(super) fn wait(&mut self, key: Key, reply: oneshot::Sender<Outcome>) {
        if self.waiting.len() >= MAX_WAITERS {
            self.waiting.retain(|_, w| !w.is_closed());
        }
        if self.waiting.len() < MAX_WAITERS {
            self.waiting.insert(key, reply);
        }
    }

    /// The outcome of `key` came: answers its waiter, or remembers it for a while.
    pub(super) fn settle(&mut self, key: Key, outcome: Outcome) {
        match self.waiting.remove(&key) {
            Some(w) => {
                let _ = w.send(outcome);
            }
            None => {
                if self.recent.len() >= RECENT_OUTCOMES {
                    self.recent.pop_front();
                }
                self.recent.push_back((key, outcome));
            }
        }
    }

    /// Answers every waiter for a message to `peer`.
    pub(super) fn answer_peer(&mut self, peer: PeerId, outcome: Outcome) {
        let keys: Vec<Key> = self
            .waiting
            .keys()
            .filter(|(p, _)| *p == peer)
            .copied()
            .collect();
        for k in keys {
            if let Some(w) = self.waiting.remove(&k) {
                let _ = w.send(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_reach_waiters_early_or_late() {
        let mut waiters = Waiters::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let (reply, mut rx) = oneshot::channel();
        waiters.wait((a, 1), reply);
        waiters.settle((a, 1), Outcome::Delivered);
        assert_eq!(rx.try_recv(), Ok(Outcome::Delivered));
        // Delivered before anyone waited: remembered.
        waiters.settle((a, 2), Outcome::UnknownApp);
        assert_eq!(waiters.known((a, 2)), Some(Outcome::UnknownApp));
        assert_eq!(waiters.known((b, 2)), None);
        // A failing peer answers its waiters only.
        let (to_a, mut rx_a) = oneshot::channel();
        let (to_b, mut rx_b) = oneshot::channel();
        waiters.wait((a, 3), to_a);
        waiters.wait((b, 1), to_b);
        waiters.answer_peer(a, Outcome::Queued);
        assert_eq!(rx_a.try_recv(), Ok(Outcome::Queued));
        assert!(rx_b.try_recv().is_err());
    }

    #[test]
    fn waiters_that_gave_up_make_room() {
        let mut waiters = Waiters::default();
        let peer = PeerId::random();
        let mut live = Vec::new();
        for sequence in 0..MAX_WAITERS as u64 {
            let (reply, rx) = oneshot::channel();
            waiters.wait((peer, sequence), reply);
            // Every other `Send` stops waiting.
            if sequence % 2 == 0 {
                live.push(rx);
            }
        }
        let (reply, mut rx) = oneshot::channel();
        waiters.wait((peer, u64::MAX), reply);
        assert_eq!(waiters.waiting.len(), MAX_WAITERS / 2 + 1);
        waiters.settle((peer, u64::MAX), Outcome::Delivered);
        assert_eq!(rx.try_recv(), Ok(Outcome::Delivered));
        // Full of live waiters: a new one is not kept, and its `Send` hears so at once.
        for sequence in 0..MAX_WAITERS as u64 {
            let (reply, rx) = oneshot::channel();
            waiters.wait((peer, sequence + MAX_WAITERS as u64), reply);
            live.push(rx);
        }
        let (reply, mut rx) = oneshot::channel();
        waiters.wait((peer, u64::MAX), reply);
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert_eq!(waiters.waiting.len(), MAX_WAITERS);
    }
}
