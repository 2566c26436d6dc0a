//! The dashboard: a web page the node serves itself on a loopback address (`--dashboard`),
//! its data behind the admin credential, with nothing loaded from elsewhere. Plain HTML, CSS
//! and JavaScript embedded in the binary; live updates by server-sent events.
//!
//! A browser logs in with a one-time code (`Monitor.DashboardLogin`, `p2pctl dashboard`):
//! `GET /login?code=C` answers `303` to `/#session=S`; the page keeps `S` in its
//! `sessionStorage` and sends it as `Authorization: Bearer S`. The page itself (`/`, its
//! script, style and icon) holds no data and needs no credential; every `/api/` path does.
//!
//! # Layout
//! - this file: binding, the routes, and the responses' headers.
//! - [`auth`]: the bearer credential (the admin token or a session).
//! - [`logins`]: one-time login codes and the sessions they become.
//! - [`api`]: the JSON endpoints, one per service the page shows.
//! - [`json`]: protobuf messages as canonical proto3 JSON, from the spec's descriptors.
//! - [`sse`]: `/api/events`, the live feed of events and chart samples.
//! - [`samples`]: the ring of traffic and message rates the charts draw.
//! - `assets/`: the page (`index.html`, `app.js`, `feed.js`, `style.css`, `favicon.svg`).

mod api;
mod auth;
mod json;
pub mod logins;
mod samples;
mod sse;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use p2pos_kernel::ServiceContext;
use p2pos_proto::monitor::v1::NodeStatus;
use tokio::sync::Semaphore;

use crate::server::{self, Connection, Limits};

pub use logins::Logins;

/// The node's status, as the monitor makes it.
pub type StatusFn = Arc<dyn Fn() -> BoxFuture<'static, NodeStatus> + Send + Sync>;

/// Most connections at once (the feeds of [`sse::MAX_STREAMS`] pages among them), and how
/// long a request that is not a feed gets.
const LIMITS: Limits = Limits {
    max_connections: 16,
    timeout: Duration::from_secs(10),
};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const FEED_JS: &str = include_str!("assets/feed.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// Everything the page loads comes from here; nothing runs inline.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

type Body = BoxBody<Bytes, Infallible>;

/// What the routes share.
struct State {
    ctx: ServiceContext,
    credentials: auth::Credentials,
    status: StatusFn,
    samples: samples::Samples,
    feeds: Arc<Semaphore>,
}

/// The dashboard's listener, bound before it serves (so a bad address fails the monitor's
/// start, and the status can name the address bound).
pub struct Listener {
    listener: tokio::net::TcpListener,
    local: SocketAddr,
}

impl Listener {
    /// Binds `addr`.
    pub fn bind(addr: SocketAddr) -> Result<Self, String> {
        let fail = |e: std::io::Error| format!("cannot serve the dashboard on {addr}: {e}");
        let listener = server::bind(addr).map_err(fail)?;
        let local = listener.local_addr().map_err(fail)?;
        Ok(Self { listener, local })
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The serving future (which also samples the charts' counters); `ctx` must hold the
    /// admin token. `logins` are the node's login codes and sessions.
    pub fn serve(
        self,
        ctx: ServiceContext,
        status: StatusFn,
        logins: Logins,
    ) -> Result<impl Future<Output = ()> + Send + 'static, String> {
        let token = ctx.admin_token().map_err(|e| e.to_string())?;
        let state = Arc::new(State {
            ctx,
            credentials: auth::Credentials::new(&token, logins),
            status,
            samples: samples::Samples::new(),
            feeds: Arc::new(Semaphore::new(sse::MAX_STREAMS)),
        });
        let listener = self.listener;
        Ok(async move {
            let sample = state
                .samples
                .run(state.ctx.metrics.clone(), state.ctx.events.clone());
            let handler = state.clone();
            let serve = server::serve(listener, "dashboard", LIMITS, move |req, conn| {
                let state = handler.clone();
                async move { secured(answer(&state, req, &conn).await) }
            });
            tokio::join!(sample, serve);
        })
    }
}

async fn answer(state: &State, req: Request<Incoming>, conn: &Connection) -> Response<Body> {
    // The shared loop answered a host that is not a loopback one already.
    if req.method() != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return response;
    }
    let path = req.uri().path();
    // The page holds no data: it asks /api/ with its session.
    match path {
        "/login" => return login(state, req.uri().query().unwrap_or("")),
        "/" | "/index.html" => return asset(INDEX_HTML, "text/html; charset=utf-8"),
        "/app.js" => return asset(APP_JS, "text/javascript; charset=utf-8"),
        "/feed.js" => return asset(FEED_JS, "text/javascript; charset=utf-8"),
        "/style.css" => return asset(STYLE_CSS, "text/css; charset=utf-8"),
        "/favicon.svg" => return asset(FAVICON_SVG, "image/svg+xml"),
        _ => {}
    }
    if !state.credentials.admits(req.headers()) {
        return unauthorized();
    }
    match path {
        "/api/events" => match sse::open(state) {
            Some(body) => {
                conn.mark_stream();
                respond(
                    Response::builder()
                        .header(header::CONTENT_TYPE, "text/event-stream")
                        .body(body),
                )
            }
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "at most {} pages follow the node's events at once\n",
                    sse::MAX_STREAMS
                ),
            ),
        },
        _ => match path.strip_prefix("/api/") {
            Some(name) => match api::answer(state, name).await {
                Some(Ok(json)) => respond(
                    Response::builder()
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(full(json.to_string())),
                ),
                Some(Err((status, message))) => respond(
                    Response::builder()
                        .status(status)
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(full(serde_json::json!({ "error": message }).to_string())),
                ),
                None => text(StatusCode::NOT_FOUND, "no such endpoint\n"),
            },
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

/// `/login?code=<one-time code>`: spends the code and sends the browser to the page with a new
/// session in the URL's fragment (which the browser never sends to a server; the page moves
/// it to its `sessionStorage` and out of the address bar).
fn login(state: &State, query: &str) -> Response<Body> {
    match auth::query_value(query, "code").and_then(|code| state.credentials.log_in(code)) {
        Some(session) => respond(
            Response::builder()
                .status(StatusCode::SEE_OTHER)
                .header(header::LOCATION, format!("/#session={session}"))
                .body(full(String::new())),
        ),
        None => text(
            StatusCode::UNAUTHORIZED,
            "401 Unauthorized: this login link is used, expired (after 60 s) or unknown. Run \
             `p2pctl dashboard` on this machine for a new one.\n",
        ),
    }
}

fn unauthorized() -> Response<Body> {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "401 Unauthorized: the dashboard needs the node's admin credential. Run `p2pctl \
         dashboard` on this machine for a login link, or send `Authorization: Bearer <token>` \
         (the token is in gateway.token in the node's data directory).\n",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"p2pos dashboard\""),
    );
    response
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    respond(
        Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from_static(body.as_bytes())).boxed()),
    )
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    respond(
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(full(body.to_owned())),
    )
}

fn full(body: String) -> Body {
    Full::new(Bytes::from(body)).boxed()
}

fn respond(built: Result<Response<Body>, hyper::http::Error>) -> Response<Body> {
    built.unwrap_or_else(|_| {
        let mut response = Response::new(full(String::new()));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
}

/// Adds the headers every answer carries: nothing cached, sniffed, framed, referred or read by
/// another origin.
fn secured(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}
