//! Unit tests of app tokens: records, digests and ids, time to live, revocation, migration of
//! tokens stored by older versions, and the end of calls.

use p2pos_kernel::store::SledStore;

use super::*;

fn tokens() -> (tempfile::TempDir, AppTokens, Arc<SledStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("store");
    (dir, AppTokens::new(store.clone()), store)
}

#[test]
fn records_round_trip_and_old_values_are_not_records() {
    let record = Record {
        app_id: "chat".into(),
        created_ms: 1,
        expires_ms: 2,
    };
    assert_eq!(Record::decode(&record.encode()), Some(record));
    assert_eq!(Record::decode(b"chat"), None, "an older version's value");
    assert_eq!(Record::decode(&[VERSION, 0, 0]), None, "truncated");
}

#[test]
fn a_token_is_stored_by_digest_and_listed_by_id() {
    let (_dir, tokens, store) = tokens();
    let issued = tokens.create("chat", None).expect("created");
    assert!(issued.token.starts_with(TOKEN_PREFIX));
    assert_eq!(issued.id.len(), ID_LEN);
    assert_eq!(
        issued.record.expires_ms - issued.record.created_ms,
        millis(DEFAULT_TTL)
    );
    assert!(
        store
            .get(TOKENS_TREE, issued.token.as_bytes())
            .expect("read")
            .is_none(),
        "the token itself is not a key"
    );
    let grant = tokens
        .resolve(&issued.token)
        .expect("valid")
        .expect("known");
    assert_eq!(grant.app_id(), "chat");
    let listed = tokens.list(None).expect("listed");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, issued.id);
    assert!(!listed[0].expired);
    assert!(tokens.list(Some("other")).expect("listed").is_empty());
    assert!(tokens.resolve("app-unknown").expect("no error").is_none());
}

#[test]
fn ttls_out_of_range_are_refused() {
    let (_dir, tokens, _store) = tokens();
    let err = tokens
        .create("chat", Some(MAX_TTL + Duration::from_secs(1)))
        .expect_err("too long");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("365 days"), "{err:?}");
    assert!(tokens.create("chat", Some(MAX_TTL)).is_ok());
}

#[test]
fn revoking_by_token_id_or_app() {
    let (_dir, tokens, _store) = tokens();
    let a = tokens.create("chat", None).expect("a");
    let b = tokens.create("chat", None).expect("b");
    let c = tokens.create("mail", None).expect("c");
    let revoked = tokens.revoke(Revoke::Token(&a.token)).expect("by token");
    assert_eq!(revoked.len(), 1);
    assert!(tokens.resolve(&a.token).expect("no error").is_none());
    let revoked = tokens.revoke(Revoke::Token(&c.id)).expect("by id");
    assert_eq!(revoked[0].app_id, "mail");
    let err = tokens.revoke(Revoke::Token(&c.id)).expect_err("gone");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = tokens.revoke(Revoke::Token("nonsense")).expect_err("bad");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let revoked = tokens.revoke(Revoke::App("chat")).expect("by app");
    assert_eq!(revoked.len(), 1);
    assert!(tokens.resolve(&b.token).expect("no error").is_none());
    let err = tokens.revoke(Revoke::App("chat")).expect_err("none left");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[test]
fn old_tokens_get_the_default_ttl_from_now() {
    let (_dir, tokens, store) = tokens();
    store
        .insert(TOKENS_TREE, b"app-old", b"chat")
        .expect("an older version's token");
    tokens.migrate().expect("migrated");
    let grant = tokens.resolve("app-old").expect("valid").expect("kept");
    assert_eq!(grant.app_id(), "chat");
    let left = grant.expires_ms - now_ms();
    assert!(left > millis(DEFAULT_TTL) - 60_000 && left <= millis(DEFAULT_TTL));
    assert!(
        store.get(TOKENS_TREE, b"app-old").expect("read").is_none(),
        "no longer kept in the clear"
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_and_its_calls_end() {
    let (_dir, tokens, _store) = tokens();
    let issued = tokens
        .create("chat", Some(Duration::from_secs(1)))
        .expect("created");
    let grant = tokens
        .resolve(&issued.token)
        .expect("valid")
        .expect("known");
    let ended = tokio::time::timeout(Duration::from_secs(5), tokens.ended(grant))
        .await
        .expect("ended at expiry");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated);
    assert!(ended.message().contains("expired"), "{ended:?}");
    let err = tokens.resolve(&issued.token).expect_err("expired");
    assert!(
        err.message().contains("p2pctl tokens create chat"),
        "{err:?}"
    );
    assert!(tokens.list(None).expect("listed")[0].expired);
}

#[tokio::test]
async fn a_revoked_tokens_calls_end() {
    let (_dir, tokens, _store) = tokens();
    let issued = tokens.create("chat", None).expect("created");
    let other = tokens.create("chat", None).expect("created");
    let grant = tokens.resolve(&issued.token).expect("ok").expect("known");
    let kept = tokens.resolve(&other.token).expect("ok").expect("known");
    let ended = tokio::spawn({
        let tokens = tokens.clone();
        async move { tokens.ended(grant).await }
    });
    let still = tokio::spawn({
        let tokens = tokens.clone();
        async move { tokens.ended(kept).await }
    });
    tokens.revoke(Revoke::Token(&issued.id)).expect("revoked");
    let status = tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .expect("in time")
        .expect("joined");
    assert!(status.message().contains("revoked"), "{status:?}");
    assert!(!still.is_finished(), "another token's calls go on");
    still.abort();
}

#[test]
fn durations_read_well() {
    assert_eq!(human(5), "5 s");
    assert_eq!(human(600), "10 min");
    assert_eq!(human(3 * 3600), "3 h");
    assert_eq!(human(3 * 86_400), "3 d");
}
