//! The runner's side of `/p2pos/jobs/1`: a peer's job is taken only under a lease it holds
//! here (the resource manager says so), checked again, written to a job directory, run in the
//! sandbox process, stopped when the submitter goes away or its time is long past, and
//! answered with what it produced.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use actix::Recipient;
use libp2p::PeerId;
use nix::sys::signal::Signal;
use p2pos_kernel::{Registry, events::now_ms};
use p2pos_proto::{
    jobs::v1::{File, HostedRun, JobSpec, Reason, Result as JobResult, Usage},
    resources::v1::{Amounts, Refusal, Refused},
    wire::v1::{JobsAnswer, JobsAsk, JobsFinished, jobs_answer},
};
use p2pos_protocols::{
    Resources,
    network::InboundStream,
    resources,
    wire::{read_message, write_message},
};
use p2pos_sandbox::{Outcome, Report};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::{debug, warn};

use super::{
    check,
    remote::{MAX_ASK, MAX_FRAME},
    spawn::{RUNTIME_MEMORY, SANDBOX_LOG, SpawnJob, Spawned},
};
use crate::process;
use tokio_util::sync::CancellationToken;

/// Where job directories are, under the data directory.
pub(crate) const JOBS_DIR: &str = "jobs";
/// How long the submitter may take to send its ask, then the job.
const ASK_WAIT: Duration = Duration::from_secs(10);
const SPEC_WAIT: Duration = Duration::from_secs(120);
/// How long an answer may take to be written.
const ANSWER_WAIT: Duration = Duration::from_secs(60);
/// The sandbox's time besides the job's own (starting, compiling, writing its report); past
/// it, the sandbox is killed.
const SANDBOX_GRACE: Duration = Duration::from_secs(90);
/// What a job's scratch directory may hold: bytes, entries, and bytes in one file (the
/// sandbox's `RLIMIT_FSIZE`: a result carries no more).
pub(crate) const MAX_SCRATCH_BYTES: u64 = 64 << 20;
pub(crate) const MAX_SCRATCH_ENTRIES: usize = 4096;
const MAX_FILE_BYTES: u64 = check::MAX_FILE_BYTES as u64;
/// How often the scratch directory is measured while the job runs.
const SCRATCH_CHECK: Duration = Duration::from_millis(500);
/// Set in the node's environment, the node tampers with the results of jobs it runs (the
/// test of replicas that disagree); never set it otherwise.
pub(crate) const CORRUPT_ENV: &str = "P2POS_TEST_CORRUPT_JOB_RESULTS";

/// The runner: cheap to clone.
#[derive(Clone)]
pub(crate) struct Host {
    pub(crate) registry: Registry,
    pub(crate) spawner: Recipient<SpawnJob>,
    pub(crate) data_dir: PathBuf,
    runs: Arc<Mutex<HashMap<u64, HostedRun>>>,
    next: Arc<AtomicU64>,
    /// Names this start's runs apart from an earlier start's.
    nonce: u32,
    corrupt: bool,
}

/// Removes a hosted run from the list when it ends.
struct Listed(Arc<Mutex<HashMap<u64, HostedRun>>>, u64);

impl Drop for Listed {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// Removes a job directory when its run ends, however it ends.
struct JobDir(PathBuf);

impl Drop for JobDir {
    fn drop(&mut self) {
        let dir = std::mem::take(&mut self.0);
        let spawned = std::thread::Builder::new()
            .name("job-cleanup".into())
            .spawn(move || {
                if let Err(e) = std::fs::remove_dir_all(&dir)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    warn!("cannot remove the job directory {}: {e}", dir.display());
                }
            });
        if let Err(e) = spawned {
            warn!("cannot remove a job directory: {e}");
        }
    }
}

fn answer(kind: jobs_answer::Kind) -> JobsAnswer {
    JobsAnswer { kind: Some(kind) }
}

fn refused(reason: Refusal, message: impl Into<String>) -> JobsAnswer {
    answer(jobs_answer::Kind::Refused(Refused {
        reason: reason as i32,
        message: message.into(),
    }))
}

