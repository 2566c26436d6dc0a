//! The submitter's side of `/p2pos/jobs/1`: one run of a job on one runner, from sending the
//! job to its finish, with every wait bounded. Dropping the stream (on cancel) is how the
//! runner learns to stop the run.

use std::time::Duration;

use libp2p::PeerId;
use p2pos_proto::{
    jobs::v1::JobSpec,
    resources::v1::Refused,
    wire::v1::{JobsAnswer, JobsAsk, JobsFinished, jobs_answer},
};
use p2pos_protocols::{
    network::Network,
    wire::{read_message, write_message},
};
use tokio_util::{compat::FuturesAsyncReadCompatExt, sync::CancellationToken};

use super::PROTOCOL;

/// Largest frame either way: a job (module, input, files), or a result.
pub(crate) const MAX_FRAME: usize = 40 << 20;
/// Largest ask.
pub(crate) const MAX_ASK: usize = 4096;
/// How long opening a stream, and sending the job, may take.
const SEND_WAIT: Duration = Duration::from_secs(120);
/// How long the runner may take to take the job, and then to start its sandbox.
const ACCEPT_WAIT: Duration = Duration::from_secs(60);
const START_WAIT: Duration = Duration::from_secs(120);
/// How much longer than the job's own time limit its finish may take to arrive (more than the
/// runner's own grace for its sandbox, 90 s).
const FINISH_GRACE: Duration = Duration::from_secs(120);

/// A step of the run, as the runner reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Accepted,
    Running,
    Finished,
}

/// How a run ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The runner would not take it.
    Refused(Refused),
    /// It ran (to its end, or to a limit).
    Finished(JobsFinished),
    /// The runner died, disconnected, broke the protocol or went silent.
    Lost(String),
    /// Cancelled here.
    Cancelled,
}

/// Runs `spec` as job `job_id` on `runner` under `lease_id`, telling `step` each step.
pub(crate) async fn run(
    net: &Network,
    runner: PeerId,
    job_id: &str,
    lease_id: &str,
    spec: &JobSpec,
    cancel: &CancellationToken,
    mut step: impl FnMut(Step),
) -> Ended {
    let timeout = Duration::from_millis(spec.limits.unwrap_or_default().timeout_ms);
    let ask = JobsAsk {
        job_id: job_id.to_owned(),
        lease_id: lease_id.to_owned(),
    };
    // One deadline for the whole run, whatever the runner says on the way.
    let deadline =
        tokio::time::Instant::now() + SEND_WAIT + ACCEPT_WAIT + START_WAIT + timeout + FINISH_GRACE;
    let talk = async {
        let stream = tokio::time::timeout(SEND_WAIT, net.open_stream(runner, PROTOCOL))
            .await
            .map_err(|_| format!("no stream to the runner within {SEND_WAIT:?}"))?
            .map_err(|e| format!("cannot open a stream to the runner: {e}"))?;
        let mut io = stream.compat();
        write_message(&mut io, &ask, SEND_WAIT)
            .await
            .map_err(|e| format!("cannot ask the runner: {e}"))?;
        // The answers in their one order: accepted, running, finished (or refused first).
        let mut expect = Step::Accepted;
        loop {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            let answer: JobsAnswer = read_message(&mut io, MAX_FRAME, wait)
                .await
                .map_err(|e| format!("the runner stopped answering: {e}"))?;
            match (answer.kind, expect) {
                // Refused for its lease, or for its spec; never once it runs.
                (Some(jobs_answer::Kind::Refused(refused)), Step::Accepted | Step::Running) => {
                    return Ok(Ended::Refused(refused));
                }
                (Some(jobs_answer::Kind::Accepted(_)), Step::Accepted) => {
                    step(Step::Accepted);
                    let spec = JobSpec {
                        placement: None,
                        ..spec.clone()
                    };
                    write_message(&mut io, &spec, SEND_WAIT)
                        .await
                        .map_err(|e| format!("cannot send the job: {e}"))?;
                    expect = Step::Running;
                }
                (Some(jobs_answer::Kind::Running(_)), Step::Running) => {
                    step(Step::Running);
                    expect = Step::Finished;
                }
                (Some(jobs_answer::Kind::Finished(finished)), Step::Finished) => {
                    return Ok(Ended::Finished(finished));
                }
                (kind, _) => {
                    return Err(format!(
                        "the runner broke the protocol: {} when {expect:?} was due",
                        name(kind.as_ref())
                    ));
                }
            }
        }
    };
    tokio::select! {
        // Dropping `talk` drops the stream: the runner sees it reset and stops the run.
        () = cancel.cancelled() => Ended::Cancelled,
        ended = talk => ended.unwrap_or_else(Ended::Lost),
    }
}

/// An answer's kind, for people.
fn name(kind: Option<&jobs_answer::Kind>) -> &'static str {
    match kind {
        None => "an empty answer",
        Some(jobs_answer::Kind::Refused(_)) => "refused",
        Some(jobs_answer::Kind::Accepted(_)) => "accepted",
        Some(jobs_answer::Kind::Running(_)) => "running",
        Some(jobs_answer::Kind::Finished(_)) => "finished",
    }
}
