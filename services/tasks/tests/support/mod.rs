//! The harness of the in-process tests: a real kernel (temporary data directory) running the
//! task-control service and a probe that hands the test the service context, the service's
//! child handle, and plays the apps service (sessions the test opens and ends).

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use actix::prelude::*;
use p2pos_kernel::{
    Call, ChildHandle, ChildSpec, Config, DeathGuard, ErrorCode, InjectPanic, Kernel, Protocol,
    RestartType, ServiceContext, ServiceError, StopService, Uses,
};
use p2pos_proto::tasks::v1::{
    AddHelperRequest, HelperRef, HelperSpec, HelperState, HelperStatus, ListHelpersReply,
    ListHelpersRequest, LogLine, LogsRequest, RemoveHelperReply, SignalHelperRequest,
};
use p2pos_protocols::{
    Apps, Tasks, answer, apps,
    tasks::{HelperOp, Request},
};
use tokio::sync::{mpsc, oneshot};

/// A generous bound on anything that should happen quickly.
pub const T: Duration = Duration::from_secs(20);

/// Live sessions per app: dropping an app's senders ends its sessions.
type Sessions = Arc<Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>>;

/// Stands in for the overlay's apps protocol (only `WatchSession`).
struct Probe {
    _guard: DeathGuard,
    sessions: Sessions,
}

impl Actor for Probe {
    type Context = Context<Self>;
}

