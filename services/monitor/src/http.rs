//! The metrics endpoint: `GET /metrics` in the Prometheus text format, on a loopback address.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use p2pos_kernel::metrics::Metrics;
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

/// Most metrics requests served at once.
const MAX_CONNECTIONS: usize = 16;
/// A scrape gets this long; an idle or slow client then loses its slot.
const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds `addr` now (so a bad address fails the service's start) and returns the serving future.
pub fn bind(
    addr: SocketAddr,
    metrics: Metrics,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std_listener)?;
    let local = listener.local_addr()?;
    let serve = async move {
        let limit = std::sync::Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    warn!("metrics endpoint: accept failed: {e}");
                    continue;
                }
            };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(req, metrics.clone()));
                let conn = http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!("metrics connection: {e}"),
                    Err(_) => debug!("metrics connection: cut after {CONNECTION_TIMEOUT:?}"),
                }
                drop(permit);
            });
        }
    };
    Ok((local, serve))
}

async fn answer(
    req: Request<Incoming>,
    metrics: Metrics,
) -> Result<Response<Full<Bytes>>, Infallible> {
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
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}
