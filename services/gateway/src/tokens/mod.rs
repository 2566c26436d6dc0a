//! App tokens: issued by the admin for one app with a time to live, kept in the store, listed by
//! a short id, revoked by token, id or app.
//!
//! The store keeps only each token's SHA-256 (tree [`TOKENS_TREE`], key: the 32-byte digest;
//! value: a version byte, issue and expiry times, the app id), so neither the store nor a
//! listing gives a token away. A token's *id* is the first 12 hex digits of its digest.
//!
//! Every revocation bumps a generation that open calls watch ([`AppTokens::ended`]): a call made
//! with a token that is revoked, or that expires while the call is open, ends with
//! `UNAUTHENTICATED` (the gateway's auth layer cuts its response stream).

use std::{sync::Arc, time::Duration};

use p2pos_kernel::{
    Store,
    events::now_ms,
    store::{BatchOp, Pairs},
};
use p2pos_proto::node::v1::AppTokenInfo;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tonic::Status;
use tracing::info;

/// Store tree of app tokens: SHA-256 of the token → [`Record`].
pub const TOKENS_TREE: &str = "tokens";
/// The time to live of a token created without one.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 86_400);
/// The longest time to live a token may be given.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);
/// Most app tokens the node holds (expired ones included until they are forgotten).
pub const MAX_TOKENS: usize = 4096;
/// How long an expired token is still listed (and refused as *expired*) before it is forgotten.
pub const EXPIRED_KEPT: Duration = Duration::from_secs(30 * 86_400);
/// Hex digits of a token's id.
pub const ID_LEN: usize = 12;
/// What every app token starts with.
pub const TOKEN_PREFIX: &str = "app-";
/// The first byte of a record in this format (a record written before tokens expired is a bare
/// app id, which never starts with it).
const VERSION: u8 = 1;
/// Rows scanned at most: the tokens, and as many again written by an older version.
const SCAN_LIMIT: usize = 2 * MAX_TOKENS;

/// An app token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The app it is scoped to.
    pub app_id: String,
    /// When it was issued, ms since the Unix epoch.
    pub created_ms: u64,
    /// When it expires, ms since the Unix epoch.
    pub expires_ms: u64,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + self.app_id.len());
        out.push(VERSION);
        out.extend(self.created_ms.to_be_bytes());
        out.extend(self.expires_ms.to_be_bytes());
        out.extend(self.app_id.as_bytes());
        out
    }

    /// A record in this format; `None` for anything else (an older version's bare app id).
    fn decode(value: &[u8]) -> Option<Record> {
        let (&VERSION, rest) = value.split_first()? else {
            return None;
        };
        let (created, rest) = rest.split_at_checked(8)?;
        let (expires, app) = rest.split_at_checked(8)?;
        Some(Record {
            app_id: String::from_utf8(app.to_vec()).ok()?,
            created_ms: u64::from_be_bytes(created.try_into().ok()?),
            expires_ms: u64::from_be_bytes(expires.try_into().ok()?),
        })
    }

    fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms
    }

    fn info(&self, key: &[u8], now_ms: u64) -> AppTokenInfo {
        AppTokenInfo {
            id: id_of(key),
            app_id: self.app_id.clone(),
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            expired: self.expired(now_ms),
        }
    }
}

/// A token the node issued: the secret, shown once, and what is stored of it.
#[derive(Debug)]
pub struct Issued {
    /// The token itself.
    pub token: String,
    /// Its id.
    pub id: String,
    /// Its record.
    pub record: Record,
}

/// The grant an app token gave one call: what [`AppTokens::ended`] watches.
#[derive(Debug, Clone)]
pub struct Grant {
    key: [u8; 32],
    app_id: String,
    expires_ms: u64,
    /// Subscribed before the token was read: no revocation after that read is missed.
    revocations: watch::Receiver<u64>,
}

/// The node's app tokens: the store tree, and the generation of revocations open calls watch.
#[derive(Clone)]
pub struct AppTokens {
    store: Arc<dyn Store>,
    revocations: Arc<watch::Sender<u64>>,
}

impl AppTokens {
    /// The tokens kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            revocations: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Brings the tree up to date, once at start (blocks): a token stored by a version without
    /// expiry (keyed by the token itself, valued by its app id) is given the default time to
    /// live from now and keyed by its digest; tokens expired longer than [`EXPIRED_KEPT`] ago
    /// are forgotten.
    pub fn migrate(&self) -> Result<(), Status> {
        let now = now_ms();
        let mut ops = Vec::new();
        for (key, value) in self.scan()? {
            match Record::decode(&value) {
                Some(record) => {
                    if forgotten(&record, now) {
                        ops.push(BatchOp::Remove(key));
                    }
                }
                None => {
                    let record = Record {
                        app_id: String::from_utf8_lossy(&value).into_owned(),
                        created_ms: now,
                        expires_ms: now.saturating_add(millis(DEFAULT_TTL)),
                    };
                    ops.push(BatchOp::Remove(key.clone()));
                    ops.push(BatchOp::Insert(digest(&key).to_vec(), record.encode()));
                    info!(app = %record.app_id, "an app token without expiry now expires in 30 days");
                }
            }
        }
        if !ops.is_empty() {
            self.store.batch(TOKENS_TREE, ops).map_err(internal)?;
            self.store.flush().map_err(internal)?;
        }
        Ok(())
    }

