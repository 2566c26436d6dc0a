//! [`SledStore`]: the [`Store`] on sled 0.34, opened only if it is whole, sealed at a clean
//! stop.
//!
//! What sled 0.34.7 does with damaged files (measured; see SPEC "Store damage and repair"):
//! a flipped or zeroed page in `db` either panics inside `open` or on reading, or opens with
//! entries missing; a truncated or deleted `db` opens with what is left, or empty; a damaged
//! `conf` is an error. So `open` does not trust sled alone: `check` decides first, on a copy
//! where sled must open the store, and only then is the store itself opened. Each tree's count
//! of entries is kept as the node writes, so that the manifest's floors are lowered before the
//! node's own removals could look like loss. `close` lets sled go (its threads end) before it
//! records the files' digests. Across kill -9 sled recovered every flushed write in every
//! round tried, which the tests check again with real nodes.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock, RwLockReadGuard},
    time::{Duration, Instant},
};

use super::{
    BatchOp, Pairs, Store, StoreError,
    census::{Census, Manifest, file_digests, quietly, shrunk},
    check::{Checked, check},
};

/// sled's page cache: the node's data is small (peers, apps, queued messages).
const CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Key, in sled's default tree, of the floor under every id [`Store::next_id`] gives: a
/// repaired store starts its ids above any the damaged one can have given.
pub(super) const ID_FLOOR_KEY: &[u8] = b"p2pos.id_floor";
/// How long [`Store::close`] waits for sled's threads to let go of the files before it
/// records their digests (if they do not, the next start checks the store on a copy).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// [`Store`] on a sled database in a directory.
pub struct SledStore {
    /// `None` once [`Store::close`] has run: every operation then fails, and sled's threads
    /// are gone.
    db: RwLock<Option<sled::Db>>,
    dir: PathBuf,
    id_floor: u64,
    checked: Checked,
    /// Entries per tree, and the manifest of this run with its floors; writes hold it.
    tally: Mutex<Tally>,
    /// The trees that exist, which reads look at (not the tally: a read never waits for a
    /// write of another tree).
    trees: RwLock<HashSet<String>>,
}

struct Tally {
    /// Entries each existing tree holds now.
    live: HashMap<String, u64>,
    /// The manifest written at the open, its floors lowered as the node removes entries.
    manifest: Manifest,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. Fails if another process holds it
    /// ([`StoreError::Open`]), or if it is damaged ([`StoreError::Damaged`]; the files are then
    /// as they were found: whatever needs sled to open them is done on a copy first, see
    /// `check`).
    pub fn open(dir: &Path) -> Result<Arc<Self>, StoreError> {
        let checked = check(dir)?;
        let db = open_db(dir)?;
        let census = match &checked {
            Checked::Unchanged(census) | Checked::OnCopy(census) => census.clone(),
            Checked::New => quietly(|| Census::take(&db))
                .and_then(|r| r)
                .map_err(|what| StoreError::Damaged {
                    path: dir.display().to_string(),
                    what,
                })?,
        };
        let how = match &checked {
            Checked::New => "new",
            Checked::Unchanged(_) => "clean stop, files unchanged",
            Checked::OnCopy(_) => "checked on a copy",
        };
        tracing::info!(store = %dir.display(), entries = census.entries(), "store opened: {how}");
        let manifest = Manifest {
            clean: false,
            files: Default::default(),
            floors: census.floors(),
            census,
        };
        manifest
            .write(dir)
            .map_err(|e| StoreError::Io(format!("writing the store's manifest: {e}")))?;
        let id_floor = db
            .get(ID_FLOOR_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        Ok(Arc::new(Self {
            db: RwLock::new(Some(db)),
            dir: dir.to_owned(),
            id_floor,
            checked,
            trees: RwLock::new(manifest.floors.keys().cloned().collect()),
            tally: Mutex::new(Tally {
                live: manifest.floors.clone().into_iter().collect(),
                manifest,
            }),
        }))
    }

    /// How the store was found whole at its open.
    pub fn checked(&self) -> &Checked {
        &self.checked
    }

    /// Raises the floor of [`Store::next_id`] to `floor` (a repaired store's). Durable.
    pub(super) fn set_id_floor(&self, floor: u64) -> Result<(), StoreError> {
        let db = self.open_db()?;
        let db = db.as_ref().ok_or_else(closed)?;
        db.insert(ID_FLOOR_KEY, &floor.to_be_bytes())?;
        db.flush()?;
        Ok(())
    }

    /// What the store holds now.
    pub(super) fn census(&self) -> Result<Census, StoreError> {
        let db = self.open_db()?;
        let db = db.as_ref().ok_or_else(closed)?;
        quietly(|| Census::take(db))
            .and_then(|r| r)
            .map_err(StoreError::Io)
    }

    fn open_db(&self) -> Result<RwLockReadGuard<'_, Option<sled::Db>>, StoreError> {
        self.db
            .read()
            .map_err(|_| StoreError::Io("the store's lock is poisoned".to_owned()))
    }

