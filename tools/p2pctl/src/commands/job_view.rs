//! How jobs (`p2pos.jobs.v1`) are shown: their JSON shapes, the `jobs list` tables, the `jobs
//! status` details, the progress line of `jobs run`, and the names of states and reasons.

use bytesize::ByteSize;
use comfy_table::Table;
use data_encoding::{BASE64, HEXLOWER};
use p2pos_proto::jobs::v1::{
    File, HostedRun, Job, Limits, Reason, Result as JobResult, Run, RunState, State, Usage,
};
use serde_json::{Value, json};

use crate::output;

/// How many hex digits of a digest tables show.
const DIGEST_SHOWN: usize = 12;

/// A job state's name (`RUNNING`).
pub(crate) fn state_name(state: i32) -> &'static str {
    State::try_from(state)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}

/// A reason's name (`OUT_OF_MEMORY`), empty when unspecified.
pub(crate) fn reason_name(reason: i32) -> &'static str {
    match Reason::try_from(reason) {
        Ok(Reason::Unspecified) => "",
        Ok(reason) => reason.as_str_name(),
        Err(_) => "UNKNOWN",
    }
}

/// A run state's name without its prefix (`RUNNING`).
fn run_state_name(state: i32) -> &'static str {
    RunState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("RUN_"))
        .unwrap_or("UNKNOWN")
}

/// Whether the job ended (its state will not change again).
pub(crate) fn ended(job: &Job) -> bool {
    matches!(
        State::try_from(job.state),
        Ok(State::Done | State::Failed | State::Cancelled)
    )
}

/// The runners of the runs that are placed or running now, else of every run, each once.
fn runners(job: &Job) -> Vec<String> {
    let active: Vec<&Run> = job
        .runs
        .iter()
        .filter(|r| {
            matches!(
                RunState::try_from(r.state),
                Ok(RunState::RunPlacing | RunState::RunRunning)
            )
        })
        .collect();
    let runs: Vec<&Run> = match active.is_empty() {
        true => job.runs.iter().collect(),
        false => active,
    };
    let mut out: Vec<String> = Vec::new();
    for run in runs {
        if !run.runner.is_empty() && !out.contains(&run.runner) {
            out.push(run.runner.clone());
        }
    }
    out
}

/// The progress line of `jobs run`: the state, where, and what happened last.
pub(crate) fn progress_text(job: &Job) -> String {
    let on: Vec<String> = runners(job).iter().map(|r| output::short_id(r)).collect();
    let state = State::try_from(job.state).unwrap_or(State::Unspecified);
    let mut text = match state {
        State::Queued | State::Unspecified => "QUEUED: waiting for a runner…".to_owned(),
        _ if on.is_empty() => state.as_str_name().to_owned(),
        _ => format!("{} on {}", state.as_str_name(), on.join(", ")),
    };
    if !job.message.is_empty() {
        text.push_str(&format!(" ({})", output::escaped(&job.message)));
    }
    format!("job {}: {}", job.job_id, crate::progress::short(&text))
}

/// Milliseconds ago as `5s`, `3m`, `2h`, `4d`; `-` for no time.
fn age(at_ms: u64, now_ms: u64) -> String {
    if at_ms == 0 {
        return "-".to_owned();
    }
    let secs = now_ms.saturating_sub(at_ms) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn size(bytes: u64) -> String {
    ByteSize::b(bytes).display().iec().to_string()
}

/// Milliseconds as `12 ms`, `30 s` or `1.234 s`.
fn millis(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms} ms"),
        _ if ms.is_multiple_of(1000) => format!("{} s", ms / 1000),
        _ => format!("{:.3} s", ms as f64 / 1000.0),
    }
}

/// The first hex digits of a digest, `-` for none.
fn digest_prefix(digest: &[u8]) -> String {
    let hex = HEXLOWER.encode(digest);
    match hex.get(..DIGEST_SHOWN) {
        Some(head) => head.to_owned(),
        None if hex.is_empty() => "-".to_owned(),
        None => hex,
    }
}

