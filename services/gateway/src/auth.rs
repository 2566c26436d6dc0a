//! Who is calling: the scope of a request.
//!
//! - On the unix socket, the peer's uid must be the node's own (or root), and every call but
//!   health and reflection needs a token, as on TCP: a caller with no token is refused with
//!   `UNAUTHENTICATED` saying where the admin token is (p2pctl and the clients read it from
//!   there). Running as the node's user is not enough to be admin: a helper runs as it too.
//! - On loopback TCP, every call needs a token (`authorization: Bearer <token>`): the admin
//!   token from `gateway.token`, an app token from `Node.CreateAppToken` (see [`crate::tokens`]:
//!   refused once expired or revoked), or the token of a running helper (`P2POS_TOKEN`), scoped
//!   to the helper's app id `<app>:<helper>`, which the gateway checks by asking the
//!   task-control service.
//!
//! [`AuthLayer`] resolves the scope once per request and puts it in its extensions; each
//! handler reads it with [`caller`] and checks what the request names against it. The response
//! of a call made with an app token is cut with `UNAUTHENTICATED` when that token is revoked or
//! expires ([`CutBody`]): its open streams end, whichever service serves them.

use std::{pin::Pin, sync::Arc, task::Poll};

use bytes::Bytes;
use futures::{FutureExt, future::BoxFuture};
use http_body::Frame;
use p2pos_kernel::Registry;
use p2pos_protocols::{
    Tasks,
    tasks::{HELPER_TOKEN_PREFIX, Request as TasksRequest},
};
use tonic::{
    Request, Status,
    body::Body,
    codegen::http::{self, Extensions, HeaderMap},
    transport::server::UdsConnectInfo,
};
use tower::{Layer, Service};

use crate::tokens::{AppTokens, Grant};

