//! `forward`: port forwarding (`p2pos.service.v1.Services`, admin only): expose a local TCP
//! service as a P2P OS service, withdraw it, and open or close local ports tunnelled to one.
//! Forwards live in the node: `connect` answers at once and the node keeps listening.

use p2pos_client::Client;
use p2pos_proto::service::v1::{
    CloseForwardReply, CloseForwardRequest, ExposeRequest, Exposure, Forward, ListExposuresRequest,
    ListForwardsRequest, OpenForwardRequest, WithdrawReply, WithdrawRequest,
};
use serde_json::{Value, json};

use super::RpcResult;
use crate::{cli::ForwardCommand, output};

/// Runs one `forward` command.
pub(crate) async fn run(client: &Client, command: ForwardCommand) -> anyhow::Result<()> {
    match command {
        ForwardCommand::Expose { target, name, json } => {
            expose(client, target, versioned(&name), json.json).await
        }
        ForwardCommand::Withdraw { name } => withdraw(client, versioned(&name)).await,
        ForwardCommand::List(flag) => list(client, flag.json).await,
        ForwardCommand::Connect {
            peer,
            name,
            listen,
            group,
            trust,
            json,
        } => {
            let request = OpenForwardRequest {
                service: versioned(&name),
                peer: peer.unwrap_or_default(),
                listen,
                peers: trust.peers,
                publisher_keys: trust.publisher_keys,
                group: group.unwrap_or_default(),
            };
            connect(client, request, json.json).await
        }
        ForwardCommand::Close { id } => close(client, id).await,
    }
}

/// A service name as the node keeps it: a bare name is `<name>/1`.
fn versioned(name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("{name}/1")
    }
}

/// Prints `exposed 127.0.0.1:8080 as web/1`; with `--json` `exposure_json`.
async fn expose(
    client: &Client,
    target: String,
    service: String,
    json: bool,
) -> anyhow::Result<()> {
    let what = format!("cannot expose {target} as {service}");
    let exposure = client
        .services()
        .expose(ExposeRequest { target, service })
        .await
        .or_fail(&what)?;
    if json {
        output::json_line(&exposure_json(&exposure))?;
    } else {
        output::line(format!(
            "exposed {} as {}",
            exposure.target, exposure.service
        ))?;
    }
    Ok(())
}

async fn withdraw(client: &Client, service: String) -> anyhow::Result<()> {
    let what = format!("cannot withdraw {service}");
    let WithdrawReply {} = client
        .services()
        .withdraw(WithdrawRequest {
            service: service.clone(),
        })
        .await
        .or_fail(&what)?;
    output::line(format!("withdrew {service}"))?;
    Ok(())
}

/// Two tables, exposures then forwards; with `--json` `{exposures: [...], forwards: [...]}`.
async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let exposures = client
        .services()
        .list_exposures(ListExposuresRequest {})
        .await
        .or_fail("cannot list exposures")?
        .exposures;
    let forwards = client
        .services()
        .list_forwards(ListForwardsRequest {})
        .await
        .or_fail("cannot list forwards")?
        .forwards;
    if json {
        output::json_line(&json!({
            "exposures": exposures.iter().map(exposure_json).collect::<Vec<_>>(),
            "forwards": forwards.iter().map(forward_json).collect::<Vec<_>>(),
        }))?;
        return Ok(());
    }
    if exposures.is_empty() {
        output::line("no exposures")?;
    } else {
        output::print_table(&exposures_table(&exposures))?;
    }
    output::line("")?;
    if forwards.is_empty() {
        output::line("no forwards")?;
    } else {
        output::print_table(&forwards_table(&forwards))?;
    }
    Ok(())
}

/// Prints `forwarding 127.0.0.1:PORT → NAME on PEER (id N)`; with `--json` `forward_json`.
async fn connect(client: &Client, request: OpenForwardRequest, json: bool) -> anyhow::Result<()> {
    let what = format!("cannot forward {} to {}", request.listen, request.service);
    let message = format!(
        "opening the forward and looking for providers of {}",
        crate::progress::short(&request.service)
    );
    let mut services = client.services();
    let forward = crate::progress::during(message, json, services.open_forward(request))
        .await
        .or_fail(&what)?;
    if json {
        output::json_line(&forward_json(&forward))?;
    } else {
        output::line(forwarding_text(&forward))?;
    }
    if !forward.warning.is_empty() {
        eprintln!("warning: {}", forward.warning);
    }
    Ok(())
}

async fn close(client: &Client, forward_id: u64) -> anyhow::Result<()> {
    let CloseForwardReply {} = client
        .services()
        .close_forward(CloseForwardRequest { forward_id })
        .await
        .or_fail(&format!("cannot close forward {forward_id}"))?;
    output::line(format!("closed forward {forward_id}"))?;
    Ok(())
}

