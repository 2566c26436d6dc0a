//! The jobs actor: a service of its own (`jobs`), beside the task-control service's helpers,
//! so that a restart of the network it needs never touches helpers. It answers
//! `p2pos.jobs.v1`, serves `/p2pos/jobs/1`, and starts sandboxes on its own thread, in a
//! cgroup tree of its own (`p2pos-<hash>-jobs`).

use std::sync::Arc;

use actix::prelude::*;
use p2pos_kernel::{
    Call, ChildHandle, ChildSpec, DeathGuard, InjectPanic, Protocol, RestartType, ServiceContext,
    StopService, Uses,
};
use p2pos_protocols::{Jobs as JobsProtocol, Resources, network::NETWORK};
use tracing::info;

use super::{
    Jobs,
    spawn::{self, SpawnJob, Spawned},
};
use crate::{
    Config, Error,
    enforce::{Enforcer, Part},
};

/// The service's name.
pub const NAME: &str = "jobs";

/// The child spec the daemon hands to the kernel: a permanent service named `jobs` that
/// answers `p2pos.jobs.v1` (`config`: the task-control service's, for its shim and cgroups).
pub fn child_spec(config: Config) -> ChildSpec {
    let config = Arc::new(config);
    ChildSpec {
        name: NAME,
        restart: RestartType::Permanent,
        uses: Uses {
            // Finding and leasing runners; claiming the leases of the jobs run here.
            calls: &[Resources::NAME],
            // Jobs travel on their own protocol.
            needs: &[NETWORK],
            provides: &[JobsProtocol::NAME],
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
    let net = ctx
        .registry
        .take(NETWORK)
        .map_err(|e| Error::Internal(e.to_string()))?;
    let enforcer = Enforcer::new(config.cgroups, &ctx.config.data_dir, Part::Jobs);
    let registry = ctx.registry.clone();
    let data_dir = ctx.config.data_dir.clone();
    let mut failed = None;
    let addr = JobsService::create(|actor| {
        let spawner = actor.address().recipient();
        let jobs = Jobs::start(net, registry.clone(), spawner, &data_dir);
        let jobs = jobs.map_err(|e| failed = Some(e)).ok();
        JobsService {
            ctx,
            config,
            enforcer,
            jobs,
            _guard: guard,
            stopping: false,
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    registry
        .register::<JobsProtocol>(addr.clone().recipient())
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(ChildHandle {
        stop: addr.clone().recipient(),
        panic: addr.recipient(),
    })
}

/// The actor: owns the jobs part and the sandboxes' cgroups.
struct JobsService {
    ctx: ServiceContext,
    /// Where the shim (`p2posd` itself) is, and whether cgroups are used.
    config: Arc<Config>,
    enforcer: Enforcer,
    /// `None` only if it failed to start (the actor is then never registered).
    jobs: Option<Jobs>,
    _guard: DeathGuard,
    /// Set by `StopService`: no sandbox starts any more.
    stopping: bool,
}

impl Actor for JobsService {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        if self.ctx.config.panics_on_start(NAME) {
            panic!("injected fault in {NAME}: panic-on-start failpoint");
        }
        info!("jobs started");
    }
}

impl Drop for JobsService {
    /// Runs on a panic too: every run for a peer is killed with its serving task (the accept
    /// loop goes with the part), every job submitted here cancelled, and the cgroups removed.
    fn drop(&mut self) {
        if let Some(jobs) = self.jobs.take() {
            jobs.cancel_all();
        }
        self.enforcer.remove();
    }
}

impl Handler<StopService> for JobsService {
    type Result = ();

    /// Cancels every job submitted here and stops serving peers (their runs are killed as
    /// their serving tasks end).
    fn handle(&mut self, _: StopService, ctx: &mut Self::Context) {
        self.stopping = true;
        if let Some(jobs) = self.jobs.take() {
            jobs.cancel_all();
        }
        info!("jobs stopped");
        ctx.stop();
    }
}

impl Handler<InjectPanic> for JobsService {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected fault in {NAME}");
    }
}

impl Handler<Call<JobsProtocol>> for JobsService {
    type Result = ();

    fn handle(&mut self, Call(request): Call<JobsProtocol>, _: &mut Self::Context) {
        match &self.jobs {
            Some(jobs) => jobs.control(request),
            // Stopping: the caller hears that the service went away.
            None => drop(request),
        }
    }
}

impl Handler<SpawnJob> for JobsService {
    type Result = Result<Spawned, String>;

    /// Starts a job's sandbox here, on the actor's thread (see `process`).
    fn handle(&mut self, job: SpawnJob, _: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return Err("the node is stopping".into());
        }
        let Some(node_exe) = &self.config.helper_shim else {
            return Err("this node cannot run jobs: it does not know its own executable".into());
        };
        spawn::spawn(&self.enforcer, node_exe, &self.ctx.config.data_dir, job)
    }
}
