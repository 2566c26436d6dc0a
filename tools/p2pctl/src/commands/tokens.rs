//! `tokens`: app tokens (`p2pos.node.v1.Node`: `CreateAppToken`, `ListAppTokens`,
//! `RevokeAppToken`).

use p2pos_client::Client;
use p2pos_proto::node::v1::{
    AppTokenInfo, CreateAppTokenReply, CreateAppTokenRequest, ListAppTokensRequest,
    RevokeAppTokenRequest,
};
use serde_json::{Value, json};

use super::{RpcResult, duration};
use crate::{cli::TokensCommand, output};

/// Runs one `tokens` subcommand.
pub(crate) async fn run(client: &Client, command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::Create { app, ttl, json } => create(client, app, ttl, json).await,
        TokensCommand::List { app, json } => {
            let reply = client
                .node()
                .list_app_tokens(ListAppTokensRequest {
                    app_id: app.unwrap_or_default(),
                })
                .await
                .or_fail("cannot list the app tokens")?;
            print_tokens(&reply.tokens, json.json, "no app tokens")
        }
        TokensCommand::Revoke { which, app, json } => {
            let reply = client
                .node()
                .revoke_app_token(RevokeAppTokenRequest {
                    token: which.unwrap_or_default(),
                    app_id: app.unwrap_or_default(),
                })
                .await
                .or_fail("cannot revoke")?;
            if json.json {
                let revoked: Vec<Value> = reply.revoked.iter().map(token_json).collect();
                return Ok(output::json_line(&Value::Array(revoked))?);
            }
            for token in &reply.revoked {
                output::line(format!("revoked {} (app {})", token.id, token.app_id))?;
            }
            Ok(())
        }
    }
}

/// Prints the new token alone (to pipe it into a file), or with `--json` its id and expiry too.
async fn create(
    client: &Client,
    app: String,
    ttl: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let ttl_secs = match ttl {
        Some(ttl) => {
            let secs = duration::parse("--ttl", &ttl)?.as_secs();
            anyhow::ensure!(secs > 0, "--ttl must be at least one second");
            secs
        }
        None => 0,
    };
    let CreateAppTokenReply {
        token,
        id,
        expires_ms,
    } = client
        .node()
        .create_app_token(CreateAppTokenRequest {
            app_id: app.clone(),
            ttl_secs,
        })
        .await
        .or_fail("cannot create the token")?;
    if json {
        output::json_line(&json!({
            "token": token,
            "id": id,
            "app_id": app,
            "expires_ms": expires_ms,
        }))?;
    } else {
        output::line(token)?;
        eprintln!(
            "token {id} for app {app}, valid until {}",
            output::timestamp(expires_ms)
        );
    }
    Ok(())
}

fn print_tokens(tokens: &[AppTokenInfo], json: bool, none: &str) -> anyhow::Result<()> {
    if json {
        let all: Vec<Value> = tokens.iter().map(token_json).collect();
        return Ok(output::json_line(&Value::Array(all))?);
    }
    if tokens.is_empty() {
        return Ok(output::line(none)?);
    }
    let mut table = output::table(["ID", "APP", "CREATED", "EXPIRES", "STATE"]);
    for t in tokens {
        table.add_row([
            t.id.clone(),
            t.app_id.clone(),
            output::timestamp(t.created_ms),
            output::timestamp(t.expires_ms),
            if t.expired { "expired" } else { "valid" }.to_owned(),
        ]);
    }
    Ok(output::print_table(&table)?)
}

/// `{id, app_id, created_ms, expires_ms, expired}`.
fn token_json(token: &AppTokenInfo) -> Value {
    let AppTokenInfo {
        id,
        app_id,
        created_ms,
        expires_ms,
        expired,
    } = token;
    json!({
        "id": id,
        "app_id": app_id,
        "created_ms": created_ms,
        "expires_ms": expires_ms,
        "expired": expired,
    })
}
