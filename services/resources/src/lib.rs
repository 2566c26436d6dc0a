//! The resource manager: what this node's machine has (CPU, memory, the data directory's disk)
//! and what the node and each of its helpers use, sampled on a bounded schedule with `sysinfo`,
//! answered through `p2pos.resources.v1` and exported as Prometheus gauges; what the owner
//! lends to which peers (offers and leases over `/p2pos/resources/1`), and finding and leasing
//! what peers lend.
//!
//! # Layout
//! - [`config`]: the `[resources]` table of the node's configuration.
//! - [`service`]: the actor answering `p2pos.resources.v1`, its sampling loop and child spec.
//! - [`sample`]: one sample of the machine, the node and the helpers' process trees.
//! - [`policy`]: the owner's sharing policy, checked and kept in the store.
//! - [`lend`]: the lender: offers and leases under the policy, the protocol's server.
//! - [`borrow`]: asking peers: `Find`, and the leases this node holds.
//! - `metrics`: the `p2pos_resources_*` gauges.

pub mod borrow;
pub mod config;
pub mod lend;
mod metrics;
pub mod policy;
pub mod sample;
pub mod service;

pub use config::Config;
pub use service::{STORE_CONTENTS, child_spec};
