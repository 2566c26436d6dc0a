//! Kademlia's record store, sized to what nodes put in it: libp2p's `MemoryStore` with bounds
//! on records, their values and provider keys (see `behaviour`), and, what it does not bound,
//! on what remote peers may put: keys longer than any this node makes are refused; a
//! provider's addresses are cut to [`MAX_PROVIDER_ADDRS`] of at most [`MAX_ADDR_BYTES`]; one
//! remote provider is kept for at most [`MAX_KEYS_PER_PROVIDER`] keys and all of them for at
//! most [`MAX_REMOTE_PROVIDER_RECORDS`]; and remote records and remote providers' keys take at
//! most three quarters of the store's records and keys, so that what peers put can never make
//! this node's own `put_record` or `start_providing` fail for want of room (and this node's
//! own provider record takes the place of a remote one on a key that remote providers filled).
//! A remote peer cannot put a record under a key this node published (it would replace this
//! node's own record).
//!
//! Every check is cheap whatever the store holds (it runs on the swarm's task): remote records
//! are counted as they come and go, and remote provider records are indexed by their expiry,
//! so the expired ones are dropped from the front of the index, never by a scan of all of them.
//!
//! The worst case, whatever peers put: 1024 records of at most 9,472 bytes (about 10 MiB),
//! and 4096 remote provider records of at most 4 addresses of 128 bytes and a 256-byte key
//! (about 4 MiB): about 14 MiB.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use libp2p::{
    Multiaddr, PeerId,
    kad::{
        ProviderRecord, Record, RecordKey,
        store::{self, MemoryStore, RecordStore},
    },
};
use p2pos_protocols::network::MAX_KEY;

/// Most addresses kept per remote provider record: enough for a direct address of each
/// transport and a relayed one.
pub(crate) const MAX_PROVIDER_ADDRS: usize = 4;
/// The longest address kept in a provider record, in bytes (binary): a relayed QUIC address
/// over IPv6, `/ip6/../udp/N/quic-v1/p2p/<relay>/p2p-circuit/p2p/<peer>`, takes about 105.
pub(crate) const MAX_ADDR_BYTES: usize = 128;
/// Most keys one remote peer is kept as a provider of (a node provides one key per service
/// it offers).
pub(crate) const MAX_KEYS_PER_PROVIDER: usize = 32;
/// Most provider records of remote peers kept in all.
pub(crate) const MAX_REMOTE_PROVIDER_RECORDS: usize = 4096;

/// `MemoryStore` within the bounds above.
pub(crate) struct Store {
    inner: MemoryStore,
    local: PeerId,
    /// The store's limits: records and keys with providers.
    max_records: usize,
    max_keys: usize,
    /// Providers kept per key.
    max_per_key: usize,
    /// The keys each remote provider is kept for, with the record's place in `expiry`.
    remote: HashMap<PeerId, HashMap<RecordKey, Option<Expiry>>>,
    /// Remote provider records per key.
    remote_keys: HashMap<RecordKey, usize>,
    /// Remote provider records in all.
    remote_records: usize,
    /// Remote provider records that expire, soonest first.
    expiry: BTreeMap<Expiry, (PeerId, RecordKey)>,
    /// Tells apart records that expire at one instant.
    next_seq: u64,
    /// Records of other publishers (not `local`) in `inner`.
    remote_values: usize,
}

/// When a remote provider record expires, and a number that tells it apart.
type Expiry = (Instant, u64);

impl Store {
    /// The store of `local`, with `config`'s bounds.
    pub(crate) fn new(local: PeerId, config: store::MemoryStoreConfig) -> Self {
        Self {
            max_records: config.max_records,
            max_keys: config.max_provided_keys,
            max_per_key: config.max_providers_per_key,
            inner: MemoryStore::with_config(local, config),
            local,
            remote: HashMap::new(),
            remote_keys: HashMap::new(),
            remote_records: 0,
            expiry: BTreeMap::new(),
            next_seq: 0,
            remote_values: 0,
        }
    }

    /// Of `max`, what remote peers may take: three quarters.
    fn remote_share(max: usize) -> usize {
        max / 4 * 3
    }

    /// Whether `provider` is kept as a provider of `key`.
    fn holds(&self, key: &RecordKey, provider: &PeerId) -> bool {
        self.inner
            .providers(key)
            .iter()
            .any(|p| p.provider == *provider)
    }

