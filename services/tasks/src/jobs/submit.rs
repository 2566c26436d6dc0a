//! The submitter: drives one job from QUEUED to its end. Each replica is placed on a runner
//! the resource manager finds and leases (waiting while every candidate is busy), run there,
//! and placed again elsewhere when its runner is lost (up to the job's retries); replicas must
//! agree on their digest. Every change is published to the job's snapshot.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use libp2p::PeerId;
use p2pos_kernel::{Registry, events::now_ms};
use p2pos_proto::{
    jobs::v1::{Job, JobSpec, Placement, Reason, Result as JobResult, Run, RunState, State},
    resources::v1::{Amounts, FindRequest, Lease, Refusal, Refused},
};
use p2pos_protocols::{Resources, network::Network, resources};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{
    check,
    remote::{self, Ended, Step},
    spawn::RUNTIME_MEMORY,
    table::Table,
};

/// How long a job waits for a runner while candidates are busy, and while none is found at
/// all (the DHT may not know of any yet).
const QUEUE_LIMIT: Duration = Duration::from_secs(600);
const NONE_FOUND_LIMIT: Duration = Duration::from_secs(30);
/// Pauses between placement attempts while waiting.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(2);
/// Most candidates asked for at once.
const CANDIDATES: u32 = 64;
/// Most leases asked for in one round of placement.
const LEASES_PER_ROUND: usize = 4;
/// A lease lasts the job's time limit and this much more (sending, preparing, compiling,
/// answering: the run's own waits, see `remote`).
const LEASE_MARGIN_SECS: u64 = 480;
/// The longest message of a runner kept.
const MAX_MESSAGE: usize = 1000;

/// Placements (finding candidates and leasing) under way at once on this node: many jobs
/// submitted together ask the lenders one batch at a time, within their per-peer limits.
pub(crate) const PLACING_AT_ONCE: usize = 4;

/// What a job's driving task needs.
#[derive(Clone)]
pub(crate) struct Deps {
    pub(crate) net: Network,
    pub(crate) registry: Registry,
    /// [`PLACING_AT_ONCE`] permits.
    pub(crate) placing: Arc<tokio::sync::Semaphore>,
    /// The jobs, whose kept results are trimmed as each job ends.
    pub(crate) table: Table,
}

/// How one replica ended.
enum Replica {
    /// It ran on `runner`: `reason` unspecified if to its end.
    Finished {
        runner: PeerId,
        reason: Reason,
        message: String,
        result: Box<JobResult>,
    },
    /// It could not be run.
    Failed(Reason, String),
    Cancelled,
}

/// Drives the job in `job` (checked `spec`) to its end.
pub(crate) async fn drive(
    deps: Deps,
    job: Arc<watch::Sender<Job>>,
    spec: Arc<JobSpec>,
    owner: Option<String>,
    cancel: CancellationToken,
) {
    let used = Arc::new(Mutex::new(HashSet::new()));
    // One replica failing to run fails the job: the others are stopped.
    let stop = cancel.child_token();
    let replicas = (0..spec.replicas).map(|replica| {
        let (deps, job, spec, used, stop) = (&deps, &job, &spec, &used, &stop);
        let owner = owner.clone().unwrap_or_default();
        async move {
            let ended = run_replica(deps, job, spec, &owner, replica, used, stop).await;
            if matches!(ended, Replica::Failed(..)) {
                stop.cancel();
            }
            ended
        }
    });
    let ended = futures::future::join_all(replicas).await;
    let (state, reason, message, result) = decide(ended, cancel.is_cancelled());
    job.send_modify(|j| {
        j.state = state as i32;
        j.reason = reason as i32;
        j.message = message;
        j.result = result;
        j.ended_at_ms = now_ms();
        for run in &mut j.runs {
            if matches!(
                RunState::try_from(run.state),
                Ok(RunState::RunPlacing | RunState::RunRunning)
            ) {
                run.state = RunState::RunCancelled as i32;
            }
        }
    });
    // Its result counts against what the node keeps from now on.
    deps.table.trim_results();
}

