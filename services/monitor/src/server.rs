//! The connection loop both of the monitor's HTTP endpoints (`/metrics`, the dashboard) run: a
//! loopback listener bound at start, at most so many connections at once, one request per
//! connection, a client that has not sent its whole header within [`HEADER_TIMEOUT`] cut
//! (slowloris), each connection cut after a time limit unless its handler made it a
//! long-lived stream (the dashboard's server-sent events, which have their own limit), and a
//! request whose `Host` is not a loopback one refused with `403` before its handler sees it
//! (DNS rebinding: a page elsewhere that rebinds its name to 127.0.0.1 still sends its name).
//!
//! Every connection task belongs to the serving future: dropping (aborting) it ends them all.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::{
    HeaderMap, Request, Response, StatusCode, body::Incoming, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tracing::{debug, warn};

/// How long a client gets to send a request's whole header.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// How many connections an endpoint serves at once, and how long each may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most connections open at once; more wait to be accepted.
    pub(crate) max_connections: usize,
    /// A connection gets this long (unless it became a stream); an idle or slow client then
    /// loses its slot.
    pub(crate) timeout: Duration,
}

/// What a request's handler may say of its connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Connection {
    stream: Arc<AtomicBool>,
}

impl Connection {
    /// The answer is a long-lived stream: the connection's time limit no longer applies (the
    /// handler bounds such streams itself).
    pub(crate) fn mark_stream(&self) {
        self.stream.store(true, Ordering::Relaxed);
    }

    fn streaming(&self) -> bool {
        self.stream.load(Ordering::Relaxed)
    }
}

/// Binds `addr` now, so that a bad or busy address fails the service's start.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    TcpListener::from_std(std_listener)
}

/// Serves `listener` until dropped: each request goes to `handler`, one request per
/// connection, within `limits`. `name` names the endpoint in the log.
pub(crate) async fn serve<H, F, B>(
    listener: TcpListener,
    name: &'static str,
    limits: Limits,
    handler: H,
) where
    H: Fn(Request<Incoming>, Connection) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!("{name}: accept failed: {e}");
                // Out of file descriptors, say: wait it out rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let handler = handler.clone();
        connections.spawn(async move {
            let connection = Connection::default();
            let info = connection.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let answer = is_loopback_host(req.headers()).then(|| handler(req, info.clone()));
                async move {
                    Ok::<_, Infallible>(match answer {
                        Some(answer) => answer.await.map(Either::Left),
                        None => not_loopback().map(Either::Right),
                    })
                }
            });
            let conn = http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let done = match tokio::time::timeout(limits.timeout, conn.as_mut()).await {
                Ok(done) => Some(done),
                Err(_) if connection.streaming() => Some(conn.await),
                Err(_) => None,
            };
            match done {
                Some(Ok(())) => {}
                Some(Err(e)) => debug!("{name} connection: {e}"),
                None => debug!("{name} connection: cut after {:?}", limits.timeout),
            }
            drop(slot);
        });
    }
}

/// The answer to a request for a host that is not a loopback one.
fn not_loopback() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(
        b"this node answers only requests for a loopback host (127.0.0.1, [::1], localhost)\n",
    )));
    *response.status_mut() = StatusCode::FORBIDDEN;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}

/// Whether a `Host` header names this machine: `localhost` (or a name under `.localhost`), or
/// a loopback address, with or without a port. A missing `Host` is refused too.
pub(crate) fn is_loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // [::1] or [::1]:port
        Some(rest) => match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || port.starts_with(':') => ip,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn host(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            header::HOST,
            HeaderValue::from_str(value).expect("header value"),
        );
        map
    }

    #[test]
    fn only_loopback_hosts_pass() {
        for ok in [
            "127.0.0.1:7070",
            "127.0.0.1",
            "localhost:7070",
            "LOCALHOST",
            "app.localhost:1",
            "[::1]:7070",
            "[::1]",
            "127.1.2.3:80",
        ] {
            assert!(is_loopback_host(&host(ok)), "{ok}");
        }
        for bad in [
            "evil.example:7070",
            "localhost.evil.example",
            "10.0.0.1:7070",
            "[::2]:7070",
            "[::1]x",
            "",
        ] {
            assert!(!is_loopback_host(&host(bad)), "{bad}");
        }
        assert!(!is_loopback_host(&HeaderMap::new()), "no Host");
    }
}
