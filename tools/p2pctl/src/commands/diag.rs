//! `diag bundle FILE`: everything a bug report needs from this node in one `.tar.gz` —
//! `status.json` (as `status --json`), `config.toml` (no secrets), `logs.txt`, `metrics.txt`,
//! `peers.json`, `helpers.json`, `services.json`, `versions.txt` and a `README.txt`. The node
//! must answer its status; any other part that fails is named in the README instead.

use std::{future::Future, path::Path, time::Duration};

use p2pos_client::Client;
use p2pos_proto::{
    monitor::v1::{
        DoctorRequest, GetConfigRequest, GetMetricsRequest, GetStatusRequest, NodeStatus,
    },
    overlay::v1::ListPeersRequest,
    service::v1::ListServicesRequest,
    tasks::v1::ListHelpersRequest,
};
use serde_json::{Value, json};

use super::{RpcResult, bundle::Bundle, helper_view, logs, monitor, services};
use crate::{cli_diag::DiagCommand, output, progress};

/// How long one part may take before it is given up (and named in the README).
const PART_TIMEOUT: Duration = Duration::from_secs(15);
/// Log lines in `logs.txt`: all the node keeps (it answers with at most what it keeps).
const BUNDLE_LOG_LINES: u32 = u32::MAX;

/// Runs one `diag` command.
pub(crate) async fn run(client: &Client, command: DiagCommand) -> anyhow::Result<()> {
    match command {
        DiagCommand::Bundle { file, force, json } => bundle(client, &file, force, json).await,
    }
}

/// Collects the parts, writes the archive, prints `wrote FILE (N files)` (and what failed);
/// with `--json` `{file, files, failed}`.
async fn bundle(client: &Client, file: &Path, force: bool, json: bool) -> anyhow::Result<()> {
    super::bundle::refuse_existing(file, force)?;
    let bundle = progress::during(
        "collecting the node's status, logs, metrics and configuration",
        json,
        collect(client),
    )
    .await?;
    bundle.write(file, force)?;
    let (files, failed) = (bundle.names(), bundle.failed());
    if json {
        output::json_line(&json!({
            "file": file.display().to_string(),
            "files": files,
            "failed": failed,
        }))?;
    } else {
        let mut text = format!("wrote {} ({} files)", file.display(), files.len());
        if !failed.is_empty() {
            text.push_str(&format!(
                "; could not collect {} (see README.txt in it)",
                failed.join(", ")
            ));
        }
        output::line(text)?;
    }
    Ok(())
}

/// Every part; fails only if the node does not answer its status.
async fn collect(client: &Client) -> anyhow::Result<Bundle> {
    let status = client
        .monitor()
        .get_status(GetStatusRequest {})
        .await
        .or_fail("cannot get the node's status")?;
    let mut bundle = Bundle::default();
    bundle.add(
        "status.json",
        "the node's status, as `p2pctl status --json` prints it",
        json_bytes(&monitor::status_json(&status)),
    );
    let (config, logs, metrics, peers, helpers, services, doctor) = tokio::join!(
        part(config_toml(client)),
        part(logs_txt(client)),
        part(metrics_txt(client)),
        part(peers_json(client)),
        part(helpers_json(client)),
        part(services_json(client)),
        part(doctor_json(client)),
    );
    bundle.add(
        "config.toml",
        "the node's effective configuration (secrets left out)",
        config,
    );
    let logs = logs.map(|(text, counts)| {
        if !counts.is_empty() {
            bundle.note(counts);
        }
        text
    });
    bundle.add(
        "logs.txt",
        "the node's recent log lines (info and above), oldest first",
        logs,
    );
    bundle.add(
        "metrics.txt",
        "the node's metrics, Prometheus text format",
        metrics,
    );
    bundle.add(
        "peers.json",
        "connected peers, as `p2pctl peers --json`",
        peers,
    );
    bundle.add(
        "helpers.json",
        "helper programs and their states, as `p2pctl helpers list --json`",
        helpers,
    );
    bundle.add(
        "services.json",
        "services provided on this node, as `p2pctl services list --json`",
        services,
    );
    bundle.add(
        "doctor.json",
        "the doctor's checks of the node, as `p2pctl doctor --json`",
        doctor,
    );
    bundle.add(
        "versions.txt",
        "versions of p2pctl, the node and the operating system",
        Ok(versions(&status).into_bytes()),
    );
    Ok(bundle)
}

