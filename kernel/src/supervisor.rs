//! The kernel actor: boots the node, starts service actors from child specs, supervises them
//! with Erlang/OTP semantics and shuts everything down in reverse start order.
//!
//! actix restarts nothing on a panic: a panicking actor is simply dropped. Each child therefore
//! holds a [`DeathGuard`] that reports to the kernel when it is dropped, saying whether the
//! thread was panicking, the service failed, or it stopped normally. The kernel then applies
//! the child's [`RestartType`], the strategy, and the restart intensity (more than
//! `max_restarts` in `period_secs` shuts the node down with exit code 1).

use std::{collections::VecDeque, path::Path, sync::Arc, time::Duration};

use actix::prelude::*;
use p2pos_proto::monitor::v1::{ServiceRestarted, ServiceStateChanged, event::Kind};
use tokio::{sync::watch, time::Instant};
use tracing::{error, info, warn};

use crate::child::NodeContext;
pub use crate::child::{
    ChildHandle, ChildSpec, ExitReason, InjectPanic, RestartType, ServiceContext, ServiceState,
    ServiceStatus, StartFn, StopService, Uses,
};
use crate::{
    Config, EventBus, Registry, ServiceError, config::Strategy, identity, metrics::Metrics,
    store::SledStore,
};

/// File name of the admin token in the data directory.
pub const TOKEN_FILE: &str = "gateway.token";
/// The first restart's back-off.
pub const RESTART_BACKOFF: Duration = Duration::from_millis(100);
/// How long one service may take to stop before the kernel moves on.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Message)]
#[rtype(result = "()")]
struct ChildExited {
    name: &'static str,
    generation: u64,
    reason: ExitReason,
}

/// Held by a service actor; reports the actor's end to the kernel when dropped.
pub struct DeathGuard {
    name: &'static str,
    generation: u64,
    kernel: Addr<Kernel>,
    failure: Option<String>,
}

impl DeathGuard {
    /// Records why the service is about to stop abnormally.
    pub fn fail(&mut self, why: impl Into<String>) {
        self.failure = Some(why.into());
    }
}

impl Drop for DeathGuard {
    fn drop(&mut self) {
        let reason = if std::thread::panicking() {
            ExitReason::Panicked
        } else if let Some(why) = self.failure.take() {
            ExitReason::Failed(why)
        } else {
            ExitReason::Normal
        };
        self.kernel.do_send(ChildExited {
            name: self.name,
            generation: self.generation,
            reason,
        });
    }
}

/// Asks the node to stop with this exit code.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Shutdown {
    /// 0 for a requested stop.
    pub exit_code: i32,
}

#[derive(Message)]
#[rtype(result = "Result<(), ServiceError>")]
struct PanicService {
    name: String,
}

/// A cheap, cloneable handle to the kernel.
#[derive(Clone)]
pub struct KernelHandle {
    addr: Addr<Kernel>,
}

impl KernelHandle {
    /// Starts an orderly shutdown; returns at once.
    pub fn shutdown(&self, exit_code: i32) {
        self.addr.do_send(Shutdown { exit_code });
    }

    /// Makes `service` panic, if fault injection is allowed.
    pub async fn inject_panic(&self, service: &str) -> Result<(), ServiceError> {
        self.addr
            .send(PanicService {
                name: service.to_owned(),
            })
            .await?
    }
}

/// The node could not boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Another process uses the data directory, or its lock file failed.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// The identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A child spec needs a handle that no service started before it provides.
    #[error("service {service} needs {name}, which no service started before it provides")]
    Unprovided {
        /// The service.
        service: &'static str,
        /// What it needs.
        name: &'static str,
    },
}

struct Child {
    spec: ChildSpec,
    generation: u64,
    handle: Option<ChildHandle>,
    status: ServiceStatus,
}

