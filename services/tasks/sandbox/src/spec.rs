//! The job directory's contract: what the node asks for (`JobSpec`), what the sandbox answers
//! (`Report`, `Outcome`), and how running a job can fail before it has an outcome (`Error`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What the node asks of one job: `job.json` in the job directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job's argv; `args[0]` is the program name.
    pub args: Vec<String>,
    /// Cap on all linear memories and tables of the job together, in bytes (a table element
    /// counts as [`TABLE_ELEMENT_BYTES`]).
    pub memory_bytes: u64,
    /// Wall time the job may run, in milliseconds (compiling the module is not counted).
    pub timeout_ms: u64,
    /// Fuel budget (about one unit per WebAssembly instruction); 0 runs without fuel metering.
    pub fuel: u64,
    /// Fixed clocks and seeded randomness, so that two runs of the same job give the same output.
    pub deterministic: bool,
    /// Most bytes kept of stdout, and of stderr, each; the rest is dropped and the report says so.
    pub max_output_bytes: u64,
    /// The largest file the job process may write (`RLIMIT_FSIZE`; a write past it fails with
    /// `EFBIG`); 0: not limited. Applied only in the job's own process.
    #[serde(default)]
    pub max_file_bytes: u64,
    /// CPU seconds the job process may use in all (`RLIMIT_CPU`: past it the kernel kills it
    /// with `SIGXCPU`); 0: not limited. Applied only in the job's own process.
    #[serde(default)]
    pub max_cpu_secs: u64,
}

/// What a table element counts for against [`JobSpec::memory_bytes`]: a pointer.
pub const TABLE_ELEMENT_BYTES: u64 = 8;

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It ended by itself: returned from `_start` (code 0), called `proc_exit` (its code), or a
    /// component's `run` returned ok (0) or err (1).
    Exited,
    /// A memory or table growth past the memory limit was refused and the job then trapped or
    /// exited non-zero; or its initial memory was already past the limit.
    OutOfMemory,
    /// It was still running at the wall-time limit.
    TimedOut,
    /// It used up its fuel budget.
    OutOfFuel,
    /// It trapped (the message says how).
    Trapped,
    /// The module did not parse, validate or compile, or imports something the sandbox does not
    /// provide (the message names it).
    InvalidModule,
}

/// What the sandbox answers: `result.json` in the job directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// How the job ended.
    pub outcome: Outcome,
    /// The job's exit code when [`Outcome::Exited`], else -1.
    pub exit_code: i32,
    /// One line for people: what happened (the trap, the refused growth, the missing import).
    pub message: String,
    /// Wall time of the run, compiling included, in milliseconds.
    pub wall_ms: u64,
    /// CPU time (user and system) of this process, in milliseconds.
    pub cpu_ms: u64,
    /// The largest total linear memory the job had at once, in bytes.
    pub memory_peak_bytes: u64,
    /// Fuel the job used; 0 when it ran without fuel metering.
    pub fuel_used: u64,
    /// Whether stdout was cut at [`JobSpec::max_output_bytes`].
    pub stdout_truncated: bool,
    /// Whether stderr was cut at [`JobSpec::max_output_bytes`].
    pub stderr_truncated: bool,
}

/// Why a job could not be run at all (as opposed to a job that ran and failed: see [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the job directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// `job.json` is not a valid [`JobSpec`].
    #[error("{}: {source}", path.display())]
    Spec {
        /// The spec file.
        path: PathBuf,
        /// What is wrong with it.
        source: serde_json::Error,
    },
    /// The spec asks for something the sandbox cannot do.
    #[error("invalid job spec: {0}")]
    InvalidSpec(String),
    /// The WebAssembly engine or the WASI context could not be set up.
    #[error("cannot set up the sandbox: {0}")]
    Setup(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
