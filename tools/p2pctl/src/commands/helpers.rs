//! `helpers`: helper applications (plug-ins) the node runs and supervises for apps
//! (`p2pos.tasks.v1.Tasks`): list, add, remove, start, stop, restart, status, signal, logs.

use std::collections::HashMap;

use p2pos_client::{Client, describe_status};
use p2pos_proto::tasks::v1::{
    AddHelperRequest, HelperRef, HelperSpec, HelperStatus, Limits, ListHelpersRequest, LogsRequest,
    RemoveHelperReply, RestartPolicy, SignalHelperRequest,
};
use serde_json::Value;

use super::{
    RpcResult,
    helper_view::{helpers_table, log_json, status_json, status_text},
};
use crate::{
    cli::{AddHelper, HelperName, HelpersCommand, RestartArg},
    output,
};

/// Runs one `helpers` command.
pub(crate) async fn run(client: &Client, command: HelpersCommand) -> anyhow::Result<()> {
    match command {
        HelpersCommand::List { app, json } => list(client, app.app, json.json).await,
        HelpersCommand::Add(add) => self::add(client, add).await,
        HelpersCommand::Remove(helper) => remove(client, helper).await,
        HelpersCommand::Start { helper, json } => {
            let status = client.tasks().start_helper(reference(&helper)).await;
            print_status(
                status.or_fail(&format!("cannot start {}", describe(&helper)))?,
                json.json,
            )
        }
        HelpersCommand::Stop { helper, json } => {
            let status = client.tasks().stop_helper(reference(&helper)).await;
            print_status(
                status.or_fail(&format!("cannot stop {}", describe(&helper)))?,
                json.json,
            )
        }
        HelpersCommand::Restart { helper, json } => {
            let status = client.tasks().restart_helper(reference(&helper)).await;
            let what = format!("cannot restart {}", describe(&helper));
            print_status(status.or_fail(&what)?, json.json)
        }
        HelpersCommand::Status { helper, json } => {
            let status = client.tasks().get_helper(reference(&helper)).await;
            print_status(
                status.or_fail(&format!("cannot get {}", describe(&helper)))?,
                json.json,
            )
        }
        HelpersCommand::Signal {
            helper,
            signal,
            json,
        } => {
            let request = SignalHelperRequest {
                helper: Some(reference(&helper)),
                signal: signal.clone(),
            };
            let status = client.tasks().signal_helper(request).await;
            let what = format!("cannot send {signal} to {}", describe(&helper));
            print_status(status.or_fail(&what)?, json.json)
        }
        HelpersCommand::Logs {
            helper,
            follow,
            tail,
            json,
        } => logs(client, &helper, follow, tail.unwrap_or(0), json).await,
    }
}

/// The table of helpers; with `--json` an array of `status_json` objects.
async fn list(client: &Client, app: Option<String>, json: bool) -> anyhow::Result<()> {
    let reply = client
        .tasks()
        .list_helpers(ListHelpersRequest {
            app_id: app.unwrap_or_default(),
        })
        .await
        .or_fail("cannot list helpers")?;
    if json {
        let helpers: Vec<Value> = reply.helpers.iter().map(status_json).collect();
        output::json_line(&Value::Array(helpers))?;
    } else if reply.helpers.is_empty() {
        output::line("no helpers")?;
    } else {
        output::print_table(&helpers_table(&reply.helpers))?;
    }
    Ok(())
}

async fn add(client: &Client, add: AddHelper) -> anyhow::Result<()> {
    let json = add.json.json;
    let spec = spec(add)?;
    let what = format!("cannot add helper {:?}", spec.name);
    let status = client
        .tasks()
        .add_helper(AddHelperRequest { spec: Some(spec) })
        .await
        .or_fail(&what)?;
    print_status(status, json)
}

async fn remove(client: &Client, helper: HelperName) -> anyhow::Result<()> {
    let RemoveHelperReply {} = client
        .tasks()
        .remove_helper(reference(&helper))
        .await
        .or_fail(&format!("cannot remove {}", describe(&helper)))?;
    output::line(format!("removed {}", describe(&helper)))?;
    Ok(())
}

/// Prints the kept lines (then, with `--follow`, new ones until the stream ends) as plain text,
/// stdout and stderr interleaved as the helper wrote them; with `--json` one object per line.
async fn logs(
    client: &Client,
    helper: &HelperName,
    follow: bool,
    tail: u32,
    json: bool,
) -> anyhow::Result<()> {
    let mut lines = client
        .tasks()
        .logs(LogsRequest {
            helper: Some(reference(helper)),
            follow,
            tail,
        })
        .await
        .or_fail(&format!("cannot read the logs of {}", describe(helper)))?;
    if follow {
        // On stderr, so that stdout holds only the helper's lines.
        eprintln!("following {} (Ctrl-C to stop)", describe(helper));
    }
    loop {
        match lines.message().await {
            Ok(Some(line)) if json => output::json_line(&log_json(&line))?,
            Ok(Some(line)) => output::line(line.text)?,
            Ok(None) => return Ok(()),
            Err(status) => anyhow::bail!("log stream ended: {}", describe_status(&status)),
        }
    }
}

