//! The task-control service: helper applications (plug-ins, separate programs) that the node
//! starts, supervises, restarts and stops on behalf of apps, answering `p2pos.tasks.v1`.
//!
//! A helper runs without a shell, with only the environment its spec gives (an app's helper:
//! only `APP_*` variables) plus the `P2POS_*` variables (gateway address, a token scoped to the
//! helper's app id, its name, owner and directory), in its own process group and cgroup (with
//! its memory, CPU and process limits; rlimits where cgroups are not writable), confined by
//! Landlock to the system directories, its program's and its own directory (never the node's
//! secrets), and is killed, with everything it started, when it stops or the node dies. An
//! app's helper
//! stops when the app's last session ends (unless its spec says `outlive_session`).
//!
//! # Layout
//! - [`config`]: the `[tasks]` table of the node's configuration.
//! - [`service`]: the actor, its child spec and life cycle (ordered stop, panics, drop).
//! - `control`: the protocol's operations, one `match` over the request envelope.
//! - `lifecycle`: start, exit, restart with back-off and intensity, stop, session binding.
//! - `table`: the helper table the actor owns, and how an entry is shown and published.
//! - `limits`: helpers' resource limits, the per-app quotas and the admission check.
//! - `enforce`: how limits are enforced here (cgroups, else rlimits) and what one run gets.
//! - `cgroup`: helpers' cgroups (v1 or v2) by plain file writes: create, join, count OOM
//!   kills, kill everything in one, clean up an earlier run's.
//! - `rlimit`: the rlimit fallback.
//! - `fs_confine`: what of the file system a helper may reach (Landlock), so that it cannot
//!   read the node's secrets.
//! - `process`: spawning (environment, process group, parent-death signal), waiting,
//!   signalling; helper tokens and directories.
//! - [`shim`]: the small supervisor `p2posd` runs in front of each helper so that nothing a
//!   helper starts outlives the node.
//! - `program`: where a helper's program is, and whether it may run.
//! - `spec`: helper specs checked into domain types; names and app ids.
//! - `scope`: the caller's scope and the helper keys it may address.
//! - `restart`: exit descriptions, restart policy, back-off and intensity arithmetic.
//! - `logs`: the per-helper ring of output lines, its readers and followers.
//! - `persist`: specs and helper tokens in the node's store.
//! - `signal`: signal names.
//! - `jobs`: WebAssembly jobs submitted to peers and run for them (`p2pos.jobs.v1`), a service
//!   of its own ([`jobs_child_spec`]) that shares the helpers' process and cgroup machinery.
//! - [`error`]: the service's [`Error`] and its mapping to `ServiceError`.

mod cgroup;
pub mod config;
mod control;
mod enforce;
pub mod error;
mod fs_confine;
mod jobs;
mod lifecycle;
mod limits;
mod logs;
mod persist;
mod process;
mod program;
mod restart;
mod rlimit;
mod scope;
pub mod service;
pub mod shim;
mod signal;
mod spec;
mod table;

pub use config::{Config, Cores, DEFAULT_APP_CPU, DEFAULT_APP_MEMORY_BYTES, DEFAULT_APP_PIDS};
pub use error::Error;
pub use jobs::service::{NAME as JOBS_NAME, child_spec as jobs_child_spec};
pub use limits::{MAX_CPU, MAX_MEMORY_BYTES, MAX_PIDS, MIN_CPU, MIN_MEMORY_BYTES};
pub use logs::{FOLLOW_BUFFER, LOGS_CHANNEL, MAX_LINE_BYTES, MAX_LINES, MAX_RING_BYTES};
pub use persist::HELPERS_TREE;
pub use process::{
    ENV_APP_ID, ENV_GATEWAY, ENV_HELPER, ENV_HELPER_DIR, ENV_HELPER_OWNER, ENV_TOKEN, HELPERS_DIR,
    NODE_OWNER_DIR, TOKEN_PREFIX,
};
pub use restart::{FIRST_BACKOFF, MAX_BACKOFF};
pub use service::{
    MAX_LOG_READERS, MAX_RUNNING, MAX_RUNNING_PER_APP, MAX_SPECS, MAX_SPECS_PER_APP, NAME,
    STORE_CONTENTS, child_spec,
};
pub use spec::{
    APP_ENV_PREFIX, DEFAULT_MAX_RESTARTS, DEFAULT_RESTART_PERIOD_SECS, DEFAULT_STOP_TIMEOUT_MS,
    MAX_APP_ID_LEN, MAX_ARGS, MAX_MAX_RESTARTS, MAX_NAME_LEN, MAX_SPEC_BYTES, MAX_STOP_TIMEOUT_MS,
};
