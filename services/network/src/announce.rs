//! What this node provides in the DHT, from the swarm task: exactly the keys its announcers
//! want (each a `watch` of a set, so the latest set always wins and nothing queues up; the app
//! layer announces `/p2pos/service/<service>` for the services provided here), and how each
//! announcement went, told back to every announcer ([`Announced`]).
//!
//! An announcement is done once its provider record was sent to at least one other node (one
//! that answered the query for the closest peers: Kademlia's `ADD_PROVIDER` is not
//! acknowledged, so "sent" is all this node can know); one that reached nobody (no peer in the
//! routing table yet), timed out, or could not even be stored here is failed, with the reason,
//! and made again: after 2 s, doubling to 60 s, and at once when a first peer enters the
//! routing table. Kademlia republishes every key every minute besides.

use std::{collections::BTreeSet, time::Duration};

use libp2p::kad;
use p2pos_protocols::network::{Announced, Announcements, check_key};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use crate::event_loop::EventLoop;

/// Most announcers at once (one per service start).
const MAX_ANNOUNCERS: usize = 64;
/// The first wait before a failed announcement is made again; it doubles each time.
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// The longest wait between two tries of a failed announcement.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// The Kademlia key of a DHT key (a string under `/p2pos/`, checked by the handle).
pub(crate) fn dht_key(key: &str) -> kad::RecordKey {
    kad::RecordKey::new(&key)
}

impl EventLoop {
    /// A new announcer: its keys are provided from now on, with every other announcer's, and
    /// it hears on `status` how their announcements go. Past [`MAX_ANNOUNCERS`], announcers
    /// whose sender is gone make room; if none did, the new one is ignored (its keys are not
    /// announced) with a warning.
    pub(crate) fn announce(
        &mut self,
        keys: watch::Receiver<BTreeSet<String>>,
        status: watch::Sender<Announcements>,
    ) {
        if self.wanted.len() >= MAX_ANNOUNCERS {
            self.wanted.retain(|rx| rx.has_changed().is_ok());
            self.announce_status.retain(|tx| !tx.is_closed());
        }
        if self.wanted.len() >= MAX_ANNOUNCERS {
            warn!("too many announcers of DHT keys ({MAX_ANNOUNCERS}); one is ignored");
            return;
        }
        self.wanted.push(keys);
        self.announce_status.push(status);
        self.provide_wanted();
    }

    /// Provides exactly the keys the announcers want now, all together: stops providing those
    /// no longer wanted (a local change; other nodes forget the record when it expires) and
    /// starts providing new ones.
    pub(crate) fn provide_wanted(&mut self) {
        let wanted: BTreeSet<String> = self
            .wanted
            .iter_mut()
            .flat_map(|rx| rx.borrow_and_update().clone())
            .filter(|key| check_key(key).is_ok())
            .collect();
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            // Kademlia is off: nothing is announced.
            let off = Announced::Failed(
                "the DHT (Kademlia) is off on this node: only callers on this node find it".into(),
            );
            self.announced = wanted.iter().map(|k| (k.clone(), off.clone())).collect();
            self.tell_announcers();
            return;
        };
        for gone in self.providing.difference(&wanted) {
            debug!(key = %gone, "no longer provided in the DHT");
            kad.stop_providing(&dht_key(gone));
            self.announced.remove(gone);
            self.announce_retry.remove(gone);
        }
        let mut failed = Vec::new();
        for new in wanted.difference(&self.providing) {
            match kad.start_providing(dht_key(new)) {
                Ok(_) => {
                    debug!(key = %new, "provided in the DHT");
                    self.announced.insert(new.clone(), Announced::Pending);
                }
                Err(e) => {
                    warn!(key = %new, "cannot announce the key in the DHT: {e}");
                    failed.push((new.clone(), e));
                }
            }
        }
        // Still wanted, so still ours to announce: made again on the retry schedule.
        self.providing = wanted;
        for (key, e) in failed {
            self.failed_locally(key, &e);
        }
        self.tell_announcers();
    }

    /// A peer entered the routing table. If it is the first one, announcements made while
    /// the table was empty reached nobody: make them again now rather than at the next
    /// republication.
    pub(crate) fn on_new_routing_peer(&mut self) {
        if self.providing.is_empty() {
            return;
        }
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        if kad.kbuckets().map(|b| b.num_entries()).sum::<usize>() != 1 {
            return;
        }
        for key in &self.providing {
            if let Err(e) = kad.start_providing(dht_key(key)) {
                warn!(%key, "cannot announce the key in the DHT: {e}");
            }
        }
    }

    /// An announcement (or a republication) of a key ended; `answered` other nodes answered
    /// its query.
    pub(crate) fn on_announced(&mut self, result: kad::AddProviderResult, answered: u32) {
        let (key, outcome) = match result {
            Ok(ok) if answered > 0 => (ok.key, Announced::Done),
            Ok(ok) => (
                ok.key,
                Announced::Failed(
                    "no other node took the announcement (this node knows no peer in the DHT \
                     yet): callers elsewhere cannot find it"
                        .into(),
                ),
            ),
            Err(e) => {
                let reason = format!("the announcement did not complete: {e}");
                (e.into_key(), Announced::Failed(reason))
            }
        };
        let Ok(key) = String::from_utf8(key.to_vec()) else {
            return;
        };
        if !self.providing.contains(&key) {
            return; // withdrawn meanwhile
        }
        match &outcome {
            Announced::Done => {
                if self.announce_retry.remove(&key).is_some() {
                    info!(%key, "announced in the DHT after all");
                }
            }
            Announced::Failed(reason) => {
                debug!(%key, "announcement failed: {reason}");
                self.retry_later(&key);
            }
            Announced::Pending => {}
        }
        self.announced.insert(key, outcome);
        self.tell_announcers();
    }

    /// Schedules `key`'s announcement again: after 2 s, doubling each time to 60 s.
    fn retry_later(&mut self, key: &str) {
        let backoff = self
            .announce_retry
            .get(key)
            .map_or(FIRST_RETRY, |(_, b)| (*b * 2).min(MAX_RETRY));
        self.announce_retry
            .insert(key.to_owned(), (Instant::now() + backoff, backoff));
    }

    /// This node could not store its own provider record of `key` (its record store is
    /// full): failed, and made again on the retry schedule.
    fn failed_locally(&mut self, key: String, e: &kad::store::Error) {
        let reason = format!("this node cannot store its provider record: {e}");
        self.retry_later(&key);
        self.announced.insert(key, Announced::Failed(reason));
    }

    /// Makes again the failed announcements whose time has come (from housekeeping).
    pub(crate) fn retry_announcements(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .announce_retry
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(key, _)| key.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        let mut failed = Vec::new();
        for key in due {
            // Not again until this try has ended (its result sets the next time).
            if let Some((at, _)) = self.announce_retry.get_mut(&key) {
                *at = now + MAX_RETRY;
            }
            if let Err(e) = kad.start_providing(dht_key(&key)) {
                warn!(%key, "cannot announce the key in the DHT: {e}");
                failed.push((key, e));
            }
        }
        if !failed.is_empty() {
            for (key, e) in failed {
                self.failed_locally(key, &e);
            }
            self.tell_announcers();
        }
    }

    /// Tells every announcer how the announcements stand now; forgets those that are gone.
    fn tell_announcers(&mut self) {
        self.announce_status.retain(|tx| !tx.is_closed());
        let now = Announcements::new(self.announced.clone());
        for tx in &self.announce_status {
            tx.send_replace(now.clone());
        }
    }
}
