//! The admin token read from the node's `gateway.token`, fresh: the node writes a new token at
//! every start (atomically: a new file), so a client that outlives a node restart presents the
//! new one. The file is read again only when it changed (one `stat` per call otherwise).

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use tonic::metadata::{Ascii, MetadataValue};

/// What identifies one version of the file: device, inode, size and modification time.
type Stamp = (u64, u64, u64, i64, i64);

/// The last version read, and the header its token gives.
type Cached = Option<(Stamp, MetadataValue<Ascii>)>;

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

/// `<data dir>/gateway.token`, and the `authorization` header its last read version gives.
#[derive(Debug, Clone)]
pub(crate) struct TokenFile {
    path: PathBuf,
    cached: Arc<Mutex<Cached>>,
}

impl TokenFile {
    /// The token file at `path` (read at the first call, not now: the node may not have
    /// written it yet).
    pub(crate) fn new(path: PathBuf) -> TokenFile {
        TokenFile {
            path,
            cached: Arc::default(),
        }
    }

    /// `Bearer <token>` of the file as it is now; the last one read if it cannot be read now
    /// (the node is restarting); `None` if it was never readable, or holds no valid token.
    pub(crate) fn header(&self) -> Option<MetadataValue<Ascii>> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return cached.as_ref().map(|(_, header)| header.clone());
        };
        let now = stamp(&meta);
        if let Some((seen, header)) = cached.as_ref()
            && *seen == now
        {
            return Some(header.clone());
        }
        let header = read_token(&self.path).and_then(|token| bearer(&token))?;
        *cached = Some((now, header.clone()));
        Some(header)
    }
}

/// The token in the file at `path`, trimmed; `None` if missing, unreadable or empty.
pub(crate) fn read_token(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

/// The `authorization` header value for `token`, marked sensitive; `None` if the token cannot
/// be a header value.
pub(crate) fn bearer(token: &str) -> Option<MetadataValue<Ascii>> {
    let mut value: MetadataValue<Ascii> = format!("Bearer {token}").parse().ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_file_is_read_again_and_a_missing_one_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.token");
        let file = TokenFile::new(path.clone());
        assert!(file.header().is_none(), "not written yet");
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(file.header().unwrap(), "Bearer first");
        // The node writes a new file at each start.
        let next = dir.path().join("next");
        std::fs::write(&next, "second-token\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(file.header().unwrap(), "Bearer second-token");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.header().unwrap(), "Bearer second-token");
        assert!(bearer("a\u{7f}b").is_none());
    }
}
