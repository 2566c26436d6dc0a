//! `doctor [PEER | GROUP]`: the node's checks (`Monitor.Doctor`), one line per check with its
//! verdict, what it saw when it is not ok (or with `--verbose`) and what to do; for a group, the
//! member × member matrix. Exits 1 when a check fails.

use p2pos_client::Client;
use p2pos_proto::monitor::v1::{Check, DoctorReport, DoctorRequest, Verdict};
use p2pos_protocols::network::ticket::parse_target;
use serde_json::{Value, json};

use super::RpcResult;
use crate::output;

/// Runs the doctor on the node, a peer or a group, and prints its report.
pub(crate) async fn run(
    client: &Client,
    target: Option<String>,
    group: bool,
    verbose: bool,
    json: bool,
) -> anyhow::Result<()> {
    let request = match target {
        None => DoctorRequest::default(),
        // A peer id or ticket names a peer; anything else a group.
        Some(target) if !group && parse_target(&target).is_ok() => DoctorRequest {
            peer: target,
            ..DoctorRequest::default()
        },
        Some(target) => DoctorRequest {
            group: target,
            ..DoctorRequest::default()
        },
    };
    // A pair may need a DHT look-up and a dial; a group, every member's answer.
    let message = match (request.peer.as_str(), request.group.as_str()) {
        ("", "") => "checking the node".to_owned(),
        (peer, "") => format!("diagnosing {}", crate::progress::short(peer)),
        (_, group) => format!("asking the members of {}", crate::progress::short(group)),
    };
    let mut monitor = client.monitor();
    let report = crate::progress::during(message, json, monitor.doctor(request))
        .await
        .or_fail("cannot run the doctor")?;
    if json {
        output::json_line(&report_json(&report))?;
    } else {
        output::line(report_text(&report, verbose))?;
    }
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.verdict() == Verdict::Fail)
        .map(|c| c.name.as_str())
        .collect();
    match failed.is_empty() {
        true => Ok(()),
        false => anyhow::bail!("{} failed: {}", plural(failed.len()), failed.join(", ")),
    }
}

fn plural(n: usize) -> String {
    match n {
        1 => "1 check".to_owned(),
        n => format!("{n} checks"),
    }
}

/// "ok", "warn", "FAIL".
fn verdict(check: &Check) -> &'static str {
    match check.verdict() {
        Verdict::Ok => "ok",
        Verdict::Warn => "warn",
        Verdict::Fail => "FAIL",
        Verdict::Unspecified => "?",
    }
}

/// One line per check; under a check that is not ok (or every check, verbose) what it saw and
/// the remedy; then the matrix of a group.
fn report_text(report: &DoctorReport, verbose: bool) -> String {
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for check in &report.checks {
        text.push_str(&format!(
            "{:<5} {:<width$}  {}\n",
            verdict(check),
            check.name,
            check.summary
        ));
        let quiet = check.verdict() == Verdict::Ok && !verbose;
        if !quiet {
            for fact in &check.evidence {
                text.push_str(&format!("{:<5} {:<width$}    · {fact}\n", "", ""));
            }
        }
        if !check.remedy.is_empty() {
            text.push_str(&format!("{:<5} {:<width$}    → {}\n", "", "", check.remedy));
        }
    }
    if !report.members.is_empty() {
        text.push('\n');
        text.push_str(&matrix_text(report));
    }
    text.trim_end().to_owned()
}

/// The group's matrix: a row per member (what it says of its links), a column per member.
fn matrix_text(report: &DoctorReport) -> String {
    let short = output::short_id;
    let mut header = vec!["MEMBER".to_owned()];
    header.extend(report.members.iter().map(|m| short(m)));
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(header);
    for row in &report.matrix {
        let mut cells = vec![short(&row.peer_id)];
        cells.extend(row.links.iter().cloned());
        table.add_row(cells);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let mut text = table.trim_fmt();
    for row in report.matrix.iter().filter(|r| !r.error.is_empty()) {
        text.push_str(&format!("\n{}: {}", short(&row.peer_id), row.error));
    }
    text
}

/// `{"ok": bool, "checks": [{name, verdict, summary, evidence, remedy}], "members", "matrix"}`.
pub(crate) fn report_json(report: &DoctorReport) -> Value {
    let checks: Vec<Value> = report
        .checks
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "verdict": verdict(c).to_lowercase(),
                "summary": c.summary,
                "evidence": c.evidence,
                "remedy": c.remedy,
            })
        })
        .collect();
    let matrix: Vec<Value> = report
        .matrix
        .iter()
        .map(|r| json!({"peer_id": r.peer_id, "links": r.links, "error": r.error}))
        .collect();
    json!({
        "ok": report.checks.iter().all(|c| c.verdict() != Verdict::Fail),
        "checks": checks,
        "members": report.members,
        "matrix": matrix,
    })
}