fn finished(reason: Reason, message: impl Into<String>, result: JobResult) -> JobsAnswer {
    answer(jobs_answer::Kind::Finished(JobsFinished {
        reason: reason as i32,
        message: message.into(),
        result: Some(result),
    }))
}

impl Host {
    /// A runner for this node; job directories left by an earlier run are removed.
    pub(crate) fn new(registry: Registry, spawner: Recipient<SpawnJob>, data_dir: &Path) -> Self {
        let dir = data_dir.join(JOBS_DIR);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(
                "cannot remove old job directories in {}: {e}",
                dir.display()
            );
        }
        Host {
            registry,
            spawner,
            data_dir: data_dir.to_owned(),
            runs: Arc::default(),
            next: Arc::new(AtomicU64::new(1)),
            nonce: rand::random(),
            corrupt: std::env::var_os(CORRUPT_ENV).is_some(),
        }
    }

    /// The runs this node does for peers now.
    pub(crate) fn hosted(&self) -> Vec<HostedRun> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<HostedRun> = runs.values().cloned().collect();
        list.sort_by_key(|r| r.started_at_ms);
        list
    }

    /// Serves one stream from `peer`.
    pub(crate) async fn serve(self, peer: PeerId, stream: InboundStream) {
        let (mut rx, mut tx) = tokio::io::split(stream.compat());
        if let Err(e) = self.serve_on(peer, &mut rx, &mut tx).await {
            debug!(%peer, "a job stream ended badly: {e}");
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tx).await;
    }

    async fn serve_on<R, W>(&self, peer: PeerId, rx: &mut R, tx: &mut W) -> io::Result<()>
    where
        R: tokio::io::AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let ask: JobsAsk = read_message(rx, MAX_ASK, ASK_WAIT).await?;
        let claimed = self
            .registry
            .ask::<Resources, _>(|reply| resources::Request::ClaimLease {
                holder: peer,
                lease_id: ask.lease_id.clone(),
                reply,
            })
            .await;
        let (lease, lease_ends) = match claimed {
            Ok(Ok(claimed)) => claimed,
            Ok(Err(no)) => {
                return write_message(tx, &answer(jobs_answer::Kind::Refused(no)), ANSWER_WAIT)
                    .await;
            }
            Err(e) => {
                let why = format!("the resource manager cannot say: {}", e.message);
                return write_message(tx, &refused(Refusal::Unreachable, why), ANSWER_WAIT).await;
            }
        };
        // The lease serves this run only: it ends with it, however it ends; and the run ends
        // with the lease at the latest.
        let _end = EndLease {
            registry: self.registry.clone(),
            holder: peer,
            lease_id: lease.lease_id.clone(),
        };
        let until = tokio::time::Instant::now()
            + Duration::from_millis(lease.expires_at_ms.saturating_sub(now_ms()));
        write_message(tx, &answer(jobs_answer::Kind::Accepted(true)), ANSWER_WAIT).await?;
        let spec: JobSpec = read_message(rx, MAX_FRAME, SPEC_WAIT).await?;
        let amounts = lease.amounts.unwrap_or_default();
        let spec = match check::check(spec).and_then(|s| within_lease(s, &amounts)) {
            Ok(spec) => spec,
            Err(why) => {
                return write_message(tx, &refused(Refusal::Invalid, why), ANSWER_WAIT).await;
            }
        };
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let _listed = self.list(number, peer, &ask, &spec, amounts);
        // Named per start of the node too: a leftover of an earlier start is never reused.
        let name = format!("run-{}-{number}", self.nonce);
        let dir = self.data_dir.join(JOBS_DIR).join(&name);
        let _cleanup = JobDir(dir.clone());
        let result = match self.start(&dir, name, &spec, amounts).await {
            Ok(running) => {
                // From here on, however this returns, the sandbox is killed (its guard).
                write_message(tx, &answer(jobs_answer::Kind::Running(true)), ANSWER_WAIT).await?;
                let ends = Ends {
                    lease: lease_ends,
                    until,
                };
                // The job's bytes are on disk: only its limits and input files are needed.
                let spec = JobSpec {
                    module: Default::default(),
                    stdin: Default::default(),
                    ..spec
                };
                self.wait(running, &dir, &spec, rx, ends).await
            }
            Err(why) => Some(finished(Reason::RunnerError, why, JobResult::default())),
        };
        match result {
            Some(done) => write_message(tx, &done, ANSWER_WAIT).await,
            None => Ok(()),
        }
    }

    fn list(
        &self,
        number: u64,
        peer: PeerId,
        ask: &JobsAsk,
        spec: &JobSpec,
        amounts: Amounts,
    ) -> Listed {
        let run = HostedRun {
            job_id: ask.job_id.chars().take(64).collect(),
            submitter: peer.to_string(),
            lease_id: ask.lease_id.clone(),
            name: spec.name.clone(),
            started_at_ms: now_ms(),
            amounts: Some(amounts),
        };
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(number, run);
        Listed(self.runs.clone(), number)
    }

    /// Writes the job directory and starts the sandbox on it, in the cgroup `name`.
    async fn start(
        &self,
        dir: &Path,
        name: String,
        spec: &JobSpec,
        amounts: Amounts,
    ) -> Result<Spawned, String> {
        let written = {
            let (dir, spec) = (dir.to_owned(), spec.clone());
            tokio::task::spawn_blocking(move || write_job(&dir, &spec))
                .await
                .map_err(|e| format!("cannot write the job: {e}"))?
        };
        written.map_err(|e| format!("cannot write the job directory {}: {e}", dir.display()))?;
        let limits = spec.limits.unwrap_or_default();
        // The lease's amounts, no more (the spec was checked to fit in them).
        let spawn = SpawnJob {
            dir: dir.to_owned(),
            leaf: name,
            memory: amounts.memory_bytes,
            cpu_millis: (amounts.cpu * 1000.0).round() as u32,
            job_memory: limits.memory_bytes,
        };
        self.spawner
            .send(spawn)
            .await
            .map_err(|_| "the task-control service is stopping".to_owned())?
    }

    /// Waits for the sandbox, the submitter going away (`None`: nothing to answer), or its
    /// time running out; then the answer.
    async fn wait<R>(
        &self,
        running: Spawned,
        dir: &Path,
        spec: &JobSpec,
        rx: &mut R,
        ends: Ends,
    ) -> Option<JobsAnswer>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        let Spawned {
            mut child,
            mut guard,
        } = running;
        let limits = spec.limits.unwrap_or_default();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(limits.timeout_ms) + SANDBOX_GRACE;
        let started = Instant::now();
        let mut probe = [0u8; 1];
        let stop = tokio::select! {
            status = child.wait() => Stop::Exited(status),
            // The submitter sends nothing more: any byte, its end or an error is "stop".
            _ = rx.read(&mut probe) => Stop::Cancelled,
            () = tokio::time::sleep_until(deadline) => Stop::Deadline,
            () = ends.lease.cancelled() => Stop::LeaseEnded,
            () = tokio::time::sleep_until(ends.until) => Stop::LeaseEnded,
            full = watch_scratch(dir.join(p2pos_sandbox::SCRATCH_DIR)) => Stop::ScratchFull(full),
        };
        // A sandbox that exited was reaped: its group id may be another's now.
        if !matches!(stop, Stop::Exited(_)) {
            process::signal_group(guard.pid, Signal::SIGKILL);
        }
        let oom_kills = guard.group.as_ref().map_or(0, |g| g.oom_kills());
        if let Some(group) = &guard.group {
            group.kill_and_remove().await;
        }
        guard.armed = false;
        let _ = child.wait().await;
        // Cancelled: nobody to answer. The lease ended first (given back early, expired, or
        // the lender's resource manager restarted): no answer either, so that the submitter
        // takes the run as lost and places it again.
        if matches!(stop, Stop::Cancelled | Stop::LeaseEnded) {
            return None;
        }
        let (dir, spec) = (dir.to_owned(), spec.clone());
        let corrupt = self.corrupt;
        let answer = tokio::task::spawn_blocking(move || {
            let report = match &stop {
                Stop::Exited(_) => read_report(&dir),
                _ => None,
            };
            let mut answer = judge(report, &stop, oom_kills, started.elapsed(), &dir, &spec);
            if corrupt
                && let Some(jobs_answer::Kind::Finished(f)) = &mut answer.kind
                && let Some(result) = &mut f.result
            {
                let mut stdout = result.stdout.to_vec();
                stdout.extend_from_slice(b"corrupted by P2POS_TEST_CORRUPT_JOB_RESULTS\n");
                result.stdout = stdout.into();
                result.digest = check::digest(result).into();
            }
            answer
        })
        .await
        .unwrap_or_else(|e| {
            finished(
                Reason::RunnerError,
                format!("reading the results failed: {e}"),
                JobResult::default(),
            )
        });
        Some(answer)
    }
}

