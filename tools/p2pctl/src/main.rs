//! `p2pctl`: the admin command line of a P2P OS node, talking to the node's gRPC gateway
//! through `p2pos-client`.
//!
//! On failure it prints one line `error: ...` to stderr and exits with status 1 (`jobs run`
//! exits with its job's exit code: see [`commands::ExitWith`]).
//!
//! # Layout
//! - [`cli`]: the clap definitions (global options, one variant per command); [`cli_diag`]:
//!   those of `logs` and `diag`; [`cli_jobs`]: those of `jobs`.
//! - [`commands`]: one module per command group (`node`, `overlay`, `apps`, `monitor`,
//!   `helpers`, `services`, `forward`, `groups` and its `pubsub`), `payload`: what `send`,
//!   `services call` and `groups publish` send, from the command line, stdin (`-`) or a file,
//!   and `duration`: durations people type (`500ms`, `10m`); `dashboard`: the dashboard's login
//!   link; `jobs` and its `job_view`: WebAssembly jobs on peers that lend, and `size`: sizes
//!   people type (`256M`).
//! - [`output`]: stdout lines, tables, JSON shapes and value formatting.
//! - [`progress`]: a spinner on stderr while a slow call runs (a terminal only, never with
//!   `--json`).

mod cli;
mod cli_diag;
mod cli_jobs;
mod commands;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow::Error::from(err)),
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) if err.is::<commands::ExitWith>() => match err.downcast::<commands::ExitWith>() {
            Ok(exit) => exit.report(),
            Err(err) => fail(&err),
        },
        Err(err) => fail(&err),
    }
}

/// Prints `error: <cause: cause: ...>` on one line.
fn fail(err: &anyhow::Error) -> ExitCode {
    let text = format!("{err:#}").replace('\n', " ");
    eprintln!("error: {text}");
    ExitCode::FAILURE
}

/// Whether stdout was closed by the reader (`p2pctl events | head`): not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
