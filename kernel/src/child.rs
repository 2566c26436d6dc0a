//! What the kernel knows of each child service: its spec, the handle to stop it, the context
//! it is started with, and its life-cycle state.

use std::{sync::Arc, time::Instant};

use actix::prelude::*;
use libp2p::identity::Keypair;
use tokio::sync::watch;

use crate::{
    Config, EventBus, Registry, Store,
    metrics::Metrics,
    supervisor::{DeathGuard, KernelHandle},
};

/// When a child is restarted (OTP restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartType {
    /// Always restarted.
    Permanent,
    /// Restarted only if it exited abnormally (panic or failure).
    Transient,
    /// Never restarted.
    Temporary,
}

/// The life-cycle state of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// Being started.
    Starting,
    /// Started and answering.
    Running,
    /// Exited abnormally; being restarted.
    Restarting,
    /// Stopped normally (or by shutdown).
    Stopped,
    /// Exited abnormally and will not be restarted.
    Failed,
}

impl ServiceState {
    /// Lower-case name, as in the monitor API.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Restarting => "restarting",
            ServiceState::Stopped => "stopped",
            ServiceState::Failed => "failed",
        }
    }
}

/// What the kernel knows of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The service's name.
    pub name: &'static str,
    /// Its state.
    pub state: ServiceState,
    /// Restarts since the node started.
    pub restarts: u32,
    /// Why it last exited abnormally.
    pub last_error: String,
}

/// Asks a service to stop; answered once it has.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StopService;

/// Asks a service to panic (fault injection for testing supervision).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// What the kernel keeps of a started child.
#[derive(Clone)]
pub struct ChildHandle {
    /// Stops it.
    pub stop: Recipient<StopService>,
    /// Makes it panic.
    pub panic: Recipient<InjectPanic>,
}

/// Starts a child's actor (registering its protocols) and gives it the guard to hold.
pub type StartFn = Box<dyn Fn(ServiceContext, DeathGuard) -> Result<ChildHandle, String>>;

/// How to start and restart one service.
pub struct ChildSpec {
    /// Its name: `overlay`, `monitor`, `gateway`.
    pub name: &'static str,
    /// When it is restarted.
    pub restart: RestartType,
    /// Starts it.
    pub start: StartFn,
}

/// Everything a service gets from the kernel.
#[derive(Clone)]
pub struct ServiceContext {
    /// The node's configuration.
    pub config: Arc<Config>,
    /// The node's identity.
    pub keypair: Keypair,
    /// The durable store.
    pub store: Arc<dyn Store>,
    /// Protocol routes to service actors.
    pub registry: Registry,
    /// The event bus.
    pub events: EventBus,
    /// Prometheus registries.
    pub metrics: Metrics,
    /// The kernel.
    pub kernel: KernelHandle,
    /// When the node started.
    pub started_at: Instant,
    /// The admin token (also in `gateway.token`).
    pub admin_token: Arc<str>,
    /// The services' states, as they change.
    pub states: watch::Receiver<Vec<ServiceStatus>>,
}

/// Why a child exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// It stopped on its own or was asked to.
    Normal,
    /// It panicked.
    Panicked,
    /// It gave up, saying why.
    Failed(String),
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("stopped"),
            ExitReason::Panicked => f.write_str("panicked"),
            ExitReason::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}
