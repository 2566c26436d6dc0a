//! `jobs`: WebAssembly jobs run on peers that lend their machines (`p2pos.jobs.v1.Jobs`):
//! `run` submits one and follows it to its end, then hands its output and exit code on as if
//! the program had run here; `list`, `status`, `logs` and `cancel` look at and stop jobs.

use std::{
    io::{Read, Write},
    path::{Component, Path, PathBuf},
};

use p2pos_client::{AuthChannel, Client};
use p2pos_proto::jobs::v1::{
    File, Job, JobRef, JobSpec, Limits, ListRequest, Placement, Reason, Result as JobResult, State,
    SubmitRequest, jobs_client::JobsClient,
};

use super::{ExitWith, RpcResult, duration, job_view, size};
use crate::{
    cli_jobs::{JobsCommand, RunArgs},
    output, progress,
};

/// Largest module, standard input, and input files together (the service's bounds: a bigger
/// one is refused before it is sent).
const MAX_MODULE: u64 = 16 << 20;
const MAX_STDIN: u64 = 4 << 20;
const MAX_FILE_BYTES: u64 = 16 << 20;
/// The exit status of `jobs run` for a cancelled job (as for a program stopped by Ctrl-C).
const CANCELLED_EXIT: u8 = 130;

/// Runs a `jobs` subcommand.
pub(crate) async fn run(client: &Client, command: JobsCommand) -> anyhow::Result<()> {
    let mut jobs = client.jobs();
    match command {
        JobsCommand::Run(args) => run_job(&mut jobs, *args).await,
        JobsCommand::List(flag) => {
            let list = jobs
                .list(ListRequest {})
                .await
                .or_fail("cannot list jobs")?;
            if flag.json {
                output::json_line(&serde_json::json!({
                    "jobs": list.jobs.iter().map(job_view::job_json).collect::<Vec<_>>(),
                    "hosted": list.hosted.iter().map(job_view::hosted_json).collect::<Vec<_>>(),
                }))?;
                return Ok(());
            }
            let now = now_ms();
            match list.jobs.is_empty() {
                true => output::line("no jobs submitted here")?,
                false => output::print_table(&job_view::jobs_table(&list.jobs, now))?,
            }
            if !list.hosted.is_empty() {
                output::line("\nruns for peers:")?;
                output::print_table(&job_view::hosted_table(&list.hosted, now))?;
            }
            Ok(())
        }
        JobsCommand::Status { job, json } => {
            let job = get(&mut jobs, job).await?;
            match json.json {
                true => output::json_line(&job_view::job_json(&job))?,
                false => output::line(job_view::status_text(&job))?,
            }
            Ok(())
        }
        JobsCommand::Logs { job, follow } => logs(&mut jobs, job, follow).await,
        JobsCommand::Cancel { job, json } => {
            let ended_before = get(&mut jobs, job.clone()).await?;
            let after = jobs
                .cancel(JobRef {
                    job_id: job.clone(),
                })
                .await
                .or_fail(&format!("cannot cancel job {job}"))?;
            if json.json {
                output::json_line(&job_view::job_json(&after))?;
            } else if job_view::ended(&ended_before) {
                output::line(format!(
                    "job {job} had already ended ({})",
                    job_view::state_name(after.state)
                ))?;
            } else {
                output::line(format!("cancelled {job}"))?;
            }
            Ok(())
        }
    }
}