/// The kernel actor.
pub struct Kernel {
    ctx: NodeContext,
    children: Vec<Child>,
    restarts: VecDeque<Instant>,
    states: watch::Sender<Vec<ServiceStatus>>,
    shutting_down: bool,
    exit_code: i32,
    /// Held for as long as the kernel lives, which is as long as the node runs.
    _lock: crate::lock::DataDirLock,
}

impl Kernel {
    /// Prepares and locks the data directory, then the identity, store and admin token, then starts the kernel
    /// actor, which starts `children` in order. Must run inside an actix system.
    pub fn boot(config: Config, children: Vec<ChildSpec>) -> Result<KernelHandle, BootError> {
        config.validate()?;
        check_routes(&children)?;
        prepare_data_dir(&config.data_dir)?;
        let lock = crate::lock::DataDirLock::acquire(&config.data_dir)?;
        // The store before the identity: a node that has an identity always has a store, so a
        // missing store is loss, never a first start (`preflight` refuses it).
        crate::store::preflight(&config.data_dir)?;
        let store = SledStore::open(&config.data_dir.join(crate::store::DIR))?;
        let keypair = identity::load_or_create(&config.data_dir)?;
        let admin_token = write_admin_token(&config.data_dir)?;
        let (states_tx, states_rx) = watch::channel(Vec::new());
        let config = Arc::new(config);
        let addr = Kernel::create(move |actx| {
            let ctx = NodeContext {
                config,
                keypair,
                store,
                routes: Registry::default(),
                events: EventBus::new(),
                metrics: Metrics::default(),
                kernel: KernelHandle {
                    addr: actx.address(),
                },
                started_at: std::time::Instant::now(),
                admin_token: admin_token.into(),
                states: states_rx,
            };
            let children = children
                .into_iter()
                .map(|spec| Child {
                    status: ServiceStatus {
                        name: spec.name,
                        state: ServiceState::Starting,
                        restarts: 0,
                        last_error: String::new(),
                    },
                    spec,
                    generation: 0,
                    handle: None,
                })
                .collect();
            Kernel {
                ctx,
                children,
                restarts: VecDeque::new(),
                states: states_tx,
                shutting_down: false,
                exit_code: 0,
                _lock: lock,
            }
        });
        Ok(KernelHandle { addr })
    }

    fn set_state(&mut self, idx: usize, state: ServiceState) {
        let child = &mut self.children[idx];
        if child.status.state != state {
            child.status.state = state;
            self.ctx
                .events
                .publish(Kind::ServiceState(ServiceStateChanged {
                    service: child.spec.name.to_owned(),
                    state: state.as_str().to_owned(),
                }));
        }
        let snapshot = self.children.iter().map(|c| c.status.clone()).collect();
        self.states.send_replace(snapshot);
    }

    fn start_child(&mut self, idx: usize, ctx: &mut Context<Self>) {
        self.set_state(idx, ServiceState::Starting);
        let child = &mut self.children[idx];
        child.generation += 1;
        let guard = DeathGuard {
            name: child.spec.name,
            generation: child.generation,
            kernel: ctx.address(),
            failure: None,
        };
        let service_ctx = self.ctx.narrow(child.spec.name, &child.spec.uses);
        match (child.spec.start)(service_ctx, guard) {
            Ok(handle) => {
                child.handle = Some(handle);
                info!(service = child.spec.name, "service started");
                self.set_state(idx, ServiceState::Running);
            }
            Err(why) => {
                // The guard went with the failed start; report under a fresh generation so
                // that its own report is ignored as stale.
                child.generation += 1;
                ctx.notify(ChildExited {
                    name: child.spec.name,
                    generation: child.generation,
                    reason: ExitReason::Failed(why),
                });
            }
        }
    }