/// What `p2pctl doctor --json` prints.
async fn doctor_json(client: &Client) -> anyhow::Result<Vec<u8>> {
    let report = client
        .monitor()
        .doctor(DoctorRequest::default())
        .await
        .or_fail("cannot run the doctor")?;
    json_bytes(&super::doctor::report_json(&report)).map_err(anyhow::Error::msg)
}

/// A part's result, given up after [`PART_TIMEOUT`].
async fn part<T>(work: impl Future<Output = anyhow::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(PART_TIMEOUT, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{e:#}").replace('\n', " ")),
        Err(_) => Err(format!("no answer within {PART_TIMEOUT:?}")),
    }
}

fn json_bytes(value: &Value) -> Result<Vec<u8>, String> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    Ok(bytes)
}

async fn config_toml(client: &Client) -> anyhow::Result<Vec<u8>> {
    let reply = client
        .monitor()
        .get_config(GetConfigRequest {})
        .await
        .or_fail("cannot get the node's configuration")?;
    Ok(reply.toml.into_bytes())
}

/// The lines as `p2pctl logs` prints them, and a summary of the warnings and errors by target.
async fn logs_txt(client: &Client) -> anyhow::Result<(Vec<u8>, String)> {
    let reply = logs::fetch(client, "info", BUNDLE_LOG_LINES).await?;
    let mut text = String::new();
    for line in &reply.lines {
        text.push_str(&logs::line_text(line));
        text.push('\n');
    }
    let mut counts = String::new();
    if !reply.counts.is_empty() {
        counts.push_str("Warnings and errors logged since the node started, by target:\n");
        for count in &reply.counts {
            counts.push_str(&format!(
                "  {}: warnings {}, errors {}\n",
                count.target, count.warnings, count.errors
            ));
        }
    }
    Ok((text.into_bytes(), counts))
}

async fn metrics_txt(client: &Client) -> anyhow::Result<Vec<u8>> {
    let reply = client
        .monitor()
        .get_metrics(GetMetricsRequest {})
        .await
        .or_fail("cannot get the node's metrics")?;
    Ok(reply.text.into_bytes())
}

async fn peers_json(client: &Client) -> anyhow::Result<Vec<u8>> {
    let reply = client
        .overlay()
        .list_peers(ListPeersRequest {})
        .await
        .or_fail("cannot list peers")?;
    let peers = reply.peers.iter().map(output::peer_json).collect();
    json_bytes(&Value::Array(peers)).map_err(anyhow::Error::msg)
}

async fn helpers_json(client: &Client) -> anyhow::Result<Vec<u8>> {
    let reply = client
        .tasks()
        .list_helpers(ListHelpersRequest {
            app_id: String::new(),
        })
        .await
        .or_fail("cannot list helpers")?;
    let helpers = reply
        .helpers
        .into_iter()
        .map(|mut helper| {
            redact(&mut helper);
            helper_view::status_json(&helper)
        })
        .collect();
    json_bytes(&Value::Array(helpers)).map_err(anyhow::Error::msg)
}

/// What a helper's spec may hold of its app's secrets (API keys in its environment or
/// arguments), replaced: a bundle goes to bug reports. The names of variables stay, and how
/// many arguments there were.
fn redact(helper: &mut p2pos_proto::tasks::v1::HelperStatus) {
    if let Some(spec) = helper.spec.as_mut() {
        for value in spec.env.values_mut() {
            *value = REDACTED.to_owned();
        }
        for arg in &mut spec.args {
            *arg = REDACTED.to_owned();
        }
    }
}

/// What stands for a value left out of the bundle.
const REDACTED: &str = "<redacted>";

async fn services_json(client: &Client) -> anyhow::Result<Vec<u8>> {
    let reply = client
        .services()
        .list_services(ListServicesRequest {})
        .await
        .or_fail("cannot list services")?;
    let list = reply.services.iter().map(services::service_json).collect();
    json_bytes(&Value::Array(list)).map_err(anyhow::Error::msg)
}

/// `p2pctl 0.1.0`, `p2posd 0.1.0`, the OS (release name, kernel, architecture).
fn versions(status: &NodeStatus) -> String {
    let pretty = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "-".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_else(|_| "-".to_owned());
    format!(
        "p2pctl {}\np2posd {}\nos {} {}\nrelease {pretty}\nkernel {kernel}\n",
        env!("CARGO_PKG_VERSION"),
        status.version,
        std::env::consts::OS,
        std::env::consts::ARCH,
    )
}
