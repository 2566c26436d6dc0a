//! `services`: services that apps provide to other apps (`p2pos.service.v1.Services`): list
//! those on this node, find providers, call one.

use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use anyhow::Context;

use data_encoding::BASE64;
use p2pos_client::Client;
use p2pos_proto::service::v1::{
    CallReply, CallRequest, FindServiceRequest, ListServicesRequest, Reachability, ServiceInfo,
};
use serde_json::{Value, json};

use super::{RpcResult, payload::Source};
use crate::{
    cli::{ServicesCommand, TrustArgs},
    output,
};
use p2pos_protocols::{PeerId, certs::PublisherSecret, ids::ServiceName};

/// Runs one `services` command.
pub(crate) async fn run(client: &Client, command: ServicesCommand) -> anyhow::Result<()> {
    match command {
        ServicesCommand::List(flag) => list(client, flag.json).await,
        ServicesCommand::Find {
            service,
            limit,
            group,
            trust: TrustArgs {
                peers,
                publisher_keys,
            },
            json,
        } => {
            let request = FindServiceRequest {
                service,
                limit: limit.unwrap_or(0),
                group: group.unwrap_or_default(),
                peers,
                publisher_keys,
            };
            find(client, request, json.json).await
        }
        ServicesCommand::Call {
            service,
            payload,
            file,
            app,
            peer,
            group,
            trust: TrustArgs {
                peers,
                publisher_keys,
            },
            timeout,
            json,
        } => {
            let payload = Source::from_args(payload, file).read()?;
            let request = CallRequest {
                app_id: app,
                service,
                payload: payload.into(),
                peer: peer.unwrap_or_default(),
                timeout_ms: timeout.unwrap_or(0),
                group: group.unwrap_or_default(),
                peers,
                publisher_keys,
            };
            call(client, request, json).await
        }
        ServicesCommand::Keygen { out, json } => keygen(&out, json.json),
        ServicesCommand::Certify {
            key,
            app,
            service,
            peer,
            days,
            json,
        } => certify(&key, (&app, &service, &peer), days, json.json),
    }
}

/// Makes a publisher key pair: the secret into `out` (0600, never over an existing file), the
/// public key printed.
fn keygen(out: &Path, json: bool) -> anyhow::Result<()> {
    let secret = PublisherSecret::generate();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    writeln!(file, "{}", secret.to_text())?;
    file.sync_all()?;
    let key = secret.public().to_text();
    if json {
        output::json_line(&json!({"publisher_key": key, "secret_file": out}))?;
    } else {
        output::line(&key)?;
    }
    Ok(())
}

/// Prints a certificate, signed with the secret in `key`, that app `app` on `peer` provides
/// `service` for `days` from now.
fn certify(
    key: &Path,
    (app, service, peer): (&str, &str, &str),
    days: u32,
    json: bool,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(key)
        .with_context(|| format!("cannot read the secret key {}", key.display()))?;
    let secret =
        PublisherSecret::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    ServiceName::parse_explained(service).map_err(|e| anyhow::anyhow!("{e}"))?;
    let peer: PeerId = peer
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{peer:?} is not a peer id (12D3KooW...)"))?;
    if !(1..=3650).contains(&days) {
        anyhow::bail!("--days must be 1 to 3650, not {days}");
    }
    let expires_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
        .saturating_add(u64::from(days) * 86_400_000);
    let cert = secret
        .certify(service, (app, peer), expires_ms)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_text();
    if json {
        output::json_line(&json!({
            "certificate": cert,
            "service": service,
            "app_id": app,
            "peer_id": peer.to_string(),
            "expires_ms": expires_ms,
            "publisher_key": secret.public().to_text(),
        }))?;
    } else {
        output::line(&cert)?;
    }
    Ok(())
}

/// The services table (SERVICE, APP, DESCRIPTION); with `--json` an array of `service_json`.
async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let reply = client
        .services()
        .list_services(ListServicesRequest {})
        .await
        .or_fail("cannot list services")?;
    if json {
        let services: Vec<Value> = reply.services.iter().map(service_json).collect();
        output::json_line(&Value::Array(services))?;
    } else if reply.services.is_empty() {
        output::line("no services")?;
    } else {
        let mut table = output::table(["SERVICE", "APP", "DESCRIPTION", "ANNOUNCED"]);
        for info in &reply.services {
            let announced = match (info.announced, info.announce_error.as_str()) {
                (true, _) => "yes".to_owned(),
                (false, "") => "on its way".to_owned(),
                (false, why) => format!("no: {why}"),
            };
            table.add_row([
                info.service.clone(),
                info.app_id.clone(),
                output::dash_if_empty(&info.description),
                announced,
            ]);
        }
        output::print_table(&table)?;
    }
    Ok(())
}