    /// Back-off before a restart: 100 ms, doubling with each restart still inside the
    /// intensity window, at most 5 s. It keeps a crash loop from spinning, and gives
    /// health watchers time to see the service down.
    fn restart_delay(&self) -> Duration {
        let recent = self.restarts.len().saturating_sub(1).min(6) as u32;
        (RESTART_BACKOFF * 2u32.pow(recent)).min(Duration::from_secs(5))
    }

    /// Records a restart; false if the intensity is exceeded.
    fn within_intensity(&mut self) -> bool {
        let now = Instant::now();
        let period = Duration::from_secs(self.ctx.config.supervisor.period_secs);
        self.restarts.push_back(now);
        while let Some(first) = self.restarts.front() {
            if now.duration_since(*first) > period {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        self.restarts.len() <= self.ctx.config.supervisor.max_restarts as usize
    }
}

/// Every handle a child needs is provided by a child started before it.
fn check_routes(children: &[ChildSpec]) -> Result<(), BootError> {
    for (idx, child) in children.iter().enumerate() {
        for &name in child.uses.needs {
            if !children[..idx]
                .iter()
                .any(|earlier| earlier.uses.provides.contains(&name))
            {
                return Err(BootError::Unprovided {
                    service: child.name,
                    name,
                });
            }
        }
    }
    Ok(())
}

/// The children restarted with child `idx`: itself, those started after it under
/// rest_for_one, and under any strategy those that need a handle one of them provides (and so
/// on), in start order.
fn restart_group(children: &[&ChildSpec], idx: usize, strategy: Strategy) -> Vec<usize> {
    let mut group = vec![idx];
    for later in idx + 1..children.len() {
        let needs_one = children[later].uses.needs.iter().any(|name| {
            group
                .iter()
                .any(|&member| children[member].uses.provides.contains(name))
        });
        if strategy == Strategy::RestForOne || needs_one {
            group.push(later);
        }
    }
    group
}

fn prepare_data_dir(dir: &Path) -> Result<(), BootError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| BootError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    Ok(())
}

fn write_admin_token(dir: &Path) -> Result<String, BootError> {
    let bytes: [u8; 32] = rand::random();
    let token = data_encoding::HEXLOWER.encode(&bytes);
    let path = dir.join(TOKEN_FILE);
    identity::write_private_atomically(&path, format!("{token}\n").as_bytes()).map_err(
        |source| BootError::DataDir {
            path: path.display().to_string(),
            source,
        },
    )?;
    Ok(token)
}

impl Actor for Kernel {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        info!(peer_id = %self.ctx.keypair.public().to_peer_id(), data_dir = %self.ctx.config.data_dir.display(), "kernel booting");
        for idx in 0..self.children.len() {
            self.start_child(idx, ctx);
        }
    }
}

