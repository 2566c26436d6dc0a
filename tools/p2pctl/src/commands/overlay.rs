//! `ticket`, `peers`, `dial` and `ping`: this node's place in the network
//! (`p2pos.overlay.v1.Overlay`).

use p2pos_client::Client;
use p2pos_proto::overlay::v1::{
    DialReply, DialRequest, GetTicketRequest, ListPeersRequest, PingReply, PingRequest, Ticket,
};
use serde_json::{Value, json};

use super::RpcResult;
use crate::output;

/// Prints the ticket alone on one line; with `--json` `{ticket, peer_id, addresses}`.
pub(crate) async fn ticket(client: &Client, json: bool) -> anyhow::Result<()> {
    let Ticket {
        ticket,
        peer_id,
        addresses,
    } = client
        .overlay()
        .get_ticket(GetTicketRequest {})
        .await
        .or_fail("cannot get a ticket")?;
    if json {
        output::json_line(&json!({
            "ticket": ticket,
            "peer_id": peer_id,
            "addresses": addresses,
        }))?;
    } else {
        output::line(ticket)?;
    }
    Ok(())
}

/// Lists connected peers as a table; with `--json` an array of
/// `{peer_id, addresses, transport, rtt_us, agent_version, connections}`.
pub(crate) async fn peers(client: &Client, json: bool) -> anyhow::Result<()> {
    let reply = client
        .overlay()
        .list_peers(ListPeersRequest {})
        .await
        .or_fail("cannot list peers")?;
    if json {
        let peers: Vec<Value> = reply.peers.iter().map(output::peer_json).collect();
        output::json_line(&Value::Array(peers))?;
    } else if reply.peers.is_empty() {
        output::line("no peers connected")?;
    } else {
        output::print_table(&output::peers_table(&reply.peers))?;
        let why = output::why_relayed(&reply.peers);
        if !why.is_empty() {
            output::line(why.trim_end())?;
        }
    }
    Ok(())
}

/// Connects to a peer; prints `connected to <peer id> via <address>`, with `--json`
/// `{peer_id, address}`.
pub(crate) async fn dial(
    client: &Client,
    target: &str,
    timeout_secs: Option<u32>,
    json: bool,
) -> anyhow::Result<()> {
    let timeout_ms = timeout_secs.map_or(0, |secs| secs.saturating_mul(1000));
    let mut overlay = client.overlay();
    let dialed = overlay.dial(DialRequest {
        target: target.to_owned(),
        timeout_ms,
    });
    let DialReply { peer_id, address } =
        crate::progress::during(crate::progress::dial_message(target), json, dialed)
            .await
            .or_fail("cannot dial")?;
    if json {
        output::json_line(&json!({ "peer_id": peer_id, "address": address }))?;
    } else {
        output::line(format!("connected to {peer_id} via {address}"))?;
    }
    Ok(())
}

/// Pings a peer once; prints `rtt 1.234 ms`, with `--json` `{peer_id, rtt_us}`.
pub(crate) async fn ping(client: &Client, peer: &str, json: bool) -> anyhow::Result<()> {
    let mut overlay = client.overlay();
    let pinged = overlay.ping(PingRequest {
        peer_id: peer.to_owned(),
    });
    let message = format!("reaching {} to ping it", crate::progress::short(peer));
    let PingReply { rtt_us } = crate::progress::during(message, json, pinged)
        .await
        .or_fail("cannot ping")?;
    if json {
        output::json_line(&json!({ "peer_id": peer, "rtt_us": rtt_us }))?;
    } else {
        output::line(format!("rtt {:.3} ms", rtt_us as f64 / 1000.0))?;
    }
    Ok(())
}
