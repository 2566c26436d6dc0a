//! Whether a store is whole, decided before sled opens it: sled's recovery rewrites files it
//! opens (after an unclean stop it truncates a segment after the first bad record), so
//! whatever needs sled to open the store is done on a copy, and the store itself is opened
//! only once the copy opened and held what it should.
//!
//! - No store: a new one. No manifest (a store from before manifests): the copy must open
//!   and every entry read; there is nothing to compare with.
//! - A manifest that counted entries but no `db` file, or an empty one: damage.
//! - A clean stop whose files still have the manifest's digests: whole, nothing more to do.
//! - A clean stop whose files changed: the copy must hold exactly the manifest's census.
//! - An unclean stop (the manifest of the last start): the copy opens and every entry reads,
//!   and no tree [`shrunk`](super::census::shrunk) below the floor the node recorded.
//!
//! Also [`preflight`], which the kernel runs before anything: a data directory whose node has
//! an identity but no store, or the leftovers of an interrupted repair, does not start.

use std::path::{Path, PathBuf};

use super::{
    StoreError,
    census::{
        Census, MANIFEST, Manifest, ManifestError, copy_dir, dir_size, file_digests, free_space,
        quietly,
    },
    salvage::{MARKER, NEW},
    sled_store::{open_db, sibling},
};

/// How a store was found whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// There was no store.
    New,
    /// A clean stop, its files unchanged: no copy was needed.
    Unchanged(Census),
    /// Opened on a copy (a clean stop with changed files, an unclean stop, no manifest) and
    /// found whole.
    OnCopy(Census),
}

/// The manifest of `dir`: garbled is damage, unreadable is an error that is not.
pub(super) fn manifest(dir: &Path) -> Result<Option<Manifest>, StoreError> {
    let path = dir.display().to_string();
    Manifest::read(dir).map_err(|e| match e {
        ManifestError::Garbled(what) => StoreError::Damaged { path, what },
        ManifestError::CannotRead(e) => StoreError::Open {
            path,
            message: format!("its manifest {MANIFEST} cannot be read ({e})"),
        },
    })
}

/// Decides whether the store in `dir` is whole without changing a byte of it: the copy it may
/// make (`<dir>.check`) is removed before it returns.
pub fn check(dir: &Path) -> Result<Checked, StoreError> {
    let path = dir.display().to_string();
    let copy = sibling(dir, "check");
    // A copy left by a start that was killed while checking.
    let _ = std::fs::remove_dir_all(&copy);
    if !dir.exists() {
        return Ok(Checked::New);
    }
    let damaged = |what: String| StoreError::Damaged {
        path: path.clone(),
        what,
    };
    let Some(manifest) = self::manifest(dir)? else {
        // A store from before manifests (or that lost its manifest): nothing to compare
        // with, but sled still opens it on a copy first. A node writes its manifest when it
        // opens its store, before it makes its identity: with an identity there, a store with
        // no manifest that holds nothing lost it all.
        let identity = has_identity(dir);
        if !dir.join("db").exists() {
            if identity {
                return Err(damaged(
                    "it has neither its manifest nor its data file db, though the node has an \
                     identity"
                        .into(),
                ));
            }
            return Ok(Checked::New);
        }
        let found = census_of_copy(dir, &copy);
        let _ = std::fs::remove_dir_all(&copy);
        let found = found?;
        if identity && found.entries() == 0 {
            return Err(damaged(
                "it has no manifest and holds nothing, though the node has an identity".into(),
            ));
        }
        return Ok(Checked::OnCopy(found));
    };
    let io = |e: std::io::Error| StoreError::Open {
        path: path.clone(),
        message: e.to_string(),
    };
    let held = manifest.floors().values().sum::<u64>();
    if held > 0 {
        match std::fs::metadata(dir.join("db")) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(damaged(format!(
                    "its data file db is missing, though it held {held} entries"
                )));
            }
            Err(e) => return Err(io(e)),
            Ok(meta) if meta.len() == 0 => {
                return Err(damaged(format!(
                    "its data file db is empty, though it held {held} entries"
                )));
            }
            Ok(_) => {}
        }
    }
    if manifest.clean && file_digests(dir).map_err(io)? == manifest.files {
        return Ok(Checked::Unchanged(manifest.census));
    }
    let found = census_of_copy(dir, &copy);
    let _ = std::fs::remove_dir_all(&copy);
    let found = found?;
    if manifest.clean {
        if found != manifest.census {
            return Err(damaged(found.difference(&manifest.census)));
        }
        tracing::info!(store = %path, "the store's files changed since its clean stop, but it holds all it held");
    } else if let Some(what) = found.shrunk_below(&manifest.floors) {
        // Only floors the node kept: a manifest from before them has the census of its start,
        // which the node's own removals may have gone far below since.
        return Err(damaged(what));
    }
    Ok(Checked::OnCopy(found))
}

