//! `p2pos-bench`: measures P2P OS (app → gRPC → node → network → node → gRPC → app, two real
//! daemons on loopback) against two bare rust-libp2p swarms with the same transport stack, with
//! plain loopback TCP between two processes as the ceiling, and through two relay processes as
//! the floor of P2P OS's process hops.
//!
//! # Layout
//! - [`pipe`]: a framed bidirectional stream whatever carries it, and the far-end responder.
//! - [`scenarios`]: the drivers (bulk, echo, message rate, first message), the same for all.
//! - [`node`]: real `p2posd` processes driven through `p2pos-client`.
//! - [`groups`]: group pubsub on N nodes, against a direct channel between two of them.
//! - [`jobs`]: WebAssembly jobs on two runners, against the sandbox alone.
//! - [`python`]: a Python app's channels, over gRPC messages and data sockets (`--python`).
//! - [`raw`]: the bare rust-libp2p baseline.
//! - [`ceiling`]: plain TCP to a child process, and through two relay processes.
//! - [`report`]: the table and the JSON.

mod ceiling;
mod control;
mod groups;
mod jobs;
mod node;
mod pipe;
mod python;
mod raw;
mod report;
mod scenarios;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::ceiling::{RelayChain, TcpPeer};
use crate::node::{Node, Pair, Transport};
use crate::raw::RawPair;
use crate::report::{Goal, Row};

const TCP: &str = "/ip4/127.0.0.1/tcp/0";
const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";
/// Bulk write size.
const CHUNK: usize = 64 * 1024;
/// Echo and message size.
const SMALL: usize = 64;
/// Channels in the many-channel rate scenario.
const MANY: usize = 16;
/// How long an idle node runs before its memory is read.
const SETTLE: Duration = Duration::from_secs(2);

/// Benchmarks P2P OS against bare rust-libp2p and plain loopback TCP.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The p2posd binary (default: next to this executable).
    #[arg(long)]
    p2posd: Option<PathBuf>,
    /// MiB sent in the bulk scenarios, in 64 KiB writes.
    #[arg(long, default_value_t = 1024)]
    bulk_mib: u64,
    /// Round trips of the 64-byte echo.
    #[arg(long, default_value_t = 10_000)]
    echoes: usize,
    /// 64-byte messages sent in each rate scenario.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Fresh connections timed in the dial scenario (the median is reported).
    #[arg(long, default_value_t = 5)]
    dials: usize,
    /// Control calls (`ListPeers`, `GetInfo`) timed idle and under load.
    #[arg(long, default_value_t = 2000)]
    control_calls: usize,
    /// Group sizes of the group pubsub scenario, in nodes (comma-separated; 0: none). Each
    /// times 1000/N messages (100 to 200) from every member to every other.
    #[arg(long, value_delimiter = ',', default_value = "5")]
    groups: Vec<usize>,
    /// Milliseconds between two publications (and two frames of the direct channel it is
    /// compared with) in the group pubsub scenario. Default: 20, or 2 per member past ten.
    #[arg(long)]
    group_interval_ms: Option<u64>,
    /// Run only the group pubsub scenario.
    #[arg(long)]
    groups_only: bool,
    /// Small WebAssembly jobs run on two runners in the jobs scenario (0: none).
    #[arg(long, default_value_t = 100)]
    jobs: usize,
    /// Run only the jobs scenario.
    #[arg(long)]
    jobs_only: bool,
    /// Run only the Python scenarios: a Python app's channel over gRPC messages and over a
    /// data socket, against the same Python code over a plain unix socket (needs a python with
    /// grpcio and the generated stubs: `P2POS_PYTHON`, or `userland/python/setup-venv`'s).
    #[arg(long)]
    python: bool,
    /// MiB a Python bulk scenario sends.
    #[arg(long, default_value_t = 256)]
    python_bulk_mib: u64,
    /// 64-byte messages a Python rate scenario sends (a tenth over gRPC messages).
    #[arg(long, default_value_t = 200_000)]
    python_messages: u64,
    /// Round trips of a Python echo.
    #[arg(long, default_value_t = 2000)]
    python_echoes: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Option<Hidden>,
}

#[derive(Subcommand, Debug)]
enum Hidden {
    /// The TCP ceiling's far end (used by the benchmark itself).
    #[command(hide = true)]
    TcpPeer,
    /// A relay of the TCP floor: copies each connection to `127.0.0.1:TO` (used by the
    /// benchmark itself).
    #[command(hide = true)]
    TcpRelay { to: u16 },
}

