//! How `p2pctl helpers` shows helpers: `key: value` lines and a table for people, JSON
//! objects for scripts, and log lines.

use p2pos_proto::tasks::v1::{
    ExitStatus, HelperSpec, HelperState, HelperStatus, Limits, LogLine, LogStream, RestartPolicy,
};
use serde_json::{Value, json};

use crate::output;

/// `running`, `stopped`, ... as in `HelperChanged` events.
fn state_name(state: i32) -> &'static str {
    match HelperState::try_from(state) {
        Ok(HelperState::Stopped) => "stopped",
        Ok(HelperState::Running) => "running",
        Ok(HelperState::Stopping) => "stopping",
        Ok(HelperState::Backoff) => "backoff",
        Ok(HelperState::Exited) => "exited",
        Ok(HelperState::Failed) => "failed",
        Ok(HelperState::Unspecified) | Err(_) => "unknown",
    }
}

fn restart_name(restart: i32) -> &'static str {
    match RestartPolicy::try_from(restart) {
        Ok(RestartPolicy::Never) => "never",
        Ok(RestartPolicy::Unspecified | RestartPolicy::OnFailure) => "on-failure",
        Ok(RestartPolicy::Always) => "always",
        Err(_) => "unknown",
    }
}

fn stream_name(stream: i32) -> &'static str {
    match LogStream::try_from(stream) {
        Ok(LogStream::Stdout) => "stdout",
        Ok(LogStream::Stderr) => "stderr",
        Ok(LogStream::Unspecified) | Err(_) => "unknown",
    }
}

