//! `p2posd --repair`: whatever can still be read of a damaged store is copied, tree by tree,
//! key by key, into a new store built beside it from a copy of it, and what was recovered is
//! compared with what the store held at its last stop or start. The damaged store is neither
//! opened nor changed: only once the new store is complete and closed is it renamed aside
//! (`store.damaged-<UTC>`, never deleted) and the new one put in its place. A marker file
//! (`store.repairing`) is there for the whole repair, so an interrupted one is seen (the node
//! does not start, see `check::preflight`) and finished or redone by the next `--repair`. The
//! node's identity is another file, never touched here.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{
    BatchOp, Store, StoreError,
    census::{Census, MANIFEST, copy_dir, quietly},
    check::{check, enough_room, manifest},
    sled_store::{ID_FLOOR_KEY, SledStore, open_db, sibling},
};

/// Entries copied per batch.
const BATCH: usize = 1000;
/// Suffix of the marker file beside the store while a repair runs.
pub(super) const MARKER: &str = "repairing";
/// Suffix of the new store while it is built.
pub(super) const NEW: &str = "new";
/// Suffix of the copy of the damaged store that is salvaged from.
const WORK: &str = "salvage";
/// Ids a repaired store gives start this far above the damaged store's last (sled hands ids
/// out in blocks and may have given some that it had not yet recorded).
const ID_MARGIN: u64 = 1 << 24;

/// One kind of record a service keeps, as a repair report names it to the user: the entries
/// of `tree` whose key starts with `prefix` (empty: all the tree's other entries).
#[derive(Debug, Clone, Copy)]
pub struct Contents {
    /// The store tree.
    pub tree: &'static str,
    /// The first byte of their keys, or none for every other entry of the tree.
    pub prefix: Option<u8>,
    /// What they are, in the user's words ("queued outgoing messages").
    pub what: &'static str,
}

/// What a repair did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Repair {
    /// Where the damaged store was moved, as it was found; `None` if it was whole (then
    /// nothing was moved or changed) or missing.
    pub moved_to: Option<PathBuf>,
    /// What was wrong with it.
    pub damage: String,
    /// What it held at its last clean stop (`true`) or its last start (`false`), if known.
    pub before: Option<(bool, Census)>,
    /// What the store holds now.
    pub recovered: Census,
    /// Where reading stopped short: a tree and why, or the whole store if sled could not
    /// open it.
    pub unreadable: Vec<String>,
    /// True if this finished a repair that an earlier `--repair` had begun.
    #[serde(default)]
    pub resumed: bool,
}

/// What the marker file says: while the new store is built, nothing (the repair is redone
/// from the start); once it is complete, the repair to finish by renaming.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Marker {
    swap: Option<Repair>,
}

/// Where a repair is, for tests that interrupt it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// The new store is complete and closed, the marker says so; nothing renamed yet.
    Built,
    /// The damaged store has been renamed aside; the new one is not in place yet.
    MovedAside,
}

/// Repairs the store in `dir` (the node must not run: the caller holds the data directory's
/// lock). A whole store is left as it is; a repair that was interrupted is finished (or, if
/// the new store was not complete, done again).
pub fn repair(dir: &Path) -> Result<Repair, StoreError> {
    repair_with(dir, &mut |_| Ok(()))
}