/// How long a request waits for task control to say whose a helper token is, or whether a
/// helper exists.
const HELPER_TOKEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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

    /// The app the caller acts as: `None` for the admin.
    pub fn app(&self) -> Option<String> {
        match self {
            Scope::Admin => None,
            Scope::App(app) => Some(app.clone()),
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

/// After [`Scope::require_app`]: for an app scope naming one of its helpers' app ids (`X:h`,
/// `X:h:g`), that the helper exists: task control has its spec, or one the app may start. An
/// app acts as its helpers, never as app ids of its choosing under its own.
pub async fn require_helper_exists(
    scope: &Scope,
    app_id: &str,
    registry: &Registry,
) -> Result<(), Status> {
    let Scope::App(own) = scope else {
        return Ok(());
    };
    if app_id == own {
        return Ok(());
    }
    let asked = app_id.to_owned();
    let exists = registry.ask::<Tasks, _>(|reply| TasksRequest::HelperExists {
        app_id: asked,
        reply,
    });
    match tokio::time::timeout(HELPER_TOKEN_WAIT, exists).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(Status::permission_denied(format!(
            "the token is scoped to app {own:?}: it may act as {app_id:?} only while that \
             helper exists (add its spec first)"
        ))),
        Ok(Err(e)) => Err(Status::unavailable(format!(
            "cannot check that helper {app_id:?} exists now: {e}"
        ))),
        Err(_) => Err(Status::unavailable(format!(
            "cannot check that helper {app_id:?} exists now: task control did not answer \
             within {HELPER_TOKEN_WAIT:?}"
        ))),
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
    /// `UNAUTHENTICATED`'s message for a call with no token: where the admin token is.
    missing: Arc<str>,
    tokens: AppTokens,
    registry: Registry,
    own_uid: u32,
}

impl Authenticator {
    /// For a node with this admin token (kept in `token_file`), app tokens and registry (the
    /// task-control service, which knows the tokens of running helpers).
    pub fn new(
        admin_token: Arc<str>,
        token_file: &std::path::Path,
        tokens: AppTokens,
        registry: Registry,
    ) -> Self {
        let missing = format!(
            "missing token: every call needs `authorization: Bearer <token>`, on the unix \
             socket too; the admin token is in {} (p2pctl and the P2P OS clients read it from \
             there), an app's token comes from `p2pctl tokens create`",
            token_file.display()
        );
        Self {
            admin_token,
            missing: missing.into(),
            tokens,
            registry,
            own_uid: nix::unistd::getuid().as_raw(),
        }
    }

    /// The scope of a caller that sent `headers` on the connection described by `extensions`,
    /// or the status that refuses it.
    pub async fn scope(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<Scope, Status> {
        self.resolve(headers, extensions)
            .await
            .map(|(scope, _)| scope)
    }

    /// As [`Authenticator::scope`], with the grant of the app token that gave the scope, if an
    /// app token did.
    async fn resolve(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<(Scope, Option<Grant>), Status> {
        let token = bearer(headers)?;
        if let Some(info) = extensions.get::<UdsConnectInfo>() {
            let uid = info.peer_cred.map(|c| c.uid());
            if uid != Some(self.own_uid) && uid != Some(0) {
                return Err(Status::permission_denied(format!(
                    "caller uid {} is not the node's owner (uid {})",
                    uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string()),
                    self.own_uid
                )));
            }
        }
        match token {
            Some(token) => self.token_scope(&token).await,
            None => Err(Status::unauthenticated(self.missing.to_string())),
        }
    }

    /// The admin token, then app tokens, then the tokens of running helpers (which only the
    /// task-control service knows, and forgets when a helper stops).
    async fn token_scope(&self, token: &str) -> Result<(Scope, Option<Grant>), Status> {
        if constant_time_eq(token.as_bytes(), self.admin_token.as_bytes()) {
            return Ok((Scope::Admin, None));
        }
        if let Some(grant) = self.tokens.resolve(token)? {
            return Ok((Scope::App(grant.app_id().to_owned()), Some(grant)));
        }
        if !token.starts_with(HELPER_TOKEN_PREFIX) {
            return Err(Status::unauthenticated(
                "invalid token: unknown, revoked or mistyped (`p2pctl tokens list` shows the app tokens)",
            ));
        }
        let token = token.to_owned();
        let asked = self
            .registry
            .ask::<Tasks, _>(|reply| TasksRequest::HelperToken { token, reply });
        match tokio::time::timeout(HELPER_TOKEN_WAIT, asked).await {
            Ok(Ok(Some(app))) => Ok((Scope::App(app), None)),
            Ok(Ok(None)) => Err(Status::unauthenticated("invalid token")),
            Ok(Err(e)) => Err(Status::unavailable(format!(
                "cannot check the helper token now: {e}"
            ))),
            Err(_) => Err(Status::unavailable(format!(
                "cannot check the helper token now: task control did not answer within {HELPER_TOKEN_WAIT:?}"
            ))),
        }
    }
}

/// The caller's scope, or why it has none, as [`AuthLayer`] resolved it for one request.
#[derive(Debug, Clone)]
struct Caller(Result<Scope, Status>);

/// The scope of `req`'s caller, resolved by [`AuthLayer`]; the status that refuses it if
/// it has none.
pub fn caller<T>(req: &Request<T>) -> Result<Scope, Status> {
    match req.extensions().get::<Caller>() {
        Some(Caller(scope)) => scope.clone(),
        None => Err(Status::internal(
            "the caller's scope was not resolved (the gateway's auth layer is missing)",
        )),
    }
}

/// A tower layer that resolves every request's caller scope once, before any handler runs,
/// and puts it in the request's extensions for [`caller`] (qdrant's `AuthLayer` shape). With
/// `require` (loopback TCP) a request whose caller has no scope is refused at once, health and
/// reflection included; without (the unix socket) the handlers refuse it, so that health and
/// reflection answer any local caller.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Authenticator,
    require: bool,
}

impl AuthLayer {
    /// Resolves scopes with `auth`; `require`: refuse a request with no scope here.
    pub fn new(auth: Authenticator, require: bool) -> Self {
        Self { auth, require }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            require: self.require,
        }
    }
}

/// The service [`AuthLayer`] wraps around the gateway's routes.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Authenticator,
    require: bool,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone is the one that was not made ready: use the ready one (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (auth, require) = (self.auth.clone(), self.require);
        Box::pin(async move {
            let resolved = auth.resolve(req.headers(), req.extensions()).await;
            if require && let Err(status) = &resolved {
                return Ok(status.clone().into_http());
            }
            let (scope, grant) = match resolved {
                Ok((scope, grant)) => (Ok(scope), grant),
                Err(status) => (Err(status), None),
            };
            req.extensions_mut().insert(Caller(scope));
            let response = inner.call(req).await?;
            // A call refused at once answers in its headers alone ("trailers only"): nothing
            // to cut.
            Ok(match grant {
                Some(grant) if !response.headers().contains_key("grpc-status") => {
                    let ended = auth.tokens.clone();
                    response.map(|body| {
                        Body::new(CutBody {
                            inner: body,
                            ended: Some(async move { ended.ended(grant).await }.boxed()),
                        })
                    })
                }
                _ => response,
            })
        })
    }
}

