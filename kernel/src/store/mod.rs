//! The node's durable store: a small [`Store`] trait over named trees of byte keys and values,
//! implemented on sled.
//!
//! Writes are durable only after [`Store::flush`]; a service flushes before it acknowledges
//! anything to a client. `flush` blocks: call it from `tokio::task::spawn_blocking`.
//!
//! # Layout
//! - this file: the trait, its errors, a service's view limited to its trees ([`ScopedStore`])
//!   and the [`Writer`] thread for best-effort writes.
//! - `sled_store`: [`SledStore`], which opens a store only if it is whole and seals it at a clean stop.
//! - `census`: what a store holds, counted and digested, and the manifest file that records it
//!   (with the files' digests) at each start and stop; the quiet catching of sled's panics.
//! - `check`: whether a store is whole, decided without changing it (on a copy where sled must
//!   open it), and the data directory's [`preflight`].
//! - `salvage`: `p2posd --repair`: whatever reads copied into a new store built beside the
//!   damaged one, which is then moved aside whole.

use std::sync::Arc;

mod census;
mod check;
mod salvage;
mod sled_store;

pub use census::{Census, TreeCensus};
pub use check::{Checked, check, preflight};
pub use salvage::{Contents, Repair, repair};
pub use sled_store::SledStore;

/// The store's directory inside the data directory.
pub const DIR: &str = "store";

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened.
    #[error("cannot open the store at {path}: {message}")]
    Open {
        /// The store's directory.
        path: String,
        /// Why.
        message: String,
    },
    /// The store's files are damaged, missing, or a repair of it was interrupted: the node does
    /// not start on it (`p2posd --repair` salvages what reads into a new store and moves the
    /// damaged one aside). Nothing was changed.
    #[error("the store at {path} is damaged: {what}")]
    Damaged {
        /// The store's directory.
        path: String,
        /// What is wrong, in a line.
        what: String,
    },
    /// A read or write failed.
    #[error("store error: {0}")]
    Io(String),
    /// A service used a tree its child spec does not declare (a bug in that service).
    #[error("service {service} uses store tree {tree:?} without declaring it in its child spec")]
    Undeclared {
        /// The service.
        service: &'static str,
        /// The tree.
        tree: String,
    },
}

impl From<StoreError> for crate::ServiceError {
    fn from(e: StoreError) -> Self {
        crate::ServiceError::internal(e.to_string())
    }
}

/// One write of an atomic batch.
#[derive(Debug, Clone)]
pub enum BatchOp {
    /// Set `key` to `value`.
    Insert(Vec<u8>, Vec<u8>),
    /// Remove `key`.
    Remove(Vec<u8>),
}

