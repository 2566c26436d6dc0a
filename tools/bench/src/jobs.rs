//! Jobs across peers: a submitter and two runners that lend to it, `count` small WebAssembly
//! jobs (`userland/jobs/collatz.wat`) placed on the two, against the baseline of the same jobs
//! run by the sandbox alone on this machine (`p2posd __p2pos-wasm-job DIR`, as many at once
//! as the runners take together): what placement, leases, the network and the gateway add.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use p2pos_proto::jobs::v1::{JobSpec, Limits, Placement, State, SubmitRequest};
use p2pos_proto::resources::v1::{Amounts, Sharing};

use crate::TCP;
use crate::node::Node;
use crate::report::{Goal, Row};

/// The job: Collatz steps of its argument.
const MODULE: &str = include_str!("../../../userland/jobs/collatz.wat");
/// Cores each runner lends, and each job leases.
const LENT_CPU: f64 = 2.0;
const JOB_CPU: f64 = 0.25;
/// Jobs in flight at once: what the two runners take together.
const IN_FLIGHT: usize = (2.0 * LENT_CPU / JOB_CPU) as usize;

/// The figures: jobs per second through P2P OS and for the sandbox alone, and the median
/// time from submit to result.
pub(crate) async fn rows(bin: &Path, count: usize) -> anyhow::Result<Vec<Row>> {
    let nodes: Vec<Node> = futures::stream::iter(0..3)
        .map(|_| Node::start(bin, TCP))
        .buffered(3)
        .try_collect()
        .await?;
    let (ticket, submitter) = nodes[0].ticket().await?;
    let mut runners = Vec::new();
    for runner in &nodes[1..] {
        runner.dial(&ticket).await?;
        runners.push(runner.ticket().await?.1);
        runner
            .client()
            .resources()
            .share(Sharing {
                amounts: Some(Amounts {
                    cpu: LENT_CPU,
                    memory_bytes: 4 << 30,
                    disk_bytes: 0,
                }),
                peers: vec![submitter.clone()],
                ..Sharing::default()
            })
            .await
            .context("a runner lends")?;
    }
    let spec = |n: usize| JobSpec {
        module: MODULE.as_bytes().to_vec().into(),
        args: vec![n.to_string()],
        name: "collatz".into(),
        limits: Some(Limits {
            memory_bytes: 16 << 20,
            cpu: JOB_CPU,
            ..Limits::default()
        }),
        placement: Some(Placement {
            peers: runners.clone(),
            group: String::new(),
        }),
        ..JobSpec::default()
    };
    let client = nodes[0].client().clone();
    let one = |n: usize| {
        let client = client.clone();
        let spec = spec(n);
        async move {
            let started = Instant::now();
            let mut events = client
                .jobs()
                .submit(SubmitRequest {
                    spec: Some(spec),
                    detach: false,
                })
                .await?
                .into_inner();
            let mut last = None;
            while let Some(event) = events.message().await? {
                last = event.job;
            }
            let job = last.context("no event")?;
            if job.state != State::Done as i32 {
                bail!("job {n} ended {:?}: {}", job.state(), job.message);
            }
            anyhow::Ok(started.elapsed())
        }
    };
    // Warm: each runner has run one.
    for n in 1..=4 {
        one(n).await?;
    }
    let started = Instant::now();
    let mut times: Vec<Duration> = futures::stream::iter(1..=count)
        .map(one)
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await?;
    let through = count as f64 / started.elapsed().as_secs_f64();
    times.sort();
    let p50 = times[times.len() / 2].as_secs_f64() * 1000.0;

    let alone = sandbox_alone(bin, count).await?;
    let row = |scenario: &str, unit, p2pos, baseline| Row {
        scenario: scenario.to_owned(),
        unit,
        p2pos,
        baseline,
        ceiling: None,
        floor: None,
        goal: Goal::None,
    };
    Ok(vec![
        row(
            &format!("jobs on 2 runners ({count}, {IN_FLIGHT} at once) ÷ the sandbox alone"),
            "jobs/s",
            through,
            Some(alone),
        ),
        row("job submit → result, p50", "ms", p50, None),
    ])
}

/// Jobs per second of the sandbox process alone on this machine, `IN_FLIGHT` at once.
async fn sandbox_alone(bin: &Path, count: usize) -> anyhow::Result<f64> {
    let root = tempfile::tempdir()?;
    let dirs: Vec<_> = (1..=count)
        .map(|n| {
            let dir = root.path().join(n.to_string());
            std::fs::create_dir_all(dir.join("scratch"))?;
            std::fs::write(dir.join("module.wasm"), MODULE)?;
            let spec = serde_json::json!({
                "args": ["collatz", n.to_string()],
                "memory_bytes": 16 << 20,
                "timeout_ms": 30_000,
                "fuel": 0,
                "deterministic": false,
                "max_output_bytes": 1 << 20,
            });
            std::fs::write(dir.join("job.json"), spec.to_string())?;
            anyhow::Ok(dir)
        })
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    futures::stream::iter(dirs)
        .map(|dir| async move {
            let status = tokio::process::Command::new(bin)
                .arg("__p2pos-wasm-job")
                .arg(&dir)
                .status()
                .await?;
            if !status.success() {
                bail!("the sandbox failed on {}: {status}", dir.display());
            }
            anyhow::Ok(())
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await?;
    Ok(count as f64 / started.elapsed().as_secs_f64())
}
