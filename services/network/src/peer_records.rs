//! Address records in the DHT: how a peer that knows only a node's peer id reaches it. A node
//! behind a NAT is in no one's routing table (Kademlia serves only nodes that others can dial),
//! so a look-up of its id alone finds nothing; instead it puts its own libp2p signed peer
//! record — its relayed addresses and the direct addresses others may reach — in the DHT under
//! `/p2pos/peer/<peer id>`, again whenever they change and every [`REPUBLISH`], for at most
//! [`RECORD_TTL`]. A look-up of a peer runs the Kademlia look-up and a get of this record side
//! by side, and dials what either finds.
//!
//! The record is the standard libp2p peer record (`libp2p-peer-record` envelope, as Go and JS
//! nodes sign it): nodes that store it keep only a record signed by the peer its key names,
//! and never replace a newer one with an older one (`kad_store`); readers check the same and
//! ignore records older than [`RECORD_TTL`].

use std::time::{Duration, SystemTime};

use libp2p::{Multiaddr, PeerId, core::PeerRecord, core::SignedEnvelope, kad};
use tokio::time::Instant;
use tracing::debug;

use p2pos_protocols::network::ticket::without_peer;

use crate::{
    event_loop::EventLoop,
    peers::is_dialable,
    scope::{Scope, advertisable, advertised_floor, is_relayed},
};

/// The DHT key prefix of address records.
pub(crate) const KEY_PREFIX: &str = "/p2pos/peer/";
/// How long nodes keep an address record, and how old one may be to be used.
pub(crate) const RECORD_TTL: Duration = Duration::from_secs(60 * 60);
/// How often a node puts its address record again though its addresses did not change.
const REPUBLISH: Duration = Duration::from_secs(20 * 60);
/// How far ahead of this node's clock a record's time may be.
const MAX_SKEW: Duration = Duration::from_secs(10 * 60);
/// Most addresses in a record: a few direct ones and a relayed one per reservation.
const MAX_RECORD_ADDRS: usize = 8;
/// Most look-ups of address records at once.
const MAX_RECORD_LOOKUPS: usize = 64;

/// The DHT key of `peer`'s address record.
pub(crate) fn key_of(peer: &PeerId) -> kad::RecordKey {
    kad::RecordKey::new(&format!("{KEY_PREFIX}{peer}"))
}

/// The peer record in `value`, if it is signed by the peer that `key` names.
pub(crate) fn verified(key: &kad::RecordKey, value: &[u8]) -> Option<PeerRecord> {
    let named = std::str::from_utf8(key.as_ref())
        .ok()?
        .strip_prefix(KEY_PREFIX)?
        .parse::<PeerId>()
        .ok()?;
    let envelope = SignedEnvelope::from_protobuf_encoding(value).ok()?;
    let record = PeerRecord::from_signed_envelope_interop(envelope).ok()?;
    (record.peer_id() == named && record.addresses().len() <= MAX_RECORD_ADDRS).then_some(record)
}

/// Whether `key` is an address record's.
pub(crate) fn is_peer_record_key(key: &kad::RecordKey) -> bool {
    key.as_ref().starts_with(KEY_PREFIX.as_bytes())
}

/// Whether a record signed at `seq` (seconds since the epoch) is recent enough to use: at
/// most [`RECORD_TTL`] old, and not from further ahead than clocks differ ([`MAX_SKEW`]; a
/// record from the future would be kept over every newer one of its peer).
pub(crate) fn fresh(seq: u64) -> bool {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now.saturating_sub(seq) <= RECORD_TTL.as_secs() && seq <= now + MAX_SKEW.as_secs()
}

impl EventLoop {
    /// Notes that this node's reachable addresses may have changed: the record is put again
    /// at the next housekeeping tick (changes that come together make one put).
    pub(crate) fn publish_peer_record(&mut self) {
        self.published.dirty = true;
    }

    /// The narrowest scope of the addresses this node advertises, among its peers now.
    fn advertised_floor(&self) -> Scope {
        advertised_floor(
            self.connections.values().flatten().map(|(_, a)| a),
            self.trust_private,
        )
    }

    /// The addresses that peers elsewhere may reach this node at: its confirmed external
    /// addresses (a relayed one per reservation among them) and its listen addresses, those as
    /// wide as its peers are (`scope::advertised_floor`: on the internet, not loopback,
    /// link-local or, unless trusted, private ones); direct ones first.
    pub(crate) fn advertised_addrs(&self) -> Vec<Multiaddr> {
        let local = *self.swarm.local_peer_id();
        let floor = self.advertised_floor();
        let mut direct = Vec::new();
        let mut relayed = Vec::new();
        for a in self
            .swarm
            .external_addresses()
            .chain(self.swarm.listeners())
        {
            let a = without_peer(a.clone(), &local);
            if !is_dialable(&a) || !advertisable(&a, floor) {
                continue;
            }
            let list = if is_relayed(&a) {
                &mut relayed
            } else {
                &mut direct
            };
            if !list.contains(&a) {
                list.push(a);
            }
        }
        // Relayed ones are kept whatever the direct ones number: they are how NATed nodes are
        // reached.
        direct.truncate(MAX_RECORD_ADDRS.saturating_sub(relayed.len().min(MAX_RECORD_ADDRS / 2)));
        direct.extend(relayed);
        direct.truncate(MAX_RECORD_ADDRS);
        direct
    }