    /// `f` on tree `name` if it exists (reading never makes a tree), `missing` if not.
    fn reading<T>(
        &self,
        name: &str,
        missing: T,
        f: impl FnOnce(sled::Tree) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.open_db()?;
        let db = db.as_ref().ok_or_else(closed)?;
        let exists = self
            .trees
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(name);
        if !exists {
            return Ok(missing);
        }
        f(db.open_tree(name)?)
    }

    /// The tally, even if a write panicked inside sled while it held it (that write is then
    /// not counted, until the next start's census).
    fn tally(&self) -> Result<std::sync::MutexGuard<'_, Tally>, StoreError> {
        Ok(self
            .tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Applies `ops` to tree `name` atomically, keeping its count of entries, and first
    /// lowering its floor in the manifest if they take it to where a check after a crash
    /// would call the loss damage.
    fn apply(&self, name: &str, mut ops: Vec<BatchOp>) -> Result<(), StoreError> {
        let db = self.open_db()?;
        let db = db.as_ref().ok_or_else(closed)?;
        let tree = db.open_tree(name)?;
        let mut tally = self.tally()?;
        if !tally.live.contains_key(name) {
            self.trees
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name.to_owned());
        }
        let live = tally.live.get(name).copied().unwrap_or(0);
        if ops.len() == 1
            && let Some(op) = ops.pop()
        {
            // One write: sled answers whether the key was there. A removal lowers the floor
            // first as if it took an entry away (a floor too low only checks less).
            let after = match op {
                BatchOp::Insert(k, v) => live + u64::from(tree.insert(k, v)?.is_none()),
                BatchOp::Remove(k) => {
                    self.lower_floor(&mut tally, name, live.saturating_sub(1))?;
                    live - u64::from(tree.remove(k)?.is_some() && live > 0)
                }
            };
            tally.live.insert(name.to_owned(), after);
            return Ok(());
        }
        let mut present: HashMap<&[u8], bool> = HashMap::new();
        let (mut added, mut removed) = (0u64, 0u64);
        for op in &ops {
            let (key, after) = match op {
                BatchOp::Insert(key, _) => (key.as_slice(), true),
                BatchOp::Remove(key) => (key.as_slice(), false),
            };
            let before = match present.get(key) {
                Some(&before) => before,
                None => tree.contains_key(key)?,
            };
            match (before, after) {
                (false, true) => added += 1,
                (true, false) => removed += 1,
                _ => {}
            }
            present.insert(key, after);
        }
        let after = (live + added).saturating_sub(removed);
        self.lower_floor(&mut tally, name, after)?;
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                BatchOp::Insert(k, v) => batch.insert(k, v),
                BatchOp::Remove(k) => batch.remove(k),
            }
        }
        tree.apply_batch(batch)?;
        tally.live.insert(name.to_owned(), after);
        Ok(())
    }

    /// Lowers the floor of tree `name` to `after` (writing the manifest) before a write that
    /// may take the tree there, if a check after a crash would otherwise call that damage.
    fn lower_floor(&self, tally: &mut Tally, name: &str, after: u64) -> Result<(), StoreError> {
        let floor = tally.manifest.floors.get(name).copied().unwrap_or(0);
        if after < floor && shrunk(floor, after) {
            tally.manifest.floors.insert(name.to_owned(), after);
            tally
                .manifest
                .write(&self.dir)
                .map_err(|e| StoreError::Io(format!("writing the store's manifest: {e}")))?;
        }
        Ok(())
    }
}

