//! `status` and `events`: a snapshot of the node and its live events (`p2pos.monitor.v1.Monitor`).

use p2pos_client::{Client, describe_status};
use p2pos_proto::monitor::v1::{EventsRequest, GetStatusRequest, NodeStatus, ServiceState};
use serde_json::{Value, json};

use super::{RpcResult, event_view, groups};
use crate::output;

/// Prints the status for people (key/values, a peers table, a services table); with `--json`
/// one object (see [`status_json`]).
pub(crate) async fn status(client: &Client, json: bool) -> anyhow::Result<()> {
    let status = client
        .monitor()
        .get_status(GetStatusRequest {})
        .await
        .or_fail("cannot get the node's status")?;
    if json {
        output::json_line(&status_json(&status))?;
    } else {
        output::line(status_text(status))?;
    }
    Ok(())
}

/// The status for people: key/values, then the peers and services tables.
fn status_text(status: NodeStatus) -> String {
    let NodeStatus {
        peer_id,
        version,
        uptime_secs,
        listen_addresses,
        external_addresses,
        reachability,
        peers,
        services,
        routing_table_size,
        metrics_url,
        groups,
        remembered_peers,
        relays,
        nat_mapping,
        dashboard_url,
    } = status;
    let summary = output::key_values(vec![
        ("peer id", peer_id),
        ("version", version),
        ("uptime", output::duration(uptime_secs)),
        ("reachability", output::dash_if_empty(&reachability)),
        ("listening", output::list_or_dash(&listen_addresses)),
        ("external", output::list_or_dash(&external_addresses)),
        ("relays", output::list_or_dash(&relays)),
        ("nat", output::dash_if_empty(&nat_mapping)),
        ("routing table", format!("{routing_table_size} peers")),
        (
            "remembered",
            format!("{remembered_peers} peers (redialled at start)"),
        ),
        ("metrics", output::dash_if_empty(&metrics_url)),
        ("dashboard", output::dash_if_empty(&dashboard_url)),
    ]);
    let mut text = summary.trim_fmt();
    text.push_str(&format!("\n\npeers ({})", peers.len()));
    if !peers.is_empty() {
        text.push('\n');
        text.push_str(&output::peers_table(&peers).trim_fmt());
        let why = output::why_relayed(&peers);
        if !why.is_empty() {
            text.push('\n');
            text.push_str(why.trim_end());
        }
    }
    text.push_str(&format!("\n\nservices ({})", services.len()));
    if !services.is_empty() {
        let mut table = output::table(["SERVICE", "STATE", "RESTARTS", "LAST ERROR"]);
        for service in &services {
            table.add_row([
                service.name.clone(),
                service.state.clone(),
                service.restarts.to_string(),
                output::dash_if_empty(&service.last_error),
            ]);
        }
        text.push('\n');
        text.push_str(&table.trim_fmt());
    }
    text.push_str(&format!("\n\ngroups ({})", groups.len()));
    for group in &groups {
        text.push('\n');
        text.push_str(&groups::group_line(group));
    }
    text
}

/// The status as JSON: `{peer_id, version, uptime_secs, listen_addresses, external_addresses,
/// reachability, relays, nat_mapping, routing_table_size, remembered_peers, metrics_url, peers:
/// [peer], services: [{name, state,
/// restarts, last_error}], groups: [group], dashboard_url}`.
pub(crate) fn status_json(status: &NodeStatus) -> Value {
    let NodeStatus {
        peer_id,
        version,
        uptime_secs,
        listen_addresses,
        external_addresses,
        reachability,
        peers,
        services,
        routing_table_size,
        metrics_url,
        groups,
        remembered_peers,
        relays,
        nat_mapping,
        dashboard_url,
    } = status;
    json!({
        "peer_id": peer_id,
        "version": version,
        "uptime_secs": uptime_secs,
        "listen_addresses": listen_addresses,
        "external_addresses": external_addresses,
        "reachability": reachability,
        "routing_table_size": routing_table_size,
        "remembered_peers": remembered_peers,
        "relays": relays,
        "nat_mapping": nat_mapping,
        "metrics_url": metrics_url,
        "peers": peers.iter().map(output::peer_json).collect::<Vec<_>>(),
        "services": services.iter().map(service_json).collect::<Vec<_>>(),
        "groups": groups.iter().map(groups::group_json).collect::<Vec<_>>(),
        "dashboard_url": dashboard_url,
    })
}

fn service_json(service: &ServiceState) -> Value {
    let ServiceState {
        name,
        state,
        restarts,
        last_error,
    } = service;
    json!({ "name": name, "state": state, "restarts": restarts, "last_error": last_error })
}

/// Follows events until the stream ends: one line per event, or one JSON object per line.
pub(crate) async fn events(client: &Client, json: bool) -> anyhow::Result<()> {
    let mut stream = client
        .monitor()
        .events(EventsRequest {})
        .await
        .or_fail("cannot follow events")?;
    // On stderr, so that stdout holds only events: says the follower is attached.
    eprintln!("following events (Ctrl-C to stop)");
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                if json {
                    output::json_line(&event_view::json(&event))?;
                } else {
                    output::line(event_view::text(&event))?;
                }
            }
            Ok(None) => return Ok(()),
            Err(status) => anyhow::bail!("event stream ended: {}", describe_status(&status)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_json_has_a_stable_shape() {
        let status = NodeStatus {
            peer_id: "p".into(),
            version: "0.1.0".into(),
            uptime_secs: 5,
            services: vec![ServiceState {
                name: "overlay".into(),
                state: "running".into(),
                restarts: 0,
                last_error: String::new(),
            }],
            ..NodeStatus::default()
        };
        let value = status_json(&status);
        let keys: Vec<&str> = value
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        for key in [
            "peer_id",
            "version",
            "uptime_secs",
            "listen_addresses",
            "external_addresses",
            "reachability",
            "routing_table_size",
            "remembered_peers",
            "metrics_url",
            "peers",
            "services",
        ] {
            assert!(keys.contains(&key), "missing {key}");
        }
        assert_eq!(value["services"][0]["state"], "running");
    }

    #[test]
    fn status_text_reads_well() {
        let status = NodeStatus {
            peer_id: "12D3KooWMe".into(),
            version: "0.1.0".into(),
            uptime_secs: 3725,
            listen_addresses: vec![
                "/ip4/127.0.0.1/tcp/4001".into(),
                "/ip4/127.0.0.1/udp/4001/quic-v1".into(),
            ],
            reachability: "private".into(),
            routing_table_size: 2,
            remembered_peers: 1,
            services: vec![ServiceState {
                name: "overlay".into(),
                state: "running".into(),
                restarts: 1,
                last_error: "boom".into(),
            }],
            ..NodeStatus::default()
        };
        let text = status_text(status);
        assert!(text.starts_with("peer id        12D3KooWMe\n"), "{text}");
        assert!(text.contains("uptime         1h 2m 5s\n"), "{text}");
        assert!(
            text.contains("\n               /ip4/127.0.0.1/udp/4001/quic-v1\n"),
            "{text}"
        );
        assert!(
            text.contains("peers (0)\n\nservices (1)\nSERVICE"),
            "{text}"
        );
        assert!(
            text.ends_with("overlay  running  1         boom\n\ngroups (0)"),
            "{text}"
        );
    }
}
