//! The monitor actor: answers `p2pos.monitor.v1` status requests by combining the kernel's
//! view of the services with the overlay's status, and owns the metrics endpoint and the
//! dashboard.

use std::sync::Arc;

use actix::prelude::*;
use p2pos_kernel::{
    Call, ChildHandle, ChildSpec, DeathGuard, ErrorCode, InjectPanic, Protocol, RestartType,
    ServiceContext, ServiceError, StopService, Uses,
};
use p2pos_proto::monitor::v1::{DoctorReport, NodeStatus, ServiceState};
use p2pos_protocols::{
    Forwarding, Groups, Monitor, Overlay, Resources, Services, Tasks, answer, groups, monitor,
    network::{Accepting, NETWORK, Network},
    overlay,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{sync::Semaphore, task::JoinHandle};
use tracing::info;

use crate::{Config, diag, doctor};

/// The service's name.
pub const NAME: &str = "monitor";
/// Most doctor runs at once.
const MAX_DOCTORS: usize = 2;

/// What the status and the doctor ask.
const STATUS_CALLS: &[&str] = &[Overlay::NAME, Groups::NAME, Tasks::NAME, Resources::NAME];
/// What the status and the dashboard ask.
const DASHBOARD_CALLS: &[&str] = &[
    Overlay::NAME,
    Groups::NAME,
    Tasks::NAME,
    Services::NAME,
    Forwarding::NAME,
    Resources::NAME,
    // Its own doctor, for the page's "Run the doctor".
    Monitor::NAME,
];

/// The child spec the daemon hands to the kernel.
pub fn child_spec(config: Config) -> ChildSpec {
    let dashboard = config.dashboard.is_some();
    // The dashboard's logins outlive a restart of the monitor.
    let logins = crate::dashboard::Logins::new();
    ChildSpec {
        name: NAME,
        restart: RestartType::Permanent,
        uses: Uses {
            // The status includes the overlay's, and the groups held; the doctor looks at helpers
            // and the computer's load too; with the dashboard on, it also shows services,
            // exposures and forwards, and checks the admin credential.
            calls: if dashboard {
                DASHBOARD_CALLS
            } else {
                STATUS_CALLS
            },
            admin_token: dashboard,
            // The doctor's network checks and `/p2pos/diag/1`.
            needs: &[NETWORK],
            // The store check's probe.
            trees: &[doctor::machine::TREE],
            provides: &[Monitor::NAME],
            ..Uses::default()
        },
        start: Box::new(move |ctx, guard| start(ctx, guard, &config, &logins)),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

fn start(
    ctx: ServiceContext,
    guard: DeathGuard,
    config: &Config,
    logins: &crate::dashboard::Logins,
) -> Result<ChildHandle, String> {
    let net: Network = ctx.registry.take(NETWORK).map_err(|e| e.to_string())?;
    let policy = diag::Policy::parse(&config.allow_diagnosis)?;
    let accepting = diag::serve(&net, ctx.registry.clone(), policy)?;
    let mut registry = Registry::with_prefix("p2pos");
    let restarts = Family::<ServiceLabel, Gauge>::default();
    let up = Family::<ServiceLabel, Gauge>::default();
    registry.register(
        "service_restarts",
        "Restarts of each service since the node started",
        restarts.clone(),
    );
    registry.register("service_up", "1 while the service is running", up.clone());
    ctx.metrics.set(NAME, registry);

    let (metrics_url, server) = match config.metrics {
        Some(addr) => {
            let (local, serve) = p2pos_monitor_http(addr, &ctx)?;
            info!("metrics on http://{local}/metrics");
            (format!("http://{local}/metrics"), Some(tokio::spawn(serve)))
        }
        None => (String::new(), None),
    };
    let (dashboard_url, dashboard) = match config.dashboard {
        Some(addr) => {
            let (url, serve) = start_dashboard(addr, &ctx, &metrics_url, logins.clone())?;
            (url, Some(serve))
        }
        None => (String::new(), None),
    };
    let watcher = tokio::spawn(watch_states(ctx.clone(), restarts, up));
    let addr = MonitorService {
        ctx: ctx.clone(),
        _guard: guard,
        net,
        doctors: Arc::new(Semaphore::new(MAX_DOCTORS)),
        _accepting: accepting,
        metrics_url,
        logs: config.logs.clone(),
        effective_config: config.effective_config.clone().into(),
        dashboard_url,
        logins: logins.clone(),
        tasks: [server, dashboard, Some(watcher)]
            .into_iter()
            .flatten()
            .collect(),
    }
    .start();
    ctx.registry
        .register::<Monitor>(addr.clone().recipient())
        .map_err(|e| e.to_string())?;
    Ok(ChildHandle {
        stop: addr.clone().recipient(),
        panic: addr.recipient(),
    })
}

fn p2pos_monitor_http(
    addr: std::net::SocketAddr,
    ctx: &ServiceContext,
) -> Result<
    (
        std::net::SocketAddr,
        impl Future<Output = ()> + Send + 'static,
    ),
    String,
> {
    crate::http::bind(addr, ctx.metrics.clone())
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

async fn watch_states(
    ctx: ServiceContext,
    restarts: Family<ServiceLabel, Gauge>,
    up: Family<ServiceLabel, Gauge>,
) {
    let mut states = ctx.states.clone();
    loop {
        for s in states.borrow_and_update().iter() {
            let label = ServiceLabel {
                service: s.name.to_owned(),
            };
            restarts.get_or_create(&label).set(i64::from(s.restarts));
            let running = s.state == p2pos_kernel::ServiceState::Running;
            up.get_or_create(&label).set(i64::from(running));
        }
        if states.changed().await.is_err() {
            return;
        }
    }
}

/// The monitor actor.
struct MonitorService {
    ctx: ServiceContext,
    _guard: DeathGuard,
    net: Network,
    /// Doctor runs at once (each dials, looks up and asks peers).
    doctors: Arc<Semaphore>,
    /// Serves `/p2pos/diag/1` while it lives.
    _accepting: Accepting,
    metrics_url: String,
    dashboard_url: String,
    /// The dashboard's login codes and sessions.
    logins: crate::dashboard::Logins,
    tasks: Vec<JoinHandle<()>>,
    /// The node's recent log lines (`GetLogs`).
    logs: crate::LogRing,
    /// The effective configuration as TOML (`GetConfig`).
    effective_config: std::sync::Arc<str>,
}

impl Drop for MonitorService {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Actor for MonitorService {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        if self.ctx.config.panics_on_start(NAME) {
            panic!("failpoint {NAME}=panic-on-start");
        }
    }
}

impl Handler<StopService> for MonitorService {
    type Result = ();

    fn handle(&mut self, _: StopService, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<InjectPanic> for MonitorService {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected fault in {NAME}");
    }
}

impl Handler<Call<Monitor>> for MonitorService {
    type Result = ();

    fn handle(&mut self, Call(request): Call<Monitor>, _: &mut Self::Context) {
        let (ctx, metrics_url) = (self.ctx.clone(), self.metrics_url.clone());
        let dashboard_url = self.dashboard_url.clone();
        match request {
            monitor::Request::GetStatus { reply } => {
                tokio::spawn(async move {
                    let status = status(&ctx, metrics_url, dashboard_url).await;
                    answer::<_, ServiceError>(reply, Ok(status));
                });
            }
            monitor::Request::Doctor { target, reply } => {
                let Ok(permit) = self.doctors.clone().try_acquire_owned() else {
                    let busy = ServiceError::new(
                        ErrorCode::ResourceExhausted,
                        format!(
                            "{MAX_DOCTORS} doctors are running already; try again when one ends"
                        ),
                    );
                    answer::<DoctorReport, _>(reply, Err(busy));
                    return;
                };
                let (net, logs) = (self.net.clone(), self.logs.clone());
                tokio::spawn(async move {
                    answer(reply, doctor::run(&ctx, &net, &logs, target).await);
                    drop(permit);
                });
            }
            monitor::Request::GetLogs {
                min_level,
                limit,
                reply,
            } => answer::<_, ServiceError>(
                reply,
                Ok(crate::reports::logs_reply(&self.logs, min_level, limit)),
            ),
            monitor::Request::GetMetrics { reply } => {
                answer(reply, crate::reports::metrics_reply(&self.ctx));
            }
            monitor::Request::GetConfig { reply } => {
                answer(reply, crate::reports::config_reply(&self.effective_config));
            }
            monitor::Request::DashboardLogin { reply } => {
                let url = &self.dashboard_url;
                answer(
                    reply,
                    crate::dashboard::logins::login_reply(&self.logins, url),
                );
            }
        }
    }
}

/// The node's status; overlay fields stay empty while the overlay is down.
async fn status(ctx: &ServiceContext, metrics_url: String, dashboard_url: String) -> NodeStatus {
    let services = ctx
        .states
        .borrow()
        .iter()
        .map(|s| ServiceState {
            name: s.name.to_owned(),
            state: s.state.as_str().to_owned(),
            restarts: s.restarts,
            last_error: s.last_error.clone(),
        })
        .collect();
    let overlay = ctx
        .registry
        .ask::<Overlay, _>(|reply| overlay::Request::Status { reply })
        .await
        .unwrap_or_default();
    let groups = ctx
        .registry
        .ask::<Groups, _>(|reply| groups::Request::List { reply })
        .await
        .map(|list| list.groups)
        .unwrap_or_default();
    NodeStatus {
        peer_id: ctx.peer_id.to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: ctx.started_at.elapsed().as_secs(),
        listen_addresses: overlay.listen_addresses,
        external_addresses: overlay.external_addresses,
        reachability: if overlay.reachability.is_empty() {
            "unknown".to_owned()
        } else {
            overlay.reachability
        },
        peers: overlay.peers,
        services,
        routing_table_size: overlay.routing_table_size,
        remembered_peers: overlay.remembered_peers,
        relays: overlay.relays,
        nat_mapping: overlay.nat_mapping,
        metrics_url,
        groups,
        dashboard_url,
    }
}

/// Binds the dashboard on `addr` and spawns it; answers its URL. Its status is the monitor's
/// own [`status`].
fn start_dashboard(
    addr: std::net::SocketAddr,
    ctx: &ServiceContext,
    metrics_url: &str,
    logins: crate::dashboard::Logins,
) -> Result<(String, JoinHandle<()>), String> {
    let listener = crate::dashboard::Listener::bind(addr)?;
    let url = format!("http://{}/", listener.local_addr());
    let (status_ctx, metrics_url, dashboard_url) =
        (ctx.clone(), metrics_url.to_owned(), url.clone());
    let status: crate::dashboard::StatusFn = std::sync::Arc::new(move || {
        let (ctx, metrics_url, dashboard_url) = (
            status_ctx.clone(),
            metrics_url.clone(),
            dashboard_url.clone(),
        );
        Box::pin(async move { status(&ctx, metrics_url, dashboard_url).await })
    });
    let serve = listener.serve(ctx.clone(), status, logins)?;
    info!("dashboard on {url}");
    Ok((url, tokio::spawn(serve)))
}
