//! Kademlia's record store, sized to what nodes put in it: libp2p's `MemoryStore` with bounds
//! on records, their values and provider keys (see `behaviour`), and, what it does not bound,
//! on what one provider record may hold: keys longer than any this node makes are refused and
//! a provider's addresses are cut to a few short ones. So a peer (or many identities) that
//! announces itself as a provider of many keys with long address lists cannot grow the store
//! past its record count times a small record.

use std::borrow::Cow;

use libp2p::{
    Multiaddr, PeerId,
    kad::{
        ProviderRecord, Record, RecordKey,
        store::{self, MemoryStore, RecordStore},
    },
};
use p2pos_protocols::network::MAX_KEY;

/// Most addresses kept per provider record (as many as the peer book keeps per peer).
pub(crate) const MAX_PROVIDER_ADDRS: usize = 8;
/// The longest address kept in a provider record, in bytes.
const MAX_ADDR_BYTES: usize = 256;

/// `MemoryStore` within the bounds above.
pub(crate) struct Store(MemoryStore);

impl Store {
    /// The store of `local`, with `config`'s bounds.
    pub(crate) fn new(local: PeerId, config: store::MemoryStoreConfig) -> Self {
        Self(MemoryStore::with_config(local, config))
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
        self.0.get(k)
    }

    fn put(&mut self, r: Record) -> store::Result<()> {
        if !key_fits(&r.key) {
            return Err(store::Error::ValueTooLarge);
        }
        self.0.put(r)
    }

    fn remove(&mut self, k: &RecordKey) {
        self.0.remove(k)
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.0.records()
    }

    fn add_provider(&mut self, mut record: ProviderRecord) -> store::Result<()> {
        if !key_fits(&record.key) {
            return Err(store::Error::ValueTooLarge);
        }
        record.addresses = trimmed(std::mem::take(&mut record.addresses));
        self.0.add_provider(record)
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.0.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.0.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.0.remove_provider(k, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_keys_are_refused_and_provider_addresses_are_cut() {
        let local = PeerId::random();
        let mut store = Store::new(local, store::MemoryStoreConfig::default());
        let long = RecordKey::new(&vec![b'k'; MAX_KEY + 1]);
        assert!(store.put(Record::new(long.clone(), b"v".to_vec())).is_err());
        let provider = PeerId::random();
        let many: Vec<Multiaddr> = (0..50u16)
            .map(|port| {
                format!("/ip4/203.0.113.1/tcp/{port}")
                    .parse()
                    .expect("addr")
            })
            .collect();
        let key = RecordKey::new(&b"/p2pos/service/x/1".to_vec());
        let record = ProviderRecord::new(key.clone(), provider, many);
        assert!(store.add_provider(record.clone()).is_ok());
        assert_eq!(store.providers(&key)[0].addresses.len(), MAX_PROVIDER_ADDRS);
        let mut too_long = record;
        too_long.key = long;
        assert!(store.add_provider(too_long).is_err());
    }
}