fn reference(helper: &HelperName) -> HelperRef {
    HelperRef {
        app_id: helper.app.app.clone().unwrap_or_default(),
        name: helper.name.clone(),
    }
}

/// `helper "voice" of app "chat"`, or `helper "indexer"` for a node-wide one.
fn describe(helper: &HelperName) -> String {
    match &helper.app.app {
        Some(app) if !app.is_empty() => format!("helper {:?} of app {app:?}", helper.name),
        _ => format!("helper {:?}", helper.name),
    }
}

/// The spec `helpers add` asks for; a relative working directory is taken from here.
fn spec(add: AddHelper) -> anyhow::Result<HelperSpec> {
    let AddHelper {
        name,
        program,
        args,
        app,
        env,
        workdir,
        restart,
        max_restarts,
        restart_period,
        stop_signal,
        stop_timeout,
        outlive_session,
        memory,
        cpu,
        pids,
        read,
        json: _,
    } = add;
    let working_dir = match workdir {
        Some(dir) => std::path::absolute(&dir)
            .map_err(|e| anyhow::anyhow!("bad working directory {}: {e}", dir.display()))?
            .to_str()
            .ok_or_else(|| anyhow::anyhow!("the working directory is not valid UTF-8"))?
            .to_owned(),
        None => String::new(),
    };
    let restart = match restart {
        None => RestartPolicy::Unspecified,
        Some(RestartArg::Never) => RestartPolicy::Never,
        Some(RestartArg::OnFailure) => RestartPolicy::OnFailure,
        Some(RestartArg::Always) => RestartPolicy::Always,
    };
    Ok(HelperSpec {
        name,
        app_id: app.app.unwrap_or_default(),
        program,
        args,
        env: env.into_iter().collect::<HashMap<_, _>>(),
        working_dir,
        restart: restart.into(),
        max_restarts: max_restarts.unwrap_or(0),
        restart_period_secs: restart_period.unwrap_or(0),
        stop_signal: stop_signal.unwrap_or_default(),
        stop_timeout_ms: stop_timeout.unwrap_or(0),
        outlive_session,
        read_paths: read
            .iter()
            .map(|p| {
                std::path::absolute(p)
                    .ok()
                    .and_then(|p| p.to_str().map(str::to_owned))
                    .ok_or_else(|| anyhow::anyhow!("bad path to read {}", p.display()))
            })
            .collect::<anyhow::Result<_>>()?,
        limits: (memory.is_some() || cpu.is_some() || pids.is_some()).then(|| Limits {
            memory_bytes: memory.unwrap_or(0),
            cpu: cpu.unwrap_or(0.0),
            pids: pids.unwrap_or(0),
        }),
    })
}

fn print_status(status: HelperStatus, json: bool) -> anyhow::Result<()> {
    if json {
        output::json_line(&status_json(&status))?;
    } else {
        output::line(status_text(&status))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cli::{AppOption, JsonFlag};

    #[test]
    fn add_builds_the_spec() {
        let add = AddHelper {
            name: "voice".into(),
            program: "voice".into(),
            args: vec!["-v".into()],
            app: AppOption {
                app: Some("chat".into()),
            },
            env: vec![("A".into(), "1".into())],
            workdir: Some("rel".into()),
            restart: Some(RestartArg::Always),
            max_restarts: Some(3),
            restart_period: None,
            stop_signal: Some("SIGINT".into()),
            stop_timeout: Some(100),
            outlive_session: true,
            memory: Some(64 << 20),
            cpu: None,
            pids: None,
            read: vec!["song.wav".into()],
            json: JsonFlag { json: false },
        };
        let spec = spec(add).unwrap();
        assert_eq!(spec.app_id, "chat");
        assert!(
            std::path::Path::new(&spec.read_paths[0]).is_absolute(),
            "{:?}",
            spec.read_paths
        );
        assert_eq!(
            (spec.program.as_str(), spec.args.as_slice()),
            ("voice", &["-v".to_owned()][..])
        );
        assert_eq!(spec.env.get("A").map(String::as_str), Some("1"));
        assert!(
            std::path::Path::new(&spec.working_dir).is_absolute(),
            "{}",
            spec.working_dir
        );
        assert!(spec.working_dir.ends_with("/rel"), "{}", spec.working_dir);
        assert_eq!(spec.restart(), RestartPolicy::Always);
        assert_eq!(
            (
                spec.max_restarts,
                spec.restart_period_secs,
                spec.stop_timeout_ms
            ),
            (3, 0, 100)
        );
        assert!(spec.outlive_session);
        let reference = reference(&HelperName {
            name: "indexer".into(),
            app: AppOption { app: None },
        });
        assert_eq!(reference.app_id, "");
    }
}
