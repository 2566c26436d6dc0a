//! `id` and `shutdown`: the node's identity and lifecycle (`p2pos.node.v1.Node`).

use p2pos_client::Client;
use p2pos_proto::node::v1::{GetInfoRequest, NodeInfo, ShutdownReply, ShutdownRequest};
use serde_json::json;

use super::RpcResult;
use crate::output;

/// Prints the peer id alone on one line; with `--json` the whole node info:
/// `{peer_id, version, api_versions, caller_scope, data_dir}`.
pub(crate) async fn id(client: &Client, json: bool) -> anyhow::Result<()> {
    let info = client
        .node()
        .get_info(GetInfoRequest {})
        .await
        .or_fail("cannot get the node's info")?;
    let NodeInfo {
        peer_id,
        version,
        api_versions,
        caller_scope,
        data_dir,
    } = info;
    if json {
        output::json_line(&json!({
            "peer_id": peer_id,
            "version": version,
            "api_versions": api_versions,
            "caller_scope": caller_scope,
            "data_dir": data_dir,
        }))?;
    } else {
        output::line(peer_id)?;
    }
    Ok(())
}

/// Asks the node to stop; it answers before stopping.
pub(crate) async fn shutdown(client: &Client) -> anyhow::Result<()> {
    let ShutdownReply {} = client
        .node()
        .shutdown(ShutdownRequest {})
        .await
        .or_fail("cannot shut the node down")?;
    output::line("node is shutting down")?;
    Ok(())
}
