//! `dashboard`: a one-time login link for the node's dashboard (`p2posd --dashboard`), from
//! `Monitor.DashboardLogin` (admin only). The link holds a random code valid for 60 s and one
//! use, never the admin token: browsers keep links in their history, terminals in scrollback.

use p2pos_client::Client;
use p2pos_proto::monitor::v1::{DashboardLoginRequest, GetStatusRequest};
use serde_json::json;

use super::RpcResult;
use crate::output;

/// Prints the login link alone on one line (open it in a browser on this machine within a
/// minute); with `--json`: `{url, login_url, expires_in_secs}`.
pub(crate) async fn login_url(client: &Client, json: bool) -> anyhow::Result<()> {
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
    let login = client
        .monitor()
        .dashboard_login(DashboardLoginRequest {})
        .await
        .or_fail("cannot get a dashboard login link")?;
    if json {
        output::json_line(&json!({
            "url": url,
            "login_url": login.login_url,
            "expires_in_secs": login.expires_in_secs,
        }))?;
    } else {
        output::line(login.login_url)?;
    }
    Ok(())
}
