//! The drivers of the benchmarks, the same for every system under test: each takes [`Pipe`]s
//! whose far ends run [`respond`](crate::pipe::respond) and measures one figure.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use futures::SinkExt;

use crate::pipe::{
    MAX_TIMED, Pipe, echo_request, read_stamp, sink_request, stamp_ns, timed_request,
};

/// Bytes in a mebibyte.
pub(crate) const MIB: f64 = 1024.0 * 1024.0;

/// Round trips before the measured ones, to warm connections and allocators.
const ECHO_WARMUP: usize = 200;

/// Sends `total` bytes in frames of `chunk` bytes; MiB/s from the first frame to the far
/// end's report that it received them all.
pub(crate) async fn bulk(mut pipe: Pipe, total: u64, chunk: usize) -> anyhow::Result<f64> {
    let frames = total / chunk as u64;
    let data = Bytes::from(vec![0x5a; chunk]);
    let start = Instant::now();
    pipe.tx.send(sink_request(frames)).await?;
    for _ in 0..frames {
        pipe.tx.feed(data.clone()).await?;
    }
    pipe.tx.flush().await?;
    let got = received_bytes(&mut pipe).await?;
    let secs = start.elapsed().as_secs_f64();
    ensure!(
        got == frames * chunk as u64,
        "far end got {got} bytes, not {}",
        frames * chunk as u64
    );
    Ok(got as f64 / MIB / secs)
}

/// Round-trip times of `count` echoes of `size` bytes: (p50, p99) in microseconds.
pub(crate) async fn echo(mut pipe: Pipe, count: usize, size: usize) -> anyhow::Result<(f64, f64)> {
    let message = Bytes::from(vec![0x42; size]);
    pipe.tx.send(echo_request()).await?;
    for _ in 0..ECHO_WARMUP {
        round_trip(&mut pipe, &message).await?;
    }
    let mut rtts = Vec::with_capacity(count);
    for _ in 0..count {
        rtts.push(round_trip(&mut pipe, &message).await?);
    }
    rtts.sort_unstable();
    Ok((percentile(&rtts, 50), percentile(&rtts, 99)))
}

/// One-way rate of `total` messages of `size` bytes spread over the pipes, all sent at once:
/// messages per second, until every far end reported it received its share. With
/// `flush_each` every message is flushed on its own (no batching of writes by the sender).
pub(crate) async fn rate(
    pipes: Vec<Pipe>,
    total: u64,
    size: usize,
    flush_each: bool,
) -> anyhow::Result<f64> {
    let per_pipe = total / pipes.len() as u64;
    let message = Bytes::from(vec![0x17; size]);
    let start = Instant::now();
    // One task per pipe (at most the 16 the scenario opens).
    let senders: Vec<_> = pipes
        .into_iter()
        .map(|mut pipe| {
            let message = message.clone();
            tokio::spawn(async move {
                pipe.tx.send(sink_request(per_pipe)).await?;
                for _ in 0..per_pipe {
                    if flush_each {
                        pipe.tx.send(message.clone()).await?;
                    } else {
                        pipe.tx.feed(message.clone()).await?;
                    }
                }
                pipe.tx.flush().await?;
                let got = received_bytes(&mut pipe).await?;
                ensure!(
                    got == per_pipe * message.len() as u64,
                    "far end got {got} bytes"
                );
                anyhow::Ok(())
            })
        })
        .collect();
    let count = senders.len() as u64;
    for sender in senders {
        sender.await.context("sender task failed")??;
    }
    Ok((per_pipe * count) as f64 / start.elapsed().as_secs_f64())
}

/// One-way times of `count` frames of `size` bytes (at least 8), one every `interval` (paced,
/// so that each finds the path idle): sorted. The far end reads the clock of this process at
/// each arrival, so it must run in this process (as a node's responder does).
pub(crate) async fn one_way(
    mut pipe: Pipe,
    count: u64,
    size: usize,
    interval: Duration,
) -> anyhow::Result<Vec<Duration>> {
    ensure!(count <= MAX_TIMED, "at most {MAX_TIMED} timed frames");
    pipe.tx.send(timed_request(count)).await?;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..count {
        ticks.tick().await;
        let mut frame = vec![0x77; size.max(8)];
        frame[..8].copy_from_slice(&stamp_ns().to_be_bytes());
        pipe.tx.send(Bytes::from(frame)).await?;
    }
    let report = pipe.recv().await?;
    ensure!(report.len() as u64 == count * 8, "bad timed report");
    let mut times: Vec<Duration> = report
        .chunks(8)
        .filter_map(read_stamp)
        .map(Duration::from_nanos)
        .collect();
    times.sort_unstable();
    Ok(times)
}

/// Asks the far end to echo and waits for one echoed `size`-byte message: the "first message"
/// half of the dial scenario.
pub(crate) async fn first_message(pipe: &mut Pipe, size: usize) -> anyhow::Result<()> {
    pipe.tx.send(echo_request()).await?;
    round_trip(pipe, &Bytes::from(vec![0x33; size])).await?;
    Ok(())
}

/// The median of some durations, in milliseconds.
pub(crate) fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort_unstable();
    samples
        .get(samples.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

async fn round_trip(pipe: &mut Pipe, message: &Bytes) -> anyhow::Result<Duration> {
    let start = Instant::now();
    pipe.tx.send(message.clone()).await?;
    let back = pipe.recv().await?;
    let rtt = start.elapsed();
    ensure!(back.len() == message.len(), "echo of the wrong size");
    Ok(rtt)
}

async fn received_bytes(pipe: &mut Pipe) -> anyhow::Result<u64> {
    let report = pipe.recv().await?;
    let bytes: [u8; 8] = report.as_ref().try_into().context("bad sink report")?;
    Ok(u64::from_be_bytes(bytes))
}

/// The `pct`th percentile of sorted durations, in microseconds.
pub(crate) fn percentile(sorted: &[Duration], pct: usize) -> f64 {
    let at = (sorted.len() * pct / 100).min(sorted.len().saturating_sub(1));
    sorted
        .get(at)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1_000_000.0)
}