    /// Puts this node's address record when its addresses changed, or every [`REPUBLISH`].
    pub(crate) fn republish_peer_record(&mut self) {
        if !self.swarm.behaviour().kad.is_enabled() {
            return;
        }
        let due = self.published.at.is_none_or(|at| at.elapsed() >= REPUBLISH);
        if !self.published.dirty && !due {
            return;
        }
        let addrs = self.advertised_addrs();
        self.published.dirty = false;
        if addrs.is_empty() {
            // Nothing others could use: asked again when the addresses change (`dirty`), or
            // at the next republication, not at every tick.
            self.published.at = Some(Instant::now());
            return;
        }
        if addrs == self.published.addrs && !due {
            return;
        }
        let record = match PeerRecord::new_interop(&self.keypair, addrs.clone()) {
            Ok(record) => record,
            Err(e) => {
                debug!("cannot sign the address record: {e}");
                return;
            }
        };
        let mut kad_record = kad::Record::new(
            key_of(self.swarm.local_peer_id()),
            record.into_signed_envelope().into_protobuf_encoding(),
        );
        kad_record.expires = Some(std::time::Instant::now() + RECORD_TTL);
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        match kad.put_record(kad_record, kad::Quorum::One) {
            Ok(_) => {
                debug!(?addrs, "address record put in the DHT");
                self.published.addrs = addrs;
                self.published.at = Some(Instant::now());
            }
            Err(e) => debug!("cannot store the address record: {e}"),
        }
    }

    /// Starts a get of `peer`'s address record, unless one is running or too many are.
    pub(crate) fn find_peer_record(&mut self, peer: PeerId) {
        if self.peer_record_of.contains_key(&peer)
            || self.peer_record_of.len() >= MAX_RECORD_LOOKUPS
        {
            return;
        }
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            let id = kad.get_record(key_of(&peer));
            self.peer_record_queries.insert(id, peer);
            self.peer_record_of.insert(peer, id);
        }
    }

    /// Kademlia's news of a get of an address record; `false` if the query is not one.
    pub(crate) fn on_peer_record_event(
        &mut self,
        id: kad::QueryId,
        result: &kad::GetRecordResult,
        last: bool,
    ) -> bool {
        let Some(peer) = self.peer_record_queries.get(&id).copied() else {
            return false;
        };
        let found = match result {
            Ok(kad::GetRecordOk::FoundRecord(found)) => {
                match verified(&found.record.key, &found.record.value)
                    .filter(|r| r.peer_id() == peer && fresh(r.seq()))
                {
                    Some(record) => record.addresses().to_vec(),
                    None => {
                        debug!(from = ?found.peer, %peer, "an address record that does not verify; ignored");
                        Vec::new()
                    }
                }
            }
            _ => Vec::new(),
        };
        if found.is_empty() && !last && result.is_ok() {
            return true;
        }
        self.peer_record_queries.remove(&id);
        self.peer_record_of.remove(&peer);
        self.finish_query(id);
        // The addresses as wide as this node's peers are (as it advertises its own): a record
        // can name loopback or LAN addresses, of no use from elsewhere.
        let floor = self.advertised_floor();
        let found: Vec<Multiaddr> = found
            .into_iter()
            .filter(|a| is_dialable(a) && advertisable(a, floor))
            .collect();
        debug!(%peer, found = found.len(), "address record look-up done");
        if !found.is_empty() {
            self.book.hear(peer, found.clone());
        }
        self.looked_up(peer, found);
        true
    }
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;

    use super::*;

    #[test]
    fn a_record_counts_only_under_its_signers_own_key() {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let addr: Multiaddr = "/ip4/5.0.0.10/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit"
            .parse()
            .expect("addr");
        let value = PeerRecord::new_interop(&key, vec![addr.clone()])
            .expect("sign")
            .into_signed_envelope()
            .into_protobuf_encoding();
        let record = verified(&key_of(&peer), &value).expect("verifies");
        assert_eq!(record.addresses(), &[addr]);
        assert!(fresh(record.seq()));
        let other = PeerId::random();
        assert!(verified(&key_of(&other), &value).is_none(), "another's key");
        assert!(verified(&kad::RecordKey::new(&"/p2pos/x"), &value).is_none());
        assert!(verified(&key_of(&peer), b"junk").is_none());
        assert!(!fresh(0), "a record from 1970");
        assert!(!fresh(u64::MAX), "a record from the far future");
    }
}
