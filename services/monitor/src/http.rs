//! The metrics endpoint: `GET /metrics` in the Prometheus text format, on a loopback address.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming};
use p2pos_kernel::metrics::Metrics;

use crate::server::{self, Limits};

/// Most metrics requests served at once, and how long a scrape gets.
const LIMITS: Limits = Limits {
    max_connections: 16,
    timeout: std::time::Duration::from_secs(10),
};

/// Binds `addr` now (so a bad address fails the service's start) and returns the serving future.
pub fn bind(
    addr: SocketAddr,
    metrics: Metrics,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let listener = server::bind(addr)?;
    let local = listener.local_addr()?;
    let serve = server::serve(listener, "metrics endpoint", LIMITS, move |req, _| {
        let metrics = metrics.clone();
        async move { answer(&req, &metrics) }
    });
    Ok((local, serve))
}

fn answer(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let response = if req.uri().path() == "/metrics" {
        Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(metrics.encode())))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found; try /metrics\n")))
    };
    response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
