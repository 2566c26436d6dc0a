//! The monitor service: a snapshot of the node's status, the Prometheus metrics endpoint, the
//! dashboard, and the doctor (checks of the node, a pair of peers or a group, with verdicts and
//! remedies).
//!
//! The event stream itself needs no actor: the gateway follows the kernel's
//! [`EventBus`](p2pos_kernel::EventBus) directly.
//!
//! # Layout
//! - [`config`]: the `[monitor]` table of the node's configuration.
//! - [`service`]: the monitor actor answering `p2pos.monitor.v1` and its child spec.
//! - [`http`]: the opt-in `127.0.0.1` HTTP endpoint serving `/metrics`.
//! - `doctor`: the checks behind `Monitor.Doctor`.
//! - [`diag`]: `/p2pos/diag/1`, what peers tell each other for diagnosis, and who may ask.
//! - [`logs`]: the ring of the node's recent log lines (a `tracing_subscriber` layer the daemon
//!   installs) and its WARN/ERROR counts by target.
//! - `within`: calls to other services with a deadline.
//! - [`reports`]: the answers of `GetLogs`, `GetMetrics` and `GetConfig`.
//! - [`dashboard`]: the opt-in `127.0.0.1` dashboard, a web page behind the admin credential.
//! - `server`: the connection loop (limits, time limits) both HTTP endpoints run.

pub mod config;
pub mod diag;
mod doctor;
pub mod http;
pub mod logs;
pub mod reports;
pub mod service;
mod within;

pub mod dashboard;
mod server;

pub use config::Config;
pub use logs::LogRing;
pub use service::child_spec;
