//! The gateway: the node's local gRPC API, mapping the open spec onto the service actors.
//!
//! Each gRPC method is a thin adapter: resolve the caller's scope, validate, convert, call the
//! service through the kernel's registry, convert back. Channel bytes are spliced between the
//! gRPC stream and the libp2p stream in the request's own task, never through an actor.
//!
//! # Layout
//! - [`config`]: the `[gateway]` table of the node's configuration.
//! - [`auth`]: caller scopes (admin, app) from the socket's peer credentials and tokens,
//!   resolved once per request by a tower layer, which also ends the calls of an app token
//!   that is revoked or expires.
//! - [`tokens`]: app tokens: issued with a time to live, stored by digest, listed, revoked.
//! - [`server`]: the gateway actor, its listeners, health and reflection, graceful stop.
//! - [`node_api`], [`overlay_api`], [`apps_api`], [`tasks_api`], [`services_api`],
//!   [`monitor_api`], [`resources_api`], [`groups_api`], [`jobs_api`]: one adapter per service.
//! - [`monitor_diag`]: checks of the monitor's diagnostic calls (`GetLogs` and its bounds).
//! - [`deadline`]: the caller's gRPC deadline (`grpc-timeout`).
//! - [`splice`]: the channel data path over gRPC, shared by app and service channels.
//! - [`data_socket`]: the channel data path over a plain local socket, for either.
//! - `relayed`: what a channel over a relay's circuit may carry, and how its end reads.

pub mod apps_api;
pub mod auth;
pub mod config;
pub mod data_socket;
pub mod deadline;
pub mod groups_api;
pub mod jobs_api;
pub mod monitor_api;
pub mod monitor_diag;
pub mod node_api;
pub mod overlay_api;
mod relayed;
pub mod resources_api;
pub mod server;
pub mod services_api;
pub mod splice;
pub mod tasks_api;
pub mod tokens;

pub use config::Config;
pub use server::{STORE_CONTENTS, child_spec};

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// A boxed response stream.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A stream the node never ends on purpose (a session, an inbox): if its source goes away
/// (the service behind it restarted), the client is told so with `UNAVAILABLE`, not a clean
/// end it could take for "nothing more".
pub(crate) fn unavailable_at_end<T: Send + 'static>(
    inner: BoxStream<T>,
    why: &'static str,
) -> BoxStream<T> {
    Box::pin(inner.chain(futures::stream::once(async move {
        Err(Status::unavailable(why))
    })))
}

/// Ends `inner` with `UNAVAILABLE` when the gateway stops, so that no long-lived call
/// outlives the gateway that served it (hyper keeps connections in tasks of their own).
pub(crate) fn cut_on_stop<T: Send + 'static>(
    inner: BoxStream<T>,
    stop: CancellationToken,
) -> BoxStream<T> {
    Box::pin(futures::stream::unfold(
        Some((inner, stop)),
        |state| async move {
            let (mut inner, stop) = state?;
            tokio::select! {
                item = inner.next() => item.map(|item| (item, Some((inner, stop)))),
                () = stop.cancelled() => Some((
                    Err(Status::unavailable("the node's gateway is restarting or stopping; reconnect")),
                    None,
                )),
            }
        },
    ))
}

/// File name of the gateway's unix socket in the data directory.
pub const SOCKET_FILE: &str = p2pos_kernel::config::GATEWAY_SOCKET_FILE;
/// File name of the data sockets' unix socket in the data directory.
pub const DATA_SOCKET_FILE: &str = "data.sock";
