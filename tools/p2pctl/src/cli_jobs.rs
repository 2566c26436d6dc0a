//! The command line of `p2pctl jobs` (clap derive; the doc comments are the help text).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cli::JsonFlag;

/// `p2pctl jobs ...`
#[derive(Debug, Subcommand)]
pub(crate) enum JobsCommand {
    /// Run a WebAssembly program on a peer that lends, and print what it printed
    ///
    /// Its stdout and stderr are written as they are, and p2pctl exits with its exit code
    /// (1 when the job failed, 130 when it was cancelled). Ctrl-C cancels it, unless
    /// --detach. p2pctl's options may come anywhere before the program's first argument; from
    /// there on (or after `--`) everything is the program's.
    Run(Box<RunArgs>),
    /// The jobs this node submitted (newest first), and the runs it does for peers
    #[command(visible_alias = "ls")]
    List(JsonFlag),
    /// A job's state, limits, result and each of its runs
    Status {
        /// The job's id
        job: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Print a job's stdout (to stdout) and stderr (to stderr), once it has a result
    Logs {
        /// The job's id
        job: String,
        /// Wait until the job ends first
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a job that has not ended: its runs are stopped, its leases given back
    Cancel {
        /// The job's id
        job: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// `p2pctl jobs run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The program: a `.wasm` file (a WASI preview 1 core module or a WASI 0.2 command
    /// component) or a `.wat` file; at most 16 MiB
    pub(crate) module: PathBuf,
    /// Its arguments (argv[1..]); from the first of them on (or after `--`), everything is the
    /// program's, options included
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) args: Vec<String>,
    /// Run it on this peer (peer id); repeat for several, best first [default: any peer that
    /// lends]
    #[arg(long = "on", value_name = "PEER")]
    pub(crate) peers: Vec<String>,
    /// Run it on a member of this group (id or name)
    #[arg(long, value_name = "GROUP")]
    pub(crate) group: Option<String>,
    /// Its memory: `256M`, `1G`, `512K` (binary units), 1 MiB to 4 GiB [default: 256M]
    #[arg(long, value_name = "SIZE")]
    pub(crate) memory: Option<String>,
    /// Its wall time: `500ms`, `30s`, `2m`, at most 23h [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub(crate) timeout: Option<String>,
    /// A budget of WebAssembly instructions (fuel) [default: not metered]
    #[arg(long, value_name = "N")]
    pub(crate) fuel: Option<u64>,
    /// CPU cores leased on the runner, 0.1 to 64 [default: 1]
    #[arg(long, value_name = "CORES")]
    pub(crate) cpu: Option<f64>,
    /// How much of its stdout and of its stderr is kept, at most 8M [default: 1M]
    #[arg(long, value_name = "SIZE")]
    pub(crate) max_output: Option<String>,
    /// Run it on this many different peers and accept the result only if all agree (at most
    /// 7; needs --deterministic)
    #[arg(long, value_name = "N")]
    pub(crate) replicas: Option<u32>,
    /// No clock (time stands still at the Unix epoch) and seeded random numbers
    #[arg(long)]
    pub(crate) deterministic: bool,
    /// How many times a run whose runner was lost is placed again elsewhere, at most 5
    /// [default: 2]
    #[arg(long, value_name = "N")]
    pub(crate) retries: Option<u32>,
    /// Its standard input: a file, or `-` for p2pctl's own; at most 4 MiB [default: empty]
    #[arg(long, value_name = "FILE")]
    pub(crate) stdin: Option<PathBuf>,
    /// A file placed in its scratch directory (its "/"), at JOBPATH [default: LOCAL's file
    /// name]; repeat for several (at most 64, 16 MiB together)
    #[arg(long = "file", value_name = "LOCAL[:JOBPATH]")]
    pub(crate) files: Vec<String>,
    /// Write the files it created or changed into this directory (created if missing)
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Its name, for people and as argv[0] (1 to 64 characters) [default: job]
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// Submit it, print its id and return: it keeps running (follow it with `jobs status`
    /// and `jobs logs --follow`)
    #[arg(long)]
    pub(crate) detach: bool,
    /// Print the ended job as JSON instead of its output (the exit code is the same)
    #[arg(long)]
    pub(crate) json: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn run(args: &[&str]) -> RunArgs {
        let cli = Cli::parse_from(["p2pctl", "jobs", "run"].iter().chain(args));
        match cli.command {
            Command::Jobs(JobsCommand::Run(run)) => *run,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn run_passes_the_programs_arguments_on() {
        let r = run(&[
            "--on",
            "a",
            "--on",
            "b",
            "--memory",
            "64M",
            "hello.wat",
            "--json",
            "-x",
            "y",
            "--json",
        ]);
        assert_eq!(r.module, PathBuf::from("hello.wat"));
        assert_eq!(r.peers, ["a", "b"]);
        assert_eq!(r.memory.as_deref(), Some("64M"));
        assert_eq!(r.args, ["-x", "y", "--json"], "from the first argument on");
        assert!(r.json);
        let r = run(&["hello.wat", "--", "--json"]);
        assert_eq!(r.args, ["--json"]);
        assert!(!r.json);
        assert!(Cli::try_parse_from(["p2pctl", "jobs", "run"]).is_err());
    }
}