/// What else ends a run: its lease (ended, or when it would expire).
struct Ends {
    lease: CancellationToken,
    until: tokio::time::Instant,
}

/// Ends a run's lease on this node when the run is over, however it ends (a lease serves one
/// run: its room is free again at once, whether or not its holder gives it back).
struct EndLease {
    registry: Registry,
    holder: PeerId,
    lease_id: String,
}

impl Drop for EndLease {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (registry, holder) = (self.registry.clone(), self.holder);
        let lease_id = std::mem::take(&mut self.lease_id);
        runtime.spawn(async move {
            let ended = registry
                .ask::<Resources, _>(|reply| resources::Request::EndLease {
                    holder,
                    lease_id,
                    reply,
                })
                .await;
            if let Err(e) = ended {
                debug!("cannot end a job's lease: {}", e.message);
            }
        });
    }
}

/// Why a run's sandbox was stopped.
enum Stop {
    /// It exited (or waiting for it failed).
    Exited(io::Result<std::process::ExitStatus>),
    /// The submitter went away or cancelled.
    Cancelled,
    /// It ran past the job's time and the sandbox's grace.
    Deadline,
    /// The job's scratch directory grew too big: how.
    ScratchFull(String),
    /// Its lease ended (given back, or expired) before it did.
    LeaseEnded,
}

