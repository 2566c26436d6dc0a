//! Kademlia's record store, sized to what nodes put in it: libp2p's `MemoryStore` with bounds
//! on records, their values and provider keys (see `behaviour`), and, what it does not bound,
//! on what remote peers may put: keys longer than any this node makes are refused; a
//! provider's addresses are cut to [`MAX_PROVIDER_ADDRS`] of at most [`MAX_ADDR_BYTES`]; one
//! remote provider is kept for at most [`MAX_KEYS_PER_PROVIDER`] keys and all of them for at
//! most [`MAX_REMOTE_PROVIDER_RECORDS`]; and remote records and remote providers' keys take at
//! most three quarters of the store's records and keys, so that what peers put can never make
//! this node's own `put_record` or `start_providing` fail for want of room (and this node's
//! own provider record takes the place of a remote one on a key that remote providers filled).
//!
//! The worst case, whatever peers put: 1024 records of at most 9,472 bytes (about 10 MiB),
//! and 4096 remote provider records of at most 4 addresses of 128 bytes and a 256-byte key
//! (about 4 MiB): about 14 MiB.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
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
    /// The keys each remote provider is kept for.
    remote: HashMap<PeerId, HashSet<RecordKey>>,
    /// Remote provider records per key.
    remote_keys: HashMap<RecordKey, usize>,
    /// Remote provider records in all.
    remote_records: usize,
}

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
        if !keys.remove(key) {
            return;
        }
        if keys.is_empty() {
            self.remote.remove(provider);
        }
        self.remote_records -= 1;
        if let Some(n) = self.remote_keys.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.remote_keys.remove(key);
            }
        }
    }

    /// Drops remote provider records that have expired (Kademlia drops them only when their
    /// key is asked for), of `only` or of every provider.
    fn drop_expired(&mut self, only: Option<PeerId>) {
        let now = Instant::now();
        let candidates: Vec<(RecordKey, PeerId)> = match only {
            Some(provider) => self
                .remote
                .get(&provider)
                .map(|keys| keys.iter().map(|k| (k.clone(), provider)).collect())
                .unwrap_or_default(),
            None => self
                .remote
                .iter()
                .flat_map(|(p, keys)| keys.iter().map(move |k| (k.clone(), *p)))
                .collect(),
        };
        for (key, provider) in candidates {
            let expired = self
                .inner
                .providers(&key)
                .iter()
                .find(|p| p.provider == provider)
                .is_none_or(|p| p.is_expired(now));
            if expired {
                self.inner.remove_provider(&key, &provider);
                self.forget(&key, &provider);
            }
        }
    }

    /// Whether a remote provider record of `provider` for `key`, not yet kept, may be: within
    /// the provider's keys, the remote records and the remote keys.
    fn room_for_remote(&mut self, key: &RecordKey, provider: PeerId) -> store::Result<()> {
        let full = |s: &Self| {
            s.remote.get(&provider).map_or(0, HashSet::len) >= MAX_KEYS_PER_PROVIDER
                || s.remote_records >= MAX_REMOTE_PROVIDER_RECORDS
                || (!s.remote_keys.contains_key(key)
                    && s.remote_keys.len() >= Self::remote_share(s.max_keys))
        };
        if full(self) {
            self.drop_expired(None);
        }
        if full(self) {
            return Err(store::Error::MaxProvidedKeys);
        }
        Ok(())
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
        // A new record of another publisher takes room only within the remote share.
        let ours = r.publisher == Some(self.local);
        if !ours && self.inner.get(&r.key).is_none() {
            let remote = self
                .inner
                .records()
                .filter(|r| r.publisher != Some(self.local))
                .count();
            if remote >= Self::remote_share(self.max_records) {
                return Err(store::Error::MaxRecords);
            }
        }
        self.inner.put(r)
    }

    fn remove(&mut self, k: &RecordKey) {
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
        let (key, provider) = (record.key.clone(), record.provider);
        let known = self
            .remote
            .get(&provider)
            .is_some_and(|keys| keys.contains(&key));
        if !known {
            self.room_for_remote(&key, provider)?;
        }
        self.inner.add_provider(record)?;
        // Kept unless the key had as many providers as it may.
        if !known && self.holds(&key, &provider) {
            self.remote.entry(provider).or_default().insert(key.clone());
            *self.remote_keys.entry(key).or_default() += 1;
            self.remote_records += 1;
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
}