/// `jobs run`: submits the job and, unless detached, follows it to its end.
async fn run_job(jobs: &mut JobsClient<AuthChannel>, args: RunArgs) -> anyhow::Result<()> {
    let (json, detach, out) = (args.json, args.detach, args.out.clone());
    let spec = spec_of(args)?;
    let mut events = jobs
        .submit(SubmitRequest {
            spec: Some(spec),
            detach,
        })
        .await
        .or_fail("cannot submit the job")?;
    let live = progress::Live::new(json || detach);
    let mut last: Option<Job> = None;
    // Listening from now on: a Ctrl-C between two events is not lost.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let next = tokio::select! {
            next = events.message() => next,
            _ = &mut interrupted => {
                drop(live);
                // Dropping the call cancels the job (a detached one keeps running).
                drop(events);
                let message = match (last.map(|job| job.job_id), detach) {
                    (Some(id), false) => format!("interrupted: job {id} is cancelled"),
                    (Some(id), true) => format!("interrupted: job {id} keeps running"),
                    (None, _) => "interrupted before the node answered".to_owned(),
                };
                return Err(ExitWith {
                    code: CANCELLED_EXIT,
                    message: Some(message),
                }
                .into());
            }
        };
        let job = match next {
            Ok(Some(event)) => event.job.unwrap_or_default(),
            Ok(None) => break,
            Err(status) => {
                drop(live);
                let id = last.map(|job| job.job_id).unwrap_or_default();
                anyhow::bail!("lost job {id}: {}", p2pos_client::describe_status(&status));
            }
        };
        if detach {
            drop(live);
            match json {
                true => output::json_line(&job_view::job_json(&job))?,
                false => output::line(&job.job_id)?,
            }
            return Ok(());
        }
        live.set(job_view::progress_text(&job));
        let done = job_view::ended(&job);
        last = Some(job);
        if done {
            break;
        }
    }
    drop(live);
    match last {
        Some(job) if job_view::ended(&job) => finish(&job, json, out.as_deref()),
        Some(job) => anyhow::bail!(
            "job {} was still {} when the node stopped answering",
            job.job_id,
            job_view::state_name(job.state)
        ),
        None => anyhow::bail!("the node answered the job with nothing"),
    }
}

/// The spec that `jobs run`'s arguments describe, with its module and inputs read.
fn spec_of(args: RunArgs) -> anyhow::Result<JobSpec> {
    let RunArgs {
        module,
        args,
        peers,
        group,
        memory,
        timeout,
        fuel,
        cpu,
        max_output,
        replicas,
        deterministic,
        retries,
        stdin,
        files,
        out: _,
        name,
        detach: _,
        json: _,
    } = args;
    let module = read_capped(&module, MAX_MODULE, "the module")?;
    let stdin = match stdin {
        None => Vec::new(),
        Some(path) if path.as_os_str() == "-" => capped(
            std::io::stdin().lock(),
            MAX_STDIN,
            "the standard input",
            "stdin",
        )?,
        Some(path) => read_capped(&path, MAX_STDIN, "the standard input")?,
    };
    let mut input = Vec::new();
    let mut total = 0u64;
    for given in &files {
        let (local, path) = file_arg(given)?;
        let data = read_capped(&local, MAX_FILE_BYTES, "an input file")?;
        total += data.len() as u64;
        if total > MAX_FILE_BYTES {
            anyhow::bail!(
                "the input files are too big: together they may be at most {}",
                bytesize::ByteSize::b(MAX_FILE_BYTES).display().iec()
            );
        }
        input.push(File {
            path,
            data: data.into(),
        });
    }
    let limits = Limits {
        memory_bytes: memory
            .map(|m| size::parse("--memory", &m))
            .transpose()?
            .unwrap_or(0),
        timeout_ms: match timeout {
            Some(t) => {
                let t = duration::parse("--timeout", &t)?;
                u64::try_from(t.as_millis())?.max(1)
            }
            None => 0,
        },
        fuel: fuel.unwrap_or(0),
        cpu: cpu.unwrap_or(0.0),
        max_output_bytes: max_output
            .map(|m| size::parse("--max-output", &m))
            .transpose()?
            .unwrap_or(0),
    };
    Ok(JobSpec {
        module: module.into(),
        args,
        name: name.unwrap_or_default(),
        stdin: stdin.into(),
        files: input,
        limits: Some(limits),
        placement: Some(Placement {
            peers,
            group: group.unwrap_or_default(),
        }),
        replicas: replicas.unwrap_or(0),
        deterministic,
        retries: retries.unwrap_or(0),
    })
}

