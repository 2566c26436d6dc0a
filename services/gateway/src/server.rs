//! The gateway actor: binds the unix socket (and, if configured, loopback TCP), serves the
//! open spec with health and reflection, mirrors service states into gRPC health, and stops
//! gracefully when the kernel asks.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt, time::Duration};

use actix::prelude::*;
use p2pos_kernel::{
    ChildHandle, ChildSpec, DeathGuard, InjectPanic, Protocol, RestartType, ServiceContext,
    ServiceState, StopService, TOKEN_FILE, Uses,
};
use p2pos_proto::{
    FILE_DESCRIPTOR_SET, app::v1::apps_server::AppsServer, group::v1::groups_server::GroupsServer,
    jobs::v1::jobs_server::JobsServer, monitor::v1::monitor_server::MonitorServer,
    node::v1::node_server::NodeServer, overlay::v1::overlay_server::OverlayServer,
    resources::v1::resources_server::ResourcesServer, service::v1::services_server::ServicesServer,
    tasks::v1::tasks_server::TasksServer,
};
use p2pos_protocols::{
    Apps, Forwarding, Groups, Jobs, Monitor, Overlay, Resources, Services, Tasks,
};
use tokio::{
    sync::watch,
    task::{AbortHandle, JoinHandle},
};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{service::Routes, transport::Server};
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

use crate::{
    Config, DATA_SOCKET_FILE, SOCKET_FILE,
    apps_api::AppsApi,
    auth::{AuthLayer, Authenticator},
    data_socket::DataSockets,
    groups_api::GroupsApi,
    jobs_api::{JobsApi, MAX_JOB_MESSAGE},
    monitor_api::MonitorApi,
    node_api::NodeApi,
    overlay_api::OverlayApi,
    resources_api::ResourcesApi,
    services_api::ServicesApi,
    tasks_api::TasksApi,
    tokens::{AppTokens, TOKENS_TREE},
};

/// The service's name.
pub const NAME: &str = "gateway";
/// Largest gRPC message accepted: a 1 MiB payload plus its envelope. Larger messages are
/// refused by tonic before they are buffered whole.
pub const MAX_GRPC_MESSAGE: usize = 2 * 1024 * 1024;
/// How long in-flight calls get to finish when the gateway stops.
const GRACE: Duration = Duration::from_secs(2);

/// What the service keeps in the store, in the words of a repair report (`p2posd --repair`).
pub const STORE_CONTENTS: &[p2pos_kernel::store::Contents] = &[p2pos_kernel::store::Contents {
    tree: TOKENS_TREE,
    prefix: None,
    what: "app tokens",
}];

/// The child spec the daemon hands to the kernel.
pub fn child_spec(config: Config) -> ChildSpec {
    ChildSpec {
        name: NAME,
        restart: RestartType::Permanent,
        uses: Uses {
            // It checks callers' credentials: the admin token, app tokens (its own tree) and
            // helper tokens (by asking the task-control service).
            admin_token: true,
            trees: &[TOKENS_TREE],
            calls: &[
                Overlay::NAME,
                Apps::NAME,
                Services::NAME,
                Forwarding::NAME,
                Tasks::NAME,
                Monitor::NAME,
                Resources::NAME,
                Groups::NAME,
                Jobs::NAME,
            ],
            ..Uses::default()
        },
        start: Box::new(move |ctx, guard| start(ctx, guard, &config)),
    }
}

fn routes(
    ctx: &ServiceContext,
    stop: &CancellationToken,
    tokens: &AppTokens,
    sockets: &DataSockets,
) -> Result<(Routes, HealthReporter), String> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    // Python's `grpcio-reflection` (and older grpcurl) ship only a v1alpha client.
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| format!("reflection: {e}"))?;
    let routes = Routes::new(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            NodeServer::new(NodeApi::new(ctx.clone(), tokens.clone()))
                .max_decoding_message_size(MAX_GRPC_MESSAGE),
        )
        .add_service(
            OverlayServer::new(OverlayApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_GRPC_MESSAGE),
        )
        .add_service(
            AppsServer::new(AppsApi::new(ctx.clone(), stop.clone(), sockets.clone()))
                .max_decoding_message_size(MAX_GRPC_MESSAGE)
                .max_encoding_message_size(MAX_GRPC_MESSAGE),
        )
        .add_service(
            TasksServer::new(TasksApi::new(ctx.clone(), stop.clone()))
                .max_decoding_message_size(MAX_GRPC_MESSAGE),
        )
        .add_service(
            ServicesServer::new(ServicesApi::new(ctx.clone(), sockets.clone()))
                .max_decoding_message_size(MAX_GRPC_MESSAGE)
                .max_encoding_message_size(MAX_GRPC_MESSAGE),
        )
        .add_service(
            MonitorServer::new(MonitorApi::new(ctx.clone(), stop.clone()))
                .max_decoding_message_size(MAX_GRPC_MESSAGE),
        )
        .add_service(ResourcesServer::new(ResourcesApi::new(ctx.clone())))
        .add_service(GroupsServer::new(GroupsApi::new(ctx.clone(), stop.clone())))
        .add_service(
            JobsServer::new(JobsApi::new(ctx.clone(), stop.clone()))
                .max_decoding_message_size(MAX_JOB_MESSAGE)
                .max_encoding_message_size(MAX_JOB_MESSAGE),
        );
    Ok((routes, reporter))
}