/// The job's end from its replicas' (`cancelled`: the job itself was).
fn decide(ended: Vec<Replica>, cancelled: bool) -> (State, Reason, String, Option<JobResult>) {
    let unspecified = Reason::Unspecified;
    if cancelled {
        return (State::Cancelled, unspecified, "cancelled".into(), None);
    }
    let mut finished = Vec::new();
    for replica in ended {
        match replica {
            Replica::Failed(reason, message) => return (State::Failed, reason, message, None),
            Replica::Cancelled => {}
            Replica::Finished {
                runner,
                reason,
                message,
                result,
            } => finished.push((runner, reason, message, *result)),
        }
    }
    let Some((_, reason, message, result)) = finished.first().cloned() else {
        return (State::Cancelled, unspecified, "cancelled".into(), None);
    };
    let agreed = finished
        .iter()
        .all(|(_, r, _, res)| *r == reason && res.digest == result.digest);
    if !agreed {
        let said: Vec<String> = finished
            .iter()
            .map(|(runner, reason, _, result)| {
                let how = match reason {
                    Reason::Unspecified => format!("exit {}", result.exit_code),
                    other => other.as_str_name().to_lowercase(),
                };
                format!(
                    "{runner}: {how}, digest {}",
                    data_encoding::HEXLOWER.encode(&result.digest[..result.digest.len().min(8)])
                )
            })
            .collect();
        return (
            State::Failed,
            Reason::Disagreement,
            format!("the replicas disagree: {}", said.join("; ")),
            None,
        );
    }
    match reason {
        Reason::Unspecified => {
            let message = if finished.len() > 1 {
                format!(
                    "{} replicas agree: exit {}",
                    finished.len(),
                    result.exit_code
                )
            } else {
                format!("exit {}", result.exit_code)
            };
            (State::Done, unspecified, message, Some(result))
        }
        failed => (State::Failed, failed, message, Some(result)),
    }
}

