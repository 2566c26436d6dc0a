//! What the inbox holds, counted per holder (an app, a sending peer, a peer's messages to one
//! app, the messages of apps not registered here), and the quotas on it. Counters live in the
//! store beside the messages and change in the same batch as they do.

use std::collections::BTreeMap;

use p2pos_kernel::{Store, store::BatchOp};

use crate::Error;

/// Messages and payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Messages.
    pub(crate) messages: u64,
    /// Payload bytes.
    pub(crate) bytes: u64,
}

impl Usage {
    /// One message of `bytes` payload bytes.
    pub(crate) fn one(bytes: usize) -> Self {
        Self {
            messages: 1,
            bytes: u64::try_from(bytes).unwrap_or(u64::MAX),
        }
    }

    /// A stored counter: 16 bytes (messages, bytes), or the 8 bytes of a message count kept
    /// before bytes were counted; anything else (or nothing) is zero.
    pub(crate) fn decode(value: Option<&[u8]>) -> Self {
        let value = value.unwrap_or_default();
        Self {
            messages: super::u64_at(value, 0).unwrap_or(0),
            bytes: super::u64_at(value, 8).unwrap_or(0),
        }
    }

    fn encode(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.messages.to_be_bytes());
        v.extend_from_slice(&self.bytes.to_be_bytes());
        v
    }

    fn plus(self, other: Self) -> Self {
        Self {
            messages: self.messages.saturating_add(other.messages),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }

    fn minus(self, other: Self) -> Self {
        Self {
            messages: self.messages.saturating_sub(other.messages),
            bytes: self.bytes.saturating_sub(other.bytes),
        }
    }

    /// Whether adding `more` takes this over `quota`. A holder that holds nothing always takes
    /// one message.
    pub(crate) fn would_exceed(self, more: Self, quota: Self) -> bool {
        if self.messages == 0 {
            return false;
        }
        let after = self.plus(more);
        after.messages > quota.messages || after.bytes > quota.bytes
    }

    /// "3 messages, 12 bytes".
    pub(crate) fn describe(self) -> String {
        format!("{} messages, {} bytes", self.messages, self.bytes)
    }
}

/// The inbox's quotas (see [`crate::Config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Quotas {
    /// One app's inbox, all senders together.
    pub(crate) app: Usage,
    /// One sending peer, all apps together.
    pub(crate) peer: Usage,
    /// One sending peer's messages to one app.
    pub(crate) peer_app: Usage,
    /// Apps not registered here, all together (past it the oldest is dropped).
    pub(crate) unclaimed: Usage,
    /// How long a message for an app not registered here is kept.
    pub(crate) unclaimed_ttl_ms: u64,
    /// How long a dedupe mark is kept after its last use.
    pub(crate) dedupe_ttl_ms: u64,
    /// The idempotency keys of `Send`.
    pub(crate) send_keys: KeyLimits,
}

/// How many idempotency keys of `Send` are kept, and for how long (see [`crate::Config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyLimits {
    /// How long a key is kept after its `Send`, in ms.
    pub(crate) ttl_ms: u64,
    /// Most keys of one app and its helpers together.
    pub(crate) per_app: u64,
    /// Most keys in all.
    pub(crate) total: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        crate::Config::default().quotas()
    }
}

/// Counter changes gathered for one batch: each counter is read once, changed any number of
/// times, and written (or removed, at zero) once.
pub(super) struct Ledger<'a> {
    store: &'a dyn Store,
    tree: &'static str,
    counters: BTreeMap<Vec<u8>, Usage>,
}

impl<'a> Ledger<'a> {
    pub(super) fn new(store: &'a dyn Store, tree: &'static str) -> Self {
        Self {
            store,
            tree,
            counters: BTreeMap::new(),
        }
    }

    /// The counter at `key`, with the changes so far.
    pub(super) fn get(&mut self, key: &[u8]) -> Result<Usage, Error> {
        if let Some(usage) = self.counters.get(key) {
            return Ok(*usage);
        }
        let usage = Usage::decode(self.store.get(self.tree, key)?.as_deref());
        self.counters.insert(key.to_vec(), usage);
        Ok(usage)
    }

    pub(super) fn add(&mut self, key: &[u8], more: Usage) -> Result<(), Error> {
        let usage = self.get(key)?.plus(more);
        self.counters.insert(key.to_vec(), usage);
        Ok(())
    }

    pub(super) fn sub(&mut self, key: &[u8], less: Usage) -> Result<(), Error> {
        let usage = self.get(key)?.minus(less);
        self.counters.insert(key.to_vec(), usage);
        Ok(())
    }

    /// `ops` and the counters' writes, as one batch.
    pub(super) fn commit(self, mut ops: Vec<BatchOp>) -> Result<(), Error> {
        for (key, usage) in self.counters {
            ops.push(if usage == Usage::default() {
                BatchOp::Remove(key)
            } else {
                BatchOp::Insert(key, usage.encode())
            });
        }
        if !ops.is_empty() {
            self.store.batch(self.tree, ops)?;
        }
        Ok(())
    }
}
