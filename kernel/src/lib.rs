//! The P2P OS kernel: the small core that boots a node and supervises its service actors.
//!
//! # Layout
//! - [`config`]: the node's configuration (defaults, TOML file) and its validation.
//! - [`identity`]: the node's ed25519 key in its own 0600 file, written atomically.
//! - [`store`]: the [`Store`](store::Store) trait and its sled implementation.
//! - [`registry`]: which service actor answers which protobuf messages; typed calls.
//! - [`events`]: the node-wide event bus the monitor streams to clients.
//! - [`metrics`]: per-service Prometheus registries, encoded together.
//! - [`error`]: [`ServiceError`](error::ServiceError), the error that crosses actor boundaries,
//!   and its one mapping to `tonic::Status`.
//! - [`child`]: child specs, handles, the service context and life-cycle states.
//! - [`supervisor`]: the kernel actor: child specs, restart policy, health, ordered shutdown.

pub mod child;
pub mod config;
pub mod error;
pub mod events;
pub mod identity;
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
    ServiceContext, ServiceState, ServiceStatus, StopService, Uses,
};
