//! P2P OS port forwarding, as an ordinary client of the node: a loopback TCP service is
//! *exposed* as a P2P OS service that port forwarding provides like any app does (a session of
//! its own as app `_node:forward`, a registration per exposure, channels accepted from its
//! session), and a *forward* is a loopback listener whose connections each open a service
//! channel (`Services.Channel`) to the exposure, wherever it is. It knows nothing of the
//! network or the registry's insides: it reaches them only through the apps and services
//! protocols, as the gateway's clients do.
//!
//! # Layout
//! - [`service`]: the actor, its [`child_spec`], the protocol it answers for the admin
//!   (`Expose`, `Withdraw`, `ListExposures`, `OpenForward`, `CloseForward`, `ListForwards`),
//!   and its life as a provider app of the registry.
//! - `forwarding`: exposures and forwards, their tunnels and the TCP ⇄ frames splice.
//! - [`error`]: the service's [`Error`] and its one mapping to `ServiceError`.

pub mod error;
mod forwarding;
pub mod service;

pub use error::Error;
pub use service::{FORWARD_APP, NAME, STORE_CONTENTS, child_spec};