    /// Notes that remote `provider` is no longer kept for `key`.
    fn forget(&mut self, key: &RecordKey, provider: &PeerId) {
        let Some(keys) = self.remote.get_mut(provider) else {
            return;
        };
        let Some(expiry) = keys.remove(key) else {
            return;
        };
        if keys.is_empty() {
            self.remote.remove(provider);
        }
        if let Some(expiry) = expiry {
            self.expiry.remove(&expiry);
        }
        self.remote_records -= 1;
        if let Some(n) = self.remote_keys.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.remote_keys.remove(key);
            }
        }
    }

    /// Notes that remote `provider` is kept for `key` until `expires` (a record kept already
    /// has its expiry moved).
    fn note(&mut self, key: RecordKey, provider: PeerId, expires: Option<Instant>) {
        let expiry = expires.map(|at| {
            self.next_seq += 1;
            (at, self.next_seq)
        });
        if let Some(expiry) = expiry {
            self.expiry.insert(expiry, (provider, key.clone()));
        }
        let keys = self.remote.entry(provider).or_default();
        match keys.insert(key.clone(), expiry) {
            Some(Some(old)) => {
                self.expiry.remove(&old);
            }
            Some(None) => {}
            None => {
                self.remote_records += 1;
                *self.remote_keys.entry(key).or_default() += 1;
            }
        }
    }

    /// Drops the remote provider records that have expired (Kademlia drops them only when
    /// their key is asked for): from the front of the expiry index, so the cost is the
    /// number dropped.
    fn drop_expired(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (provider, key) = entry.remove();
            self.inner.remove_provider(&key, &provider);
            self.forget(&key, &provider);
        }
    }

    /// Whether a remote provider record of `provider` for `key`, not yet kept, may be: within
    /// the provider's keys, the remote records and the remote keys.
    fn room_for_remote(&mut self, key: &RecordKey, provider: PeerId) -> store::Result<()> {
        let full = |s: &Self| {
            s.remote.get(&provider).map_or(0, HashMap::len) >= MAX_KEYS_PER_PROVIDER
                || s.remote_records >= MAX_REMOTE_PROVIDER_RECORDS
                || (!s.remote_keys.contains_key(key)
                    && s.remote_keys.len() >= Self::remote_share(s.max_keys))
        };
        if full(self) {
            self.drop_expired();
        }
        if full(self) {
            return Err(store::Error::MaxProvidedKeys);
        }
        Ok(())
    }
}

impl Store {
    /// Whether `r`, put under an address record's key, is a peer record signed by the peer
    /// the key names, and no older than the one held: no one but the peer itself can replace
    /// its record, nor can an old copy of it.
    fn newer_peer_record(&self, r: &Record) -> bool {
        let Some(new) = crate::peer_records::verified(&r.key, &r.value) else {
            return false;
        };
        if r.publisher == Some(self.local) {
            // This node's own: its clock may have gone back; its record is its record.
            return true;
        }
        if !crate::peer_records::fresh(new.seq()) {
            return false;
        }
        self.inner
            .get(&r.key)
            .filter(|held| !held.is_expired(Instant::now()))
            .and_then(|held| crate::peer_records::verified(&held.key, &held.value))
            .is_none_or(|held| held.seq() <= new.seq())
    }
}

/// Whether `key` is one this node could have made (at most `MAX_KEY` bytes).
fn key_fits(key: &RecordKey) -> bool {
    key.as_ref().len() <= MAX_KEY
}

/// `addresses`, cut to [`MAX_PROVIDER_ADDRS`] of at most [`MAX_ADDR_BYTES`] bytes each.
fn trimmed(addresses: Vec<Multiaddr>) -> Vec<Multiaddr> {
    addresses
        .into_iter()
        .filter(|a| a.len() <= MAX_ADDR_BYTES)
        .take(MAX_PROVIDER_ADDRS)
        .collect()
}