    /// Issues a token for `app_id` valid for `ttl` (blocks: it is durable when this returns).
    /// `None`: the default. Longer than [`MAX_TTL`] or shorter than a second:
    /// `INVALID_ARGUMENT`; [`MAX_TOKENS`] held already: `RESOURCE_EXHAUSTED`.
    pub fn create(&self, app_id: &str, ttl: Option<Duration>) -> Result<Issued, Status> {
        let ttl = ttl.unwrap_or(DEFAULT_TTL);
        if ttl > MAX_TTL || ttl < Duration::from_secs(1) {
            return Err(Status::invalid_argument(format!(
                "ttl_secs {} is out of range: 1 to {} ({} days); 0 for the default ({} days)",
                ttl.as_secs(),
                MAX_TTL.as_secs(),
                MAX_TTL.as_secs() / 86_400,
                DEFAULT_TTL.as_secs() / 86_400,
            )));
        }
        let now = now_ms();
        let rows = self.scan()?;
        let stale: Vec<BatchOp> = rows
            .iter()
            .filter(|(_, v)| Record::decode(v).is_some_and(|r| forgotten(&r, now)))
            .map(|(k, _)| BatchOp::Remove(k.clone()))
            .collect();
        if rows.len() - stale.len() >= MAX_TOKENS {
            return Err(Status::resource_exhausted(format!(
                "the node holds {MAX_TOKENS} app tokens already: revoke some first (`p2pctl tokens list`, `p2pctl tokens revoke`)"
            )));
        }
        let bytes: [u8; 32] = rand::random();
        let token = format!("{TOKEN_PREFIX}{}", data_encoding::HEXLOWER.encode(&bytes));
        let key = digest(token.as_bytes());
        let record = Record {
            app_id: app_id.to_owned(),
            created_ms: now,
            expires_ms: now.saturating_add(millis(ttl)),
        };
        let mut ops = stale;
        ops.push(BatchOp::Insert(key.to_vec(), record.encode()));
        self.store.batch(TOKENS_TREE, ops).map_err(internal)?;
        self.store.flush().map_err(internal)?;
        Ok(Issued {
            token,
            id: id_of(&key),
            record,
        })
    }

    /// The tokens held (of `app_id` only, if given), by app id then oldest first.
    pub fn list(&self, app_id: Option<&str>) -> Result<Vec<AppTokenInfo>, Status> {
        let now = now_ms();
        let mut all: Vec<AppTokenInfo> = self
            .scan()?
            .iter()
            .filter_map(|(k, v)| Some(Record::decode(v)?.info(k, now)))
            .filter(|t| app_id.is_none_or(|app| t.app_id == app))
            .collect();
        all.sort_by(|a, b| (&a.app_id, a.created_ms, &a.id).cmp(&(&b.app_id, b.created_ms, &b.id)));
        Ok(all)
    }

