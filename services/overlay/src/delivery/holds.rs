//! What makes a delivery task wait: its wake-ups ([`Kick`]), the holds a peer asked for or a
//! relay's limits impose ([`Holds`]), and the back-off after a failed attempt ([`Backoff`]).

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use futures::FutureExt;
use libp2p::PeerId;
use p2pos_protocols::network::Circuit;
use tokio::{sync::Notify, time::Instant};

/// How soon a peer that asked to retry later (or to retry one app later), or an app whose next
/// message a relay cannot carry, is tried again the first time; the wait doubles up to
/// [`RETRY_MAX`] while it lasts.
pub(super) const RETRY_BUSY: Duration = Duration::from_secs(2);
/// First and longest wait before retrying a peer after a failed attempt.
pub(super) const RETRY_MIN: Duration = Duration::from_secs(5);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(60);
/// Most apps held back at once for one peer (each has messages waiting in the outbox).
const MAX_HELD_APPS: usize = crate::mailbox::MAX_APPS;

/// Wakes a delivery task: a new message, the peer connected (which also ends its holds), or a
/// direct connection to it opened (which also ends a back-off: the relay it failed through is
/// no longer in the way).
#[derive(Default)]
pub(super) struct Kick {
    notify: Notify,
    connected: AtomicBool,
    direct: Notify,
}

impl Kick {
    pub(super) fn message(&self) {
        self.notify.notify_one();
    }

    pub(super) fn connected(&self) {
        self.connected.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub(super) fn direct(&self) {
        self.connected();
        self.direct.notify_one();
    }

    /// Any wake-up.
    pub(super) async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Only a direct connection.
    pub(super) async fn wait_direct(&self) {
        self.direct.notified().await;
    }

    /// Forgets wake-ups that came while the task was busy (its own dial's connection, say).
    pub(super) fn forget(&self) {
        let _ = self.notify.notified().now_or_never();
    }

    /// Whether the peer connected since the last call.
    pub(super) fn take_connected(&self) -> bool {
        self.connected.swap(false, Ordering::AcqRel)
    }
}

/// The wait before the next attempt after attempts failed, doubling from [`RETRY_MIN`] to
/// [`RETRY_MAX`]; back to the start only once a message goes through. A failure on an
/// established connection (a relay's circuit that ended in the middle of a message, say)
/// waits it out whatever connects meanwhile: the next attempt's own dial connects at once, and
/// would meet the same end (this is what kept a node redialling a relay many times a second).
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: RETRY_MIN }
    }
}

impl Backoff {
    /// An attempt failed: the wait before the next one.
    pub(super) fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(RETRY_MAX);
        wait
    }

    /// A message went through.
    pub(super) fn succeeded(&mut self) {
        self.next = RETRY_MIN;
    }
}

/// A peer, or one of its apps, held back: not sent to before `until`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hold {
    pub(super) until: Instant,
    /// The wait after the next refusal.
    next: Duration,
    /// Held because a relay's circuit cannot carry its next message (rather than because the
    /// peer asked).
    relay: bool,
}

impl Hold {
    /// Held (again): for twice as long as the last time, at most [`RETRY_MAX`].
    fn after(previous: Option<Hold>, relay: bool) -> Hold {
        let wait = previous.map_or(RETRY_BUSY, |h| h.next);
        Hold {
            until: Instant::now() + wait,
            next: (wait * 2).min(RETRY_MAX),
            relay,
        }
    }
}

/// The holds of one peer's delivery: on the peer as a whole, and per app.
#[derive(Default)]
pub(super) struct Holds {
    pub(super) peer: Option<Hold>,
    /// Only apps with messages waiting (at most [`MAX_HELD_APPS`]).
    pub(super) apps: HashMap<String, Hold>,
}

impl Holds {
    /// The apps held now; forgets the holds that ended (an app keeps its back-off, to double
    /// it if it is refused again, until one of its messages is stored).
    pub(super) fn held_now(&self) -> HashSet<String> {
        let now = Instant::now();
        self.apps
            .iter()
            .filter(|(_, h)| h.until > now)
            .map(|(app, _)| app.clone())
            .collect()
    }

    /// When the first hold that still keeps a message back ends.
    pub(super) fn next_end(&self) -> Option<Instant> {
        let now = Instant::now();
        let apps = self.apps.values().map(|h| h.until).filter(|t| *t > now);
        apps.chain(self.peer.map(|h| h.until).filter(|t| *t > now))
            .min()
    }

    /// The peer asked to retry (every app) later.
    pub(super) fn hold_peer(&mut self) {
        self.peer = Some(Hold::after(self.peer, false));
    }

    /// The peer asked to retry one app later.
    pub(super) fn hold_app(&mut self, app_id: &str) {
        self.hold(app_id, false);
    }

    /// The next message of an app is larger than the relay's circuits carry.
    pub(super) fn hold_for_relay(&mut self, app_id: &str) {
        self.hold(app_id, true);
    }

    fn hold(&mut self, app_id: &str, relay: bool) {
        if self.apps.len() >= MAX_HELD_APPS && !self.apps.contains_key(app_id) {
            // Cannot happen with the outbox's own bound; if it did, the app is retried sooner.
            return;
        }
        let previous = self.apps.get(app_id).filter(|h| h.relay == relay).copied();
        self.apps
            .insert(app_id.to_owned(), Hold::after(previous, relay));
    }

    /// The peer connected (again), or directly: every hold ends now. The peer's own are
    /// forgotten (it may have restarted); a relay's keep their back-off, so that a peer that
    /// keeps reconnecting through the same relay is not asked about its path ever more often.
    pub(super) fn connected(&mut self) {
        self.peer = None;
        let now = Instant::now();
        self.apps.retain(|_, hold| hold.relay);
        for hold in self.apps.values_mut() {
            hold.until = now;
        }
    }
}

/// Why a message of `size` bytes (framed) waits for a path to `peer` other than `circuit`.
pub(crate) fn too_large_for(peer: PeerId, size: u64, circuit: &Circuit) -> String {
    format!(
        "a message of {size} bytes cannot cross the relayed connection to peer {peer} ({}; at \
         most {} bytes of one message fit): it waits, with this app's later messages behind \
         it, until the peer is reached directly",
        circuit.describe(),
        circuit.max_frame().unwrap_or(u64::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_until_a_message_goes_through() {
        let mut backoff = Backoff::default();
        let waits: Vec<Duration> = (0..6).map(|_| backoff.failed()).collect();
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [5, 10, 20, 40, 60, 60]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), RETRY_MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_ends_holds_but_a_relay_hold_keeps_its_back_off() {
        let mut holds = Holds::default();
        holds.hold_for_relay("big");
        holds.hold_app("full");
        assert_eq!(holds.held_now().len(), 2);
        holds.connected();
        assert!(holds.held_now().is_empty(), "every hold ended");
        assert!(!holds.apps.contains_key("full"));
        // Held for the relay again: 4 s this time, not 2.
        holds.hold_for_relay("big");
        let until = holds.apps["big"].until;
        assert_eq!(until - Instant::now(), RETRY_BUSY * 2);
    }

    #[tokio::test]
    async fn stale_wake_ups_are_forgotten() {
        let kick = Kick::default();
        kick.connected();
        kick.forget();
        let woken = tokio::time::timeout(Duration::from_millis(20), kick.wait()).await;
        assert!(woken.is_err(), "no wake-up left");
        assert!(kick.take_connected(), "but the connect is still known");
    }
}
