//! The resource manager actor: samples the machine on its own schedule (never because someone
//! asked) and answers `p2pos.resources.v1` from the last sample; lends under the owner's policy
//! (serving `/p2pos/resources/1`, announcing in the DHT while it lends) and borrows from peers.

use std::{sync::Arc, time::Duration};

use actix::prelude::*;
use libp2p::PeerId;
use p2pos_kernel::{
    Call, ChildHandle, ChildSpec, DeathGuard, InjectPanic, Protocol, Registry, RestartType,
    ServiceContext, ServiceError, StopService, Uses,
};
use p2pos_proto::{
    resources::v1::{FindReply, Inventory, ListLeasesReply, Sharing},
    tasks::v1::HelperState,
};
use p2pos_protocols::{
    Groups, Resources, Tasks, answer, groups,
    network::{Accepting, Announcer, Limits, NETWORK, Network, accept::drop_stream},
    resources, tasks,
};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::{
    Config,
    borrow::{Holder, OFFERS_KEY},
    lend::{self, Lender},
    metrics::Metrics,
    policy,
    sample::{RunningHelper, Sampler},
};

/// Inbound `/p2pos/resources/1` streams served at once, in all and from one peer.
const INBOUND_TOTAL: usize = 64;
const INBOUND_PER_PEER: usize = 4;

/// The service's name.
pub const NAME: &str = "resources";

/// What the service keeps in the store, in the words of a repair report (`p2posd --repair`).
pub const STORE_CONTENTS: &[p2pos_kernel::store::Contents] = &[p2pos_kernel::store::Contents {
    tree: policy::TREE,
    prefix: None,
    what: "the resource sharing policy",
}];

/// The child spec the daemon hands to the kernel.
pub fn child_spec(config: Config) -> ChildSpec {
    ChildSpec {
        name: NAME,
        restart: RestartType::Permanent,
        uses: Uses {
            // Which helpers run, and their process ids; who is in a group.
            calls: &[Tasks::NAME, Groups::NAME],
            // Its own protocol and DHT announcement.
            needs: &[NETWORK],
            // The owner's policy.
            trees: &[policy::TREE],
            provides: &[Resources::NAME],
            ..Uses::default()
        },
        start: Box::new(move |ctx, guard| start(ctx, guard, &config)),
    }
}

