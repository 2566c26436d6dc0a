//! The command line of `p2pctl logs` and `p2pctl diag` (clap derive; the doc comments are the
//! help text), beside [`crate::cli`].

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

/// `p2pctl logs`.
#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The least severe level shown (the node keeps nothing below info)
    #[arg(long, value_enum, default_value = "info")]
    pub(crate) level: LogLevel,
    /// Most lines, the most recent ones (at most 2000) [default: 200]
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<u32>,
    /// One JSON object per line: {seq, at_ms, level, target, text}
    #[arg(long)]
    pub(crate) json: bool,
}

/// `--level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogLevel {
    /// Errors only
    Error,
    /// Warnings and errors
    Warn,
    /// Everything the node keeps
    Info,
}

impl LogLevel {
    /// As `GetLogsRequest.min_level` takes it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
        }
    }
}

/// `p2pctl diag ...`
#[derive(Debug, Subcommand)]
pub(crate) enum DiagCommand {
    /// Write a .tar.gz for a bug report: status, configuration (no secrets), recent logs,
    /// metrics, peers, helpers, services and versions, with a README.txt saying what is in it
    Bundle {
        /// The archive to write (e.g. p2pos-diag.tar.gz); an existing file is not overwritten
        file: PathBuf,
        /// Overwrite FILE if it exists
        #[arg(long)]
        force: bool,
        /// Print JSON: {file, files, failed}
        #[arg(long)]
        json: bool,
    },
}
