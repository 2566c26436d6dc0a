//! The resource manager actor: samples the machine on its own schedule (never because someone
//! asked) and answers `p2pos.resources.v1` from the last sample.

use std::time::Duration;

use actix::prelude::*;
use p2pos_kernel::{
    Call, ChildHandle, ChildSpec, DeathGuard, InjectPanic, Protocol, RestartType, ServiceContext,
    ServiceError, StopService, Uses,
};
use p2pos_proto::{resources::v1::Inventory, tasks::v1::HelperState};
use p2pos_protocols::{Resources, Tasks, answer, resources, tasks};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, warn};

use crate::{
    Config,
    metrics::Metrics,
    sample::{RunningHelper, Sampler},
};

/// The service's name.
pub const NAME: &str = "resources";

/// The child spec the daemon hands to the kernel.
pub fn child_spec(config: Config) -> ChildSpec {
    ChildSpec {
        name: NAME,
        restart: RestartType::Permanent,
        uses: Uses {
            // Which helpers run, and their process ids.
            calls: &[Tasks::NAME],
            provides: &[Resources::NAME],
            ..Uses::default()
        },
        start: Box::new(move |ctx, guard| start(ctx, guard, &config)),
    }
}

fn start(ctx: ServiceContext, guard: DeathGuard, config: &Config) -> Result<ChildHandle, String> {
    let (metrics, registry) = Metrics::registered();
    ctx.metrics.set(NAME, registry);
    let interval = Duration::from_secs(config.refresh_secs);
    let (tx, inventory) = watch::channel(Inventory::default());
    let sampler = tokio::spawn(keep_sampling(ctx.clone(), interval, tx, metrics));
    let addr = ResourcesService {
        ctx: ctx.clone(),
        _guard: guard,
        inventory,
        sampler,
    }
    .start();
    ctx.registry
        .register::<Resources>(addr.clone().recipient())
        .map_err(|e| e.to_string())?;
    Ok(ChildHandle {
        stop: addr.clone().recipient(),
        panic: addr.recipient(),
    })
}

/// Samples every `interval` (the first one at once) into `tx` and the gauges, until the
/// service goes. Sampling reads `/proc`: it runs on the blocking pool.
async fn keep_sampling(
    ctx: ServiceContext,
    interval: Duration,
    tx: watch::Sender<Inventory>,
    metrics: Metrics,
) {
    let mut sampler = Some(Sampler::new(ctx.config.data_dir.clone()));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let helpers = running_helpers(&ctx).await;
        let Some(mut taken) = sampler.take() else {
            return;
        };
        let sampled = tokio::task::spawn_blocking(move || {
            let inventory = taken.sample(&helpers, interval);
            (taken, inventory)
        })
        .await;
        match sampled {
            Ok((back, inventory)) => {
                sampler = Some(back);
                metrics.set(&inventory);
                tx.send_replace(inventory);
            }
            Err(e) => {
                warn!("sampling the machine failed: {e}; trying again");
                sampler = Some(Sampler::new(ctx.config.data_dir.clone()));
            }
        }
    }
}

/// The helpers running now, from the task-control service (none while it is down).
async fn running_helpers(ctx: &ServiceContext) -> Vec<RunningHelper> {
    let listed = ctx
        .registry
        .ask::<Tasks, _>(|reply| tasks::Request::List {
            caller_app: String::new(),
            app_id: String::new(),
            reply,
        })
        .await;
    match listed {
        Ok(list) => list
            .helpers
            .into_iter()
            .filter(|h| h.pid != 0 && h.state() == HelperState::Running)
            .map(|h| {
                let spec = h.spec.unwrap_or_default();
                RunningHelper {
                    app_id: spec.app_id,
                    name: spec.name,
                    pid: h.pid,
                }
            })
            .collect(),
        Err(e) => {
            debug!("no helper list from the task-control service: {e}");
            Vec::new()
        }
    }
}

/// The resource manager actor.
struct ResourcesService {
    ctx: ServiceContext,
    _guard: DeathGuard,
    inventory: watch::Receiver<Inventory>,
    sampler: JoinHandle<()>,
}

impl Drop for ResourcesService {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}

impl Actor for ResourcesService {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        if self.ctx.config.panics_on_start(NAME) {
            panic!("failpoint {NAME}=panic-on-start");
        }
    }
}

impl Handler<StopService> for ResourcesService {
    type Result = ();

    fn handle(&mut self, _: StopService, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<InjectPanic> for ResourcesService {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected fault in {NAME}");
    }
}

impl Handler<Call<Resources>> for ResourcesService {
    type Result = ();

    fn handle(&mut self, Call(request): Call<Resources>, _: &mut Self::Context) {
        match request {
            resources::Request::GetInventory { reply } => {
                let mut inventory = self.inventory.clone();
                // The first sample is taken at start: wait for it rather than answer zeros.
                tokio::spawn(async move {
                    let ready = inventory.wait_for(|i| i.sampled_at_ms != 0).await;
                    let answer_with = match ready {
                        Ok(sample) => Ok(sample.clone()),
                        Err(_) => Err(ServiceError::unavailable(
                            "the resource manager is restarting",
                        )),
                    };
                    answer::<_, ServiceError>(reply, answer_with);
                });
            }
        }
    }
}
