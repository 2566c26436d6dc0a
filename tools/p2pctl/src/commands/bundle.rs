//! A diagnostic bundle's archive: named parts in a `.tar.gz` under one folder, a `README.txt`
//! that lists them and what could not be had, written atomically (a temporary file beside
//! FILE, then renamed onto it; without `--force` an existing FILE is never replaced, even one
//! that appears while the bundle is collected).

use std::{
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use flate2::{Compression, write::GzEncoder};

/// The folder every part is in, inside the archive.
pub(crate) const FOLDER: &str = "p2pos-diag";

/// The parts collected so far and the ones that failed.
#[derive(Debug, Default)]
pub(crate) struct Bundle {
    parts: Vec<Part>,
    failed: Vec<(&'static str, String)>,
    notes: Vec<String>,
}

#[derive(Debug)]
struct Part {
    name: &'static str,
    what: &'static str,
    bytes: Vec<u8>,
}

impl Bundle {
    /// Adds `name` (described as `what` in the README), or notes why it could not be had.
    pub(crate) fn add(
        &mut self,
        name: &'static str,
        what: &'static str,
        part: Result<Vec<u8>, String>,
    ) {
        match part {
            Ok(bytes) => self.parts.push(Part { name, what, bytes }),
            Err(why) => self.failed.push((name, why)),
        }
    }

    /// A line for the README's summary (e.g. the warnings seen by target).
    pub(crate) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// The names of the parts held, README.txt first.
    pub(crate) fn names(&self) -> Vec<&'static str> {
        std::iter::once("README.txt")
            .chain(self.parts.iter().map(|p| p.name))
            .collect()
    }

    /// The names of the parts that could not be had.
    pub(crate) fn failed(&self) -> Vec<&'static str> {
        self.failed.iter().map(|(name, _)| *name).collect()
    }

    /// What the bundle holds and what failed, for whoever opens it.
    pub(crate) fn readme(&self) -> String {
        let mut text = String::from(
            "P2P OS diagnostic bundle, written by `p2pctl diag bundle`.\n\
             Attach it to a bug report. It holds no token, key or secret of the node, and\n\
             helpers' arguments and environment values are left out; the logs and status name\n\
             this node's peer id, its peers and their addresses.\n\nFiles:\n",
        );
        text.push_str(&format!("  {:<14} this list\n", "README.txt"));
        for part in &self.parts {
            text.push_str(&format!("  {:<14} {}\n", part.name, part.what));
        }
        if self.failed.is_empty() {
            text.push_str("\nEvery part was collected.\n");
        } else {
            text.push_str("\nCould not be collected:\n");
            for (name, why) in &self.failed {
                text.push_str(&format!("  {name:<14} {why}\n"));
            }
        }
        if !self.notes.is_empty() {
            text.push('\n');
            for note in &self.notes {
                text.push_str(note);
                text.push('\n');
            }
        }
        text
    }

    /// Writes the archive to `path`: refused if it exists, unless `force`.
    pub(crate) fn write(&self, path: &Path, force: bool) -> anyhow::Result<()> {
        refuse_existing(path, force)?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".p2pos-diag-")
            .suffix(".tmp")
            .tempfile_in(&dir)
            .with_context(|| format!("cannot write in {}", dir.display()))?;
        self.write_tar_gz(temp.as_file())
            .with_context(|| format!("cannot write {}", temp.path().display()))?;
        let persisted = if force {
            temp.persist(path)
        } else {
            temp.persist_noclobber(path)
        };
        persisted.map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                exists(path)
            } else {
                anyhow::anyhow!("cannot write {}: {}", path.display(), e.error)
            }
        })?;
        // The rename is durable once the directory is synced.
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
        Ok(())
    }

    fn write_tar_gz(&self, file: &std::fs::File) -> std::io::Result<()> {
        let gz = GzEncoder::new(BufWriter::new(file), Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mtime = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let readme = self.readme();
        let entries = std::iter::once(("README.txt", readme.as_bytes()))
            .chain(self.parts.iter().map(|p| (p.name, p.bytes.as_slice())));
        for (name, bytes) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            // Only its owner reads what it holds, once unpacked too (the archive is 0600).
            header.set_mode(0o600);
            header.set_mtime(mtime);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            tar.append_data(&mut header, format!("{FOLDER}/{name}"), bytes)?;
        }
        let gz = tar.into_inner()?;
        let mut out = gz.finish()?;
        out.flush()?;
        file.sync_all()
    }
}

/// Fails if `path` exists and `force` is off.
pub(crate) fn refuse_existing(path: &Path, force: bool) -> anyhow::Result<()> {
    if !force && std::fs::symlink_metadata(path).is_ok() {
        return Err(exists(path));
    }
    Ok(())
}

fn exists(path: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{} exists; give another file or --force to overwrite it",
        path.display()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Read;

    use super::*;

    fn read(path: &Path) -> Vec<(String, String)> {
        let file = std::fs::File::open(path).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let name = entry.path().unwrap().display().to_string();
                let mut text = String::new();
                entry.read_to_string(&mut text).unwrap();
                (name, text)
            })
            .collect()
    }

    #[test]
    fn writes_parts_and_a_readme_and_never_overwrites_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.tar.gz");
        let mut bundle = Bundle::default();
        bundle.add("a.txt", "the a", Ok(b"hello".to_vec()));
        bundle.add("b.json", "the b", Err("the service is down".into()));
        bundle.write(&path, false).unwrap();
        let entries = read(&path);
        assert_eq!(entries[0].0, "p2pos-diag/README.txt");
        assert!(
            entries[0].1.contains("a.txt          the a"),
            "{}",
            entries[0].1
        );
        assert!(entries[0].1.contains("b.json         the service is down"));
        assert_eq!(entries[1], ("p2pos-diag/a.txt".into(), "hello".into()));

        let err = bundle.write(&path, false).unwrap_err().to_string();
        assert!(err.contains("exists"), "{err}");
        let mut again = Bundle::default();
        again.add("c.txt", "the c", Ok(b"new".to_vec()));
        again.write(&path, true).unwrap();
        assert_eq!(read(&path)[1].0, "p2pos-diag/c.txt");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
    }
}