impl Handler<ChildExited> for Kernel {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Self::Context) {
        let Some(idx) = self.children.iter().position(|c| c.spec.name == msg.name) else {
            return;
        };
        if self.children[idx].generation != msg.generation {
            return; // a stale report from an instance already replaced
        }
        self.children[idx].handle = None;
        self.ctx.routes.withdraw(msg.name);
        let normal = msg.reason == ExitReason::Normal;
        if self.shutting_down {
            self.set_state(idx, ServiceState::Stopped);
            return;
        }
        let name = msg.name;
        if normal {
            info!(service = name, "service stopped");
        } else {
            warn!(service = name, reason = %msg.reason, "service exited abnormally");
            self.children[idx].status.last_error = msg.reason.to_string();
        }
        let restart = match self.children[idx].spec.restart {
            RestartType::Permanent => true,
            RestartType::Transient => !normal,
            RestartType::Temporary => false,
        };
        if !restart {
            let state = if normal {
                ServiceState::Stopped
            } else {
                ServiceState::Failed
            };
            self.set_state(idx, state);
            return;
        }
        if !self.within_intensity() {
            let sup = &self.ctx.config.supervisor;
            error!(
                service = name,
                reason = %msg.reason,
                "restart intensity exceeded: more than {} restarts within {} s; shutting the node down",
                sup.max_restarts,
                sup.period_secs
            );
            self.set_state(idx, ServiceState::Failed);
            ctx.notify(Shutdown { exit_code: 1 });
            return;
        }
        self.children[idx].status.restarts += 1;
        self.set_state(idx, ServiceState::Restarting);
        self.ctx
            .events
            .publish(Kind::ServiceRestarted(ServiceRestarted {
                service: name.to_owned(),
                reason: msg.reason.to_string(),
                restarts: self.children[idx].status.restarts,
            }));
        let delay = self.restart_delay();
        let specs: Vec<&ChildSpec> = self.children.iter().map(|c| &c.spec).collect();
        let group = restart_group(&specs, idx, self.ctx.config.supervisor.strategy);
        let mut stops = Vec::new();
        for &later in group[1..].iter().rev() {
            let child = &mut self.children[later];
            child.generation += 1; // its exit is part of this restart, not a crash
            self.ctx.routes.withdraw(child.spec.name);
            if let Some(handle) = child.handle.take() {
                stops.push(handle.stop);
            }
            self.set_state(later, ServiceState::Restarting);
        }
        let fut = async move {
            for stop in stops {
                let _ = tokio::time::timeout(STOP_TIMEOUT, stop.send(StopService)).await;
            }
            tokio::time::sleep(delay).await;
        };
        ctx.wait(fut.into_actor(self).map(move |_, act, ctx| {
            if act.shutting_down {
                return;
            }
            for &member in &group {
                // OTP never restarts a temporary child, whatever the strategy.
                if member != idx && act.children[member].spec.restart == RestartType::Temporary {
                    act.set_state(member, ServiceState::Stopped);
                } else {
                    act.start_child(member, ctx);
                }
            }
        }));
    }
}

impl Handler<Shutdown> for Kernel {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) {
        self.exit_code = self.exit_code.max(msg.exit_code);
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        info!(exit_code = self.exit_code, "node shutting down");
        let stops: Vec<_> = self
            .children
            .iter()
            .rev()
            .filter_map(|c| c.handle.clone().map(|h| (c.spec.name, h.stop)))
            .collect();
        let store = self.ctx.store.clone();
        let fut = async move {
            for (name, stop) in stops {
                match tokio::time::timeout(STOP_TIMEOUT, stop.send(StopService)).await {
                    Ok(_) => info!(service = name, "service stopped"),
                    Err(_) => warn!(
                        service = name,
                        "service did not stop within {STOP_TIMEOUT:?}"
                    ),
                }
            }
            // Flushes and records what the store holds, by which the next start tells a clean
            // stop from damage.
            match tokio::task::spawn_blocking(move || store.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!("closing the store at shutdown: {e}"),
                Err(e) => error!("closing the store at shutdown: {e}"),
            }
        };
        ctx.wait(fut.into_actor(self).map(|_, act, _| {
            info!(exit_code = act.exit_code, "node stopped");
            System::current().stop_with_code(act.exit_code);
        }));
    }
}

impl Handler<PanicService> for Kernel {
    type Result = Result<(), ServiceError>;

    fn handle(&mut self, msg: PanicService, _: &mut Self::Context) -> Self::Result {
        if !self.ctx.config.allow_fault_injection {
            return Err(ServiceError::new(
                crate::ErrorCode::FailedPrecondition,
                "fault injection is off; start p2posd with --allow-fault-injection",
            ));
        }
        let child = self
            .children
            .iter()
            .find(|c| c.spec.name == msg.name)
            .ok_or_else(|| ServiceError::not_found(format!("no service named {:?}", msg.name)))?;
        let handle = child
            .handle
            .as_ref()
            .ok_or_else(|| ServiceError::unavailable(format!("{} is not running", msg.name)))?;
        warn!(service = %msg.name, "injecting a panic");
        handle.panic.do_send(InjectPanic);
        Ok(())
    }
}