/// Figures of one system for the scenarios it runs.
#[derive(Default)]
struct Figures {
    bulk_tcp: f64,
    bulk_quic: f64,
    echo_p50: f64,
    echo_p99: f64,
    rate_one: f64,
    rate_flushed: f64,
    rate_many: f64,
    first_ms: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Hidden::TcpPeer) => return ceiling::serve().await,
        Some(Hidden::TcpRelay { to }) => return ceiling::relay(to).await,
        None => {}
    }
    // Interrupted, the run is dropped, and with it every node and child it started.
    tokio::select! {
        outcome = run(args) => outcome,
        signal = interrupted() => anyhow::bail!("interrupted by {signal}; the nodes were stopped"),
    }
}

/// The first SIGINT or SIGTERM.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Every scenario, then the report.
async fn run(args: Args) -> anyhow::Result<()> {
    let p2posd = node::find_p2posd(args.p2posd.clone())?;
    if args.python {
        let sizes = python::Sizes {
            bulk_mib: args.python_bulk_mib,
            messages: args.python_messages,
            echoes: args.python_echoes,
        };
        let rows = python::rows(&p2posd, &sizes).await?;
        if args.json {
            println!("{}", report::json(&rows, json!({ "python": true })));
        } else {
            println!("{}", report::table(&rows));
        }
        return Ok(());
    }
    let mut rows = match args.groups_only || args.jobs_only {
        true => Vec::new(),
        false => channel_rows(&args, &p2posd).await?,
    };
    let mut groups = Vec::new();
    let group_sizes = match args.jobs_only {
        true => Vec::new(),
        false => args.groups.clone(),
    };
    for &size in group_sizes.iter().filter(|&&size| size > 0) {
        progress(&format!("P2P OS group pubsub, {size} nodes"));
        let interval = args.group_interval_ms.map_or_else(
            || groups::interval_for(size),
            |ms| Duration::from_millis(ms.max(1)),
        );
        let figures = groups::run(&p2posd, size, groups::messages_for(size), interval).await?;
        eprintln!("p2pos-bench: {}", figures.summary());
        rows.extend(figures.rows());
        groups.push(figures.details());
    }
    if args.jobs > 0 && !args.groups_only {
        progress(&format!("P2P OS jobs, {} on two runners", args.jobs));
        rows.extend(jobs::rows(&p2posd, args.jobs).await?);
    }
    if args.json {
        let machine = json!({
            "cpus": std::thread::available_parallelism().map_or(0, usize::from),
            "bulk_mib": args.bulk_mib,
            "echoes": args.echoes,
            "messages": args.messages,
            "dials": args.dials,
            "groups_only": args.groups_only,
        });
        let mut out = report::json(&rows, machine);
        out["groups"] = groups.into();
        println!("{out}");
    } else {
        println!("{}", report::table(&rows));
    }
    Ok(())
}

