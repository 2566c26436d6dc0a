//! Who is calling: the scope of a request.
//!
//! - On the unix socket, the peer's uid must be the node's own (or root); a caller with no
//!   token is then admin. A token, if given, must be valid and sets the scope.
//! - On loopback TCP, every call needs a token (`authorization: Bearer <token>`): the admin
//!   token from `gateway.token`, an app token from `Node.CreateAppToken`, or the token of a
//!   running helper (`P2POS_TOKEN`), scoped to the helper's app id `<app>:<helper>`.

use std::sync::Arc;

use p2pos_kernel::{Store, store::HELPER_TOKENS_TREE};
use tonic::{Request, Status, transport::server::UdsConnectInfo};

/// Store tree of app tokens: token → app id.
pub const TOKENS_TREE: &str = "tokens";

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    Admin,
    /// Only what belongs to this app.
    App(String),
}

impl Scope {
    /// As reported by `Node.GetInfo`.
    pub fn describe(&self) -> String {
        match self {
            Scope::Admin => "admin".to_owned(),
            Scope::App(app) => format!("app:{app}"),
        }
    }

    /// Fails unless admin.
    pub fn require_admin(&self) -> Result<(), Status> {
        match self {
            Scope::Admin => Ok(()),
            Scope::App(app) => Err(Status::permission_denied(format!(
                "this call needs the admin scope; the token is scoped to app {app:?}"
            ))),
        }
    }

    /// Whether the caller may act for `app_id`: admin for every app; app `X` for `X` and for
    /// the app ids of its helpers, `X:<helper>` (and theirs).
    pub fn covers(&self, app_id: &str) -> bool {
        match self {
            Scope::Admin => true,
            Scope::App(own) => p2pos_protocols::names::covers(own, app_id),
        }
    }

    /// Checks `app_id` is well formed and the caller may act for it.
    pub fn require_app(&self, app_id: &str) -> Result<(), Status> {
        validate_app_id(app_id)?;
        match self {
            _ if self.covers(app_id) => Ok(()),
            Scope::Admin => Ok(()),
            Scope::App(own) => Err(Status::permission_denied(format!(
                "the token is scoped to app {own:?}, not {app_id:?}"
            ))),
        }
    }
}

/// An app id follows [`p2pos_protocols::names`].
pub fn validate_app_id(app_id: &str) -> Result<(), Status> {
    p2pos_protocols::names::check_app_id(app_id).map_err(Status::invalid_argument)
}

/// Resolves callers' scopes.
#[derive(Clone)]
pub struct Authenticator {
    admin_token: Arc<str>,
    store: Arc<dyn Store>,
    own_uid: u32,
}

impl Authenticator {
    /// For a node with this admin token and store.
    pub fn new(admin_token: Arc<str>, store: Arc<dyn Store>) -> Self {
        Self {
            admin_token,
            store,
            own_uid: nix::unistd::getuid().as_raw(),
        }
    }

    /// The scope of `req`'s caller, or the status that refuses it.
    pub fn scope<T>(&self, req: &Request<T>) -> Result<Scope, Status> {
        let token = bearer(req)?;
        let on_socket = match req.extensions().get::<UdsConnectInfo>() {
            Some(info) => {
                let uid = info.peer_cred.map(|c| c.uid());
                if uid != Some(self.own_uid) && uid != Some(0) {
                    return Err(Status::permission_denied(format!(
                        "caller uid {} is not the node's owner (uid {})",
                        uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string()),
                        self.own_uid
                    )));
                }
                true
            }
            None => false,
        };
        match token {
            Some(token) => self.token_scope(&token),
            None if on_socket => Ok(Scope::Admin),
            None => Err(Status::unauthenticated(
                "missing token: send `authorization: Bearer <token>` (the admin token is in gateway.token in the data directory)",
            )),
        }
    }

    /// Admin token, then app tokens, then the tokens of running helpers (which the
    /// task-control service removes when a helper stops).
    fn token_scope(&self, token: &str) -> Result<Scope, Status> {
        if constant_time_eq(token.as_bytes(), self.admin_token.as_bytes()) {
            return Ok(Scope::Admin);
        }
        for tree in [TOKENS_TREE, HELPER_TOKENS_TREE] {
            match self.store.get(tree, token.as_bytes()) {
                Ok(Some(app)) => return Ok(Scope::App(String::from_utf8_lossy(&app).into_owned())),
                Ok(None) => {}
                Err(e) => return Err(Status::internal(e.to_string())),
            }
        }
        Err(Status::unauthenticated("invalid token"))
    }
}