/// Key-value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The node's durable key-value store, shared by the services.
pub trait Store: Send + Sync + 'static {
    /// The value of `key` in `tree`.
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets `key` in `tree`.
    fn insert(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key` from `tree`.
    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError>;
    /// Up to `limit` pairs whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, tree: &str, prefix: &[u8], limit: usize) -> Result<Pairs, StoreError>;
    /// Applies all `ops` to `tree` atomically.
    fn batch(&self, tree: &str, ops: Vec<BatchOp>) -> Result<(), StoreError>;
    /// A new id, unique for the life of the store (monotonic, not dense).
    fn next_id(&self) -> Result<u64, StoreError>;
    /// Makes every write so far durable. Blocks.
    fn flush(&self) -> Result<(), StoreError>;
    /// The node stops: makes every write durable and, where the store can, records what it
    /// holds so that the next start can tell damage from a clean stop; writes after it fail.
    /// A service's view only flushes. Blocks.
    fn close(&self) -> Result<(), StoreError> {
        self.flush()
    }
}

/// A dedicated thread that applies best-effort writes (caches such as a peer book) in the
/// order given, so that the task that made them never waits for the store. Bounded: a write
/// offered while [`Writer::CAPACITY`] wait is dropped (and said so). Not for writes a client is
/// told are durable: those are written and flushed in `spawn_blocking` and answered after.
#[derive(Clone)]
pub struct Writer {
    tx: std::sync::mpsc::SyncSender<(String, BatchOp)>,
}

impl Writer {
    /// Writes waiting at most.
    pub const CAPACITY: usize = 1024;

    /// Starts the writer thread for `store`; it ends, once the writes queued are done, when
    /// every clone of the writer is gone (join it to wait for that).
    pub fn spawn(
        store: Arc<dyn Store>,
        name: &str,
    ) -> std::io::Result<(Writer, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(String, BatchOp)>(Self::CAPACITY);
        let thread = std::thread::Builder::new()
            .name(format!("{name}-store-writer"))
            .spawn(move || {
                for (tree, op) in rx {
                    if let Err(e) = store.batch(&tree, vec![op]) {
                        tracing::warn!(tree, "a store write failed: {e}");
                    }
                }
            })?;
        Ok((Writer { tx }, thread))
    }

    /// Queues setting `key` in `tree`; false if the queue is full (the write is dropped).
    pub fn insert(&self, tree: &str, key: &[u8], value: &[u8]) -> bool {
        self.offer(tree, BatchOp::Insert(key.to_vec(), value.to_vec()))
    }

    /// Queues removing `key` from `tree`; false if the queue is full.
    pub fn remove(&self, tree: &str, key: &[u8]) -> bool {
        self.offer(tree, BatchOp::Remove(key.to_vec()))
    }

    fn offer(&self, tree: &str, op: BatchOp) -> bool {
        match self.tx.try_send((tree.to_owned(), op)) {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!(tree, "the store writer is behind; a write is dropped");
                false
            }
        }
    }
}

/// A service's view of the store: only the trees its child spec declares. Ids and flushes are
/// the node's, shared.
pub struct ScopedStore {
    inner: Arc<dyn Store>,
    service: &'static str,
    trees: &'static [&'static str],
}

impl ScopedStore {
    /// `inner`, limited to `trees` for service `service`.
    pub fn new(
        inner: Arc<dyn Store>,
        service: &'static str,
        trees: &'static [&'static str],
    ) -> Self {
        Self {
            inner,
            service,
            trees,
        }
    }

    fn check(&self, tree: &str) -> Result<(), StoreError> {
        if self.trees.contains(&tree) {
            Ok(())
        } else {
            Err(StoreError::Undeclared {
                service: self.service,
                tree: tree.to_owned(),
            })
        }
    }
}

impl Store for ScopedStore {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.check(tree)?;
        self.inner.get(tree, key)
    }

    fn insert(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.check(tree)?;
        self.inner.insert(tree, key, value)
    }

    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        self.check(tree)?;
        self.inner.remove(tree, key)
    }

    fn scan_prefix(&self, tree: &str, prefix: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        self.check(tree)?;
        self.inner.scan_prefix(tree, prefix, limit)
    }

    fn batch(&self, tree: &str, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        self.check(tree)?;
        self.inner.batch(tree, ops)
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        self.inner.next_id()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushed_writes_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = SledStore::open(dir.path()).expect("open");
            store.insert("t", b"a1", b"x").expect("insert");
            store
                .batch(
                    "t",
                    vec![
                        BatchOp::Insert(b"a2".to_vec(), b"y".to_vec()),
                        BatchOp::Insert(b"b1".to_vec(), b"z".to_vec()),
                    ],
                )
                .expect("batch");
            store.flush().expect("flush");
        }
        // sled's background threads let go of the directory's lock a moment after the last
        // handle is dropped: wait for that, with a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match SledStore::open(dir.path()) {
                Ok(store) => break store,
                Err(e)
                    if std::time::Instant::now() < deadline && e.to_string().contains("lock") =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        let pairs = store.scan_prefix("t", b"a", 10).expect("scan");
        assert_eq!(pairs.len(), 2);
        assert_eq!(store.get("t", b"b1").expect("get"), Some(b"z".to_vec()));
        let a = store.next_id().expect("id");
        assert!(store.next_id().expect("id") > a);
    }

    #[test]
    fn a_service_sees_only_its_declared_trees() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        store.insert("secrets", b"k", b"v").expect("insert");
        let scoped = ScopedStore::new(store, "chat", &["mine"]);
        scoped.insert("mine", b"k", b"v").expect("its own tree");
        assert_eq!(scoped.get("mine", b"k").expect("get"), Some(b"v".to_vec()));
        let refused = scoped.get("secrets", b"k").expect_err("another tree");
        assert!(refused.to_string().contains("\"secrets\""), "{refused}");
        assert!(scoped.remove("secrets", b"k").is_err());
        assert!(scoped.scan_prefix("secrets", b"", 10).is_err());
        assert!(scoped.next_id().is_ok());
    }

    #[test]
    fn the_writer_applies_writes_in_order_off_the_caller() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let (writer, thread) = Writer::spawn(store.clone(), "test").expect("writer");
        assert!(writer.insert("t", b"k", b"1"));
        assert!(writer.insert("t", b"k", b"2"));
        assert!(writer.remove("t", b"gone"));
        drop(writer);
        thread
            .join()
            .expect("the writer ends once its writes are done");
        assert_eq!(store.get("t", b"k").expect("get"), Some(b"2".to_vec()));
    }

    #[test]
    fn a_second_opener_gets_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = SledStore::open(dir.path()).expect("open");
        // sled's lock is per process (fcntl), so a second open in one process may succeed;
        // the cross-process case is covered by the integration tests.
        if let Err(e) = SledStore::open(dir.path()) {
            assert!(e.to_string().contains("cannot open the store"), "{e}");
        }
    }
}

#[cfg(test)]
mod damage_tests;
#[cfg(test)]
mod repair_tests;