/// The channel, node and control-plane scenarios against their baselines.
async fn channel_rows(args: &Args, p2posd: &Path) -> anyhow::Result<Vec<Row>> {
    let bulk = args.bulk_mib * 1024 * 1024;

    let mut starts = Vec::new();
    let mut grpc = Figures::default();
    let mut socket = Figures::default();
    for (transport, figures) in [
        (Transport::Grpc, &mut grpc),
        (Transport::Socket, &mut socket),
    ] {
        let over = transport.describe();
        progress(&format!("P2P OS over TCP, {over}"));
        {
            let pair = Pair::start(p2posd, TCP, true).await?;
            starts.extend(pair.start_times());
            let open = || pair.open(transport);
            *figures = tcp_figures(open, args).await?;
        }
        progress(&format!("P2P OS over QUIC, {over}"));
        {
            let pair = Pair::start(p2posd, QUIC, true).await?;
            starts.extend(pair.start_times());
            figures.bulk_quic = scenarios::bulk(pair.open(transport).await?, bulk, CHUNK).await?;
        }
        progress(&format!("P2P OS dial + first message, {over}"));
        let mut firsts = Vec::with_capacity(args.dials);
        for _ in 0..args.dials {
            let pair = Pair::start(p2posd, TCP, false).await?;
            starts.extend(pair.start_times());
            let started = std::time::Instant::now();
            pair.dial().await?;
            let mut pipe = pair.open(transport).await?;
            scenarios::first_message(&mut pipe, SMALL).await?;
            firsts.push(started.elapsed());
        }
        figures.first_ms = scenarios::median_ms(&mut firsts);
    }

    progress("P2P OS idle node");
    let idle = Node::start(p2posd, TCP).await?;
    starts.push(idle.start_to_answer);
    tokio::time::sleep(SETTLE).await;
    let idle_rss = idle.rss_mib()?;
    progress("P2P OS control calls, idle and under load");
    let mut load = Vec::new();
    for _ in 0..4 {
        load.push(idle.connect().await?);
    }
    let (control_idle, control_loaded) =
        control::control_plane(idle.client(), &idle.target()?, load, args.control_calls).await?;
    drop(idle);
    let start_ms = scenarios::median_ms(&mut starts);

    progress("bare rust-libp2p over TCP");
    let mut base = Figures::default();
    {
        let pair = RawPair::start(TCP).await?;
        base.bulk_tcp = scenarios::bulk(pair.open().await?, bulk, CHUNK).await?;
        (base.echo_p50, base.echo_p99) =
            scenarios::echo(pair.open().await?, args.echoes, SMALL).await?;
        base.rate_one =
            scenarios::rate(vec![pair.open().await?], args.messages, SMALL, false).await?;
        base.rate_flushed =
            scenarios::rate(vec![pair.open().await?], args.messages, SMALL, true).await?;
        let mut pipes = Vec::with_capacity(MANY);
        for _ in 0..MANY {
            pipes.push(pair.open().await?);
        }
        base.rate_many = scenarios::rate(pipes, args.messages, SMALL, false).await?;
    }
    progress("bare rust-libp2p over QUIC");
    {
        let pair = RawPair::start(QUIC).await?;
        base.bulk_quic = scenarios::bulk(pair.open().await?, bulk, CHUNK).await?;
    }
    progress("bare rust-libp2p dial + first message");
    let mut firsts = Vec::with_capacity(args.dials);
    for _ in 0..args.dials {
        firsts.push(RawPair::first_message(TCP, SMALL).await?);
    }
    base.first_ms = scenarios::median_ms(&mut firsts);

    progress("plain loopback TCP");
    let top = {
        let peer = TcpPeer::start().await?;
        let mut top = tcp_figures(|| peer.open(), args).await?;
        let mut firsts = Vec::with_capacity(args.dials);
        for _ in 0..args.dials {
            firsts.push(peer.first_message(SMALL).await?);
        }
        top.first_ms = scenarios::median_ms(&mut firsts);
        top
    };
    progress("plain loopback TCP through two relay processes");
    let floor = {
        let chain = RelayChain::start().await?;
        tcp_figures(|| chain.open(), args).await?
    };

    let mut rows = rows(&grpc, &socket, &base, &top, &floor);
    rows.extend(node_rows(idle_rss, start_ms));
    rows.extend(control_rows(control_idle, control_loaded));
    Ok(rows)
}

/// Bulk, echo and message rates over plain TCP pipes from `open` (no TLS, no multiplexing).
async fn tcp_figures<F, Fut>(open: F, args: &Args) -> anyhow::Result<Figures>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<pipe::Pipe>>,
{
    let mut figures = Figures {
        bulk_tcp: scenarios::bulk(open().await?, args.bulk_mib * 1024 * 1024, CHUNK).await?,
        ..Figures::default()
    };
    (figures.echo_p50, figures.echo_p99) =
        scenarios::echo(open().await?, args.echoes, SMALL).await?;
    figures.rate_one = scenarios::rate(vec![open().await?], args.messages, SMALL, false).await?;
    figures.rate_flushed = scenarios::rate(vec![open().await?], args.messages, SMALL, true).await?;
    let mut pipes = Vec::with_capacity(MANY);
    for _ in 0..MANY {
        pipes.push(open().await?);
    }
    figures.rate_many = scenarios::rate(pipes, args.messages, SMALL, false).await?;
    Ok(figures)
}