/// `LOCAL[:JOBPATH]`: the local file and its path in the job's scratch directory (LOCAL's
/// file name when not given).
fn file_arg(given: &str) -> anyhow::Result<(PathBuf, String)> {
    let (local, path) = match given.split_once(':') {
        Some((local, path)) => (PathBuf::from(local), path.to_owned()),
        None => {
            let local = PathBuf::from(given);
            let name = local
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow::anyhow!("--file {given:?} names no file"))?
                .to_owned();
            (local, name)
        }
    };
    if relative_path(&path).is_none() {
        anyhow::bail!("--file {given:?}: the job's path must be relative, without `..`");
    }
    Ok((local, path))
}

/// The file at `path`: at most `max` bytes (`what` names it in errors).
fn read_capped(path: &Path, max: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot read {what} {}: {e}", path.display()))?;
    capped(file, max, what, &path.display().to_string())
}

/// At most `max` bytes from `reader` (`from`: where, for errors).
fn capped(reader: impl Read, max: u64, what: &str, from: &str) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    reader
        .take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| anyhow::anyhow!("cannot read {from}: {e}"))?;
    if data.len() as u64 > max {
        anyhow::bail!(
            "{from} is too big: {what} may be at most {}",
            bytesize::ByteSize::b(max).display().iec()
        );
    }
    Ok(data)
}

/// Hands an ended job on: its output (or its JSON), its files, and its exit status.
fn finish(job: &Job, json: bool, out: Option<&Path>) -> anyhow::Result<()> {
    if json {
        output::json_line(&job_view::job_json(job))?;
    }
    match State::try_from(job.state) {
        Ok(State::Done) => {
            let result = job.result.clone().unwrap_or_default();
            if !json {
                write_outputs(&result)?;
                if progress::wanted(false) {
                    notes(&result, out.is_some());
                }
            }
            if let Some(dir) = out {
                write_files(dir, &result.files)?;
            }
            match exit_status(result.exit_code) {
                0 => Ok(()),
                code => Err(ExitWith {
                    code,
                    message: None,
                }
                .into()),
            }
        }
        Ok(State::Cancelled) => Err(ExitWith {
            code: CANCELLED_EXIT,
            message: Some(format!(
                "job {} was cancelled{}",
                job.job_id,
                match job.message.is_empty() {
                    true => String::new(),
                    false => format!(": {}", output::escaped(&job.message)),
                }
            )),
        }
        .into()),
        _ => {
            // What a failed program wrote before it failed (a trap after some output).
            if let (Some(result), false) = (&job.result, json) {
                write_outputs(result)?;
            }
            Err(failure(job))
        }
    }
}

/// `job <id> failed: <reason>: <message>`.
fn failure(job: &Job) -> anyhow::Error {
    let reason = match Reason::try_from(job.reason) {
        Ok(Reason::Unspecified) | Err(_) => "unknown".to_owned(),
        Ok(reason) => reason.as_str_name().to_ascii_lowercase(),
    };
    anyhow::anyhow!(
        "job {} failed: {reason}: {}",
        job.job_id,
        output::escaped(&job.message)
    )
}

/// The job's exit code as a process's: 0 to 255, a negative one as 1.
fn exit_status(code: i32) -> u8 {
    match code {
        ..0 => 1,
        code => u8::try_from(code).unwrap_or(u8::MAX),
    }
}

/// Writes the job's stdout and stderr as they are.
fn write_outputs(result: &JobResult) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&result.stdout)?;
    stdout.flush()?;
    let mut stderr = std::io::stderr().lock();
    stderr.write_all(&result.stderr)?;
    stderr.flush()
}

/// On a terminal: what the output does not show (cut streams, files not kept).
fn notes(result: &JobResult, files_kept: bool) {
    if result.stdout_truncated {
        eprintln!(
            "note: the job's stdout was cut to {} bytes",
            result.stdout.len()
        );
    }
    if result.stderr_truncated {
        eprintln!(
            "note: the job's stderr was cut to {} bytes",
            result.stderr.len()
        );
    }
    if !files_kept && !result.files.is_empty() {
        eprintln!(
            "note: the job left {} files (--out DIR keeps them)",
            result.files.len()
        );
    }
}