/// The exit code of a job that is `DONE`: its result's, or (in a list, without results) its
/// finished runs'.
fn exit_code(job: &Job) -> Option<i32> {
    if let Some(result) = &job.result {
        return Some(result.exit_code);
    }
    if State::try_from(job.state) != Ok(State::Done) {
        return None;
    }
    job.runs
        .iter()
        .find(|r| RunState::try_from(r.state) == Ok(RunState::RunDone))
        .map(|r| r.exit_code)
}

/// The jobs submitted here, newest first.
pub(crate) fn jobs_table(jobs: &[Job], now_ms: u64) -> Table {
    let mut table = output::table(["ID", "NAME", "STATE", "RUNNER", "EXIT", "AGE", "MESSAGE"]);
    for job in jobs {
        let on: Vec<String> = runners(job).iter().map(|r| output::short_id(r)).collect();
        let exit = exit_code(job).map_or_else(|| "-".to_owned(), |code| code.to_string());
        let state = match reason_name(job.reason) {
            "" => state_name(job.state).to_owned(),
            reason => format!("{} ({reason})", state_name(job.state)),
        };
        table.add_row([
            job.job_id.clone(),
            output::escaped(&job.name),
            state,
            output::list_or_dash(&on),
            exit,
            age(job.submitted_at_ms, now_ms),
            output::dash_if_empty(&output::escaped(&job.message)),
        ]);
    }
    table
}

/// The runs this node does for peers.
pub(crate) fn hosted_table(hosted: &[HostedRun], now_ms: u64) -> Table {
    let mut table = output::table(["JOB", "NAME", "SUBMITTER", "CPU", "MEMORY", "LEASE", "AGE"]);
    for run in hosted {
        let amounts = run.amounts.unwrap_or_default();
        table.add_row([
            run.job_id.clone(),
            output::escaped(&run.name),
            output::short_id(&run.submitter),
            format!("{}", amounts.cpu),
            size(amounts.memory_bytes),
            run.lease_id.clone(),
            age(run.started_at_ms, now_ms),
        ]);
    }
    table
}

/// `jobs status`: the job, its result's summary, then one row per run.
pub(crate) fn status_text(job: &Job) -> String {
    let limits = job.limits.unwrap_or_default();
    let mut rows = vec![
        ("job", job.job_id.clone()),
        ("name", output::escaped(&job.name)),
        ("app", output::dash_if_empty(&job.app_id)),
        ("state", state_name(job.state).to_owned()),
    ];
    if !reason_name(job.reason).is_empty() {
        rows.push(("reason", reason_name(job.reason).to_owned()));
    }
    rows.push((
        "message",
        output::dash_if_empty(&output::escaped(&job.message)),
    ));
    let replicas = match job.deterministic {
        true => format!("{} (deterministic)", job.replicas.max(1)),
        false => job.replicas.max(1).to_string(),
    };
    rows.push(("replicas", replicas));
    rows.push(("limits", limits_text(&limits)));
    rows.push(("submitted", output::timestamp(job.submitted_at_ms)));
    if job.ended_at_ms != 0 {
        rows.push(("ended", output::timestamp(job.ended_at_ms)));
    }
    if let Some(result) = &job.result {
        rows.push(("exit code", result.exit_code.to_string()));
        rows.push(("output", output_text(result)));
        rows.push((
            "digest",
            output::dash_if_empty(&HEXLOWER.encode(&result.digest)),
        ));
    }
    let mut text = output::key_values(rows).trim_fmt();
    if !job.runs.is_empty() {
        let mut table = output::table([
            "REPLICA", "ATTEMPT", "RUNNER", "STATE", "REASON", "EXIT", "WALL", "CPU", "MEMORY",
            "FUEL", "DIGEST", "MESSAGE",
        ]);
        for run in &job.runs {
            let usage = run.usage.unwrap_or_default();
            let ran = usage.wall_ms > 0 || !run.digest.is_empty();
            let dash_unless = |shown: bool, text: String| match shown {
                true => text,
                false => "-".to_owned(),
            };
            table.add_row([
                run.replica.to_string(),
                run.attempt.to_string(),
                output::dash_if_empty(&run.runner),
                run_state_name(run.state).to_owned(),
                output::dash_if_empty(reason_name(run.reason)),
                dash_unless(ran, run.exit_code.to_string()),
                dash_unless(ran, millis(usage.wall_ms)),
                dash_unless(ran, millis(usage.cpu_ms)),
                dash_unless(usage.memory_peak_bytes > 0, size(usage.memory_peak_bytes)),
                dash_unless(usage.fuel_used > 0, usage.fuel_used.to_string()),
                digest_prefix(&run.digest),
                output::dash_if_empty(&output::escaped(&run.message)),
            ]);
        }
        text.push_str("\n\n");
        text.push_str(&table.trim_fmt());
    }
    text
}