fn forwarding_text(forward: &Forward) -> String {
    let peer = if forward.peer.is_empty() {
        "the best provider"
    } else {
        forward.peer.as_str()
    };
    format!(
        "forwarding {} → {} on {peer} (id {})",
        forward.listen, forward.service, forward.forward_id
    )
}

/// EXPOSED (the service), TARGET, CONNS (so far), OPEN (now), RESETS.
fn exposures_table(exposures: &[Exposure]) -> comfy_table::Table {
    let mut table = output::table(["EXPOSED", "TARGET", "CONNS", "OPEN", "RESETS"]);
    for exposure in exposures {
        table.add_row([
            exposure.service.clone(),
            exposure.target.clone(),
            exposure.connections.to_string(),
            exposure.open.to_string(),
            exposure.resets.to_string(),
        ]);
    }
    table
}

/// FORWARD (its id), SERVICE, PEER (`any`: the best one found), LISTEN, CONNS, OPEN, RESETS,
/// LAST RESET (why).
fn forwards_table(forwards: &[Forward]) -> comfy_table::Table {
    let mut table = output::table([
        "FORWARD",
        "SERVICE",
        "PEER",
        "LISTEN",
        "CONNS",
        "OPEN",
        "RESETS",
        "LAST RESET",
    ]);
    for forward in forwards {
        let peer = if forward.peer.is_empty() {
            "any".to_owned()
        } else {
            forward.peer.clone()
        };
        table.add_row([
            forward.forward_id.to_string(),
            forward.service.clone(),
            peer,
            forward.listen.clone(),
            forward.connections.to_string(),
            forward.open.to_string(),
            forward.resets.to_string(),
            output::dash_if_empty(&forward.last_reset),
        ]);
    }
    table
}

/// `{service, target, connections, open, resets, last_reset}`.
fn exposure_json(exposure: &Exposure) -> Value {
    let Exposure {
        service,
        target,
        connections,
        open,
        resets,
        last_reset,
    } = exposure;
    json!({
        "service": service,
        "target": target,
        "connections": connections,
        "open": open,
        "resets": resets,
        "last_reset": last_reset,
    })
}

/// `{forward_id, service, peer, listen, connections, open, resets, last_reset, warning}`.
fn forward_json(forward: &Forward) -> Value {
    let Forward {
        forward_id,
        service,
        peer,
        listen,
        connections,
        open,
        resets,
        last_reset,
        warning,
    } = forward;
    json!({
        "forward_id": forward_id,
        "service": service,
        "peer": peer,
        "listen": listen,
        "connections": connections,
        "open": open,
        "resets": resets,
        "last_reset": last_reset,
        "warning": warning,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_version_one() {
        assert_eq!(versioned("web"), "web/1");
        assert_eq!(versioned("web/2"), "web/2");
    }

    fn forward(peer: &str) -> Forward {
        Forward {
            forward_id: 3,
            service: "web/1".into(),
            peer: peer.into(),
            listen: "127.0.0.1:40001".into(),
            connections: 5,
            open: 1,
            resets: 2,
            last_reset: "no channel".into(),
            warning: String::new(),
        }
    }

    #[test]
    fn says_where_it_forwards() {
        assert_eq!(
            forwarding_text(&forward("12D3KooWx")),
            "forwarding 127.0.0.1:40001 → web/1 on 12D3KooWx (id 3)"
        );
        assert_eq!(
            forwarding_text(&forward("")),
            "forwarding 127.0.0.1:40001 → web/1 on the best provider (id 3)"
        );
    }

    #[test]
    fn tables_and_json_have_stable_shapes() {
        let text = forwards_table(&[forward("")]).trim_fmt();
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [
                vec![
                    "FORWARD", "SERVICE", "PEER", "LISTEN", "CONNS", "OPEN", "RESETS", "LAST",
                    "RESET"
                ],
                vec![
                    "3",
                    "web/1",
                    "any",
                    "127.0.0.1:40001",
                    "5",
                    "1",
                    "2",
                    "no",
                    "channel"
                ],
            ]
        );
        assert_eq!(
            forward_json(&forward("p")),
            json!({
                "forward_id": 3,
                "service": "web/1",
                "peer": "p",
                "listen": "127.0.0.1:40001",
                "connections": 5,
                "open": 1,
                "resets": 2,
                "last_reset": "no channel",
                "warning": "",
            })
        );
        let exposure = Exposure {
            service: "web/1".into(),
            target: "127.0.0.1:8080".into(),
            connections: 2,
            open: 0,
            resets: 0,
            last_reset: String::new(),
        };
        let text = exposures_table(std::slice::from_ref(&exposure)).trim_fmt();
        assert_eq!(
            text.lines()
                .nth(1)
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["web/1", "127.0.0.1:8080", "2", "0", "0"]
        );
        assert_eq!(
            exposure_json(&exposure),
            json!({
                "service": "web/1",
                "target": "127.0.0.1:8080",
                "connections": 2,
                "open": 0,
                "resets": 0,
                "last_reset": "",
            })
        );
    }
}