fn bearer<T>(req: &Request<T>) -> Result<Option<String>, Status> {
    let Some(value) = req.metadata().get("authorization") else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization header is not ASCII"))?;
    match value.strip_prefix("Bearer ") {
        Some(token) => Ok(Some(token.trim().to_owned())),
        None => Err(Status::unauthenticated(
            "authorization must be `Bearer <token>`",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_are_checked() {
        assert!(validate_app_id("chat").is_ok());
        assert!(validate_app_id("my.app_2-x").is_ok());
        assert!(validate_app_id("").is_err());
        assert!(validate_app_id("a/b").is_err());
        assert!(validate_app_id(&"x".repeat(65)).is_err());
    }

    #[test]
    fn an_app_scope_sees_only_its_own_app() {
        let scope = Scope::App("chat".into());
        assert!(scope.require_app("chat").is_ok());
        assert!(
            scope.require_app("chat:voice").is_ok(),
            "its helpers' app ids"
        );
        assert!(scope.require_app("chatty").is_err());
        assert!(
            Scope::App("chat:voice".into()).require_app("chat").is_err(),
            "a helper may not act as its app"
        );
        let err = scope.require_app("other").expect_err("denied");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            scope.require_admin().expect_err("denied").code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn an_app_covers_its_helpers_and_nothing_else() {
        let chat = Scope::App("chat".into());
        assert!(chat.covers("chat"));
        assert!(chat.covers("chat:voice"));
        assert!(chat.covers("chat:voice:codec"), "its helpers' helpers");
        assert!(!chat.covers("chatty"));
        assert!(!chat.covers("chat_voice"));
        assert!(!chat.covers("cha"));
        assert!(!chat.covers(""), "not the admin's node-wide helpers");
        assert!(!chat.covers("voice.chat"));
        let voice = Scope::App("chat:voice".into());
        assert!(voice.covers("chat:voice"));
        assert!(!voice.covers("chat"), "a helper does not cover its app");
        assert!(!voice.covers("chat.video"), "nor its sibling helpers");
        assert!(Scope::Admin.covers("anything"));
        assert!(Scope::Admin.require_app("chat:voice").is_ok());
        assert_eq!(
            Scope::Admin.require_app("").expect_err("empty").code(),
            tonic::Code::InvalidArgument,
            "require_app still checks the app id"
        );
        assert_eq!(
            chat.require_app("chat/x").expect_err("malformed").code(),
            tonic::Code::InvalidArgument
        );
    }

    /// A request as it comes over TCP (no socket credentials), with `token` if given.
    fn tcp_request(token: Option<&str>) -> Request<()> {
        let mut req = Request::new(());
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().expect("ascii");
            req.metadata_mut().insert("authorization", value);
        }
        req
    }

    #[test]
    fn tokens_resolve_to_admin_app_or_helper_scopes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = p2pos_kernel::store::SledStore::open(dir.path()).expect("store");
        store
            .insert(TOKENS_TREE, b"app-chat", b"chat")
            .expect("app token");
        store
            .insert(HELPER_TOKENS_TREE, b"helper-voice", b"chat:voice")
            .expect("helper token");
        let auth = Authenticator::new("admin-secret".into(), store.clone());
        let scope = |token| auth.scope(&tcp_request(token));

        assert_eq!(scope(Some("admin-secret")).expect("admin"), Scope::Admin);
        assert_eq!(
            scope(Some("app-chat")).expect("app"),
            Scope::App("chat".into())
        );
        assert_eq!(
            scope(Some("helper-voice")).expect("helper"),
            Scope::App("chat:voice".into())
        );
        for bad in [Some("nope"), None] {
            assert_eq!(
                scope(bad).expect_err("refused").code(),
                tonic::Code::Unauthenticated
            );
        }
        // A helper's token stops working once the task-control service removes it.
        store
            .remove(HELPER_TOKENS_TREE, b"helper-voice")
            .expect("remove");
        assert_eq!(
            scope(Some("helper-voice")).expect_err("gone").code(),
            tonic::Code::Unauthenticated
        );
    }
}