/// Places and runs replica `replica` until it finishes, its placement fails, its runners are
/// lost too often, or it is cancelled.
async fn run_replica(
    deps: &Deps,
    job: &watch::Sender<Job>,
    spec: &JobSpec,
    owner: &str,
    replica: u32,
    used: &Mutex<HashSet<PeerId>>,
    cancel: &CancellationToken,
) -> Replica {
    let job_id = job.borrow().job_id.clone();
    let mut lost = Vec::new();
    for attempt in 1..=spec.retries + 1 {
        let (runner, lease) = match place(deps, job, spec, owner, used, cancel).await {
            Ok(placed) => placed,
            // No other runner for a run that lost its own: the losses are what matter.
            Err(Replica::Failed(_, why)) if !lost.is_empty() => {
                return Replica::Failed(
                    Reason::RunnerLost,
                    format!(
                        "lost {} runners, and no other would take it ({why}): {}",
                        lost.len(),
                        lost.join("; ")
                    ),
                );
            }
            Err(ended) => return ended,
        };
        let mut index = 0;
        job.send_modify(|j| {
            j.runs.push(Run {
                runner: runner.to_string(),
                lease_id: lease.lease_id.clone(),
                state: RunState::RunPlacing as i32,
                attempt,
                replica,
                ..Run::default()
            });
            if j.state == State::Queued as i32 {
                j.state = State::Placed as i32;
            }
            j.message = format!("placed on {runner}");
            index = j.runs.len() - 1;
        });
        let ended = remote::run(
            &deps.net,
            runner,
            &job_id,
            &lease.lease_id,
            spec,
            cancel,
            |step| {
                if step == Step::Running {
                    job.send_modify(|j| {
                        j.runs[index].state = RunState::RunRunning as i32;
                        j.state = State::Running as i32;
                        j.message = format!("running on {runner}");
                    });
                }
            },
        )
        .await;
        release(deps, lease.lease_id);
        let set_run = |state: RunState, reason: Reason, message: &str| {
            job.send_modify(|j| {
                let run = &mut j.runs[index];
                run.state = state as i32;
                run.reason = reason as i32;
                message.clone_into(&mut run.message);
            });
        };
        match ended {
            Ended::Finished(finished) => {
                let reason = Reason::try_from(finished.reason).unwrap_or(Reason::RunnerError);
                let message: String = finished.message.chars().take(MAX_MESSAGE).collect();
                let result = finished.result.unwrap_or_default();
                // A runner may claim anything: the result is held to the spec's bounds, and its
                // digest recomputed here (off the async threads: it may be 40 MiB).
                let checked = tokio::task::spawn_blocking({
                    let limits = spec.limits.unwrap_or_default();
                    move || {
                        within_bounds(&result, &limits)?;
                        let digest = check::digest(&result);
                        Ok::<_, String>(JobResult {
                            digest: digest.into(),
                            ..result
                        })
                    }
                })
                .await
                .unwrap_or_else(|e| Err(format!("checking the result failed: {e}")));
                let result = match checked {
                    Ok(result) => result,
                    Err(why) => {
                        let why = format!("its result is out of bounds: {why}");
                        set_run(RunState::RunLost, Reason::RunnerLost, &why);
                        lost.push(format!("{runner}: {why}"));
                        continue;
                    }
                };
                let state = if reason == Reason::Unspecified {
                    RunState::RunDone
                } else {
                    RunState::RunFailed
                };
                job.send_modify(|j| {
                    let run = &mut j.runs[index];
                    run.state = state as i32;
                    run.reason = reason as i32;
                    run.message.clone_from(&message);
                    run.exit_code = result.exit_code;
                    run.digest.clone_from(&result.digest);
                    run.usage = result.usage;
                });
                return Replica::Finished {
                    runner,
                    reason,
                    message,
                    result: Box::new(result),
                };
            }
            Ended::Cancelled => {
                set_run(RunState::RunCancelled, Reason::Unspecified, "cancelled");
                return Replica::Cancelled;
            }
            Ended::Refused(refused) => {
                let (reason, message) = refusal_reason(&refused);
                set_run(RunState::RunFailed, reason, &message);
                lost.push(format!("{runner} refused it: {message}"));
            }
            Ended::Lost(why) => {
                debug!(job = %job_id, %runner, "lost the runner: {why}");
                set_run(RunState::RunLost, Reason::RunnerLost, &why);
                lost.push(format!("{runner}: {why}"));
            }
        }
    }
    Replica::Failed(
        Reason::RunnerLost,
        format!(
            "lost {} runners (retries: {}): {}",
            lost.len(),
            spec.retries,
            lost.join("; ")
        ),
    )
}

/// Whether a runner's result keeps to the spec's bounds: output no longer than asked, files
/// that could have been written to a scratch directory and no more than a result carries.
fn within_bounds(result: &JobResult, limits: &p2pos_proto::jobs::v1::Limits) -> Result<(), String> {
    let max = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
    if result.stdout.len() > max || result.stderr.len() > max {
        return Err(format!("output longer than {max} bytes"));
    }
    check::check_files(&result.files, "output")
}

/// Whether a lender refusing for `reason` may say yes later (it is busy or full).
fn temporary(reason: Refusal) -> bool {
    matches!(
        reason,
        Refusal::InsufficientCpu
            | Refusal::InsufficientMemory
            | Refusal::InsufficientDisk
            | Refusal::OwnerBusy
            | Refusal::TooManyLeases
    )
}

/// Whether a lender could not be asked (gone, or too many streams at once): worth asking
/// again for a while.
fn unreachable(reason: Refusal) -> bool {
    reason == Refusal::Unreachable
}