fn start(ctx: ServiceContext, guard: DeathGuard, config: &Config) -> Result<ChildHandle, String> {
    let cancel = CancellationToken::new();
    let tokens = AppTokens::new(ctx.store.clone());
    tokens
        .migrate()
        .map_err(|e| format!("cannot bring the app tokens up to date: {}", e.message()))?;
    let admin_token = ctx.admin_token().map_err(|e| e.to_string())?;
    let auth = Authenticator::new(
        admin_token,
        &ctx.config.data_dir.join(TOKEN_FILE),
        tokens.clone(),
        ctx.registry.clone(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    // The TCP listener is bound before the socket: a client that finds the socket answering
    // finds the TCP gateway answering too.
    let tcp = match config.tcp {
        Some(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|e| format!("cannot bind the gateway on {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            info!("gateway on http://{local} (token required)");
            Some(listener)
        }
        None => None,
    };
    // Data sockets: a unix one beside the gateway's, and a loopback TCP one on the TCP
    // gateway's address (any free port) when it serves TCP.
    let data_tcp = match config.tcp {
        Some(addr) => {
            let listener = std::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|e| format!("cannot bind the TCP data socket on {}: {e}", addr.ip()))?;
            Some(listener)
        }
        None => None,
    };
    let data_socket = ctx.config.data_dir.join(DATA_SOCKET_FILE);
    let data_uds = bind_private(&data_socket)?;
    let sockets = DataSockets::new(
        data_socket.clone(),
        match &data_tcp {
            Some(listener) => Some(listener.local_addr().map_err(|e| e.to_string())?),
            None => None,
        },
        ctx.events.clone(),
        cancel.clone(),
    );
    let (routes, reporter) = routes(&ctx, &cancel, &tokens, &sockets)?;
    let mut data_loops = vec![tokio::spawn(sockets.clone().serve_unix(data_uds))];
    if let Some(listener) = data_tcp {
        data_loops.push(tokio::spawn(sockets.serve_tcp(listener)));
    }

    let socket = ctx.config.data_dir.join(SOCKET_FILE);
    let uds = bind_private(&socket)?;
    info!("gateway on unix:{}", socket.display());
    let tracker = TaskTracker::new();
    let mut servers = vec![
        tracker.spawn(
            Server::builder()
                .layer(AuthLayer::new(auth.clone(), false))
                .add_routes(routes.clone())
                .serve_with_incoming_shutdown(
                    UnixListenerStream::new(uds),
                    until_stopped(stop_rx.clone()),
                ),
        ),
    ];

    if let Some(listener) = tcp {
        // Every call on TCP needs a token, health and reflection included.
        servers.push(
            tracker.spawn(
                Server::builder()
                    .layer(AuthLayer::new(auth, true))
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(
                        TcpListenerStream::new(listener),
                        until_stopped(stop_rx),
                    ),
            ),
        );
    }

    let health = tokio::spawn(mirror_health(ctx.states.clone(), reporter));
    let addr = GatewayService::create(move |actx| {
        let aborts = servers
            .iter()
            .map(JoinHandle::abort_handle)
            .chain(data_loops.iter().map(JoinHandle::abort_handle))
            .collect();
        for server in servers {
            actx.spawn(
                fut::wrap_future(server).map(|result, act: &mut GatewayService, ctx| {
                    if act.stopping {
                        return;
                    }
                    let why = match result {
                        Ok(Ok(())) => "the gRPC server stopped".to_owned(),
                        Ok(Err(e)) => format!("the gRPC server failed: {e}"),
                        Err(e) => format!("the gRPC server task ended: {e}"),
                    };
                    act.guard.fail(why);
                    ctx.stop();
                }),
            );
        }
        GatewayService {
            cancel,
            sockets: [socket, data_socket],
            guard,
            stop_tx,
            aborts,
            tracker,
            failpoint_panic: ctx.config.panics_on_start(NAME),
            health: health.abort_handle(),
            stopping: false,
        }
    });
    Ok(ChildHandle {
        stop: addr.clone().recipient(),
        panic: addr.recipient(),
    })
}

/// Binds a unix socket at `path` (replacing a stale one) that only the node's user may use.
fn bind_private(path: &std::path::Path) -> Result<tokio::net::UnixListener, String> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot bind the socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    Ok(listener)
}

/// gRPC service names answered by each node service.
fn grpc_names(service: &str) -> &'static [&'static str] {
    match service {
        "network" => &["p2pos.overlay.v1.Overlay"],
        "overlay" => &["p2pos.app.v1.Apps", "p2pos.service.v1.Services"],
        // Port forwarding's calls are `Services` calls too.
        "forward" => &["p2pos.service.v1.Services"],
        "monitor" => &["p2pos.monitor.v1.Monitor"],
        "tasks" => &["p2pos.tasks.v1.Tasks"],
        "jobs" => &["p2pos.jobs.v1.Jobs"],
        "resources" => &["p2pos.resources.v1.Resources"],
        "groups" => &["p2pos.group.v1.Groups"],
        "gateway" => &["p2pos.node.v1.Node"],
        _ => &[],
    }
}

