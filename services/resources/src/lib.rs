//! The resource manager: what this node's machine has (CPU, memory, the data directory's disk)
//! and what the node and each of its helpers use, sampled on a bounded schedule with `sysinfo`,
//! answered through `p2pos.resources.v1` and exported as Prometheus gauges.
//!
//! # Layout
//! - [`config`]: the `[resources]` table of the node's configuration.
//! - [`service`]: the actor answering `p2pos.resources.v1`, its sampling loop and child spec.
//! - [`sample`]: one sample of the machine, the node and the helpers' process trees.
//! - `metrics`: the `p2pos_resources_*` gauges.

pub mod config;
mod metrics;
pub mod sample;
pub mod service;

pub use config::Config;
pub use service::child_spec;
