//! `dashboard`: the login link of the node's dashboard (`p2posd --dashboard`), made of the
//! address the node reports (`NodeStatus.dashboard_url`) and the admin token p2pctl presents.

use anyhow::Context;
use p2pos_client::{Client, Target};
use p2pos_proto::monitor::v1::GetStatusRequest;
use serde_json::json;

use super::RpcResult;
use crate::output;

/// Prints the login URL alone on one line (open it in a browser on this machine); with
/// `--json`: `{url, login_url}`.
pub(crate) async fn login_url(client: &Client, target: &Target, json: bool) -> anyhow::Result<()> {
    let status = client
        .monitor()
        .get_status(GetStatusRequest {})
        .await
        .or_fail("cannot get the node's status")?;
    let url = status.dashboard_url;
    anyhow::ensure!(
        !url.is_empty(),
        "the node's dashboard is off: start it with `p2posd --dashboard 127.0.0.1:PORT` (or \
         `dashboard = \"127.0.0.1:PORT\"` under [monitor] in p2posd.toml)"
    );
    let token = admin_token(target)?;
    let login_url = format!("{}login?token={token}", with_slash(&url));
    if json {
        output::json_line(&json!({ "url": url, "login_url": login_url }))?;
    } else {
        output::line(login_url)?;
    }
    Ok(())
}

/// The token p2pctl presents: the one given (`--token`, `P2POS_TOKEN`), else the node's
/// `gateway.token`.
fn admin_token(target: &Target) -> anyhow::Result<String> {
    if let Some(token) = target.token() {
        return Ok(token.to_owned());
    }
    let path = target
        .token_file()
        .context("no admin token: give --token, or --data-dir for the node's gateway.token")?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the admin token in {}", path.display()))?;
    let token = text.trim();
    anyhow::ensure!(!token.is_empty(), "{} holds no token", path.display());
    Ok(token.to_owned())
}

fn with_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_owned()
    } else {
        format!("{url}/")
    }
}