fn closed() -> StoreError {
    StoreError::Io("the store is closed (the node is stopping)".to_owned())
}

/// Waits (up to `timeout`) until no one holds sled's lock on the file `db`: sled's threads
/// (the flusher, its I/O pool) hold it until they are done with the files.
fn wait_released(db: &Path, timeout: Duration) -> bool {
    use nix::fcntl::{Flock, FlockArg};
    let deadline = Instant::now() + timeout;
    loop {
        let Ok(file) = std::fs::File::open(db) else {
            return false;
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                drop(lock);
                return true;
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                // No event says when sled's last thread lets go: poll, with a deadline.
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return false,
        }
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
        // sled says so with its own message (kind `Other`).
        Ok(Err(sled::Error::Io(io)))
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock") =>
        {
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

/// `<dir>.<suffix>`, beside the store.
pub(super) fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    dir.with_file_name(name)
}

impl Store for SledStore {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.reading(tree, None, |tree| Ok(tree.get(key)?.map(|v| v.to_vec())))
    }

    fn insert(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.apply(tree, vec![BatchOp::Insert(key.to_vec(), value.to_vec())])
    }

    fn remove(&self, tree: &str, key: &[u8]) -> Result<(), StoreError> {
        self.apply(tree, vec![BatchOp::Remove(key.to_vec())])
    }

    fn scan_prefix(&self, tree: &str, prefix: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        self.reading(tree, Vec::new(), |tree| {
            tree.scan_prefix(prefix)
                .take(limit)
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
                .collect()
        })
    }

    fn batch(&self, tree: &str, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.apply(tree, ops)
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        let db = self.open_db()?;
        let db = db.as_ref().ok_or_else(closed)?;
        Ok(self.id_floor.saturating_add(db.generate_id()?))
    }

    fn flush(&self) -> Result<(), StoreError> {
        let db = self.open_db()?;
        db.as_ref().ok_or_else(closed)?.flush()?;
        Ok(())
    }

    /// Flushes, counts what the store holds, lets sled go (its threads end: the files stop
    /// changing), then records the files' digests with the census in a clean manifest.
    fn close(&self) -> Result<(), StoreError> {
        let mut guard = self
            .db
            .write()
            .map_err(|_| StoreError::Io("the store's lock is poisoned".to_owned()))?;
        let Some(db) = guard.take() else {
            return Ok(());
        };
        db.flush()?;
        let census = quietly(|| Census::take(&db))
            .and_then(|r| r)
            .map_err(StoreError::Io)?;
        drop(db);
        let files = if wait_released(&self.dir.join("db"), RELEASE_TIMEOUT) {
            file_digests(&self.dir).map_err(|e| StoreError::Io(e.to_string()))?
        } else {
            tracing::warn!(store = %self.dir.display(), "sled did not let go of the store's files in {RELEASE_TIMEOUT:?}: the next start checks it on a copy");
            Default::default()
        };
        Manifest {
            clean: true,
            files,
            floors: census.floors(),
            census,
        }
        .write(&self.dir)
        .map_err(|e| StoreError::Io(format!("writing the store's manifest: {e}")))
    }
}
