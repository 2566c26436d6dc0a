//! App tokens expire and can be revoked: a token past its time to live is refused, with a
//! message saying so and how to get a new one; a revoked token is refused at once and the
//! streams still open with it (`Session`, `Receive`) end with `UNAUTHENTICATED`; the admin lists
//! tokens by app with their expiry (never the tokens themselves); bad input gets a clear error.

use std::time::Duration;

use futures::StreamExt;
use p2pos_client::{Client, Gateway, Target};
use p2pos_proto::{
    app::v1::ReceiveRequest,
    node::v1::{CreateAppTokenRequest, GetInfoRequest, ListAppTokensRequest},
};
use p2pos_tests::{Node, open_session, p2pctl, wait_for};
use serde_json::Value;
use tonic::Code;

/// How long a stream may take to end once its token is revoked or expired.
const END: Duration = Duration::from_secs(10);

/// A token for `app` valid `ttl_secs` (0: the default), with its id.
async fn token(admin: &Client, app: &str, ttl_secs: u64) -> (String, String) {
    let reply = admin
        .node()
        .create_app_token(CreateAppTokenRequest {
            app_id: app.into(),
            ttl_secs,
        })
        .await
        .expect("token")
        .into_inner();
    (reply.token, reply.id)
}

/// A client of `node`'s socket presenting `token`.
async fn with_token(node: &Node, token: &str) -> Client {
    let target = Target::new(
        Gateway::Unix(node.data_dir.join("gateway.sock")),
        Some(token.to_owned()),
        Some(node.data_dir.clone()),
    )
    .expect("target");
    Client::connect(&target).await.expect("connect")
}