/// The program and its arguments as one would type them in a shell.
fn command_line(program: &str, args: &[String]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text`, single-quoted if a shell would split or expand it.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// How it last exited: `code 3 at <time>`, `killed by SIGKILL at <time>`, or `-`.
fn exit_text(exit: Option<&ExitStatus>) -> String {
    let Some(ExitStatus {
        code,
        signal,
        at_ms,
    }) = exit
    else {
        return "-".to_owned();
    };
    let how = match code {
        Some(code) => format!("code {code}"),
        None if !signal.is_empty() => format!("killed by {signal}"),
        None => return "-".to_owned(),
    };
    if *at_ms == 0 {
        how
    } else {
        format!("{how} at {}", output::timestamp(*at_ms))
    }
}

fn app_or_dash(spec: &HelperSpec) -> String {
    output::dash_if_empty(&spec.app_id)
}

/// The `helpers list` table.
pub(crate) fn helpers_table(helpers: &[HelperStatus]) -> comfy_table::Table {
    let mut table = output::table([
        "NAME", "APP", "STATE", "PID", "RESTARTS", "PROGRAM", "REASON",
    ]);
    for status in helpers {
        let spec = status.spec.clone().unwrap_or_default();
        table.add_row([
            spec.name.clone(),
            app_or_dash(&spec),
            state_name(status.state).to_owned(),
            pid_or_dash(status.pid),
            status.restarts.to_string(),
            command_line(&spec.program, &spec.args),
            output::dash_if_empty(&status.reason),
        ]);
    }
    table
}

fn pid_or_dash(pid: u32) -> String {
    if pid == 0 {
        "-".to_owned()
    } else {
        pid.to_string()
    }
}

/// `key: value` lines: name, app, helper app id, state, pid, restarts, program, last exit,
/// reason, started.
pub(crate) fn status_text(status: &HelperStatus) -> String {
    let HelperStatus {
        spec,
        state,
        pid,
        restarts,
        last_exit,
        reason,
        started_at_ms,
        helper_app_id,
        limits,
        enforcement,
        cgroup: _,
    } = status;
    let spec = spec.clone().unwrap_or_default();
    let started = if *started_at_ms == 0 {
        "-".to_owned()
    } else {
        output::timestamp(*started_at_ms)
    };
    [
        ("name", spec.name.clone()),
        ("app", app_or_dash(&spec)),
        ("app id", output::dash_if_empty(helper_app_id)),
        ("state", state_name(*state).to_owned()),
        ("pid", pid_or_dash(*pid)),
        ("restarts", restarts.to_string()),
        ("program", command_line(&spec.program, &spec.args)),
        ("last exit", exit_text(last_exit.as_ref())),
        ("reason", output::dash_if_empty(reason)),
        ("started", started),
        ("limits", limits_text(limits.as_ref(), enforcement)),
    ]
    .iter()
    .map(|(key, value)| format!("{key}: {value}"))
    .collect::<Vec<_>>()
    .join("\n")
}

/// A helper as JSON: `{name, app_id, helper_app_id, state, pid, restarts, reason,
/// started_at_ms, last_exit: {code, signal, at_ms} | null, spec: {...}}`.
pub(crate) fn status_json(status: &HelperStatus) -> Value {
    let HelperStatus {
        spec,
        state,
        pid,
        restarts,
        last_exit,
        reason,
        started_at_ms,
        helper_app_id,
        limits,
        enforcement,
        cgroup,
    } = status;
    let spec = spec.clone().unwrap_or_default();
    let last_exit = last_exit.as_ref().map_or(Value::Null, |e| {
        let ExitStatus {
            code,
            signal,
            at_ms,
        } = e;
        json!({ "code": code, "signal": signal, "at_ms": at_ms })
    });
    json!({
        "name": spec.name,
        "app_id": spec.app_id,
        "helper_app_id": helper_app_id,
        "state": state_name(*state),
        "pid": pid,
        "restarts": restarts,
        "reason": reason,
        "started_at_ms": started_at_ms,
        "limits": limits_json(limits.as_ref()),
        "enforcement": enforcement,
        "cgroup": cgroup,
        "last_exit": last_exit,
        "spec": spec_json(&spec),
    })
}

fn spec_json(spec: &HelperSpec) -> Value {
    let HelperSpec {
        name,
        app_id,
        program,
        args,
        env,
        working_dir,
        restart,
        max_restarts,
        restart_period_secs,
        stop_signal,
        stop_timeout_ms,
        outlive_session,
        limits,
        read_paths,
    } = spec;
    json!({
        "name": name,
        "app_id": app_id,
        "program": program,
        "args": args,
        "env": env,
        "working_dir": working_dir,
        "restart": restart_name(*restart),
        "max_restarts": max_restarts,
        "restart_period_secs": restart_period_secs,
        "stop_signal": stop_signal,
        "stop_timeout_ms": stop_timeout_ms,
        "outlive_session": outlive_session,
        "limits": limits_json(limits.as_ref()),
        "read_paths": read_paths,
    })
}

/// Limits as JSON: `{memory_bytes, cpu, pids}` (0: not set), or null.
fn limits_json(limits: Option<&Limits>) -> Value {
    limits.map_or(Value::Null, |l| {
        let Limits {
            memory_bytes,
            cpu,
            pids,
        } = l;
        json!({ "memory_bytes": memory_bytes, "cpu": cpu, "pids": pids })
    })
}

/// "memory 64 MiB, cpu 0.5, pids 256 (cgroup v1)", or "-" before it ran.
fn limits_text(limits: Option<&Limits>, enforcement: &str) -> String {
    let Some(l) = limits else {
        return "-".to_owned();
    };
    let or_none = |set: bool, text: String| if set { text } else { "none".to_owned() };
    format!(
        "memory {}, cpu {}, pids {} ({enforcement})",
        or_none(l.memory_bytes > 0, format!("{} MiB", l.memory_bytes >> 20)),
        or_none(l.cpu > 0.0, l.cpu.to_string()),
        or_none(l.pids > 0, l.pids.to_string()),
    )
}

/// A log line as JSON: `{seq, at_ms, stream, text}`.
pub(crate) fn log_json(line: &LogLine) -> Value {
    let LogLine {
        seq,
        at_ms,
        stream,
        text,
    } = line;
    json!({ "seq": seq, "at_ms": at_ms, "stream": stream_name(*stream), "text": text })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn running() -> HelperStatus {
        HelperStatus {
            spec: Some(HelperSpec {
                name: "voice".into(),
                app_id: "chat".into(),
                program: "voice-helper".into(),
                args: vec!["--port".into(), "5".into(), "two words".into()],
                ..HelperSpec::default()
            }),
            state: HelperState::Running.into(),
            pid: 4242,
            restarts: 1,
            last_exit: Some(ExitStatus {
                code: None,
                signal: "SIGSEGV".into(),
                at_ms: 1_718_454_896_789,
            }),
            reason: "killed by SIGSEGV".into(),
            started_at_ms: 1_718_454_897_000,
            helper_app_id: "chat:voice".into(),
            limits: Some(Limits {
                memory_bytes: 64 << 20,
                cpu: 0.5,
                pids: 0,
            }),
            enforcement: "cgroup v1".into(),
            cgroup: String::new(),
        }
    }

    #[test]
    fn status_text_is_key_value_lines() {
        assert_eq!(
            status_text(&running()),
            "name: voice\n\
             app: chat\n\
             app id: chat:voice\n\
             state: running\n\
             pid: 4242\n\
             restarts: 1\n\
             program: voice-helper --port 5 'two words'\n\
             last exit: killed by SIGSEGV at 2024-06-15T12:34:56.789Z\n\
             reason: killed by SIGSEGV\n\
             started: 2024-06-15T12:34:57.000Z\n\
             limits: memory 64 MiB, cpu 0.5, pids none (cgroup v1)"
        );
        let never_ran = HelperStatus {
            spec: Some(HelperSpec {
                name: "indexer".into(),
                program: "/usr/bin/indexer".into(),
                ..HelperSpec::default()
            }),
            state: HelperState::Stopped.into(),
            ..HelperStatus::default()
        };
        let text = status_text(&never_ran);
        for line in [
            "app: -",
            "state: stopped",
            "pid: -",
            "last exit: -",
            "started: -",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }

    #[test]
    fn the_list_is_a_table() {
        let stopped = HelperStatus {
            spec: Some(HelperSpec {
                name: "indexer".into(),
                program: "indexer".into(),
                ..HelperSpec::default()
            }),
            state: HelperState::Exited.into(),
            last_exit: Some(ExitStatus {
                code: Some(3),
                signal: String::new(),
                at_ms: 0,
            }),
            reason: "exited with code 3".into(),
            ..HelperStatus::default()
        };
        let text = helpers_table(&[running(), stopped]).trim_fmt();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAME"), "{text}");
        for column in ["APP", "STATE", "PID", "RESTARTS", "PROGRAM", "REASON"] {
            assert!(lines[0].contains(column), "{column} in {text}");
        }
        let words: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            words,
            [
                "indexer", "-", "exited", "-", "0", "indexer", "exited", "with", "code", "3"
            ]
        );
        assert!(
            lines[1].contains("voice-helper --port 5 'two words'"),
            "{text}"
        );
        assert!(text.lines().all(|l| !l.ends_with(' ')), "{text:?}");
    }

    #[test]
    fn json_shapes_are_stable() {
        let value = status_json(&running());
        assert_eq!(value["name"], "voice");
        assert_eq!(value["app_id"], "chat");
        assert_eq!(value["helper_app_id"], "chat:voice");
        assert_eq!(value["state"], "running");
        assert_eq!(value["pid"], 4242);
        assert_eq!(value["last_exit"]["signal"], "SIGSEGV");
        assert_eq!(value["last_exit"]["code"], Value::Null);
        assert_eq!(value["spec"]["restart"], "on-failure");
        assert_eq!(value["spec"]["args"][2], "two words");
        let line = LogLine {
            seq: 7,
            at_ms: 1,
            stream: LogStream::Stderr.into(),
            text: "oops".into(),
        };
        assert_eq!(
            log_json(&line),
            json!({ "seq": 7, "at_ms": 1, "stream": "stderr", "text": "oops" })
        );
    }

    #[test]
    fn exits_read_well() {
        assert_eq!(exit_text(None), "-");
        let exit = ExitStatus {
            code: Some(0),
            signal: String::new(),
            at_ms: 0,
        };
        assert_eq!(exit_text(Some(&exit)), "code 0");
        assert_eq!(exit_text(Some(&ExitStatus::default())), "-");
    }

    #[test]
    fn quotes_only_what_a_shell_would_split() {
        assert_eq!(shell_quote("--port=5"), "--port=5");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