/// [`repair`], calling `at` at each [`Step`] (an error there stops the repair as a crash
/// would: nothing is cleaned up).
pub(super) fn repair_with(
    dir: &Path,
    at: &mut dyn FnMut(Step) -> Result<(), StoreError>,
) -> Result<Repair, StoreError> {
    let marker = sibling(dir, MARKER);
    match read_marker(&marker)? {
        Some(Marker {
            swap: Some(mut repair),
        }) => {
            repair.resumed = true;
            return swap(dir, repair, at);
        }
        Some(Marker { swap: None }) | None => {
            // A repair that stopped before its new store was complete: begin again. (Never
            // with the store gone: then the new store may be all that is left of it.)
            if !dir.exists() && sibling(dir, NEW).exists() {
                return Err(StoreError::Io(format!(
                    "{} is missing and {} is there, but the repair's marker does not say the \
                     new store was complete: look at both before repairing again",
                    dir.display(),
                    sibling(dir, NEW).display()
                )));
            }
            remove_leftovers(dir);
        }
    }
    let (damage, before) = if dir.exists() {
        match check(dir) {
            Ok(_) => {
                // A repair interrupted before it built anything leaves only its marker.
                let _ = std::fs::remove_file(&marker);
                return Ok(Repair {
                    moved_to: None,
                    damage: String::new(),
                    before: None,
                    recovered: Census::default(),
                    unreadable: Vec::new(),
                    resumed: false,
                });
            }
            Err(StoreError::Damaged { what, .. }) => {
                let before = manifest(dir).ok().flatten().map(|m| (m.clean, m.census));
                (what, before)
            }
            Err(other) => return Err(other),
        }
    } else if super::check::has_identity(dir) {
        ("it is missing".to_owned(), None)
    } else {
        return Err(StoreError::Open {
            path: dir.display().to_string(),
            message: "there is no store there: nothing to repair".to_owned(),
        });
    };
    write_marker(&marker, &Marker::default())?;
    let built = build(dir, damage, before);
    let repair = match built {
        Ok(repair) => repair,
        Err(e) => {
            remove_leftovers(dir);
            let _ = std::fs::remove_file(&marker);
            return Err(StoreError::Io(format!(
                "{e}; the store is left as it was found at {}",
                dir.display()
            )));
        }
    };
    write_marker(
        &marker,
        &Marker {
            swap: Some(repair.clone()),
        },
    )?;
    at(Step::Built)?;
    swap(dir, repair, at)
}

/// Builds the new store (`<dir>.new`) from a copy of `dir` (`<dir>.salvage`), and closes it.
fn build(dir: &Path, damage: String, before: Option<(bool, Census)>) -> Result<Repair, StoreError> {
    let io = |what: &str, e: std::io::Error| StoreError::Io(format!("{what}: {e}"));
    let work = sibling(dir, WORK);
    let fresh = sibling(dir, NEW);
    let mut unreadable = Vec::new();
    let mut old_ids = 0;
    let new = SledStore::open(&fresh)?;
    if dir.exists() {
        // The copy, and a new store as large at most.
        enough_room(dir, 2)?;
        copy_dir(dir, &work).map_err(|e| io("copying the damaged store", e))?;
        let _ = std::fs::remove_file(work.join(MANIFEST));
        match open_db(&work) {
            Ok(old) => {
                old_ids = last_id(&old);
                copy_trees(&old, &new, &mut unreadable)?;
            }
            Err(e) => unreadable.push(format!("the whole store: sled cannot open it ({e})")),
        }
    } else {
        unreadable.push("the whole store: it is missing".to_owned());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    new.set_id_floor(now.max(old_ids.saturating_add(ID_MARGIN)))?;
    let recovered = new.census()?;
    new.close()?;
    drop(new);
    let _ = std::fs::remove_dir_all(&work);
    Ok(Repair {
        moved_to: dir.exists().then(|| free_name(dir)),
        damage,
        before,
        recovered,
        unreadable,
        resumed: false,
    })
}

/// The highest id the store `old` can have given (its floor plus sled's counter), if it reads.
fn last_id(old: &sled::Db) -> u64 {
    let floor = quietly(|| old.get(ID_FLOOR_KEY))
        .ok()
        .and_then(Result::ok)
        .flatten()
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes);
    let counter = quietly(|| old.generate_id())
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    floor.saturating_add(counter)
}

/// Renames the damaged store aside and the new one into place (whichever of the two is not
/// done yet), then removes the marker.
fn swap(
    dir: &Path,
    repair: Repair,
    at: &mut dyn FnMut(Step) -> Result<(), StoreError>,
) -> Result<Repair, StoreError> {
    let fresh = sibling(dir, NEW);
    let marker = sibling(dir, MARKER);
    let stuck = |what: &str, e: std::io::Error| {
        let damaged = match &repair.moved_to {
            Some(to) if to.exists() => to.display().to_string(),
            _ => dir.display().to_string(),
        };
        StoreError::Io(format!(
            "{what}: {e}; the damaged store is at {damaged}, the new one at {}: run \
             `p2posd --repair` again to finish",
            fresh.display()
        ))
    };
    if let Some(moved_to) = &repair.moved_to
        && fresh.exists()
        && dir.exists()
    {
        std::fs::rename(dir, moved_to).map_err(|e| stuck("moving the damaged store aside", e))?;
        sync_parent(dir);
        at(Step::MovedAside)?;
    }
    if fresh.exists() {
        if dir.exists() {
            return Err(stuck(
                "putting the new store in place",
                std::io::Error::other(format!("{} is in the way", dir.display())),
            ));
        }
        std::fs::rename(&fresh, dir).map_err(|e| stuck("putting the new store in place", e))?;
        sync_parent(dir);
    }
    let _ = std::fs::remove_dir_all(sibling(dir, WORK));
    std::fs::remove_file(&marker).map_err(|e| stuck("removing the repair's marker", e))?;
    sync_parent(dir);
    Ok(repair)
}

