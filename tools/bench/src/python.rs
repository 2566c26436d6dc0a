//! `--python`: a Python app's figures through the node, over gRPC messages and over data
//! sockets, with the same Python code over a plain unix socket to this process's responder as
//! the client's own floor (`python/channel_bench.py` runs the scenarios; its far end is always
//! the bench's responder). The bulk figures are held to bare rust-libp2p's, measured in the same
//! run.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio::process::Command;

use crate::node::Pair;
use crate::pipe::{Pipe, respond};
use crate::raw::RawPair;
use crate::report::{Goal, Row};
use crate::scenarios;
use crate::{CHUNK, TCP, progress};

/// The Python figures of one path.
#[derive(Debug, Deserialize)]
struct Figures {
    bulk_mib_s: f64,
    rate_msg_s: f64,
    echo_p50_us: f64,
    echo_p99_us: f64,
}

/// What the script prints.
#[derive(Debug, Deserialize)]
struct Report {
    grpc: Figures,
    socket: Figures,
    floor: Figures,
}

/// How much the Python scenarios move.
pub(crate) struct Sizes {
    pub(crate) bulk_mib: u64,
    pub(crate) messages: u64,
    pub(crate) echoes: usize,
}

/// The python to run: `P2POS_PYTHON`, else the test suite's virtualenv, else `python3`.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("P2POS_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(python);
    }
    let venv = repo().join("target/python-venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the Python scenarios and returns their rows.
pub(crate) async fn rows(p2posd: &Path, sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    progress("bare rust-libp2p over TCP (the Python bulk baseline)");
    let raw_bulk = {
        let pair = RawPair::start(TCP).await?;
        scenarios::bulk(pair.open().await?, sizes.bulk_mib * 1024 * 1024, CHUNK).await?
    };

    progress("Python: gRPC messages, data sockets, and a plain unix socket");
    let pair = Pair::start(p2posd, TCP, true).await?;
    let dir = tempfile::tempdir()?;
    let floor = dir.path().join("floor.sock");
    let listener = UnixListener::bind(&floor)?;
    let responder = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (read, write) = conn.into_split();
            tokio::spawn(respond(Pipe::framed(read, write)));
        }
    });
    let script = repo().join("tools/bench/python/channel_bench.py");
    let python = python();
    let out = Command::new(&python)
        .arg(&script)
        .arg("--data-dir")
        .arg(pair.a_data_dir())
        .args(["--peer", pair.b_peer()])
        .arg("--floor")
        .arg(&floor)
        .args(["--bulk-mib", &sizes.bulk_mib.to_string()])
        .args(["--messages", &sizes.messages.to_string()])
        .args(["--echoes", &sizes.echoes.to_string()])
        .env("PYTHONPATH", repo().join("userland/python"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {}", python.display()))?;
    responder.abort();
    if !out.status.success() {
        bail!(
            "{} {} failed ({}); it needs grpcio and the generated stubs (userland/python/setup-venv, \
             or P2POS_PYTHON): {}",
            python.display(),
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let report: Report =
        serde_json::from_slice(&out.stdout).context("the Python script's report")?;
    Ok(python_rows(&report, raw_bulk))
}

fn python_rows(report: &Report, raw_bulk: f64) -> Vec<Row> {
    let row = |scenario: String, unit, p2pos, baseline, goal| Row {
        scenario,
        unit,
        p2pos,
        baseline: Some(baseline),
        ceiling: None,
        floor: None,
        goal,
    };
    let floor = &report.floor;
    let mut rows = Vec::new();
    for (over, figures) in [("gRPC", &report.grpc), ("data socket", &report.socket)] {
        let on_socket = over == "data socket";
        let goal = |goal| if on_socket { goal } else { Goal::None };
        rows.extend([
            row(
                format!("Python bulk, {over} (baseline: bare libp2p, Rust)"),
                "MiB/s",
                figures.bulk_mib_s,
                raw_bulk,
                goal(Goal::RatioAtLeast(0.6)),
            ),
            row(
                format!("Python 64 B one-way, one write each, {over} (baseline: plain socket)"),
                "msg/s",
                figures.rate_msg_s,
                floor.rate_msg_s,
                goal(Goal::RatioAtLeast(0.5)),
            ),
            row(
                format!("Python echo 64 B, p50, {over} (baseline: plain socket)"),
                "µs",
                figures.echo_p50_us,
                floor.echo_p50_us,
                goal(Goal::RatioAtMost(2.5)),
            ),
            row(
                format!("Python echo 64 B, p99, {over} (baseline: plain socket)"),
                "µs",
                figures.echo_p99_us,
                floor.echo_p99_us,
                Goal::None,
            ),
        ]);
    }
    rows.push(Row {
        scenario: "Python bulk, plain socket (baseline: bare libp2p, Rust)".to_owned(),
        unit: "MiB/s",
        p2pos: floor.bulk_mib_s,
        baseline: Some(raw_bulk),
        ceiling: None,
        floor: None,
        goal: Goal::None,
    });
    rows
}