async fn mirror_health(
    mut states: watch::Receiver<Vec<p2pos_kernel::ServiceStatus>>,
    reporter: HealthReporter,
) {
    // Watchers are told of every `set`, changed or not: send changes only, so a watcher sees
    // one NOT_SERVING per outage rather than one per intermediate state.
    let mut sent: std::collections::HashMap<&'static str, ServingStatus> = Default::default();
    loop {
        let snapshot = states.borrow_and_update().clone();
        // A gRPC service is up when every service that serves part of it runs; `""` when
        // every service does.
        let mut wanted: std::collections::BTreeMap<&'static str, bool> = Default::default();
        for s in &snapshot {
            // The gateway answering is proof enough that it runs.
            let up = s.state == ServiceState::Running || s.name == NAME;
            for name in grpc_names(s.name).iter().chain([&""]) {
                *wanted.entry(name).or_insert(true) &= up;
            }
        }
        for (name, up) in wanted {
            let status = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if sent.get(name) != Some(&status) {
                reporter.set_service_status(name, status).await;
                sent.insert(name, status);
            }
        }
        if states.changed().await.is_err() {
            return;
        }
    }
}

/// The gateway actor: owns the server tasks.
struct GatewayService {
    cancel: CancellationToken,
    /// The gateway's and the data sockets' unix sockets.
    sockets: [std::path::PathBuf; 2],
    guard: DeathGuard,
    stop_tx: watch::Sender<bool>,
    aborts: Vec<AbortHandle>,
    tracker: TaskTracker,
    failpoint_panic: bool,
    health: AbortHandle,
    stopping: bool,
}

impl Drop for GatewayService {
    fn drop(&mut self) {
        self.cancel.cancel();
        for abort in &self.aborts {
            abort.abort();
        }
        self.health.abort();
    }
}

impl Actor for GatewayService {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        if self.failpoint_panic {
            panic!("failpoint {NAME}=panic-on-start");
        }
    }
}

impl Handler<StopService> for GatewayService {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopService, _: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        let _ = self.stop_tx.send(true);
        self.cancel.cancel();
        let aborts = self.aborts.clone();
        let sockets = self.sockets.clone();
        let tracker = self.tracker.clone();
        tracker.close();
        Box::pin(
            async move {
                // In-flight calls get a moment to finish; whatever is still open is then cut.
                if tokio::time::timeout(GRACE, tracker.wait()).await.is_err() {
                    warn!("gateway: cutting calls still open after {GRACE:?}");
                }
                for abort in aborts {
                    abort.abort();
                }
                // Clients then get "no such file" rather than "connection refused".
                for socket in sockets {
                    let _ = std::fs::remove_file(socket);
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        )
    }
}

impl Handler<InjectPanic> for GatewayService {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected fault in {NAME}");
    }
}