impl Handler<StopService> for Probe {
    type Result = ();
    fn handle(&mut self, _: StopService, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<InjectPanic> for Probe {
    type Result = ();
    fn handle(&mut self, _: InjectPanic, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Call<Apps>> for Probe {
    type Result = ();
    fn handle(&mut self, Call(request): Call<Apps>, _: &mut Self::Context) {
        // Any other request is dropped: its caller hears that the service went away.
        let apps::Request::WatchSession { app_id, reply } = request else {
            return;
        };
        let mut sessions = self.sessions.lock().expect("lock");
        let watched = match sessions.get_mut(app_id.as_str()) {
            Some(watchers) => {
                let (tx, rx) = oneshot::channel();
                watchers.push(tx);
                Ok(rx)
            }
            None => Err(ServiceError::new(
                ErrorCode::FailedPrecondition,
                format!("app {:?} has no open session", app_id.as_str()),
            )),
        };
        answer(reply, watched);
    }
}

/// One unary operation of the tasks protocol, as the tests name it.
#[derive(Debug, Clone)]
pub enum Req {
    Add(AddHelperRequest),
    Remove(HelperRef),
    List(ListHelpersRequest),
    Get(HelperRef),
    Start(HelperRef),
    Stop(HelperRef),
    Restart(HelperRef),
    Signal(SignalHelperRequest),
}

/// Its answer (one per call, in a test: its size does not matter).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Resp {
    Status(HelperStatus),
    List(ListHelpersReply),
    Removed(RemoveHelperReply),
}

/// A booted node.
pub struct Node {
    pub ctx: ServiceContext,
    /// The task-control service's latest handle (replaced when the kernel restarts it).
    pub handles: mpsc::UnboundedReceiver<ChildHandle>,
    sessions: Sessions,
    pub dir: tempfile::TempDir,
}

impl Node {
    pub async fn boot() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            data_dir: dir.path().join("node"),
            allow_fault_injection: true,
            ..Config::default()
        };
        let (ctx_tx, ctx_rx) = oneshot::channel();
        let ctx_slot = Arc::new(Mutex::new(Some(ctx_tx)));
        let sessions = Sessions::default();
        let probe_sessions = sessions.clone();
        let probe = ChildSpec {
            name: "probe",
            restart: RestartType::Temporary,
            uses: Uses {
                calls: &[<Tasks as Protocol>::NAME],
                provides: &[<Apps as Protocol>::NAME],
                ..Uses::default()
            },
            start: Box::new(move |ctx, guard| {
                if let Some(tx) = ctx_slot.lock().expect("lock").take() {
                    let _ = tx.send(ctx.clone());
                }
                let addr = Probe {
                    _guard: guard,
                    sessions: probe_sessions.clone(),
                }
                .start();
                ctx.registry
                    .register::<Apps>(addr.clone().recipient())
                    .map_err(|e| e.to_string())?;
                Ok(ChildHandle {
                    stop: addr.clone().recipient(),
                    panic: addr.recipient(),
                })
            }),
        };
        // The real child spec, wrapped to hand its handle to the test.
        let tasks = p2pos_tasks::child_spec(p2pos_tasks::Config::default());
        let (handle_tx, handles) = mpsc::unbounded_channel();
        let start = tasks.start;
        let tasks = ChildSpec {
            start: Box::new(move |ctx, guard| {
                let handle = start(ctx, guard)?;
                let _ = handle_tx.send(handle.clone());
                Ok(handle)
            }),
            ..tasks
        };
        Kernel::boot(config, vec![tasks, probe]).expect("boot");
        let ctx = tokio::time::timeout(T, ctx_rx)
            .await
            .expect("kernel started")
            .expect("context");
        Node {
            ctx,
            handles,
            sessions,
            dir,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.ctx.config.data_dir.clone()
    }

    /// Creates the plug-in directory with an executable script `name`.
    pub fn install(&self, name: &str, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = p2pos_tasks::Config::default().plugin_dir(&self.ctx.config.data_dir);
        std::fs::create_dir_all(&dir).expect("plug-in dir");
        let path = dir.join(name);
        std::fs::write(&path, script).expect("write plug-in");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    pub fn open_session(&self, app: &str) {
        self.sessions
            .lock()
            .expect("lock")
            .entry(app.to_owned())
            .or_default();
    }

    pub fn end_session(&self, app: &str) {
        self.sessions.lock().expect("lock").remove(app);
    }

    /// One unary call as `caller` ("" for the admin).
    pub async fn call(&self, caller: &str, kind: Req) -> Result<Resp, ServiceError> {
        let caller_app = caller.to_owned();
        let registry = &self.ctx.registry;
        let helper = |helper, op| {
            let caller_app = caller_app.clone();
            async move {
                registry
                    .ask::<Tasks, _>(|reply| Request::Helper {
                        caller_app,
                        helper,
                        op,
                        reply,
                    })
                    .await
                    .map(Resp::Status)
            }
        };
        match kind {
            Req::Add(AddHelperRequest { spec }) => registry
                .ask::<Tasks, _>(|reply| Request::Add {
                    caller_app,
                    spec: spec.unwrap_or_default(),
                    reply,
                })
                .await
                .map(Resp::Status),
            Req::Remove(helper) => registry
                .ask::<Tasks, _>(|reply| Request::Remove {
                    caller_app,
                    helper,
                    reply,
                })
                .await
                .map(Resp::Removed),
            Req::List(ListHelpersRequest { app_id }) => registry
                .ask::<Tasks, _>(|reply| Request::List {
                    caller_app,
                    app_id,
                    reply,
                })
                .await
                .map(Resp::List),
            Req::Get(r) => helper(r, HelperOp::Get).await,
            Req::Start(r) => helper(r, HelperOp::Start).await,
            Req::Stop(r) => helper(r, HelperOp::Stop).await,
            Req::Restart(r) => helper(r, HelperOp::Restart).await,
            Req::Signal(SignalHelperRequest { helper: h, signal }) => {
                helper(h.unwrap_or_default(), HelperOp::Signal(signal)).await
            }
        }
    }

    /// The app id a helper token acts as, as the gateway asks it.
    pub async fn token_app(&self, token: &str) -> Option<String> {
        let token = token.to_owned();
        self.ctx
            .registry
            .ask::<Tasks, _>(|reply| Request::HelperToken { token, reply })
            .await
            .expect("the token's app")
    }

    pub async fn status(&self, caller: &str, kind: Req) -> Result<HelperStatus, ServiceError> {
        match self.call(caller, kind).await? {
            Resp::Status(s) => Ok(s),
            other => panic!("expected a status, got {other:?}"),
        }
    }

    pub async fn add(&self, caller: &str, spec: HelperSpec) -> Result<HelperStatus, ServiceError> {
        self.status(caller, Req::Add(AddHelperRequest { spec: Some(spec) }))
            .await
    }

    pub async fn get(
        &self,
        caller: &str,
        app: &str,
        name: &str,
    ) -> Result<HelperStatus, ServiceError> {
        self.status(caller, Req::Get(r(app, name))).await
    }

    /// Polls the helper until `check` holds.
    pub async fn wait_for(
        &self,
        caller: &str,
        app: &str,
        name: &str,
        what: &str,
        check: impl Fn(&HelperStatus) -> bool,
    ) -> HelperStatus {
        eventually(what, T, || async {
            let s = self.get(caller, app, name).await.ok()?;
            check(&s).then_some(s)
        })
        .await
    }

    /// Waits for the helper to reach `state`.
    pub async fn wait_state(&self, app: &str, name: &str, state: HelperState) -> HelperStatus {
        self.wait_for("", app, name, &format!("{name} {state:?}"), |s| {
            s.state() == state
        })
        .await
    }

    pub async fn logs(
        &self,
        caller: &str,
        app: &str,
        name: &str,
        tail: u32,
        follow: bool,
    ) -> Result<mpsc::Receiver<LogLine>, ServiceError> {
        let request = LogsRequest {
            helper: Some(r(app, name)),
            follow,
            tail,
        };
        let caller_app = caller.to_owned();
        self.ctx
            .registry
            .ask::<Tasks, _>(|reply| Request::Logs {
                caller_app,
                request,
                reply,
            })
            .await
    }

    /// The kept lines of a helper's output.
    pub async fn log_texts(&self, app: &str, name: &str) -> Vec<String> {
        let mut rx = self.logs("", app, name, 0, false).await.expect("logs");
        let mut lines = Vec::new();
        while let Some(line) = tokio::time::timeout(T, rx.recv()).await.expect("in time") {
            lines.push(line.text);
        }
        lines
    }

    /// The latest handle of the task-control service.
    pub async fn handle(&mut self) -> ChildHandle {
        let mut latest = tokio::time::timeout(T, self.handles.recv())
            .await
            .expect("a handle in time")
            .expect("a handle");
        while let Ok(newer) = self.handles.try_recv() {
            latest = newer;
        }
        latest
    }
}

/// A reference to a helper.
pub fn r(app: &str, name: &str) -> HelperRef {
    HelperRef {
        app_id: app.to_owned(),
        name: name.to_owned(),
    }
}

/// An admin spec running `program` with `args`.
pub fn spec(name: &str, program: &str, args: &[&str]) -> HelperSpec {
    HelperSpec {
        name: name.to_owned(),
        program: program.to_owned(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: [("PATH".to_owned(), "/usr/bin:/bin".to_owned())].into(),
        ..HelperSpec::default()
    }
}

/// Whether process `pid` exists (zombies included).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Polls `check` until it answers `Some`, failing after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
