//! The monitor service: a snapshot of the node's status and the Prometheus metrics endpoint.
//!
//! The event stream itself needs no actor: the gateway follows the kernel's
//! [`EventBus`](p2pos_kernel::EventBus) directly.
//!
//! # Layout
//! - [`config`]: the `[monitor]` table of the node's configuration.
//! - [`service`]: the monitor actor answering `p2pos.monitor.v1` and its child spec.
//! - [`http`]: the opt-in `127.0.0.1` HTTP endpoint serving `/metrics`.
//! - [`logs`]: the ring of the node's recent log lines (a `tracing_subscriber` layer the daemon
//!   installs) and its WARN/ERROR counts by target.
//! - [`reports`]: the answers of `GetLogs`, `GetMetrics` and `GetConfig`.

pub mod config;
pub mod reports;
pub mod http;
pub mod logs;
pub mod service;

pub use config::Config;
pub use logs::LogRing;
pub use service::child_spec;
