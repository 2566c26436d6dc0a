//! `apps` and `send`: the apps registered on this node and store-and-forward messages
//! (`p2pos.app.v1.Apps`).

use p2pos_client::Client;
use p2pos_proto::app::v1::{AppInfo, DeliveryState, ListAppsRequest, SendReply, SendRequest};
use serde_json::{Value, json};

use super::RpcResult;
use crate::output;

/// Lists the registered apps; with `--json` an array of `{app_id, sessions, inbox, outbox}`.
pub(crate) async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let reply = client
        .apps()
        .list_apps(ListAppsRequest {})
        .await
        .or_fail("cannot list apps")?;
    if json {
        let apps: Vec<Value> = reply.apps.iter().map(app_json).collect();
        output::json_line(&Value::Array(apps))?;
        return Ok(());
    }
    if reply.apps.is_empty() {
        output::line("no apps registered")?;
        return Ok(());
    }
    let mut table = output::table(["APP", "SESSIONS", "INBOX", "OUTBOX"]);
    for app in &reply.apps {
        table.add_row([
            app.app_id.clone(),
            app.sessions.to_string(),
            app.inbox.to_string(),
            app.outbox.to_string(),
        ]);
    }
    output::print_table(&table)?;
    Ok(())
}

/// Sends one message (named by idempotency `key`, if given); prints `delivered (message id N)`
/// or `queued (message id N)` (with why it waits, when the node says), with `--json`
/// `{message_id, state, waiting}`.
pub(crate) async fn send(
    client: &Client,
    (peer, app): (&str, &str),
    payload: Vec<u8>,
    key: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let SendReply {
        message_id,
        state,
        waiting,
    } = client
        .apps()
        .send(SendRequest {
            app_id: app.to_owned(),
            peer: peer.to_owned(),
            payload: payload.into(),
            idempotency_key: key.unwrap_or_default().into(),
        })
        .await
        .or_fail("cannot send the message")?;
    let state = state_name(state);
    if json {
        output::json_line(
            &json!({ "message_id": message_id, "state": state, "waiting": waiting }),
        )?;
    } else if waiting.is_empty() {
        output::line(format!("{state} (message id {message_id})"))?;
    } else {
        output::line(format!("{state} (message id {message_id}): {waiting}"))?;
    }
    Ok(())
}

fn app_json(app: &AppInfo) -> Value {
    let AppInfo {
        app_id,
        sessions,
        inbox,
        outbox,
    } = app;
    json!({ "app_id": app_id, "sessions": sessions, "inbox": inbox, "outbox": outbox })
}

/// `delivered`, `queued` or `unknown`.
fn state_name(state: i32) -> &'static str {
    match DeliveryState::try_from(state) {
        Ok(DeliveryState::Delivered) => "delivered",
        Ok(DeliveryState::Queued) => "queued",
        Ok(DeliveryState::Unspecified) | Err(_) => "unknown",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_delivery_states() {
        assert_eq!(state_name(DeliveryState::Delivered as i32), "delivered");
        assert_eq!(state_name(DeliveryState::Queued as i32), "queued");
        assert_eq!(state_name(0), "unknown");
        assert_eq!(state_name(99), "unknown");
    }
}