/// The status a stream ends with, within [`END`].
async fn ends_with<T: std::fmt::Debug>(stream: &mut tonic::Streaming<T>) -> tonic::Status {
    loop {
        match tokio::time::timeout(END, stream.next()).await {
            Err(_) => panic!("the stream did not end within {END:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(status))) => return status,
            Ok(None) => panic!("the stream ended without a status"),
        }
    }
}

async fn receive(
    client: &Client,
    app: &str,
) -> tonic::Streaming<p2pos_proto::app::v1::ReceivedMessage> {
    client
        .apps()
        .receive(ReceiveRequest { app_id: app.into() })
        .await
        .expect("receive")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_past_its_ttl_is_refused_and_its_streams_end() {
    let mut node = Node::start(&[]);
    let admin = node.client().await;
    let (secret, id) = token(&admin, "chat", 2).await;
    let app = with_token(&node, &secret).await;
    let info = app
        .node()
        .get_info(GetInfoRequest {})
        .await
        .expect("valid for now")
        .into_inner();
    assert_eq!(info.caller_scope, "app:chat");
    let mut inbox = receive(&app, "chat").await;

    let ended = ends_with(&mut inbox).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("expired"), "{ended:?}");
    let refused = wait_for("the token to be refused", END, || {
        let app = app.clone();
        async move { app.node().get_info(GetInfoRequest {}).await.err() }
    })
    .await;
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("expired")
            && refused.message().contains("p2pctl tokens create chat"),
        "says it expired and how to get a new one: {refused:?}"
    );

    let (ok, out, err) = p2pctl(&node, &["tokens", "list", "--json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["expired"], true, "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_refused_at_once_and_its_open_streams_end() {
    let mut node = Node::start(&[]);
    let admin = node.client().await;
    let (revoked, revoked_id) = token(&admin, "chat", 0).await;
    let (kept, _) = token(&admin, "chat", 0).await;
    let (mail, _) = token(&admin, "mail", 0).await;
    let app = with_token(&node, &revoked).await;
    let mut session = open_session(&app, "chat").await;
    let mut inbox = receive(&app, "chat").await;
    let other = with_token(&node, &kept).await;
    // `chat:voice` exists (a node-wide helper `chat` may start): the app may act as it.
    let (ok, _, err) = p2pctl(&node, &["helpers", "add", "voice", "/bin/true"]);
    assert!(ok, "{err}");
    let mut other_session = open_session(&other, "chat:voice").await;

    let (ok, out, err) = p2pctl(&node, &["tokens", "revoke", &revoked_id]);
    assert!(ok, "{err}");
    assert!(out.contains(&revoked_id), "{out}");

    let refused = app
        .node()
        .get_info(GetInfoRequest {})
        .await
        .expect_err("refused at once");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    for ended in [ends_with(&mut session).await, ends_with(&mut inbox).await] {
        assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
        assert!(ended.message().contains("revoked"), "{ended:?}");
    }
    // Another token of the same app goes on.
    assert_eq!(
        other
            .node()
            .get_info(GetInfoRequest {})
            .await
            .expect("another token still works")
            .into_inner()
            .caller_scope,
        "app:chat"
    );

    // Every token of the app at once: its session ends too.
    let (ok, out, err) = p2pctl(&node, &["tokens", "revoke", "--app", "chat"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "one token left to revoke: {out}");
    let ended = ends_with(&mut other_session).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    let listed = admin
        .node()
        .list_app_tokens(ListAppTokensRequest {
            app_id: String::new(),
        })
        .await
        .expect("list")
        .into_inner()
        .tokens;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].app_id, "mail");
    let mail = with_token(&node, &mail).await;
    mail.node()
        .get_info(GetInfoRequest {})
        .await
        .expect("another app's token is untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_lists_tokens_and_bad_input_gets_clear_errors() {
    let mut node = Node::start(&[]);
    let _up = node.client().await;
    let (ok, out, err) = p2pctl(
        &node,
        &["tokens", "create", "chat", "--ttl", "90d", "--json"],
    );
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).expect("json");
    let secret = created["token"].as_str().expect("token").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    let (ok, plain, err) = p2pctl(&node, &["tokens", "create", "mail"]);
    assert!(ok, "{err}");
    assert!(plain.trim().starts_with("app-"), "the token alone: {plain}");

    let (ok, out, err) = p2pctl(&node, &["tokens", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&id) && out.contains("chat") && out.contains("mail"),
        "{out}"
    );
    assert!(!out.contains(&secret), "never the token itself: {out}");
    assert!(!out.contains(plain.trim()), "never the token itself: {out}");
    let (ok, out, err) = p2pctl(&node, &["tokens", "list", "--app", "chat", "--json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).expect("json");
    let listed = listed.as_array().expect("array");
    assert_eq!(listed.len(), 1);
    let days = |v: &Value| v.as_u64().expect("ms") / 86_400_000;
    assert_eq!(
        days(&listed[0]["expires_ms"]) - days(&listed[0]["created_ms"]),
        90
    );

    // Over the maximum time to live.
    let (ok, _, err) = p2pctl(&node, &["tokens", "create", "chat", "--ttl", "366d"]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("365 days") && err.contains("invalid argument"),
        "{err}"
    );
    // Unknown token, by id and by token; malformed; an app with no tokens.
    for (args, says) in [
        (
            vec!["tokens", "revoke", "0123456789ab"],
            "no such app token",
        ),
        (vec!["tokens", "revoke", "app-0000"], "no such app token"),
        (vec!["tokens", "revoke", "junk"], "is neither an app token"),
        (vec!["tokens", "revoke", "--app", "nobody"], "has no tokens"),
    ] {
        let (ok, _, err) = p2pctl(&node, &args);
        assert!(!ok, "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    // A helper's app id gets no token; an app cannot manage tokens.
    let (ok, _, err) = p2pctl(&node, &["tokens", "create", "chat:voice"]);
    assert!(!ok, "{err}");
    let app = with_token(&node, &secret).await;
    let denied = app
        .node()
        .list_app_tokens(ListAppTokensRequest {
            app_id: String::new(),
        })
        .await
        .expect_err("admin only");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = app
        .node()
        .create_app_token(CreateAppTokenRequest {
            app_id: "chat".into(),
            ttl_secs: 0,
        })
        .await
        .expect_err("admin only");
    assert_eq!(denied.code(), Code::PermissionDenied);
}