/// Copies the store `dir` to `copy` (if there is room), opens the copy and reads every entry.
fn census_of_copy(dir: &Path, copy: &Path) -> Result<Census, StoreError> {
    let path = dir.display().to_string();
    let io = |e: std::io::Error| StoreError::Open {
        path: path.clone(),
        message: e.to_string(),
    };
    enough_room(dir, 1)?;
    copy_dir(dir, copy).map_err(io)?;
    let _ = std::fs::remove_file(copy.join(MANIFEST));
    let db = open_db(copy).map_err(|e| match e {
        StoreError::Damaged { what, .. } => StoreError::Damaged {
            path: path.clone(),
            what,
        },
        other => other,
    })?;
    let census = quietly(|| Census::take(&db))
        .and_then(|r| r)
        .map_err(|what| StoreError::Damaged {
            path: path.clone(),
            what,
        })?;
    drop(db);
    Ok(census)
}

/// Fails unless the file system of `dir` has room for `copies` copies of it (and 64 MiB more).
pub(super) fn enough_room(dir: &Path, copies: u64) -> Result<(), StoreError> {
    let path = dir.display().to_string();
    let io = |e: std::io::Error| StoreError::Open {
        path: path.clone(),
        message: e.to_string(),
    };
    let need = dir_size(dir)
        .map_err(io)?
        .saturating_mul(copies)
        .saturating_add(64 << 20);
    let free = free_space(dir.parent().unwrap_or(dir)).map_err(io)?;
    if free < need {
        return Err(StoreError::Open {
            path,
            message: format!(
                "checking it needs a copy of it: {} MiB free, {} MiB needed; free some space",
                free >> 20,
                need >> 20
            ),
        });
    }
    Ok(())
}

/// Whether the node whose store is `dir` has an identity (in the data directory around it).
pub(super) fn has_identity(dir: &Path) -> bool {
    dir.parent()
        .is_some_and(|d| d.join(crate::identity::KEY_FILE).exists())
}

/// Refuses a data directory in which the store cannot simply be opened or made: a repair was
/// interrupted (its marker or new store is left), or the node has an identity but its store
/// is gone (a new, empty one would be a silent reset).
pub fn preflight(data_dir: &Path) -> Result<(), StoreError> {
    let dir = data_dir.join(super::DIR);
    let path = dir.display().to_string();
    let left: Vec<PathBuf> = [sibling(&dir, MARKER), sibling(&dir, NEW)]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    if !left.is_empty() {
        let names: Vec<String> = left.iter().map(|p| p.display().to_string()).collect();
        return Err(StoreError::Damaged {
            path,
            what: format!(
                "a repair of it was interrupted ({} left)",
                names.join(" and ")
            ),
        });
    }
    if has_identity(&dir) && !dir.exists() {
        return Err(StoreError::Damaged {
            path,
            what: format!(
                "it is missing, though the node has an identity ({}): it was lost or moved away",
                crate::identity::KEY_FILE
            ),
        });
    }
    Ok(())
}