/// The channel rows: over gRPC messages, then over data sockets, against the same baselines.
fn rows(
    grpc: &Figures,
    socket: &Figures,
    base: &Figures,
    top: &Figures,
    floor: &Figures,
) -> Vec<Row> {
    let row = |scenario: String, unit, p2pos, baseline, tcp: Option<(f64, f64)>, goal| Row {
        scenario,
        unit,
        p2pos,
        baseline,
        ceiling: tcp.map(|(ceiling, _)| ceiling),
        floor: tcp.map(|(_, floor)| floor),
        goal,
    };
    let mut rows = Vec::new();
    for (over, p2pos) in [("gRPC", grpc), ("data socket", socket)] {
        let on_socket = std::ptr::eq(p2pos, socket);
        // Over a data socket, echo is held to the floor of P2P OS's process hops.
        let (echo_p50, echo_p99) = if on_socket {
            (Goal::FloorRatioAtMost(1.3), Goal::FloorRatioAtMost(1.5))
        } else {
            (Goal::RatioAtMost(2.0), Goal::RatioAtMost(3.0))
        };
        rows.extend([
            row(
                format!("bulk, 1 channel, TCP, {over}"),
                "MiB/s",
                p2pos.bulk_tcp,
                Some(base.bulk_tcp),
                Some((top.bulk_tcp, floor.bulk_tcp)),
                Goal::RatioAtLeast(0.8),
            ),
            row(
                format!("bulk, 1 channel, QUIC, {over}"),
                "MiB/s",
                p2pos.bulk_quic,
                Some(base.bulk_quic),
                None,
                Goal::RatioAtLeast(0.8),
            ),
            row(
                format!("echo 64 B, p50, {over}"),
                "µs",
                p2pos.echo_p50,
                Some(base.echo_p50),
                Some((top.echo_p50, floor.echo_p50)),
                echo_p50,
            ),
            row(
                format!("echo 64 B, p99, {over}"),
                "µs",
                p2pos.echo_p99,
                Some(base.echo_p99),
                Some((top.echo_p99, floor.echo_p99)),
                echo_p99,
            ),
            row(
                format!("64 B messages, 1 channel, {over}"),
                "msg/s",
                p2pos.rate_one,
                Some(base.rate_one),
                Some((top.rate_one, floor.rate_one)),
                Goal::RatioAtLeast(0.5),
            ),
            row(
                format!("64 B messages, 1 channel, one write each, {over}"),
                "msg/s",
                p2pos.rate_flushed,
                Some(base.rate_flushed),
                Some((top.rate_flushed, floor.rate_flushed)),
                Goal::None,
            ),
            row(
                format!("64 B messages, 16 channels, {over}"),
                "msg/s",
                p2pos.rate_many,
                Some(base.rate_many),
                Some((top.rate_many, floor.rate_many)),
                Goal::RatioAtLeast(0.5),
            ),
            row(
                format!("dial + first message, TCP, {over}"),
                "ms",
                p2pos.first_ms,
                Some(base.first_ms),
                Some((top.first_ms, f64::NAN)),
                if on_socket {
                    Goal::RatioAtMost(2.0)
                } else {
                    Goal::None
                },
            ),
        ]);
    }
    rows.push(row(
        "64 B messages, one write each, data socket (baseline: gRPC batches)".to_owned(),
        "msg/s",
        socket.rate_flushed,
        Some(grpc.rate_one),
        None,
        Goal::RatioAtLeast(1.0),
    ));
    rows
}

/// The node's own rows: its memory when idle, and how soon it answers.
fn node_rows(idle_rss: f64, start_ms: f64) -> Vec<Row> {
    let row = |scenario: &str, p2pos, unit, goal| Row {
        scenario: scenario.to_owned(),
        unit,
        p2pos,
        baseline: None,
        ceiling: None,
        floor: None,
        goal,
    };
    vec![
        row(
            "idle node, resident memory",
            idle_rss,
            "MiB",
            Goal::AtMost(20.0),
        ),
        row(
            "start to answering gateway (median)",
            start_ms,
            "ms",
            Goal::AtMost(150.0),
        ),
    ]
}

/// The control-plane rows: under load, with the idle node as the baseline.
fn control_rows(idle: (f64, f64), loaded: (f64, f64)) -> Vec<Row> {
    let row = |scenario: &str, loaded, idle| Row {
        scenario: scenario.to_owned(),
        unit: "µs",
        p2pos: loaded,
        baseline: Some(idle),
        ceiling: None,
        floor: None,
        goal: Goal::RatioAtMost(2.0),
    };
    vec![
        row(
            "ListPeers/GetInfo under load, p50 (baseline: idle)",
            loaded.0,
            idle.0,
        ),
        row(
            "ListPeers/GetInfo under load, p99 (baseline: idle)",
            loaded.1,
            idle.1,
        ),
    ]
}

/// A progress line on stderr, so `--json` output stays clean.
fn progress(what: &str) {
    eprintln!("p2pos-bench: {what}...");
}
