//! The connection loop both of the monitor's HTTP endpoints (`/metrics`, the dashboard) run: a
//! loopback listener bound at start, at most so many connections at once, one request per
//! connection, and each connection cut after a time limit unless its handler made it a
//! long-lived stream (the dashboard's server-sent events, which have their own limit).
//!
//! Every connection task belongs to the serving future: dropping (aborting) it ends them all.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tracing::{debug, warn};

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
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
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
            let service = service_fn(move |req| {
                let answer = handler(req, info.clone());
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let conn = http1::Builder::new()
                .keep_alive(false)
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
