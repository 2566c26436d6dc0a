//! What the kernel knows of each child service: its spec (with what it declares it uses), the
//! handle to stop it, the context it is started with (narrowed to what it declared), and its
//! life-cycle state.

use std::{sync::Arc, time::Instant};

use actix::prelude::*;
use libp2p::{PeerId, identity::Keypair};
use tokio::sync::watch;

use crate::{
    Config, EventBus, Registry, ServiceError, Store,
    metrics::Metrics,
    store::ScopedStore,
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

/// Starts a child's actor (registering what it provides) and gives it the guard to hold.
pub type StartFn = Box<dyn Fn(ServiceContext, DeathGuard) -> Result<ChildHandle, String>>;

/// What a service is handed by the kernel, declared in its child spec (as a Fuchsia component
/// declares what it `use`s and `expose`s): the kernel hands it nothing else, and checks at boot
/// that every handle it needs is provided by a service started before it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Uses {
    /// The node's secret key. Only the network needs it (to sign); everyone else gets the
    /// peer id.
    pub keypair: bool,
    /// The admin token (only those that check callers' credentials: the gateway, the
    /// monitor's dashboard).
    pub admin_token: bool,
    /// The store trees it reads and writes; any other tree is refused.
    pub trees: &'static [&'static str],
    /// Protocols it calls. Looked up on every call, so their provider's restarts are
    /// transparent to it (it sees `UNAVAILABLE` only while the provider is down).
    pub calls: &'static [&'static str],
    /// Handles it takes once, when it starts (the network handle, say). A restart of their
    /// provider restarts this service too, right after the provider, whatever the strategy.
    pub needs: &'static [&'static str],
    /// What it registers: protocols it answers and handles it hands to others.
    pub provides: &'static [&'static str],
}

/// How to start and restart one service.
pub struct ChildSpec {
    /// Its name: `overlay`, `monitor`, `gateway`.
    pub name: &'static str,
    /// When it is restarted.
    pub restart: RestartType,
    /// What the kernel hands it.
    pub uses: Uses,
    /// Starts it.
    pub start: StartFn,
}

/// Everything a service gets from the kernel: what every service gets, and what its child
/// spec declared ([`Uses`]).
#[derive(Clone)]
pub struct ServiceContext {
    /// The service's name, from its child spec.
    pub name: &'static str,
    /// The node's configuration (the kernel's part; each service has its own).
    pub config: Arc<Config>,
    /// The node's peer id.
    pub peer_id: PeerId,
    /// The node's identity, if declared.
    keypair: Option<Keypair>,
    /// The durable store, limited to the declared trees.
    pub store: Arc<dyn Store>,
    /// Routes and handles, limited to the declared ones.
    pub registry: Registry,
    /// The event bus.
    pub events: EventBus,
    /// Prometheus registries.
    pub metrics: Metrics,
    /// The kernel.
    pub kernel: KernelHandle,
    /// When the node started.
    pub started_at: Instant,
    /// The admin token (also in `gateway.token`), if declared.
    admin_token: Option<Arc<str>>,
    /// The services' states, as they change.
    pub states: watch::Receiver<Vec<ServiceStatus>>,
}

/// What the kernel holds for every child, and narrows for each.
#[derive(Clone)]
pub(crate) struct NodeContext {
    pub(crate) config: Arc<Config>,
    pub(crate) keypair: Keypair,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) routes: Registry,
    pub(crate) events: EventBus,
    pub(crate) metrics: Metrics,
    pub(crate) kernel: KernelHandle,
    pub(crate) started_at: Instant,
    pub(crate) admin_token: Arc<str>,
    pub(crate) states: watch::Receiver<Vec<ServiceStatus>>,
}

impl NodeContext {
    /// The context of the service `name`: what every service gets, and what `uses` declares.
    pub(crate) fn narrow(&self, name: &'static str, uses: &Uses) -> ServiceContext {
        let Uses {
            keypair,
            admin_token,
            trees,
            calls,
            needs,
            provides,
        } = *uses;
        ServiceContext {
            name,
            config: self.config.clone(),
            peer_id: self.keypair.public().to_peer_id(),
            keypair: keypair.then(|| self.keypair.clone()),
            store: Arc::new(ScopedStore::new(self.store.clone(), name, trees)),
            registry: self.routes.scoped(name, calls, needs, provides),
            events: self.events.clone(),
            metrics: self.metrics.clone(),
            kernel: self.kernel.clone(),
            started_at: self.started_at,
            admin_token: admin_token.then(|| self.admin_token.clone()),
            states: self.states.clone(),
        }
    }
}

impl ServiceContext {
    /// The node's secret key; an error unless the child spec declares `keypair`.
    pub fn keypair(&self) -> Result<&Keypair, ServiceError> {
        self.keypair
            .as_ref()
            .ok_or_else(|| undeclared(self.name, "keypair"))
    }

    /// The admin token; an error unless the child spec declares `admin_token`.
    pub fn admin_token(&self) -> Result<Arc<str>, ServiceError> {
        self.admin_token
            .clone()
            .ok_or_else(|| undeclared(self.name, "admin_token"))
    }
}

fn undeclared(service: &str, what: &str) -> ServiceError {
    ServiceError::internal(format!(
        "service {service} uses {what} without declaring it in its child spec"
    ))
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