/// A response body that ends with the status `ended` answers, if it answers before the body
/// has ended by itself: the stream of a call made with an app token that was then revoked or
/// expired. It is cut between whole frames (tonic yields whole gRPC messages per frame).
struct CutBody {
    inner: Body,
    /// Until the body ends; `None` once it has (by itself or cut).
    ended: Option<BoxFuture<'static, Status>>,
}

impl http_body::Body for CutBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let Some(ended) = this.ended.as_mut() else {
            return Pin::new(&mut this.inner).poll_frame(cx);
        };
        if let Poll::Ready(status) = ended.as_mut().poll(cx) {
            this.ended = None;
            let mut trailers = HeaderMap::new();
            return match status.add_header(&mut trailers) {
                Ok(()) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Err(status) => Poll::Ready(Some(Err(status))),
            };
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.ended = None,
            Poll::Ready(Some(Ok(f))) if f.is_trailers() => this.ended = None,
            Poll::Ready(Some(Err(_))) => this.ended = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.ended.is_none() && http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

fn bearer(headers: &HeaderMap) -> Result<Option<String>, Status> {
    let Some(value) = headers.get("authorization") else {
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

    /// The headers of a request with `token`, if given.
    fn headers(token: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().expect("ascii");
            headers.insert("authorization", value);
        }
        headers
    }

    #[tokio::test]
    async fn tokens_resolve_to_admin_or_app_scopes_over_tcp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = p2pos_kernel::store::SledStore::open(dir.path()).expect("store");
        let tokens = AppTokens::new(store);
        let chat = tokens.create("chat", None).expect("app token").token;
        // No task-control service runs here: helper tokens cannot be checked.
        let auth = Authenticator::new(
            "admin-secret".into(),
            std::path::Path::new("/data/gateway.token"),
            tokens,
            Registry::default(),
        );
        // Over TCP: no connection info.
        let tcp = Extensions::new();
        let scope = |token: Option<&str>| {
            let auth = auth.clone();
            let headers = headers(token);
            let tcp = tcp.clone();
            async move { auth.scope(&headers, &tcp).await }
        };
        assert_eq!(
            scope(Some("admin-secret")).await.expect("admin"),
            Scope::Admin
        );
        assert_eq!(
            scope(Some(chat.as_str())).await.expect("app"),
            Scope::App("chat".into())
        );
        assert_eq!(
            scope(None).await.expect_err("refused").code(),
            tonic::Code::Unauthenticated
        );
        let unknown = scope(Some("helper-voice")).await.expect_err("refused");
        assert_eq!(unknown.code(), tonic::Code::Unavailable);
        assert!(
            unknown.message().contains("cannot check the helper token"),
            "{unknown:?}"
        );
        // A token that is no helper's is refused without asking task control.
        let stranger = scope(Some("nobody-knows")).await.expect_err("refused");
        assert_eq!(
            stranger.code(),
            tonic::Code::Unauthenticated,
            "{stranger:?}"
        );
        let mut bad = HeaderMap::new();
        bad.insert("authorization", "Basic x".parse().expect("ascii"));
        assert_eq!(
            auth.scope(&bad, &tcp).await.expect_err("refused").code(),
            tonic::Code::Unauthenticated
        );
    }
}