/// The providers table (PEER, APP, LOCAL, RTT), best first; with `--json` an array of
/// `service_json`.
async fn find(client: &Client, request: FindServiceRequest, json: bool) -> anyhow::Result<()> {
    let service = request.service.clone();
    let message = format!(
        "looking for providers of {}",
        crate::progress::short(&service)
    );
    let mut services = client.services();
    let reply = crate::progress::during(message, json, services.find_service(request))
        .await
        .or_fail(&format!("cannot find {service}"))?;
    if json {
        let providers: Vec<Value> = reply.providers.iter().map(service_json).collect();
        output::json_line(&Value::Array(providers))?;
    } else {
        output::print_table(&providers_table(&reply.providers))?;
    }
    Ok(())
}

fn providers_table(providers: &[ServiceInfo]) -> comfy_table::Table {
    let mut table = output::table(["PEER", "APP", "LOCAL", "RTT", "REACHED"]);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    for info in providers {
        table.add_row([
            info.peer_id.clone(),
            output::dash_if_empty(&info.app_id),
            if info.local { "yes" } else { "no" }.to_owned(),
            output::rtt(u64::from(info.rtt_us)),
            reached(info, now_ms),
        ]);
    }
    table
}

/// When the node last reached a provider, for people: `now` (connected), `12 s ago`,
/// `not in 5 min` (its DHT record may be stale), `unreachable` (a try failed lately), `-` for a
/// local provider, `?` when the node did not say (an older node).
fn reached(info: &ServiceInfo, now_ms: u64) -> String {
    if info.local {
        return "-".into();
    }
    match info.reachability() {
        Reachability::Connected => "now".into(),
        Reachability::Recently => {
            let secs = now_ms.saturating_sub(info.last_reached_ms) / 1000;
            match secs {
                0..=119 => format!("{secs} s ago"),
                _ => format!("{} min ago", secs / 60),
            }
        }
        Reachability::NotRecently => "not in 5 min".into(),
        Reachability::Unreachable => "unreachable".into(),
        Reachability::Refused => "refused lately".into(),
        Reachability::Unspecified => "?".into(),
    }
}

/// A provider's reachability as JSON writes it.
fn reachability_name(reachability: Reachability) -> &'static str {
    match reachability {
        Reachability::Unspecified => "unspecified",
        Reachability::Connected => "connected",
        Reachability::Recently => "recently",
        Reachability::NotRecently => "not_recently",
        Reachability::Unreachable => "unreachable",
        Reachability::Refused => "refused",
    }
}

