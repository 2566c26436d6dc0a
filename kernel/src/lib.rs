//! The P2P OS kernel: the small core that boots a node and supervises its service actors. It
//! knows no service's vocabulary: services declare what they use in their child specs, find
//! each other's protocols and handles through the registry, and bring their own types
//! (`p2pos-protocols`).
//!
//! # Layout
//! - [`config`]: the kernel's part of the node's configuration and its validation.
//! - [`lock`]: one node per data directory (`p2posd.lock`, an `flock` holding the pid).
//! - [`identity`]: the node's ed25519 key in its own 0600 file, written atomically.
//! - [`store`]: the [`Store`](store::Store) trait, its sled implementation (opened only when
//!   whole; `p2posd --repair` salvages a damaged one), a service's view limited to its own
//!   trees, and a writer thread for best-effort writes.
//! - [`registry`]: the routes of protocols (each request with its own typed reply) and the
//!   handles services provide each other, as each service is allowed to see them.
//! - [`events`]: the node-wide event bus the monitor streams to clients.
//! - [`metrics`]: per-service Prometheus registries, encoded together.
//! - [`error`]: [`ServiceError`](error::ServiceError), the error that crosses actor boundaries,
//!   and its one mapping to `tonic::Status`.
//! - [`child`]: child specs (with what each service uses), handles, the service context
//!   narrowed to what was declared, and life-cycle states.
//! - [`supervisor`]: the kernel actor: child specs, restart policy, health, ordered shutdown.

pub mod child;
pub mod config;
pub mod error;
pub mod events;
pub mod identity;
pub mod lock;
pub mod metrics;
pub mod registry;
pub mod store;
pub mod supervisor;

pub use config::Config;
pub use error::{ErrorCode, ServiceError};
pub use events::EventBus;
pub use registry::{Call, Protocol, Registry, Reply};
pub use store::Store;
pub use supervisor::{
    BootError, ChildHandle, ChildSpec, DeathGuard, InjectPanic, Kernel, KernelHandle, RestartType,
    ServiceContext, ServiceState, ServiceStatus, StopService, TOKEN_FILE, Uses,
};