impl RecordStore for Store {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.inner.get(k)
    }

    fn put(&mut self, r: Record) -> store::Result<()> {
        if !key_fits(&r.key) {
            return Err(store::Error::ValueTooLarge);
        }
        if crate::peer_records::is_peer_record_key(&r.key) && !self.newer_peer_record(&r) {
            return Err(store::Error::MaxRecords);
        }
        let ours = r.publisher == Some(self.local);
        let held = self.inner.get(&r.key).map(|held| {
            (
                held.publisher == Some(self.local),
                held.is_expired(Instant::now()),
            )
        });
        let was_remote = held.is_some_and(|(held_ours, _)| !held_ours);
        if !ours {
            // Another publisher's record never replaces this node's own (unexpired) one.
            if held == Some((true, false)) {
                return Err(store::Error::MaxRecords);
            }
            // A new record of another publisher takes room only within the remote share.
            if !was_remote && self.remote_values >= Self::remote_share(self.max_records) {
                return Err(store::Error::MaxRecords);
            }
        }
        self.inner.put(r)?;
        match (was_remote, ours) {
            (false, false) => self.remote_values += 1,
            (true, true) => self.remote_values -= 1,
            _ => {}
        }
        Ok(())
    }

    fn remove(&mut self, k: &RecordKey) {
        if self
            .inner
            .get(k)
            .is_some_and(|held| held.publisher != Some(self.local))
        {
            self.remote_values -= 1;
        }
        self.inner.remove(k)
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.inner.records()
    }

    fn add_provider(&mut self, mut record: ProviderRecord) -> store::Result<()> {
        if !key_fits(&record.key) {
            return Err(store::Error::ValueTooLarge);
        }
        if record.provider == self.local {
            // This node's own record is always kept: `MemoryStore` ignores a provider past
            // the key's limit, so a remote one makes room for it (else remote identities that
            // filled the key first would keep this node out of what it republishes).
            let providers = self.inner.providers(&record.key);
            if providers.len() >= self.max_per_key
                && !providers.iter().any(|p| p.provider == self.local)
                && let Some(remote) = providers.last()
            {
                self.inner.remove_provider(&record.key, &remote.provider);
                self.forget(&record.key, &remote.provider);
            }
            return self.inner.add_provider(record);
        }
        record.addresses = trimmed(std::mem::take(&mut record.addresses));
        let (key, provider, expires) = (record.key.clone(), record.provider, record.expires);
        let known = self
            .remote
            .get(&provider)
            .is_some_and(|keys| keys.contains_key(&key));
        if !known {
            self.room_for_remote(&key, provider)?;
        }
        self.inner.add_provider(record)?;
        // Kept unless the key had as many providers as it may; a kept one's expiry moves.
        if known || self.holds(&key, &provider) {
            self.note(key, provider, expires);
        }
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.inner.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.inner.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.inner.remove_provider(k, p);
        self.forget(k, p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/203.0.113.1/tcp/{port}")
            .parse()
            .expect("addr")
    }

    fn key(i: usize) -> RecordKey {
        RecordKey::new(&format!("/p2pos/service/s{i}/1"))
    }

    #[test]
    fn long_keys_are_refused_and_provider_addresses_are_cut() {
        let local = PeerId::random();
        let mut store = Store::new(local, store::MemoryStoreConfig::default());
        let long = RecordKey::new(&vec![b'k'; MAX_KEY + 1]);
        assert!(store.put(Record::new(long.clone(), b"v".to_vec())).is_err());
        let provider = PeerId::random();
        let mut many: Vec<Multiaddr> = (0..50u16).map(addr).collect();
        // A long address first: dropped, the short ones after it kept.
        let relay = PeerId::random();
        let long_addr: Multiaddr = format!(
            "/ip6/2001:db8::1/udp/4001/quic-v1/p2p/{relay}/p2p-circuit/p2p/{provider}/p2p-circuit/p2p/{relay}"
        )
        .parse()
        .expect("addr");
        assert!(long_addr.len() > MAX_ADDR_BYTES, "{}", long_addr.len());
        let circuit: Multiaddr =
            format!("/ip6/2001:db8::1/udp/4001/quic-v1/p2p/{relay}/p2p-circuit/p2p/{provider}")
                .parse()
                .expect("addr");
        assert!(circuit.len() <= MAX_ADDR_BYTES, "{}", circuit.len());
        many.insert(0, long_addr);
        many.insert(1, circuit.clone());
        let record = ProviderRecord::new(key(0), provider, many);
        assert!(store.add_provider(record.clone()).is_ok());
        let kept = &store.providers(&key(0))[0].addresses;
        assert_eq!(kept.len(), MAX_PROVIDER_ADDRS);
        assert_eq!(kept[0], circuit, "a relayed address fits");
        let mut too_long = record;
        too_long.key = long;
        assert!(store.add_provider(too_long).is_err());
    }

    #[test]
    fn one_remote_provider_is_kept_for_a_few_keys() {
        let mut store = Store::new(PeerId::random(), store::MemoryStoreConfig::default());
        let provider = PeerId::random();
        for i in 0..MAX_KEYS_PER_PROVIDER {
            let record = ProviderRecord::new(key(i), provider, vec![addr(1)]);
            assert!(store.add_provider(record).is_ok(), "key {i}");
        }
        let one_more = ProviderRecord::new(key(MAX_KEYS_PER_PROVIDER), provider, vec![addr(1)]);
        assert!(store.add_provider(one_more).is_err());
        // Its records are refreshed, and another provider is kept.
        assert!(
            store
                .add_provider(ProviderRecord::new(key(0), provider, vec![addr(2)]))
                .is_ok()
        );
        let other = ProviderRecord::new(key(MAX_KEYS_PER_PROVIDER), PeerId::random(), vec![]);
        assert!(store.add_provider(other).is_ok());
        // One removed (expired, asked for): room for another key.
        store.remove_provider(&key(0), &provider);
        let again = ProviderRecord::new(key(MAX_KEYS_PER_PROVIDER + 1), provider, vec![]);
        assert!(store.add_provider(again).is_ok());
    }

    #[test]
    fn this_nodes_own_provider_record_is_kept_when_remote_ones_filled_the_key() {
        let local = PeerId::random();
        let config = store::MemoryStoreConfig {
            max_providers_per_key: 2,
            ..store::MemoryStoreConfig::default()
        };
        let mut store = Store::new(local, config);
        // Remote providers fill the key first.
        for _ in 0..4 {
            let remote = ProviderRecord::new(key(0), PeerId::random(), vec![addr(1)]);
            assert!(store.add_provider(remote).is_ok());
        }
        assert_eq!(store.remote_records, 2);
        // This node's own record is kept, in place of one of theirs.
        assert!(
            store
                .add_provider(ProviderRecord::new(key(0), local, vec![]))
                .is_ok()
        );
        let providers = store.providers(&key(0));
        assert_eq!(providers.len(), 2);
        assert!(providers.iter().any(|p| p.provider == local));
        assert_eq!(store.provided().count(), 1);
        assert_eq!(store.remote_records, 1);
        // And stays: later remote ones are ignored.
        let remote = ProviderRecord::new(key(0), PeerId::random(), vec![addr(1)]);
        assert!(store.add_provider(remote).is_ok());
        assert!(store.providers(&key(0)).iter().any(|p| p.provider == local));
    }

    #[test]
    fn what_peers_put_leaves_room_for_this_nodes_own() {
        let local = PeerId::random();
        let config = store::MemoryStoreConfig {
            max_records: 8,
            max_provided_keys: 8,
            ..store::MemoryStoreConfig::default()
        };
        let mut store = Store::new(local, config);
        // Remote records and keys: six of eight each.
        for i in 0..6 {
            let mut record = Record::new(key(i), b"v".to_vec());
            record.publisher = Some(PeerId::random());
            assert!(store.put(record).is_ok(), "record {i}");
            let provider = ProviderRecord::new(key(i), PeerId::random(), vec![]);
            assert!(store.add_provider(provider).is_ok(), "key {i}");
        }
        let mut seventh = Record::new(key(6), b"v".to_vec());
        seventh.publisher = None;
        assert!(matches!(store.put(seventh), Err(store::Error::MaxRecords)));
        let provider = ProviderRecord::new(key(6), PeerId::random(), vec![]);
        assert!(store.add_provider(provider).is_err());
        // This node's own still fit.
        for i in 6..8 {
            let mut record = Record::new(key(i), b"v".to_vec());
            record.publisher = Some(local);
            assert!(store.put(record).is_ok(), "own record {i}");
            let own = ProviderRecord::new(key(i), local, vec![]);
            assert!(store.add_provider(own).is_ok(), "own key {i}");
        }
    }

    #[test]
    fn expired_remote_provider_records_make_room_and_a_full_store_refuses_cheaply() {
        let mut store = Store::new(PeerId::random(), store::MemoryStoreConfig::default());
        let past = Instant::now() - std::time::Duration::from_secs(1);
        let later = Instant::now() + std::time::Duration::from_secs(3600);
        let record = |key: RecordKey, provider: PeerId, expires: Instant| {
            let mut record = ProviderRecord::new(key, provider, vec![addr(1)]);
            record.expires = Some(expires);
            record
        };
        // One provider at its keys, one of them expired: room for one more key, not two.
        let provider = PeerId::random();
        for i in 0..MAX_KEYS_PER_PROVIDER {
            let expires = if i == 3 { past } else { later };
            assert!(
                store
                    .add_provider(record(key(i), provider, expires))
                    .is_ok()
            );
        }
        let more = |i: usize| record(key(100 + i), provider, later);
        assert!(
            store.add_provider(more(0)).is_ok(),
            "the expired one made room"
        );
        assert!(store.add_provider(more(1)).is_err());
        assert!(
            store.providers(&key(3)).is_empty(),
            "the expired one is gone"
        );
        // A refreshed record moves its expiry: it is not dropped as its old one passes.
        assert!(store.add_provider(record(key(4), provider, past)).is_ok());
        assert!(store.add_provider(record(key(4), provider, later)).is_ok());
        assert!(store.add_provider(more(1)).is_err());
        assert_eq!(store.providers(&key(4)).len(), 1);

        // Every remote provider record in use, none expired (providers on 4 keys each, of
        // 700 keys).
        let mut k = 0;
        while store.remote_records < MAX_REMOTE_PROVIDER_RECORDS {
            let provider = PeerId::random();
            for _ in 0..4 {
                let r = record(key(k % 700 + 1000), provider, later);
                assert!(store.add_provider(r).is_ok(), "record {k}");
                k += 1;
                if store.remote_records == MAX_REMOTE_PROVIDER_RECORDS {
                    break;
                }
            }
        }
        assert_eq!(store.remote_records, MAX_REMOTE_PROVIDER_RECORDS);
        assert_eq!(store.expiry.len(), MAX_REMOTE_PROVIDER_RECORDS);
        // Each further one is refused without a scan of what is kept: thousands take well
        // under a second (a scan per refusal cloned every record: seconds each hundred).
        let started = Instant::now();
        for i in 0..3000 {
            let r = record(key(i % 50 + 1000), PeerId::random(), later);
            assert!(store.add_provider(r).is_err());
        }
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn a_peer_cannot_replace_this_nodes_own_record_and_remote_records_are_counted() {
        let local = PeerId::random();
        let config = store::MemoryStoreConfig {
            max_records: 8,
            ..store::MemoryStoreConfig::default()
        };
        let mut store = Store::new(local, config);
        let mut own = Record::new(key(0), b"ours".to_vec());
        own.publisher = Some(local);
        assert!(store.put(own.clone()).is_ok());
        let mut theirs = Record::new(key(0), b"theirs".to_vec());
        theirs.publisher = Some(PeerId::random());
        assert!(store.put(theirs.clone()).is_err());
        theirs.publisher = None;
        assert!(store.put(theirs.clone()).is_err());
        assert_eq!(
            store.get(&key(0)).expect("kept").value,
            b"ours".to_vec(),
            "this node's record stays"
        );
        // Our record passed back to us (replicated) is taken.
        assert!(store.put(own).is_ok());
        // Once this node's record has expired, another may take the key.
        let mut expired = Record::new(key(1), b"ours".to_vec());
        expired.publisher = Some(local);
        expired.expires = Some(Instant::now() - std::time::Duration::from_secs(1));
        assert!(store.put(expired).is_ok());
        let mut other = Record::new(key(1), b"theirs".to_vec());
        other.publisher = Some(PeerId::random());
        assert!(store.put(other.clone()).is_ok());
        assert_eq!(store.remote_values, 1);
        // Replaced by another remote one, or removed: counted right.
        assert!(store.put(other.clone()).is_ok());
        assert_eq!(store.remote_values, 1);
        for i in 2..7 {
            let mut r = Record::new(key(i), b"v".to_vec());
            r.publisher = Some(PeerId::random());
            assert!(store.put(r).is_ok(), "record {i}");
        }
        assert_eq!(store.remote_values, 6, "its share of 8");
        let mut seventh = Record::new(key(7), b"v".to_vec());
        seventh.publisher = Some(PeerId::random());
        assert!(store.put(seventh.clone()).is_err());
        store.remove(&key(2));
        assert_eq!(store.remote_values, 5);
        assert!(store.put(seventh).is_ok());
        // This node's own record in place of a remote one.
        let mut mine = Record::new(key(3), b"v".to_vec());
        mine.publisher = Some(local);
        assert!(store.put(mine).is_ok());
        assert_eq!(store.remote_values, 5);
        let counted = store
            .records()
            .filter(|r| r.publisher != Some(local))
            .count();
        assert_eq!(counted, store.remote_values);
    }
}