fn limits_text(limits: &Limits) -> String {
    let fuel = match limits.fuel {
        0 => "not metered".to_owned(),
        n => n.to_string(),
    };
    format!(
        "memory {}, timeout {}, cpu {}, fuel {fuel}, output {} per stream",
        size(limits.memory_bytes),
        millis(limits.timeout_ms),
        limits.cpu,
        size(limits.max_output_bytes)
    )
}

fn output_text(result: &JobResult) -> String {
    let cut = |truncated: bool| if truncated { " (cut)" } else { "" };
    format!(
        "stdout {}{}, stderr {}{}, {} files",
        size(result.stdout.len() as u64),
        cut(result.stdout_truncated),
        size(result.stderr.len() as u64),
        cut(result.stderr_truncated),
        result.files.len()
    )
}

/// Bytes as JSON: `{NAME_base64, NAME_text}` (text `null` when not UTF-8).
fn bytes_json(value: &mut serde_json::Map<String, Value>, name: &str, bytes: &[u8]) {
    value.insert(format!("{name}_base64"), json!(BASE64.encode(bytes)));
    value.insert(
        format!("{name}_text"),
        std::str::from_utf8(bytes).map_or(Value::Null, |t| json!(t)),
    );
}

fn usage_json(usage: &Usage) -> Value {
    let Usage {
        wall_ms,
        cpu_ms,
        memory_peak_bytes,
        fuel_used,
    } = usage;
    json!({
        "wall_ms": wall_ms,
        "cpu_ms": cpu_ms,
        "memory_peak_bytes": memory_peak_bytes,
        "fuel_used": fuel_used,
    })
}

fn file_json(file: &File) -> Value {
    let mut value = serde_json::Map::new();
    value.insert("path".into(), json!(file.path));
    bytes_json(&mut value, "data", &file.data);
    Value::Object(value)
}

fn result_json(result: &JobResult) -> Value {
    let JobResult {
        exit_code,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        files,
        usage,
        digest,
    } = result;
    let mut value = serde_json::Map::new();
    value.insert("exit_code".into(), json!(exit_code));
    bytes_json(&mut value, "stdout", stdout);
    bytes_json(&mut value, "stderr", stderr);
    value.insert("stdout_truncated".into(), json!(stdout_truncated));
    value.insert("stderr_truncated".into(), json!(stderr_truncated));
    value.insert(
        "files".into(),
        Value::Array(files.iter().map(file_json).collect()),
    );
    value.insert("usage".into(), usage_json(&usage.unwrap_or_default()));
    value.insert("digest".into(), json!(HEXLOWER.encode(digest)));
    Value::Object(value)
}