/// Measures `scratch` every [`SCRATCH_CHECK`]; returns how it is too big once it is.
async fn watch_scratch(scratch: PathBuf) -> String {
    loop {
        tokio::time::sleep(SCRATCH_CHECK).await;
        let dir = scratch.clone();
        let measured = tokio::task::spawn_blocking(move || measure(&dir)).await;
        if let Ok(Some(full)) = measured {
            return full;
        }
    }
}

/// Walks a job's scratch directory `dir` without following links, calling `visit` with each
/// entry's path (relative to `dir`) and metadata, directories included; stops with an error past
/// [`MAX_SCRATCH_ENTRIES`] entries, or at `visit`'s first error.
fn walk_scratch(
    dir: &Path,
    mut visit: impl FnMut(&Path, &std::fs::Metadata) -> Result<(), String>,
) -> Result<(), String> {
    let mut entries = 0usize;
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let list = match std::fs::read_dir(dir.join(&rel)) {
            Ok(list) => list,
            // Removed by the running job since it was listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read the scratch directory: {e}")),
        };
        for entry in list.flatten() {
            entries += 1;
            if entries > MAX_SCRATCH_ENTRIES {
                return Err(format!(
                    "its scratch directory holds more than {MAX_SCRATCH_ENTRIES} entries"
                ));
            }
            // Not followed: a symbolic link is one entry.
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            let path = rel.join(entry.file_name());
            visit(&path, &meta)?;
            if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    Ok(())
}

/// How `dir` is past the bounds of a scratch directory, if it is; stops counting there.
fn measure(dir: &Path) -> Option<String> {
    let mut bytes = 0u64;
    walk_scratch(dir, |_, meta| {
        if !meta.is_dir() {
            bytes = bytes.saturating_add(meta.len());
        }
        match bytes > MAX_SCRATCH_BYTES {
            true => Err(format!(
                "its scratch directory holds more than {} MiB",
                MAX_SCRATCH_BYTES >> 20
            )),
            false => Ok(()),
        }
    })
    .err()
}

/// The spec, if its memory (with the sandbox's own) and its CPU fit in the lease.
fn within_lease(spec: JobSpec, amounts: &Amounts) -> Result<JobSpec, String> {
    let limits = spec.limits.unwrap_or_default();
    let memory = limits.memory_bytes.saturating_add(RUNTIME_MEMORY);
    if memory > amounts.memory_bytes {
        return Err(format!(
            "the job needs {memory} bytes of memory ({} for itself, {RUNTIME_MEMORY} for the \
             sandbox), its lease holds {}",
            limits.memory_bytes, amounts.memory_bytes
        ));
    }
    if limits.cpu > amounts.cpu + 1e-9 {
        return Err(format!(
            "the job asks for {} cores, its lease holds {}",
            limits.cpu, amounts.cpu
        ));
    }
    Ok(spec)
}

/// Writes the job directory: the spec, the module, stdin and the input files.
fn write_job(dir: &Path, spec: &JobSpec) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let scratch = dir.join(p2pos_sandbox::SCRATCH_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&scratch)?;
    let limits = spec.limits.unwrap_or_default();
    let mut args = vec![spec.name.clone()];
    args.extend(spec.args.iter().cloned());
    let sandbox_spec = p2pos_sandbox::JobSpec {
        args,
        memory_bytes: limits.memory_bytes,
        timeout_ms: limits.timeout_ms,
        fuel: limits.fuel,
        deterministic: spec.deterministic,
        max_output_bytes: limits.max_output_bytes,
        max_file_bytes: MAX_FILE_BYTES,
        // The most the run's CPU share allows over its time and the sandbox's grace: a bound
        // of its own where no cgroup holds it to the share.
        max_cpu_secs: ((limits.timeout_ms as f64 / 1000.0 + SANDBOX_GRACE.as_secs_f64())
            * limits.cpu.max(1.0))
        .ceil() as u64,
    };
    let json = serde_json::to_vec(&sandbox_spec).map_err(io::Error::other)?;
    std::fs::write(dir.join(p2pos_sandbox::SPEC_FILE), json)?;
    std::fs::write(dir.join(p2pos_sandbox::MODULE_FILE), &spec.module)?;
    std::fs::write(dir.join(p2pos_sandbox::STDIN_FILE), &spec.stdin)?;
    for file in &spec.files {
        let path = scratch.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, &file.data)?;
    }
    Ok(())
}

