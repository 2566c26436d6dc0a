//! What a store holds, counted per tree and per first key byte and digested, and the manifest
//! file beside sled's files that records it.
//!
//! The manifest (`p2pos-manifest.json` in the store's directory) is written at every open
//! (`clean: false`: the node runs, its census is the one at that start, and `floors` how many
//! entries each tree holds at least) and at a clean stop (`clean: true`, with the SHA-256 of
//! each of sled's files, written once sled has let go of them). See `check` for how the next
//! start uses it.

use std::{
    collections::BTreeMap,
    fs,
    io::Read,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    sync::Once,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's file name inside the store's directory.
pub(super) const MANIFEST: &str = "p2pos-manifest.json";

/// What one tree holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeCensus {
    /// Entries, in all.
    pub entries: u64,
    /// Entries by the first byte of their key (services tag kinds of records so).
    pub by_first_byte: BTreeMap<u8, u64>,
    /// SHA-256 of every key and value in order (each length-prefixed), hex.
    pub digest: String,
}

/// What a store holds: its trees by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Census {
    /// Trees by name (sled's own default tree included).
    pub trees: BTreeMap<String, TreeCensus>,
}

impl Census {
    /// Counts and digests every entry of `db`. A read error or a panic inside sled (which is
    /// how it meets some damage) is an `Err` saying where.
    pub(super) fn take(db: &sled::Db) -> Result<Census, String> {
        let mut census = Census::default();
        for name in unwinding(|| db.tree_names())? {
            let label = String::from_utf8_lossy(&name).into_owned();
            let tree = unwinding(|| db.open_tree(&name))?
                .map_err(|e| format!("tree {label:?} cannot be opened: {e}"))?;
            let mut counted = TreeCensus::default();
            let mut hash = Sha256::new();
            let mut iter = tree.iter();
            loop {
                let item = unwinding(|| iter.next()).map_err(|e| {
                    format!("tree {label:?}, after {} entries: {e}", counted.entries)
                })?;
                let Some(item) = item else { break };
                let (key, value) = item.map_err(|e| {
                    format!("tree {label:?}, after {} entries: {e}", counted.entries)
                })?;
                counted.entries += 1;
                *counted
                    .by_first_byte
                    .entry(key.first().copied().unwrap_or(0))
                    .or_default() += 1;
                hash.update((key.len() as u64).to_be_bytes());
                hash.update(&key);
                hash.update((value.len() as u64).to_be_bytes());
                hash.update(&value);
            }
            counted.digest = data_encoding::HEXLOWER.encode(&hash.finalize());
            census.trees.insert(label, counted);
        }
        Ok(census)
    }

    /// A line that says how `self` (found now) differs from `before`.
    pub(super) fn difference(&self, before: &Census) -> String {
        let empty = TreeCensus::default();
        for (name, was) in &before.trees {
            let now = self.trees.get(name).unwrap_or(&empty);
            if now.entries != was.entries {
                return format!(
                    "tree {name:?} held {} entries at the last clean stop and now holds {}",
                    was.entries, now.entries
                );
            }
            if now.digest != was.digest {
                return format!("tree {name:?} holds other data than at the last clean stop");
            }
        }
        match self.trees.keys().find(|k| !before.trees.contains_key(*k)) {
            Some(name) => format!("tree {name:?} appeared since the last clean stop"),
            None => "its content differs from the last clean stop".to_owned(),
        }
    }
}

/// A tree that held at least this many more entries than it holds now, and more than half of
/// them, lost entries (unless the node removed them, which it records first: see `floors`).
pub(super) const MIN_DROP: u64 = 16;

/// Whether a tree that held at least `floor` entries and now holds `now` lost entries to
/// damage rather than to the node's own removals: it is empty, or it lost more than half of
/// them and at least [`MIN_DROP`].
pub(super) fn shrunk(floor: u64, now: u64) -> bool {
    let lost = floor.saturating_sub(now);
    (floor > 0 && now == 0) || (lost > floor / 2 && lost >= MIN_DROP)
}

impl Census {
    /// Entries in all trees but sled's own.
    pub(super) fn entries(&self) -> u64 {
        self.trees
            .iter()
            .filter(|(name, _)| !name.starts_with("__sled"))
            .map(|(_, t)| t.entries)
            .sum()
    }

    /// Each tree's entries, the floors of a census just taken.
    pub(super) fn floors(&self) -> BTreeMap<String, u64> {
        self.trees
            .iter()
            .map(|(name, t)| (name.clone(), t.entries))
            .collect()
    }