fn start(ctx: ServiceContext, guard: DeathGuard, config: &Config) -> Result<ChildHandle, String> {
    let net: Network = ctx.registry.take(NETWORK).map_err(|e| e.to_string())?;
    let (metrics, registry) = Metrics::registered();
    ctx.metrics.set(NAME, registry);
    let interval = Duration::from_secs(config.refresh_secs);
    let (tx, inventory) = watch::channel(Inventory::default());
    // The policy kept in the store wins over the config's (it was set later, through the API).
    let sharing = match policy::load(&ctx.store).map_err(|e| e.message)? {
        Some(kept) => kept,
        // The config's, in the canonical form `Share` keeps (checked when the node started).
        None => match &config.share {
            Some(share) => {
                policy::check(share.sharing()?, f64::INFINITY, 0).map_err(|e| e.message)?
            }
            None => Sharing::default(),
        },
    };
    let lender = Lender::new(ctx.peer_id, sharing.clone(), inventory.clone());
    let serving = lender.clone();
    let registry = ctx.registry.clone();
    let signer = net.clone();
    let accepting = net
        .accept(
            lend::PROTOCOL,
            Limits {
                total: INBOUND_TOTAL,
                per_peer: INBOUND_PER_PEER,
                max_frame: lend::MAX_FRAME,
                idle: lend::FRAME_WAIT,
            },
            move |peer, stream| {
                let registry = registry.clone();
                let membership = move |groups, peer| member_of_any(registry, groups, peer);
                serving
                    .clone()
                    .serve(peer, stream, membership, signer.clone())
            },
            drop_stream,
        )
        .map_err(|e| e.to_string())?;
    let announcer = net.announcer().map_err(|e| e.to_string())?;
    announce(&announcer, &sharing);
    let sampler = tokio::spawn(keep_sampling(ctx.clone(), interval, tx, metrics));
    let addr = ResourcesService {
        ctx: ctx.clone(),
        _guard: guard,
        inventory,
        sampler,
        net,
        lender,
        holder: Holder::default(),
        announcer: Arc::new(announcer),
        _accepting: accepting,
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

/// Whether `peer` is a member of one of `groups`, as this node's group service knows (no
/// group service: no).
async fn member_of_any(registry: Registry, groups: Vec<String>, peer: PeerId) -> bool {
    for group in groups {
        let asked = registry
            .ask::<Groups, bool>(|reply| groups::Request::IsMember { group, peer, reply })
            .await;
        if asked.unwrap_or(false) {
            return true;
        }
    }
    false
}

/// The id of group `name_or_id` and its members' peer ids, from the group service.
async fn group_members(
    registry: &Registry,
    name_or_id: String,
) -> Result<(String, Vec<String>), ServiceError> {
    let members = registry
        .ask::<Groups, _>(|reply| groups::Request::Members {
            group: name_or_id,
            reply,
        })
        .await?;
    let id = members.group.map(|g| g.id).unwrap_or_default();
    Ok((id, members.members.into_iter().map(|m| m.peer_id).collect()))
}

/// Announces in the DHT that this node lends, while `sharing` lends anything.
fn announce(announcer: &Announcer, sharing: &Sharing) {
    let keys = if policy::lends(sharing) {
        [OFFERS_KEY.to_owned()].into()
    } else {
        Default::default()
    };
    announcer.set(keys);
}

/// Samples every `interval` (the first one at once) into `tx` and the gauges, until the
/// service goes. Sampling reads `/proc`: it runs on the blocking pool.
async fn keep_sampling(
    ctx: ServiceContext,
    interval: Duration,
    tx: watch::Sender<Inventory>,
    metrics: Metrics,
) {
    // Made on the blocking pool with the first sample (it reads the mount list), and again
    // after a sample that panicked.
    let mut sampler: Option<Sampler> = None;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let helpers = running_helpers(&ctx).await;
        let (taken, data_dir) = (sampler.take(), ctx.config.data_dir.clone());
        let sampled = tokio::task::spawn_blocking(move || {
            let mut taken = taken.unwrap_or_else(|| Sampler::new(data_dir));
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
            Err(e) => warn!("sampling the machine failed: {e}; trying again"),
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
    net: Network,
    lender: Lender,
    holder: Holder,
    announcer: Arc<Announcer>,
    /// Serves `/p2pos/resources/1` while it lives.
    _accepting: Accepting,
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
        use resources::Request;
        match request {
            Request::GetInventory { reply } => {
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
            Request::GetSharing { reply } => {
                answer::<_, ServiceError>(reply, Ok(self.lender.sharing()));
            }
            Request::Share { sharing, reply } => self.share(sharing, reply),
            Request::Find { mut request, reply } => {
                let (net, registry) = (self.net.clone(), self.ctx.registry.clone());
                tokio::spawn(async move {
                    if !request.group.is_empty() {
                        let group = std::mem::take(&mut request.group);
                        match group_members(&registry, group).await {
                            Ok((_, mut members)) => {
                                // Others only, and as many as one look-up asks.
                                let local = net.local_peer_id().to_string();
                                members.retain(|m| *m != local);
                                members.truncate(crate::borrow::MAX_CANDIDATES);
                                request.peers = members;
                            }
                            Err(e) => return answer::<FindReply, _>(reply, Err(e)),
                        }
                    }
                    answer(reply, crate::borrow::find(&net, request).await);
                });
            }
            Request::Lease {
                peer,
                amounts,
                ttl_secs,
                app_id,
                reply,
            } => {
                let (net, holder) = (self.net.clone(), self.holder.clone());
                tokio::spawn(async move {
                    let leased = holder.lease(&net, peer, amounts, ttl_secs, app_id).await;
                    answer::<_, ServiceError>(reply, Ok(leased));
                });
            }
            Request::Renew {
                caller_app,
                lease_id,
                ttl_secs,
                reply,
            } => {
                let (net, holder) = (self.net.clone(), self.holder.clone());
                tokio::spawn(async move {
                    let renewed = holder
                        .renew(&net, caller_app.as_deref(), lease_id, ttl_secs)
                        .await;
                    answer::<_, ServiceError>(reply, Ok(renewed));
                });
            }
            Request::Release {
                caller_app,
                lease_id,
                reply,
            } => {
                let (net, holder) = (self.net.clone(), self.holder.clone());
                tokio::spawn(async move {
                    let released = holder
                        .release(&net, caller_app.as_deref(), lease_id)
                        .await
                        .map_err(|why| ServiceError::not_found(why.message));
                    answer(reply, released);
                });
            }
            Request::ListLeases { caller_app, reply } => {
                let listed = ListLeasesReply {
                    // Leases granted here are the owner's business.
                    granted: match caller_app {
                        None => self.lender.granted(),
                        Some(_) => Vec::new(),
                    },
                    held: self.holder.list(caller_app.as_deref()),
                };
                answer::<_, ServiceError>(reply, Ok(listed));
            }
            Request::EndLease {
                holder,
                lease_id,
                reply,
            } => {
                self.lender.end(&holder, &lease_id);
                answer::<_, ServiceError>(reply, Ok(()));
            }
            Request::ClaimLease {
                holder,
                lease_id,
                reply,
            } => {
                answer::<_, ServiceError>(reply, Ok(self.lender.claim(&holder, &lease_id)));
            }
        }
    }
}

impl ResourcesService {
    /// Resolves the groups `sharing` names to their ids, checks it against the machine, keeps it
    /// durably, then lends under it.
    fn share(&mut self, mut sharing: Sharing, reply: p2pos_protocols::Reply<Sharing>) {
        let mut inventory = self.inventory.clone();
        let store = self.ctx.store.clone();
        let registry = self.ctx.registry.clone();
        let lender = self.lender.clone();
        // The announcement follows once the policy is kept.
        let announcer = self.announcer.clone();
        tokio::spawn(async move {
            // Checked against the machine: its first sample is taken at start.
            let (cores, memory) = match inventory.wait_for(|i| i.sampled_at_ms != 0).await {
                Ok(sample) => (
                    sample
                        .cpu
                        .as_ref()
                        .map_or(0.0, |c| f64::from(c.logical_cores)),
                    sample.memory.map_or(0, |m| m.total_bytes),
                ),
                Err(_) => {
                    let e = ServiceError::unavailable("the resource manager is restarting");
                    return answer::<Sharing, _>(reply, Err(e));
                }
            };
            if sharing.groups.len() > policy::MAX_GROUPS {
                let e = ServiceError::invalid(format!(
                    "a policy names at most {} groups",
                    policy::MAX_GROUPS
                ));
                return answer::<Sharing, _>(reply, Err(e));
            }
            let mut ids = Vec::with_capacity(sharing.groups.len());
            for group in std::mem::take(&mut sharing.groups) {
                match group_members(&registry, group.clone()).await {
                    Ok((id, _)) => ids.push(id),
                    Err(e) => {
                        let e = ServiceError::invalid(format!(
                            "cannot lend to group {group:?}: {}",
                            e.message
                        ));
                        return answer::<Sharing, _>(reply, Err(e));
                    }
                }
            }
            sharing.groups = ids;
            let sharing = match policy::check(sharing, cores, memory) {
                Ok(sharing) => sharing,
                Err(e) => return answer::<Sharing, _>(reply, Err(e)),
            };
            let kept = sharing.clone();
            let saved = tokio::task::spawn_blocking(move || policy::save(&store, &kept))
                .await
                .map_err(|e| ServiceError::internal(e.to_string()))
                .and_then(|saved| saved);
            if saved.is_ok() {
                info!(
                    lends = policy::lends(&sharing),
                    peers = sharing.peers.len(),
                    groups = sharing.groups.len(),
                    "sharing policy set"
                );
                lender.set_sharing(sharing.clone());
                announce(&announcer, &sharing);
            }
            answer(reply, saved.map(|()| sharing));
        });
    }
}
