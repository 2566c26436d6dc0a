//! The node-wide event bus: services publish, the monitor streams to clients.
//!
//! A bounded broadcast channel: a slow follower misses events (and is told how many) rather
//! than slowing the node down.

use std::time::{SystemTime, UNIX_EPOCH};

use p2pos_proto::monitor::v1::{Event, event::Kind};
use tokio::sync::broadcast;

/// How many events a follower may fall behind before it misses some.
pub const EVENT_BUFFER: usize = 1024;

/// A cheap, cloneable handle to the event bus.
#[derive(Clone, Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// A new bus with [`EVENT_BUFFER`] slots.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(EVENT_BUFFER);
        Self { tx }
    }

    /// Publishes an event, stamped with the wall clock. Never blocks; a bus without followers
    /// drops it.
    pub fn publish(&self, kind: Kind) {
        let at_ms = now_ms();
        let _ = self.tx.send(Event {
            at_ms,
            kind: Some(kind),
        });
    }

    /// A new follower that sees events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
