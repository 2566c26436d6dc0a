//! `logs`: the node's recent log lines (`p2pos.monitor.v1.Monitor.GetLogs`, admin only).

use p2pos_client::Client;
use p2pos_proto::monitor::v1::{GetLogsReply, GetLogsRequest, LogLine};
use serde_json::{Value, json};

use super::RpcResult;
use crate::{cli_diag::LogsArgs, output};

/// Prints one line per log line, `TIME LEVEL TARGET: TEXT`; with `--json` one object per line
/// (see [`line_json`]).
pub(crate) async fn logs(client: &Client, args: LogsArgs) -> anyhow::Result<()> {
    let LogsArgs { level, limit, json } = args;
    let reply = fetch(client, level.as_str(), limit.unwrap_or(0)).await?;
    if !json && reply.lines.is_empty() {
        eprintln!("no {} lines kept", level.as_str());
        return Ok(());
    }
    for line in &reply.lines {
        if json {
            output::json_line(&line_json(line))?;
        } else {
            output::line(line_text(line))?;
        }
    }
    Ok(())
}

/// `GetLogs` with `min_level` and `limit` (0: the node's default).
pub(crate) async fn fetch(
    client: &Client,
    min_level: &str,
    limit: u32,
) -> anyhow::Result<GetLogsReply> {
    client
        .monitor()
        .get_logs(GetLogsRequest {
            min_level: min_level.to_owned(),
            limit,
        })
        .await
        .or_fail("cannot get the node's logs")
}

/// `2026-12-07T16:40:01.123Z  WARN p2pos_network::service: text`, as the node's stderr has it.
pub(crate) fn line_text(line: &LogLine) -> String {
    let LogLine {
        seq: _,
        at_ms,
        level,
        target,
        text,
    } = line;
    format!(
        "{} {level:>5} {target}: {}",
        output::timestamp(*at_ms),
        // The node escapes control characters too; this does not rely on it.
        crate::output::escaped(text)
    )
}

/// `{seq, at_ms, level, target, text}`.
pub(crate) fn line_json(line: &LogLine) -> Value {
    let LogLine {
        seq,
        at_ms,
        level,
        target,
        text,
    } = line;
    json!({ "seq": seq, "at_ms": at_ms, "level": level, "target": target, "text": text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reads_like_the_nodes_stderr() {
        let line = LogLine {
            seq: 3,
            at_ms: 1_000,
            level: "WARN".into(),
            target: "p2pos_network::service".into(),
            text: "ignoring bootstrap peer\nsecond".into(),
        };
        assert_eq!(
            line_text(&line),
            "1970-01-01T00:00:01.000Z  WARN p2pos_network::service: ignoring bootstrap peer\\nsecond"
        );
        assert_eq!(line_json(&line)["seq"], 3);
    }
}
