//! [`SledStore`]: the [`Store`] on sled 0.34, opened only if it is whole, sealed at a clean
//! stop.
//!
//! What sled 0.34.7 does with damaged files (measured; see SPEC "Store damage and repair"):
//! a flipped or zeroed page in `db` either panics inside `open` or on reading, or opens with
//! entries missing; a truncated or deleted `db` opens with what is left, or empty; a damaged
//! `conf` is an error. So `open` does not trust sled alone: it turns sled's panics into errors,
//! reads every entry of every tree once, and compares what it finds with the manifest of the
//! last clean stop (see `census`). Across kill -9 sled recovered every flushed write in every
//! round tried, which the tests check again with real nodes.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use super::{
    BatchOp, Pairs, Store, StoreError,
    census::{Census, Manifest, copy_dir, file_digests, unwinding},
};

/// sled's page cache: the node's data is small (peers, apps, queued messages).
const CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Key, in sled's default tree, of the floor under every id [`Store::next_id`] gives: a
/// repaired store starts its ids above any the damaged one can have given.
const ID_FLOOR_KEY: &[u8] = b"p2pos.id_floor";

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// [`Store`] on a sled database in a directory.
pub struct SledStore {
    db: sled::Db,
    dir: PathBuf,
    id_floor: u64,
    /// Writes hold it shared; [`Store::close`] holds it exclusively and sets it, after which
    /// writes fail (so the census of a clean stop is what the store holds).
    closed: RwLock<bool>,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. Fails if another process holds it
    /// ([`StoreError::Open`]), or if it is damaged ([`StoreError::Damaged`], the files left as
    /// they were found when the last stop was clean).
    pub fn open(dir: &Path) -> Result<Arc<Self>, StoreError> {
        let damaged = |what: String| StoreError::Damaged {
            path: dir.display().to_string(),
            what,
        };
        let manifest = Manifest::read(dir).map_err(damaged)?;
        // After a clean stop the store holds what its manifest says (checked here); after
        // anything else sled recovers it, then every entry is read once.
        let known = match manifest.filter(|m| m.clean) {
            Some(manifest) => {
                check_clean_copy(dir, &manifest)?;
                Some(manifest.census)
            }
            None => None,
        };
        let db = open_db(dir)?;
        let census = match known {
            Some(census) => census,
            None => quietly(|| Census::take(&db))
                .and_then(|r| r)
                .map_err(damaged)?,
        };
        Manifest {
            clean: false,
            files: Default::default(),
            census,
        }
        .write(dir)
        .map_err(|e| StoreError::Io(format!("writing the store's manifest: {e}")))?;
        let id_floor = db
            .get(ID_FLOOR_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        Ok(Arc::new(Self {
            db,
            dir: dir.to_owned(),
            id_floor,
            closed: RwLock::new(false),
        }))
    }

    /// Raises the floor of [`Store::next_id`] to `floor` (a repaired store's). Durable.
    pub(super) fn set_id_floor(&self, floor: u64) -> Result<(), StoreError> {
        self.db.insert(ID_FLOOR_KEY, &floor.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// The sled trees, for salvage.
    pub(super) fn db(&self) -> &sled::Db {
        &self.db
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    fn writing<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let closed = self
            .closed
            .read()
            .map_err(|_| StoreError::Io("the store's lock is poisoned".to_owned()))?;
        if *closed {
            return Err(StoreError::Io(
                "the store is closed (the node is stopping)".to_owned(),
            ));
        }
        f()
    }
}

/// Opens sled in `dir`, a panic inside it being an error. Every failure but a lock held by
/// another process or an I/O error (other than a short or garbled file) is damage.
pub(super) fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let opened = quietly(|| {
        sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(CACHE_BYTES)
            .open()
    });
    let path = dir.display().to_string();
    match opened {
        Ok(Ok(db)) => Ok(db),
        Err(panic) => Err(StoreError::Damaged { path, what: panic }),
        Ok(Err(sled::Error::Io(io))) if io.kind() == std::io::ErrorKind::WouldBlock => {
            Err(StoreError::Open {
                path,
                message:
                    "it is locked by another process (is another p2posd using this data directory?)"
                        .to_owned(),
            })
        }
        // A file shorter than sled expects, or bytes it cannot make sense of.
        Ok(Err(sled::Error::Io(io)))
            if matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            Err(StoreError::Damaged {
                path,
                what: io.to_string(),
            })
        }
        Ok(Err(sled::Error::Io(io))) => Err(StoreError::Open {
            path,
            message: io.to_string(),
        }),
        Ok(Err(other)) => Err(StoreError::Damaged {
            path,
            what: other.to_string(),
        }),
    }
}

/// A store whose last stop was clean: unchanged files need no more; changed ones are opened
/// on a copy (sled rewrites what it opens) and must hold what the manifest says.
fn check_clean_copy(dir: &Path, manifest: &Manifest) -> Result<(), StoreError> {
    let path = dir.display().to_string();
    let io = |e: std::io::Error| StoreError::Open {
        path: path.clone(),
        message: e.to_string(),
    };
    if file_digests(dir).map_err(io)? == manifest.files {
        return Ok(());
    }
    let copy = sibling(dir, "check");
    let _ = std::fs::remove_dir_all(&copy);
    copy_dir(dir, &copy).map_err(io)?;
    let _ = std::fs::remove_file(copy.join(super::census::MANIFEST));
    let found = open_db(&copy).and_then(|db| {
        quietly(|| Census::take(&db))
            .and_then(|r| r)
            .map_err(|what| StoreError::Damaged {
                path: path.clone(),
                what,
            })
    });
    let _ = std::fs::remove_dir_all(&copy);
    let found = found.map_err(|e| match e {
        StoreError::Damaged { what, .. } => StoreError::Damaged {
            path: path.clone(),
            what,
        },
        other => other,
    })?;
    if found == manifest.census {
        tracing::info!(store = %path, "the store's files changed since the last stop, but it holds all it held");
        Ok(())
    } else {
        Err(StoreError::Damaged {
            path,
            what: found.difference(&manifest.census),
        })
    }
}

/// `<dir>.<suffix>`, beside the store.
pub(super) fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    dir.with_file_name(name)
}

