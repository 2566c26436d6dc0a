//! The monitor service: a snapshot of the node's status, the Prometheus metrics endpoint and
//! the dashboard.
//!
//! The event stream itself needs no actor: the gateway follows the kernel's
//! [`EventBus`](p2pos_kernel::EventBus) directly.
//!
//! # Layout
//! - [`config`]: the `[monitor]` table of the node's configuration.
//! - [`service`]: the monitor actor answering `p2pos.monitor.v1` and its child spec.
//! - [`http`]: the opt-in `127.0.0.1` HTTP endpoint serving `/metrics`.
//! - [`dashboard`]: the opt-in `127.0.0.1` dashboard, a web page behind the admin credential.
//! - `server`: the connection loop (limits, time limits) both HTTP endpoints run.

pub mod config;
pub mod http;
pub mod service;

pub mod dashboard;
mod server;

pub use config::Config;
pub use service::child_spec;