/// `path` as a relative path with no `..`, `.` or root (what a job's file may be).
fn relative_path(path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    let plain = !path.as_os_str().is_empty()
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    plain.then(|| path.to_path_buf())
}

/// Writes the job's files under `dir` (created as needed); a path that would leave it is
/// refused.
fn write_files(dir: &Path, files: &[File]) -> anyhow::Result<()> {
    for file in files {
        let Some(relative) = relative_path(&file.path) else {
            anyhow::bail!(
                "refused to write the job's file {:?}: not a plain relative path",
                file.path
            );
        };
        let target = dir.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&target, &file.data)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", target.display()))?;
    }
    Ok(())
}

/// `jobs logs`: the result's output, once the job has one (a failed job's too: what it wrote
/// before it failed, then the failure, as an error).
async fn logs(jobs: &mut JobsClient<AuthChannel>, id: String, follow: bool) -> anyhow::Result<()> {
    let mut job = get(jobs, id.clone()).await?;
    if follow && !job_view::ended(&job) {
        let mut events = jobs
            .watch(JobRef { job_id: id.clone() })
            .await
            .or_fail(&format!("cannot follow job {id}"))?;
        let live = progress::Live::new(false);
        while let Some(event) = events.message().await.map_err(|status| {
            anyhow::anyhow!("lost job {id}: {}", p2pos_client::describe_status(&status))
        })? {
            job = event.job.unwrap_or_default();
            live.set(job_view::progress_text(&job));
            if job_view::ended(&job) {
                break;
            }
        }
        drop(live);
        if job.result.is_none() {
            job = get(jobs, id.clone()).await?;
        }
    }
    match &job.result {
        Some(result) => {
            write_outputs(result)?;
            match State::try_from(job.state) {
                Ok(State::Failed) => Err(failure(&job)),
                _ => Ok(()),
            }
        }
        None if job_view::ended(&job) => Err(match State::try_from(job.state) {
            Ok(State::Failed) => anyhow::anyhow!("{}; it has no result", failure(&job)),
            _ => anyhow::anyhow!(
                "job {id} has no result (it is {})",
                job_view::state_name(job.state)
            ),
        }),
        None => anyhow::bail!(
            "job {id} has no result yet (it is {})",
            job_view::state_name(job.state)
        ),
    }
}

/// The job `id`, with its result when it has one.
async fn get(jobs: &mut JobsClient<AuthChannel>, id: String) -> anyhow::Result<Job> {
    jobs.get(JobRef { job_id: id.clone() })
        .await
        .or_fail(&format!("cannot get job {id}"))
}

/// Now, in milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_fit_a_process() {
        assert_eq!(exit_status(0), 0);
        assert_eq!(exit_status(3), 3);
        assert_eq!(exit_status(255), 255);
        assert_eq!(exit_status(1000), 255);
        assert_eq!(exit_status(-2), 1);
    }

    #[test]
    fn job_paths_stay_inside() {
        assert!(relative_path("a/b.txt").is_some());
        assert!(relative_path("../x").is_none());
        assert!(relative_path("a/../../x").is_none());
        assert!(relative_path("/etc/passwd").is_none());
        assert!(relative_path("").is_none());
        assert_eq!(
            file_arg("dir/in.txt").unwrap(),
            (PathBuf::from("dir/in.txt"), "in.txt".to_owned())
        );
        assert_eq!(
            file_arg("in.txt:data/x").unwrap(),
            (PathBuf::from("in.txt"), "data/x".to_owned())
        );
        assert!(file_arg("in.txt:../x").is_err());
    }

    #[test]
    fn writes_files_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let file = |path: &str| File {
            path: path.into(),
            data: b"x".to_vec().into(),
        };
        write_files(dir.path(), &[file("a/b/c.txt")]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a/b/c.txt")).unwrap(), b"x");
        assert!(write_files(dir.path(), &[file("../escape")]).is_err());
        assert!(!dir.path().join("../escape").exists());
    }
}
