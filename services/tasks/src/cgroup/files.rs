//! Writing a cgroup's files, and how long emptying a group may take: what both the cgroup
//! module and its emptying part use.

use std::{io, path::Path, time::Duration};

/// How long emptying a group may take before it is given up (and left for the next start).
pub(super) const KILL_DEADLINE: Duration = Duration::from_secs(2);

/// `e`, naming the file it happened on.
pub(super) fn io_context(path: &Path, e: io::Error) -> String {
    format!("{}: {e}", path.display())
}

/// Writes `value` to the cgroup file at `path`.
pub(super) fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| io_context(path, e))
}
