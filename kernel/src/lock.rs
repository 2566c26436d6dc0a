//! One node per data directory: an exclusive `flock` on `DIR/p2posd.lock`, a file that holds
//! the pid of the process that has the lock.
//!
//! The lock is the process's: the kernel takes it before it reads the identity or opens the
//! store, and the system releases it when the process ends however it ends, so a file left by a
//! process that died blocks nothing (its pid is simply overwritten by the next start).

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

/// File name of the lock inside the data directory.
pub const LOCK_FILE: &str = "p2posd.lock";

/// How long to wait for the holder's pid when the lock was just taken and the pid is not
/// written yet.
const PID_WAIT: Duration = Duration::from_secs(1);

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("another p2posd (pid {}) is using {}", pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string()), dir.display())]
    InUse {
        /// The holder's pid, as its lock file says (`None` if it says nothing readable).
        pid: Option<u32>,
        /// The data directory.
        dir: PathBuf,
    },
    /// The lock file could not be opened, locked or written.
    #[error("lock file {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The data directory's lock, held until dropped (or the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: Flock<File>,
}

impl DataDirLock {
    /// Takes the lock of data directory `dir` (which must exist) and writes this process's
    /// pid into it; [`LockError::InUse`] with the holder's pid if another process has it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(LockError::InUse {
                    pid: holder_pid(&mut file),
                    dir: dir.to_owned(),
                });
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(io)?;
        Ok(DataDirLock { _file: file })
    }
}

/// The pid in a lock file another process holds; it writes it just after taking the lock, so
/// an empty file is read again for up to [`PID_WAIT`].
fn holder_pid(file: &mut File) -> Option<u32> {
    let until = Instant::now() + PID_WAIT;
    loop {
        let mut text = String::new();
        let read = file.rewind().and_then(|()| file.read_to_string(&mut text));
        if read.is_ok() && text.ends_with('\n') {
            return text.trim().parse().ok();
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_released_one_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let written = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(written, format!("{}\n", std::process::id()));
        // flock conflicts between two opens of the file, even in one process.
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "another p2posd (pid {}) is using {}",
                std::process::id(),
                dir.path().display()
            )
        );
        drop(first);
        let _again = DataDirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_stale_file_blocks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), "4194303 and more\n").unwrap();
        let _lock = DataDirLock::acquire(dir.path()).unwrap();
        let written = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(written, format!("{}\n", std::process::id()));
    }
}