    /// Revokes the token `token` (the token itself or its id), or every token of `app_id`
    /// (blocks). Returns what was revoked; `NOT_FOUND` if nothing matched.
    pub fn revoke(&self, which: Revoke<'_>) -> Result<Vec<AppTokenInfo>, Status> {
        let now = now_ms();
        let matched: Vec<(Vec<u8>, Record)> = match which {
            Revoke::Token(token) => {
                let token = token.trim();
                let found = if token.starts_with(TOKEN_PREFIX) {
                    let key = digest(token.as_bytes());
                    self.store
                        .get(TOKENS_TREE, &key)
                        .map_err(internal)?
                        .and_then(|v| Record::decode(&v))
                        .map(|r| vec![(key.to_vec(), r)])
                        .unwrap_or_default()
                } else {
                    let prefix = parse_id(token)?;
                    self.store
                        .scan_prefix(TOKENS_TREE, &prefix, SCAN_LIMIT)
                        .map_err(internal)?
                        .into_iter()
                        .filter_map(|(k, v)| Some((k, Record::decode(&v)?)))
                        .collect()
                };
                if found.is_empty() {
                    return Err(Status::not_found(
                        "no such app token (list them with `p2pctl tokens list`)",
                    ));
                }
                found
            }
            Revoke::App(app_id) => {
                let found: Vec<_> = self
                    .scan()?
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, Record::decode(&v)?)))
                    .filter(|(_, r)| r.app_id == app_id)
                    .collect();
                if found.is_empty() {
                    return Err(Status::not_found(format!(
                        "app {app_id:?} has no tokens on this node"
                    )));
                }
                found
            }
        };
        let ops = matched
            .iter()
            .map(|(k, _)| BatchOp::Remove(k.clone()))
            .collect();
        self.store.batch(TOKENS_TREE, ops).map_err(internal)?;
        self.store.flush().map_err(internal)?;
        self.revocations.send_modify(|generation| *generation += 1);
        for (k, r) in &matched {
            info!(id = %id_of(k), app = %r.app_id, "app token revoked");
        }
        Ok(matched.iter().map(|(k, r)| r.info(k, now)).collect())
    }

    /// The app and grant of `token`, if it is an app token: `None` if it is not one this node
    /// issued (or it was revoked), `UNAUTHENTICATED` if it expired.
    pub fn resolve(&self, token: &str) -> Result<Option<Grant>, Status> {
        let revocations = self.revocations.subscribe();
        let key = digest(token.as_bytes());
        let Some(value) = self.store.get(TOKENS_TREE, &key).map_err(internal)? else {
            return Ok(None);
        };
        let Some(record) = Record::decode(&value) else {
            return Ok(None);
        };
        if record.expired(now_ms()) {
            return Err(expired(&record.app_id, record.expires_ms));
        }
        Ok(Some(Grant {
            key,
            app_id: record.app_id,
            expires_ms: record.expires_ms,
            revocations,
        }))
    }

    /// Waits until `grant` ends: its token is revoked or expires. Answers the status that ends
    /// the calls made with it.
    pub async fn ended(&self, grant: Grant) -> Status {
        let Grant {
            key,
            app_id,
            expires_ms,
            mut revocations,
        } = grant;
        let left = Duration::from_millis(expires_ms.saturating_sub(now_ms()));
        let expiry = tokio::time::sleep(left);
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                () = &mut expiry => return expired(&app_id, expires_ms),
                changed = revocations.changed() => {
                    if changed.is_err() {
                        return Status::unavailable("the node's gateway is restarting or stopping; reconnect");
                    }
                    match self.store.get(TOKENS_TREE, &key) {
                        Ok(Some(_)) => {}
                        Ok(None) => return revoked(&app_id),
                        Err(e) => return internal(e),
                    }
                }
            }
        }
    }

    fn scan(&self) -> Result<Pairs, Status> {
        self.store
            .scan_prefix(TOKENS_TREE, b"", SCAN_LIMIT)
            .map_err(internal)
    }
}

impl Grant {
    /// The app the token is scoped to.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }
}

/// What [`AppTokens::revoke`] revokes.
#[derive(Debug, Clone, Copy)]
pub enum Revoke<'a> {
    /// One token: the token itself or its id.
    Token(&'a str),
    /// Every token of this app.
    App(&'a str),
}

/// The status of a call made with an expired token.
fn expired(app_id: &str, expires_ms: u64) -> Status {
    let ago = now_ms().saturating_sub(expires_ms) / 1000;
    Status::unauthenticated(format!(
        "the app token for {app_id:?} expired {} ago; ask the node's admin for a new one (`p2pctl tokens create {app_id}`)",
        human(ago)
    ))
}

/// The status that ends the calls of a revoked token.
fn revoked(app_id: &str) -> Status {
    Status::unauthenticated(format!(
        "the app token for {app_id:?} was revoked; ask the node's admin for a new one (`p2pctl tokens create {app_id}`)"
    ))
}

/// `42 s`, `5 min`, `3 h`, `2 d`.
fn human(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        7200..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
    }
}

/// Whether an expired record is old enough to forget.
fn forgotten(record: &Record, now_ms: u64) -> bool {
    now_ms >= record.expires_ms.saturating_add(millis(EXPIRED_KEPT))
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// The id of the token stored under `key`.
fn id_of(key: &[u8]) -> String {
    let mut hex = data_encoding::HEXLOWER.encode(key);
    hex.truncate(ID_LEN);
    hex
}

/// The key prefix an id names; `INVALID_ARGUMENT` unless it is [`ID_LEN`] hex digits.
fn parse_id(id: &str) -> Result<Vec<u8>, Status> {
    let bad = || {
        Status::invalid_argument(format!(
            "{id:?} is neither an app token (`{TOKEN_PREFIX}...`) nor a token id ({ID_LEN} hex digits, from `p2pctl tokens list`)"
        ))
    };
    if id.len() != ID_LEN {
        return Err(bad());
    }
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(id.as_bytes())
        .map_err(|_| bad())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

#[cfg(test)]
mod tests;
