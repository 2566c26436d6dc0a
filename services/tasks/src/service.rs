//! The task-control actor: its child spec, its life cycle (start with the stored specs, ordered
//! stop of every helper, injected panics, a drop that kills whatever still runs) and the
//! `p2pos.tasks.v1` protocol's entry point.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use actix::prelude::*;
use nix::sys::signal::Signal;
use p2pos_kernel::{
    Call, ChildHandle, ChildSpec, DeathGuard, InjectPanic, Protocol, RestartType, ServiceContext,
    StopService, Uses,
};
use p2pos_protocols::{Apps, Tasks};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::{
    Config, Error,
    enforce::{Enforcer, Part},
    limits::Limits,
    persist, process,
    scope::Key,
    table::Entry,
};
use p2pos_proto::tasks::v1::HelperState;

/// The service's name.
pub const NAME: &str = "tasks";
/// Most helper specs (and app instances of admin-installed specs) of one app id.
pub const MAX_SPECS_PER_APP: usize = 64;
/// Most helper specs and instances in all.
pub const MAX_SPECS: usize = 512;
/// Most helpers running (or stopping, or waiting to be restarted) at once.
pub const MAX_RUNNING: usize = 128;
/// Most helpers of one app (its helpers' helpers included) running at once.
pub const MAX_RUNNING_PER_APP: usize = 32;
/// Most `Logs` calls served at once.
pub const MAX_LOG_READERS: usize = 256;

/// What the service keeps in the store, in the words of a repair report (`p2posd --repair`).
pub const STORE_CONTENTS: &[p2pos_kernel::store::Contents] = &[p2pos_kernel::store::Contents {
    tree: persist::HELPERS_TREE,
    prefix: None,
    what: "helper specs",
}];

/// The child spec the daemon hands to the kernel: a permanent service named `tasks` that
/// answers `p2pos.tasks.v1`.
pub fn child_spec(config: Config) -> ChildSpec {
    let config = Arc::new(config);
    ChildSpec {
        name: NAME,
        restart: RestartType::Permanent,
        uses: Uses {
            trees: &[persist::HELPERS_TREE],
            // Helpers started by an app live by its sessions (`WatchSession`).
            calls: &[Apps::NAME],
            provides: &[Tasks::NAME],
            ..Uses::default()
        },
        start: Box::new(move |ctx, guard| {
            start(ctx, guard, config.clone()).map_err(|e| e.to_string())
        }),
    }
}

fn start(
    ctx: ServiceContext,
    guard: DeathGuard,
    config: Arc<Config>,
) -> Result<ChildHandle, Error> {
    let table = persist::load(ctx.store.as_ref())?
        .into_iter()
        .map(|spec| (Key::of(&spec), Entry::new(spec, true)))
        .collect();
    let quota = config.app_quota().map_err(Error::Internal)?;
    let enforcer = Enforcer::new(config.cgroups, &ctx.config.data_dir, Part::Helpers);
    if config.helper_shim.is_some() {
        crate::fs_confine::warn_if_unsupported();
    }
    let service = TasksService {
        enforcer,
        quota,
        ctx,
        config,
        _guard: guard,
        table,
        next_run: 1,
        tokens: HashMap::new(),
        stopping: false,
        log_readers: Arc::new(Semaphore::new(MAX_LOG_READERS)),
    };
    let registry = service.ctx.registry.clone();
    let addr = service.start();
    registry
        .register::<Tasks>(addr.clone().recipient())
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(ChildHandle {
        stop: addr.clone().recipient(),
        panic: addr.recipient(),
    })
}

/// The task-control actor: owns the helper table. Process supervision runs in tasks that
/// report exits back to it as [`Exited`] messages.
pub(crate) struct TasksService {
    pub(crate) ctx: ServiceContext,
    /// Where plug-ins are, and the helper shim.
    pub(crate) config: Arc<Config>,
    _guard: DeathGuard,
    pub(crate) table: BTreeMap<Key, Entry>,
    /// The id of the next process started.
    pub(crate) next_run: u64,
    /// The tokens of the helpers running (or waiting to be restarted): token → the app id the
    /// helper acts as. Only in memory: no helper outlives the service.
    pub(crate) tokens: HashMap<String, String>,
    /// Set by `StopService`: nothing starts any more.
    pub(crate) stopping: bool,
    /// Bounds the tasks serving `Logs` calls.
    pub(crate) log_readers: Arc<Semaphore>,
    /// Cgroups or rlimits.
    pub(crate) enforcer: Enforcer,
    /// Each app's quota (`[tasks]` app_memory_bytes, app_cpu, app_pids).
    pub(crate) quota: Limits,
}

/// A helper's process has exited (and has been reaped).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Exited {
    pub(crate) key: Key,
    pub(crate) run: u64,
    pub(crate) ended: process::Ended,
}

impl Actor for TasksService {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        if self.ctx.config.panics_on_start(NAME) {
            panic!("injected fault in {NAME}: panic-on-start failpoint");
        }
        info!(specs = self.table.len(), "task control started");
    }
}

impl Drop for TasksService {
    /// Runs on a panic too: no helper process may be left without its supervisor.
    fn drop(&mut self) {
        let events = self.ctx.events.clone();
        for (key, entry) in &mut self.table {
            if let Some(run) = &entry.run {
                warn!(helper = %key, pid = run.pid, "killing the helper: the task-control service is gone");
                process::signal_group(run.pid, Signal::SIGKILL);
                if let Some(group) = &run.group {
                    group.kill_and_remove_blocking();
                }
            }
            if entry.is_active() {
                // Followers of the event stream must not think it still runs.
                entry.set_state(
                    key,
                    &events,
                    HelperState::Failed,
                    "killed: the task-control service stopped abnormally",
                );
            }
        }
        self.enforcer.remove();
    }
}

impl Handler<StopService> for TasksService {
    type Result = ResponseActFuture<Self, ()>;

    /// Stops every helper at once (each: its stop signal, SIGKILL after its timeout) and
    /// stops once they have all exited.
    fn handle(&mut self, _: StopService, ctx: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        let active: Vec<Key> = self
            .table
            .iter()
            .filter(|(_, e)| e.is_active())
            .map(|(k, _)| k.clone())
            .collect();
        let waits: Vec<_> = active
            .iter()
            .filter_map(|key| self.begin_stop(key, "the node is stopping".into(), ctx))
            .collect();
        let count = waits.len();
        Box::pin(
            futures::future::join_all(waits)
                .into_actor(self)
                .map(move |_, act, ctx| {
                    act.enforcer.remove();
                    info!(helpers = count, "task control stopped");
                    ctx.stop();
                }),
        )
    }
}

impl Handler<InjectPanic> for TasksService {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected fault in {NAME}");
    }
}

impl Handler<Exited> for TasksService {
    type Result = ();

    fn handle(&mut self, msg: Exited, ctx: &mut Self::Context) {
        self.on_exit(msg, ctx);
    }
}

impl Handler<Call<Tasks>> for TasksService {
    type Result = ();

    fn handle(&mut self, Call(request): Call<Tasks>, ctx: &mut Self::Context) {
        self.control(request, ctx);
    }
}