/// The job's reason for a lender's refusal, and its line.
fn refusal_reason(refused: &Refused) -> (Reason, String) {
    let reason = match Refusal::try_from(refused.reason) {
        Ok(Refusal::NotShared) => Reason::NotShared,
        Ok(Refusal::NotAllowed) => Reason::NotAllowed,
        Ok(Refusal::Invalid) => Reason::Invalid,
        _ => Reason::NoRunner,
    };
    (reason, refused.message.chars().take(MAX_MESSAGE).collect())
}

/// A runner for one replica, leased: the best candidate not used by this job yet; waits while
/// every candidate is busy.
async fn place(
    deps: &Deps,
    job: &watch::Sender<Job>,
    spec: &JobSpec,
    owner: &str,
    used: &Mutex<HashSet<PeerId>>,
    cancel: &CancellationToken,
) -> Result<(PeerId, Lease), Replica> {
    let limits = spec.limits.unwrap_or_default();
    // The job's memory and the sandbox's own (the runner checks that the lease holds both).
    let needs = Amounts {
        cpu: limits.cpu,
        memory_bytes: limits.memory_bytes.saturating_add(RUNTIME_MEMORY),
        disk_bytes: 0,
    };
    let ttl = u32::try_from(limits.timeout_ms.div_ceil(1000) + LEASE_MARGIN_SECS)
        .unwrap_or(u32::MAX)
        .min(86_400);
    let placement = spec.placement.clone().unwrap_or_default();
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        if cancel.is_cancelled() {
            return Err(Replica::Cancelled);
        }
        let _permit = tokio::select! {
            () = cancel.cancelled() => return Err(Replica::Cancelled),
            permit = deps.placing.acquire() => match permit {
                Ok(permit) => permit,
                Err(_) => return Err(Replica::Cancelled),
            },
        };
        let (mut candidates, mut refusals) = candidates(deps, &placement, needs).await?;
        let mut busy_only_by_us = false;
        if spec.replicas > 1 {
            // Replicas check each other only if no one picks all of them: not best first, but
            // at random among those that match.
            use rand::seq::SliceRandom;
            candidates.shuffle(&mut rand::thread_rng());
        }
        let mut asked = 0;
        for peer in candidates {
            if cancel.is_cancelled() {
                return Err(Replica::Cancelled);
            }
            // A few lease asks per round: a permit is not held long by lenders that stall.
            if asked == LEASES_PER_ROUND {
                break;
            }
            if lock(used).contains(&peer) {
                busy_only_by_us = true;
                continue;
            }
            asked += 1;
            let leased = deps
                .registry
                .ask::<Resources, _>(|reply| resources::Request::Lease {
                    peer,
                    amounts: needs,
                    ttl_secs: ttl,
                    app_id: owner.to_owned(),
                    reply,
                })
                .await
                .map_err(|e| Replica::Failed(Reason::NoRunner, e.message))?;
            match (leased.lease, leased.refused) {
                (Some(lease), _) => {
                    // Claimed before the next await: another replica will not pick it.
                    if lock(used).insert(peer) {
                        return Ok((peer, lease));
                    }
                    release(deps, lease.lease_id);
                    busy_only_by_us = true;
                }
                (None, Some(refused)) => refusals.push((peer, refused)),
                (None, None) => {}
            }
        }
        drop(_permit);
        let reasons: Vec<Refusal> = refusals
            .iter()
            .map(|(_, r)| Refusal::try_from(r.reason).unwrap_or(Refusal::Unspecified))
            .collect();
        let busy = reasons.iter().any(|r| temporary(*r));
        let unreached = reasons.iter().any(|r| unreachable(*r));
        let summary = summarize(&refusals);
        let none_found = refusals.is_empty() && !busy_only_by_us;
        if !busy && !unreached && !none_found {
            return Err(no_runner(
                &placement.peers,
                &refusals,
                &summary,
                busy_only_by_us,
            ));
        }
        // Busy lenders are waited for long; lenders not reached, or none found, briefly.
        let limit = if busy { QUEUE_LIMIT } else { NONE_FOUND_LIMIT };
        if started.elapsed() >= limit {
            let why = if none_found {
                "no peer that lends was found".to_owned()
            } else if busy {
                format!("every candidate stayed busy: {summary}")
            } else {
                format!("no candidate could be reached: {summary}")
            };
            return Err(Replica::Failed(
                Reason::NoRunner,
                format!("no runner within {}s: {why}", limit.as_secs()),
            ));
        }
        job.send_modify(|j| {
            j.message = if none_found {
                "waiting for a peer that lends".to_owned()
            } else {
                format!("waiting for a runner: {summary}")
            };
        });
        tokio::select! {
            () = cancel.cancelled() => return Err(Replica::Cancelled),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// The peers to ask for a lease, in order, and those that refused already. Named peers are
/// asked for a lease right away (its answer says as much as an offer would, one round trip
/// sooner); a group's members, or the DHT's lenders, are found with `Resources.Find` first.
async fn candidates(
    deps: &Deps,
    placement: &Placement,
    needs: Amounts,
) -> Result<(Vec<PeerId>, Vec<(PeerId, Refused)>), Replica> {
    if !placement.peers.is_empty() && placement.group.is_empty() {
        // Checked when the job was submitted.
        let named = placement
            .peers
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        return Ok((named, Vec::new()));
    }
    let request = FindRequest {
        needs: Some(needs),
        peers: placement.peers.clone(),
        explain: true,
        limit: CANDIDATES,
        group: placement.group.clone(),
    };
    let found = deps
        .registry
        .ask::<Resources, _>(|reply| resources::Request::Find { request, reply })
        .await
        .map_err(|e| Replica::Failed(Reason::NoRunner, e.message))?;
    let matched = found
        .matches
        .iter()
        .filter_map(|m| m.offer.as_ref()?.peer_id.parse().ok())
        .collect();
    let refused = found
        .others
        .into_iter()
        .filter_map(|o| Some((o.peer_id.parse().ok()?, o.refused?)))
        .collect();
    Ok((matched, refused))
}

/// The failure when no candidate will ever take the job: a single named peer's own refusal
/// (NOT_SHARED, NOT_ALLOWED...), else NO_RUNNER with every candidate's.
fn no_runner(
    named: &[String],
    refusals: &[(PeerId, Refused)],
    summary: &str,
    busy_only_by_us: bool,
) -> Replica {
    if let ([_], [(_, refused)]) = (named, refusals) {
        let (reason, message) = refusal_reason(refused);
        return Replica::Failed(reason, message);
    }
    let message = if busy_only_by_us && refusals.is_empty() {
        "no peer this job has not run on yet would take it".to_owned()
    } else if busy_only_by_us {
        format!("no peer this job has not run on yet would take it: {summary}")
    } else {
        format!("every candidate refused: {summary}")
    };
    Replica::Failed(Reason::NoRunner, message)
}

/// "peer: why; peer: why" (at most 4, then how many more).
fn summarize(refusals: &[(PeerId, Refused)]) -> String {
    let mut parts: Vec<String> = refusals
        .iter()
        .take(4)
        .map(|(peer, r)| {
            let peer = peer.to_string();
            match r.message.starts_with(&peer) {
                true => r.message.clone(),
                false => format!("{peer}: {}", r.message),
            }
        })
        .collect();
    if refusals.len() > 4 {
        parts.push(format!("and {} more", refusals.len() - 4));
    }
    parts.join("; ")
}

fn lock(used: &Mutex<HashSet<PeerId>>) -> std::sync::MutexGuard<'_, HashSet<PeerId>> {
    used.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gives a lease back, in the background (it ends by itself anyway).
fn release(deps: &Deps, lease_id: String) {
    let registry = deps.registry.clone();
    tokio::spawn(async move {
        let released = registry
            .ask::<Resources, _>(|reply| resources::Request::Release {
                caller_app: None,
                lease_id,
                reply,
            })
            .await;
        if let Err(e) = released {
            debug!("cannot give a job's lease back: {}", e.message);
        }
    });
}