/// The marker at `path`, if there is one. One that cannot be read, or does not parse, stops
/// the repair: guessing could throw away the only complete new store.
fn read_marker(path: &Path) -> Result<Option<Marker>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Io(format!(
                "the repair's marker {} cannot be read: {e}",
                path.display()
            )));
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(marker) => Ok(Some(marker)),
        // A marker written before its first byte reached the disk (the write was cut): it
        // said nothing yet, so the new store was not complete.
        Err(_) if bytes.is_empty() => Ok(Some(Marker::default())),
        Err(e) => Err(StoreError::Io(format!(
            "the repair's marker {} is garbled ({e}): look at it and at the store's siblings \
             before removing it and repairing again",
            path.display()
        ))),
    }
}

/// Writes the marker atomically (temporary file, fsync, rename, fsync of the directory).
fn write_marker(path: &Path, marker: &Marker) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Io(format!("writing {}: {e}", path.display()));
    let bytes = serde_json::to_vec(marker).map_err(|e| io(std::io::Error::other(e)))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        std::io::Write::write_all(&mut file, &bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    sync_parent(path);
    Ok(())
}

/// Removes what an unfinished repair built: the copy it salvaged from and the new store.
fn remove_leftovers(dir: &Path) {
    for suffix in [WORK, NEW] {
        let _ = std::fs::remove_dir_all(sibling(dir, suffix));
    }
}

/// Copies every entry of `old` that reads into `new`, tree by tree in key order; a tree whose
/// reading fails (an error or a panic inside sled) is copied up to there.
fn copy_trees(
    old: &sled::Db,
    new: &SledStore,
    unreadable: &mut Vec<String>,
) -> Result<(), StoreError> {
    let names = match quietly(|| old.tree_names()) {
        Ok(names) => names,
        Err(e) => {
            unreadable.push(format!("the list of trees: {e}"));
            return Ok(());
        }
    };
    for name in names {
        let label = String::from_utf8_lossy(&name).into_owned();
        if label.starts_with("__sled") {
            continue;
        }
        let tree = match quietly(|| old.open_tree(&name)) {
            Ok(Ok(tree)) => tree,
            Ok(Err(e)) => {
                unreadable.push(format!("tree {label:?}: {e}"));
                continue;
            }
            Err(e) => {
                unreadable.push(format!("tree {label:?}: {e}"));
                continue;
            }
        };
        let mut iter = tree.iter();
        let mut ops = Vec::new();
        let mut copied = 0u64;
        loop {
            let next = match quietly(|| iter.next()) {
                Ok(Some(Ok(pair))) => Some(pair),
                Ok(None) => None,
                Ok(Some(Err(e))) => {
                    unreadable.push(format!("tree {label:?} after {copied} entries: {e}"));
                    None
                }
                Err(e) => {
                    unreadable.push(format!("tree {label:?} after {copied} entries: {e}"));
                    None
                }
            };
            let Some((key, value)) = next else { break };
            ops.push(BatchOp::Insert(key.to_vec(), value.to_vec()));
            copied += 1;
            if ops.len() == BATCH {
                new.batch(&label, std::mem::take(&mut ops))?;
            }
        }
        if !ops.is_empty() {
            new.batch(&label, ops)?;
        }
    }
    Ok(())
}

/// `<dir>.damaged-<UTC time>`, with a number after it if that exists already.
fn free_name(dir: &Path) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let stamp = utc_stamp(secs);
    let first = sibling(dir, &format!("damaged-{stamp}"));
    if !first.exists() {
        return first;
    }
    (2u32..)
        .map(|n| sibling(dir, &format!("damaged-{stamp}-{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// `YYYYMMDDTHHMMSSZ` for `secs` since the Unix epoch (UTC; days to a civil date as in
/// Howard Hinnant's `civil_from_days`).
fn utc_stamp(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn sync_parent(dir: &Path) {
    if let Some(parent) = dir.parent()
        && let Ok(file) = std::fs::File::open(parent)
    {
        let _ = file.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_dates() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_796_622_245), "20261207T054405Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
    }
}