    /// A line saying which tree of `self` (found after an unclean stop) [`shrunk`] below its
    /// floor, if one did.
    pub(super) fn shrunk_below(&self, floors: &BTreeMap<String, u64>) -> Option<String> {
        floors.iter().find_map(|(name, &floor)| {
            let now = self.trees.get(name).map_or(0, |t| t.entries);
            shrunk(floor, now).then(|| {
                format!(
                    "tree {name:?} held at least {floor} entries when the node last ran and now \
                     holds {now}"
                )
            })
        })
    }
}

/// Why a manifest could not be had.
#[derive(Debug)]
pub(super) enum ManifestError {
    /// It reads, but is not a manifest: damage.
    Garbled(String),
    /// It cannot be read (permissions, an I/O error): not known to be damage.
    CannotRead(std::io::Error),
}

/// The record of a store's state at its last open or clean stop.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Manifest {
    /// Written at a clean stop (true) or at an open (false: the node ran, or runs, since).
    pub(super) clean: bool,
    /// SHA-256 (hex) of each of sled's files by path inside the store, at a clean stop.
    #[serde(default)]
    pub(super) files: BTreeMap<String, String>,
    /// What the store held then.
    pub(super) census: Census,
    /// Entries each tree holds at least, as far as the node knows: the census's at an open or
    /// a clean stop, lowered (and this file written again) before the node's own removals take
    /// a tree to where [`shrunk`] would call it damage. Empty in manifests from before it was
    /// kept: then the census's counts.
    #[serde(default)]
    pub(super) floors: BTreeMap<String, u64>,
}

impl Manifest {
    /// The manifest of the store in `dir`, if it has one.
    pub(super) fn read(dir: &Path) -> Result<Option<Manifest>, ManifestError> {
        match fs::read(dir.join(MANIFEST)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                ManifestError::Garbled(format!("its manifest {MANIFEST} is garbled ({e})"))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ManifestError::CannotRead(e)),
        }
    }

    /// The floors to check a store against: the recorded ones, or the census's counts.
    pub(super) fn floors(&self) -> BTreeMap<String, u64> {
        if self.floors.is_empty() {
            self.census.floors()
        } else {
            self.floors.clone()
        }
    }

    /// Writes the manifest into `dir` atomically (temporary file, fsync, rename, fsync dir).
    pub(super) fn write(&self, dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!("{MANIFEST}.tmp"));
        {
            let mut file = fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, dir.join(MANIFEST))?;
        fs::File::open(dir)?.sync_all()
    }
}

/// SHA-256 (hex) of every file of the store in `dir` but the manifest, by relative path.
pub(super) fn file_digests(dir: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in fs::read_dir(&at)? {
            let path = entry?.path();
            let rel = relative(dir, &path);
            if path.is_dir() {
                stack.push(path);
            } else if !rel.starts_with(MANIFEST) {
                let mut file = fs::File::open(&path)?;
                let mut hash = Sha256::new();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                }
                out.insert(rel, data_encoding::HEXLOWER.encode(&hash.finalize()));
            }
        }
    }
    Ok(out)
}

fn relative(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Bytes of the files under `dir`.
pub(super) fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Bytes free to an unprivileged user on the file system of `dir`.
pub(super) fn free_space(dir: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    #[allow(clippy::useless_conversion)] // the types differ between targets
    Ok(u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size())))
}

/// Copies the directory `from` (files and subdirectories) to `to`, which must not exist.
/// `std::fs::copy` uses `copy_file_range`, so on file systems that share extents (btrfs, XFS)
/// the copy is a cheap clone.
pub(super) fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let path: PathBuf = entry?.path();
        let target = to.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            fs::copy(&path, &target)?;
        }
    }
    Ok(())
}

thread_local! {
    /// Set while this thread runs [`quietly`]: its panics are caught and reported as errors.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with panics caught and not printed (sled meets some damage by panicking; the
/// caller reports it as an error in one line). The panic hook is replaced once, by one that
/// says nothing for a thread inside `quietly` and hands every other panic to the hook it
/// replaced, so other threads' panics are reported as before.
pub(super) fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = unwinding(f);
    QUIET.with(|q| q.set(was));
    result
}

/// Runs `f`, turning a panic (sled panics on some damage) into an error with its message.
pub(super) fn unwinding<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "no message".to_owned());
        format!("sled panicked reading it ({message})")
    })
}