/// Runs `f` with panics caught and not printed (sled meets some damage by panicking; the
/// caller reports it as an error in one line).
pub(super) fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = unwinding(f);
    std::panic::set_hook(hook);
    result
}

impl Store for SledStore {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(tree)?.get(key)?.map(|v| v.to_vec()))
    }

    fn insert(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.writing(|| {
            self.tree(tree)?.insert(key, value)?;
            Ok(())
        })
    }

    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        self.writing(|| {
            self.tree(tree)?.remove(key)?;
            Ok(())
        })
    }

    fn scan_prefix(&self, tree: &str, prefix: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        self.tree(tree)?
            .scan_prefix(prefix)
            .take(limit)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
            .collect()
    }

    fn batch(&self, tree: &str, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        self.writing(|| {
            let mut batch = sled::Batch::default();
            for op in ops {
                match op {
                    BatchOp::Insert(k, v) => batch.insert(k, v),
                    BatchOp::Remove(k) => batch.remove(k),
                }
            }
            self.tree(tree)?.apply_batch(batch)?;
            Ok(())
        })
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.id_floor.saturating_add(self.db.generate_id()?))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn close(&self) -> Result<(), StoreError> {
        let mut closed = self
            .closed
            .write()
            .map_err(|_| StoreError::Io("the store's lock is poisoned".to_owned()))?;
        *closed = true;
        self.db.flush()?;
        let census = unwinding(|| Census::take(&self.db))
            .and_then(|r| r)
            .map_err(StoreError::Io)?;
        let files = file_digests(&self.dir).map_err(|e| StoreError::Io(e.to_string()))?;
        Manifest {
            clean: true,
            files,
            census,
        }
        .write(&self.dir)
        .map_err(|e| StoreError::Io(format!("writing the store's manifest: {e}")))
    }
}
