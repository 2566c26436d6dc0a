//! `p2posd --repair`: a damaged store is moved aside whole (never deleted), whatever can still
//! be read is copied tree by tree, key by key into a new store, and what was recovered is
//! compared with what the store held at its last stop or start. The node's identity is
//! another file, never touched here.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use super::{
    BatchOp, Store, StoreError,
    census::{Census, MANIFEST, Manifest, copy_dir},
    sled_store::{SledStore, open_db, quietly, sibling},
};

/// Entries copied per batch.
const BATCH: usize = 1000;

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
#[derive(Debug, Clone)]
pub struct Repair {
    /// Where the damaged store was moved, as it was found; `None` if it was whole (then
    /// nothing was moved or changed).
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
}

/// Repairs the store in `dir` (the node must not run: the caller holds the data directory's
/// lock). A whole store is left as it is.
pub fn repair(dir: &Path) -> Result<Repair, StoreError> {
    let path = dir.display().to_string();
    let io = |what: &str, e: std::io::Error| StoreError::Io(format!("{what}: {e}"));
    if !dir.exists() {
        return Err(StoreError::Open {
            path,
            message: "there is no store there: nothing to repair".to_owned(),
        });
    }
    let damage = match SledStore::open(dir) {
        Ok(store) => {
            let recovered = quietly(|| Census::take(store.db()))
                .and_then(|r| r)
                .map_err(StoreError::Io)?;
            store.close()?;
            return Ok(Repair {
                moved_to: None,
                damage: String::new(),
                before: None,
                recovered,
                unreadable: Vec::new(),
            });
        }
        Err(StoreError::Damaged { what, .. }) => what,
        Err(other) => return Err(other),
    };
    let before = Manifest::read(dir)
        .ok()
        .flatten()
        .map(|m| (m.clean, m.census));
    let moved_to = free_name(dir);
    std::fs::rename(dir, &moved_to).map_err(|e| io("moving the damaged store aside", e))?;
    sync_parent(dir);

    // sled rewrites what it opens: salvage from a copy, so the store moved aside stays as found.
    let work = sibling(dir, "salvage");
    let fresh = sibling(dir, "new");
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&fresh);
    copy_dir(&moved_to, &work).map_err(|e| io("copying the damaged store", e))?;
    let _ = std::fs::remove_file(work.join(MANIFEST));
    let new = SledStore::open(&fresh)?;
    let mut unreadable = Vec::new();
    match open_db(&work) {
        Ok(old) => copy_trees(&old, &new, &mut unreadable)?,
        Err(e) => unreadable.push(format!("the whole store: sled cannot open it ({e})")),
    }
    let floor = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    new.set_id_floor(floor)?;
    let recovered = quietly(|| Census::take(new.db()))
        .and_then(|r| r)
        .map_err(StoreError::Io)?;
    new.close()?;
    drop(new);
    std::fs::rename(&fresh, dir).map_err(|e| io("putting the new store in place", e))?;
    sync_parent(dir);
    let _ = std::fs::remove_dir_all(&work);
    Ok(Repair {
        moved_to: Some(moved_to),
        damage,
        before,
        recovered,
        unreadable,
    })
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