/// Calls once; prints the answer. A failed call (the provider's refusal included) is one line
/// naming the status code.
async fn call(client: &Client, request: CallRequest, json: bool) -> anyhow::Result<()> {
    let service = request.service.clone();
    let CallReply {
        payload,
        peer_id,
        provider_app,
    } = crate::progress::during(
        format!("calling {}", crate::progress::short(&service)),
        json,
        client.services().call(request),
    )
    .await
    .map(tonic::Response::into_inner)
    .map_err(|status| anyhow::anyhow!("cannot call {service}: {}", status_text(&status)))?;
    if json {
        output::json_line(&call_json(&payload, &peer_id, &provider_app))?;
        return Ok(());
    }
    // Text gets a final newline if it has none; other bytes go out exactly as they came.
    let mut out = std::io::stdout().lock();
    out.write_all(&payload)?;
    if std::str::from_utf8(&payload).is_ok_and(|text| !text.is_empty() && !text.ends_with('\n')) {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// A service or provider as JSON: `{service, app_id, description, peer_id, local, rtt_us,
/// reachability, last_reached_ms}`.
pub(crate) fn service_json(info: &ServiceInfo) -> Value {
    let ServiceInfo {
        service,
        app_id,
        description,
        peer_id,
        local,
        rtt_us,
        reachability: _,
        last_reached_ms,
        announced,
        announce_error,
        certificates,
        publisher_key,
    } = info;
    json!({
        "announced": announced,
        "announce_error": announce_error,
        "certificates": certificates,
        "publisher_key": publisher_key,
        "service": service,
        "app_id": app_id,
        "description": description,
        "peer_id": peer_id,
        "local": local,
        "rtt_us": rtt_us,
        "reachability": reachability_name(info.reachability()),
        "last_reached_ms": last_reached_ms,
    })
}

/// A call's answer as JSON: `{peer_id, provider_app, payload_base64, payload_text}`, the text
/// `null` when the payload is not UTF-8.
fn call_json(payload: &[u8], peer_id: &str, provider_app: &str) -> Value {
    json!({
        "peer_id": peer_id,
        "provider_app": provider_app,
        "payload_base64": BASE64.encode(payload),
        "payload_text": std::str::from_utf8(payload).ok(),
    })
}

/// `CODE: message` (the code as the gRPC spec writes it, since a provider's refusal may carry
/// any code), or the code alone.
fn status_text(status: &tonic::Status) -> String {
    let code = code_name(status.code());
    match status.message().trim() {
        "" => code.to_owned(),
        message => format!("{code}: {message}"),
    }
}

/// A status code as the gRPC spec writes it: `INVALID_ARGUMENT`, `NOT_FOUND`, ...
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_codes_as_the_grpc_spec_does() {
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(
            code_name(tonic::Code::DeadlineExceeded),
            "DEADLINE_EXCEEDED"
        );
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
    }

    #[test]
    fn a_failed_call_names_its_code() {
        let status = tonic::Status::failed_precondition("cannot upper-case that");
        assert_eq!(
            status_text(&status),
            "FAILED_PRECONDITION: cannot upper-case that"
        );
        assert_eq!(
            status_text(&tonic::Status::deadline_exceeded("")),
            "DEADLINE_EXCEEDED"
        );
    }

    #[test]
    fn call_json_has_base64_and_text() {
        assert_eq!(
            call_json(b"hi", "12D3KooWx", "echo"),
            json!({
                "peer_id": "12D3KooWx",
                "provider_app": "echo",
                "payload_base64": "aGk=",
                "payload_text": "hi",
            })
        );
        assert_eq!(call_json(&[0xff], "p", "a")["payload_text"], Value::Null);
        assert_eq!(call_json(&[0xff], "p", "a")["payload_base64"], "/w==");
    }

    #[test]
    fn providers_table_shows_local_and_rtt() {
        let providers = [
            ServiceInfo {
                service: "echo/1".into(),
                app_id: "echo".into(),
                peer_id: "12D3KooWa".into(),
                local: true,
                ..ServiceInfo::default()
            },
            ServiceInfo {
                service: "echo/1".into(),
                peer_id: "12D3KooWb".into(),
                rtt_us: 1500,
                reachability: Reachability::Connected.into(),
                ..ServiceInfo::default()
            },
            ServiceInfo {
                service: "echo/1".into(),
                peer_id: "12D3KooWc".into(),
                reachability: Reachability::NotRecently.into(),
                ..ServiceInfo::default()
            },
            ServiceInfo {
                service: "echo/1".into(),
                peer_id: "12D3KooWd".into(),
                reachability: Reachability::Unreachable.into(),
                ..ServiceInfo::default()
            },
        ];
        let text = providers_table(&providers).trim_fmt();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0], ["PEER", "APP", "LOCAL", "RTT", "REACHED"]);
        assert_eq!(lines[1], ["12D3KooWa", "echo", "yes", "-", "-"]);
        assert_eq!(lines[2], ["12D3KooWb", "-", "no", "1.5", "ms", "now"]);
        assert_eq!(
            lines[3],
            ["12D3KooWc", "-", "no", "-", "not", "in", "5", "min"]
        );
        assert_eq!(lines[4], ["12D3KooWd", "-", "no", "-", "unreachable"]);
        let recently = ServiceInfo {
            reachability: Reachability::Recently.into(),
            last_reached_ms: 1_000,
            ..ServiceInfo::default()
        };
        assert_eq!(reached(&recently, 13_500), "12 s ago");
        assert_eq!(reached(&recently, 601_000), "10 min ago");
        assert_eq!(service_json(&recently)["reachability"], "recently");
    }
}