/// The sandbox's report, if it wrote one.
fn read_report(dir: &Path) -> Option<Report> {
    let bytes = std::fs::read(dir.join(p2pos_sandbox::RESULT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The answer for a run: from the sandbox's report, or, without one, from how its process
/// ended.
fn judge(
    report: Option<Report>,
    stop: &Stop,
    oom_kills: u64,
    took: Duration,
    dir: &Path,
    spec: &JobSpec,
) -> JobsAnswer {
    let limits = spec.limits.unwrap_or_default();
    let max_output = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
    let read_output = |name: &str| {
        let mut bytes = std::fs::read(dir.join(name)).unwrap_or_default();
        bytes.truncate(max_output);
        bytes
    };
    let Some(report) = report else {
        let (reason, message) = match stop {
            Stop::Deadline => (
                Reason::TimedOut,
                format!(
                    "the sandbox was killed after {}s, past the job's time limit",
                    took.as_secs()
                ),
            ),
            Stop::ScratchFull(how) => (Reason::OutOfDisk, format!("stopped: {how}")),
            _ if oom_kills > 0 => (
                Reason::OutOfMemory,
                format!(
                    "the sandbox was killed at its memory limit ({} bytes for the job and the runtime)",
                    limits.memory_bytes + RUNTIME_MEMORY
                ),
            ),
            Stop::Exited(Ok(status))
                if std::os::unix::process::ExitStatusExt::signal(status)
                    == Some(Signal::SIGXCPU as i32) =>
            {
                (
                    Reason::TimedOut,
                    "the sandbox used up the CPU time its run may take".to_owned(),
                )
            }
            Stop::Exited(Ok(status)) => (
                Reason::RunnerError,
                format!(
                    "the sandbox ended ({status}) without a report: {}",
                    last_line(dir)
                ),
            ),
            Stop::Exited(Err(e)) => (Reason::RunnerError, format!("the sandbox was lost: {e}")),
            // Never judged: those runs go unanswered (see `run`).
            Stop::Cancelled | Stop::LeaseEnded => (Reason::Unspecified, "stopped".to_owned()),
        };
        let result = JobResult {
            exit_code: -1,
            stdout: read_output(p2pos_sandbox::STDOUT_FILE).into(),
            stderr: read_output(p2pos_sandbox::STDERR_FILE).into(),
            ..JobResult::default()
        };
        return finished(reason, message, result);
    };
    let reason = match report.outcome {
        Outcome::Exited => Reason::Unspecified,
        Outcome::OutOfMemory => Reason::OutOfMemory,
        Outcome::TimedOut => Reason::TimedOut,
        Outcome::OutOfFuel => Reason::OutOfFuel,
        Outcome::Trapped => Reason::Trapped,
        Outcome::InvalidModule => Reason::InvalidModule,
    };
    let (files, files_error) =
        match output_files(&dir.join(p2pos_sandbox::SCRATCH_DIR), &spec.files) {
            Ok(files) => (files, None),
            Err(why) => (Vec::new(), Some(why)),
        };
    let mut result = JobResult {
        exit_code: report.exit_code,
        stdout: read_output(p2pos_sandbox::STDOUT_FILE).into(),
        stderr: read_output(p2pos_sandbox::STDERR_FILE).into(),
        stdout_truncated: report.stdout_truncated,
        stderr_truncated: report.stderr_truncated,
        files,
        usage: Some(Usage {
            wall_ms: report.wall_ms,
            cpu_ms: report.cpu_ms,
            memory_peak_bytes: report.memory_peak_bytes,
            fuel_used: report.fuel_used,
        }),
        digest: Default::default(),
    };
    result.digest = check::digest(&result).into();
    match files_error {
        Some(why) if reason == Reason::Unspecified => finished(Reason::OutOfDisk, why, result),
        _ => finished(reason, report.message, result),
    }
}

/// The sandbox's last line of its own log, for a run that ended without a report.
fn last_line(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(SANDBOX_LOG))
        .ok()
        .and_then(|log| log.lines().last().map(|l| l.chars().take(300).collect()))
        .unwrap_or_else(|| "it said nothing".to_owned())
}

/// The files in `scratch` that the job created or changed (not the `inputs` as they were),
/// within the bounds of a result.
fn output_files(scratch: &Path, inputs: &[File]) -> Result<Vec<File>, String> {
    let inputs: HashMap<&str, &[u8]> = inputs
        .iter()
        .map(|f| (f.path.as_str(), f.data.as_ref()))
        .collect();
    let mut out = Vec::new();
    let mut bytes = 0usize;
    walk_scratch(scratch, |path, meta| {
        if !meta.is_file() {
            return Ok(());
        }
        let Some(name) = path.to_str().map(str::to_owned) else {
            return Err(format!(
                "the job left a file whose name is not UTF-8 ({}): no result carries it",
                path.display()
            ));
        };
        if let Err(why) = check::check_path(&name) {
            return Err(format!(
                "the job left a file {name:?} that no result carries: {why}"
            ));
        }
        bytes = bytes.saturating_add(usize::try_from(meta.len()).unwrap_or(usize::MAX));
        if bytes > check::MAX_FILE_BYTES {
            return Err(format!(
                "the job's files are more than {} bytes, the most a result carries",
                check::MAX_FILE_BYTES
            ));
        }
        let data = std::fs::read(scratch.join(path))
            .map_err(|e| format!("cannot read the job's file {name}: {e}"))?;
        if inputs.get(name.as_str()) == Some(&data.as_slice()) {
            bytes = bytes.saturating_sub(data.len());
            return Ok(());
        }
        out.push(File {
            path: name,
            data: data.into(),
        });
        match out.len() > check::MAX_FILES {
            true => Err(format!(
                "the job left more than {} files, the most a result carries",
                check::MAX_FILES
            )),
            false => Ok(()),
        }
    })?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}