fn run_json(run: &Run) -> Value {
    let Run {
        runner,
        lease_id,
        state,
        reason,
        message,
        attempt,
        replica,
        exit_code,
        digest,
        usage,
    } = run;
    json!({
        "runner": runner,
        "lease_id": lease_id,
        "state": RunState::try_from(*state).map(|s| s.as_str_name()).unwrap_or("UNKNOWN"),
        "reason": reason_name(*reason),
        "message": message,
        "attempt": attempt,
        "replica": replica,
        "exit_code": exit_code,
        "digest": HEXLOWER.encode(digest),
        "usage": usage_json(&usage.unwrap_or_default()),
    })
}

/// A job as JSON: its fields by their proto names, states and reasons by name, bytes as
/// `*_base64` and `*_text`, digests in hex; `result` is `null` when it has none.
pub(crate) fn job_json(job: &Job) -> Value {
    let Job {
        job_id,
        name,
        app_id,
        state,
        reason,
        message,
        runs,
        result,
        replicas,
        submitted_at_ms,
        ended_at_ms,
        deterministic,
        limits,
    } = job;
    let limits = limits.unwrap_or_default();
    json!({
        "job_id": job_id,
        "name": name,
        "app_id": app_id,
        "state": state_name(*state),
        "reason": reason_name(*reason),
        "message": message,
        "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
        "result": result.as_ref().map_or(Value::Null, result_json),
        "replicas": replicas,
        "submitted_at_ms": submitted_at_ms,
        "ended_at_ms": ended_at_ms,
        "deterministic": deterministic,
        "limits": {
            "memory_bytes": limits.memory_bytes,
            "timeout_ms": limits.timeout_ms,
            "fuel": limits.fuel,
            "cpu": limits.cpu,
            "max_output_bytes": limits.max_output_bytes,
        },
    })
}

/// A hosted run as JSON.
pub(crate) fn hosted_json(run: &HostedRun) -> Value {
    let amounts = run.amounts.unwrap_or_default();
    json!({
        "job_id": run.job_id,
        "submitter": run.submitter,
        "lease_id": run.lease_id,
        "name": run.name,
        "started_at_ms": run.started_at_ms,
        "amounts": {
            "cpu": amounts.cpu,
            "memory_bytes": amounts.memory_bytes,
            "disk_bytes": amounts.disk_bytes,
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn formats_ages_and_digests() {
        assert_eq!(age(0, 5_000), "-");
        assert_eq!(age(1_000, 6_000), "5s");
        assert_eq!(age(1_000, 1_000 + 7_200_000), "2h");
        assert_eq!(millis(30_000), "30 s");
        assert_eq!(millis(1_234), "1.234 s");
        assert_eq!(digest_prefix(&[]), "-");
        assert_eq!(digest_prefix(&[0xab; 32]), "abababababab");
    }

    #[test]
    fn progress_says_where_it_runs() {
        let mut job = Job {
            job_id: "j1".into(),
            state: State::Queued as i32,
            ..Job::default()
        };
        assert_eq!(progress_text(&job), "job j1: QUEUED: waiting for a runner…");
        job.state = State::Running as i32;
        job.runs.push(Run {
            runner: "12D3KooWabcdefghijklmnop".into(),
            state: RunState::RunRunning as i32,
            ..Run::default()
        });
        assert_eq!(progress_text(&job), "job j1: RUNNING on 12D3KooW…klmnop");
    }

    #[test]
    fn json_names_states_and_keeps_bytes() {
        let job = Job {
            job_id: "j1".into(),
            state: State::Done as i32,
            result: Some(JobResult {
                stdout: b"hi\n".to_vec().into(),
                stderr: vec![0xff].into(),
                ..JobResult::default()
            }),
            ..Job::default()
        };
        let value = job_json(&job);
        assert_eq!(value["state"], "DONE");
        assert_eq!(value["reason"], "");
        assert_eq!(value["result"]["stdout_text"], "hi\n");
        assert_eq!(value["result"]["stderr_text"], Value::Null);
        assert_eq!(value["result"]["stderr_base64"], "/w==");
    }
}
