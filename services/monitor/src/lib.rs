//! The monitor service: a snapshot of the node's status and the Prometheus metrics endpoint.
//!
//! The event stream itself needs no actor: the gateway follows the kernel's
//! [`EventBus`](p2pos_kernel::EventBus) directly.
//!
//! # Layout
//! - [`service`]: the monitor actor answering `p2pos.monitor.v1` and its child spec.
//! - [`http`]: the opt-in `127.0.0.1` HTTP endpoint serving `/metrics`.

pub mod http;
pub mod service;

pub use service::child_spec;
