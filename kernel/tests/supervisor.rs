//! The kernel's supervisor, in process, under tokio's paused clock: stand-in service actors that
//! record their starts and stops, made to panic, fail or stop normally, and the kernel's answer
//! checked against Erlang/OTP's rules (strategies, restart types, intensity and escalation,
//! stop order, stale reports).

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix::prelude::*;
use p2pos_kernel::{
    ChildHandle, ChildSpec, Config, DeathGuard, ErrorCode, InjectPanic, Kernel, KernelHandle,
    Protocol, Reply, RestartType, ServiceContext, ServiceState, ServiceStatus, StopService, Uses,
    config::{Strategy, SupervisorConfig},
};
use tokio::sync::watch;

/// Longer than any test needs in virtual time; a stuck test fails after it at once in real time.
const T: Duration = Duration::from_secs(600);

/// What the stand-ins did, in order: `start a`, `stop a`.
type Log = Arc<Mutex<Vec<String>>>;

/// How a stand-in ends.
#[derive(Message)]
#[rtype(result = "()")]
enum Exit {
    /// It stops on its own, normally.
    Normal,
    /// It gives up, saying why.
    Fail(&'static str),
}

/// A stand-in service: logs its stop (its start function logs the start), and ends as it is
/// told.
struct Stub {
    name: &'static str,
    guard: DeathGuard,
    log: Log,
}

impl Actor for Stub {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        push(&self.log, format!("stop {}", self.name));
    }
}

impl Handler<StopService> for Stub {
    type Result = ();
    fn handle(&mut self, _: StopService, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<InjectPanic> for Stub {
    type Result = ();
    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected fault in {}", self.name);
    }
}

impl Handler<Exit> for Stub {
    type Result = ();
    fn handle(&mut self, exit: Exit, ctx: &mut Self::Context) {
        if let Exit::Fail(why) = exit {
            self.guard.fail(why);
        }
        ctx.stop();
    }
}

fn push(log: &Log, line: String) {
    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

/// A booted kernel with stand-in children, and what the test watches.
struct Node {
    kernel: KernelHandle,
    log: Log,
    addrs: Arc<Mutex<HashMap<&'static str, Addr<Stub>>>>,
    /// The context each child was last started with.
    contexts: Arc<Mutex<HashMap<&'static str, ServiceContext>>>,
    states: watch::Receiver<Vec<ServiceStatus>>,
    _dir: tempfile::TempDir,
}

/// How a child's start goes.
#[derive(Clone, Copy)]
enum Start {
    /// It starts every time.
    Always,
    /// Its first start fails (the start function says why); later ones succeed.
    FailFirst,
}

impl Node {
    /// Boots a kernel with `children` (name, restart type, how its start goes) under
    /// `supervisor`.
    async fn boot(
        supervisor: SupervisorConfig,
        children: &[(&'static str, RestartType, Start)],
    ) -> Node {
        Node::boot_uses(supervisor, children, |_| Uses::default()).await
    }

    /// Boots a kernel with `children`, each declaring what `uses` says for its name.
    async fn boot_uses(
        supervisor: SupervisorConfig,
        children: &[(&'static str, RestartType, Start)],
        uses: impl Fn(&str) -> Uses,
    ) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            data_dir: dir.path().join("node"),
            supervisor,
            ..Config::default()
        };
        let log: Log = Arc::default();
        let addrs: Arc<Mutex<HashMap<_, Addr<Stub>>>> = Arc::default();
        let contexts: Arc<Mutex<HashMap<_, ServiceContext>>> = Arc::default();
        let (ctx_tx, mut ctx_rx) = tokio::sync::mpsc::unbounded_channel::<ServiceContext>();
        let specs = children
            .iter()
            .map(|&(name, restart, start)| {
                let (log, addrs, ctx_tx) = (log.clone(), addrs.clone(), ctx_tx.clone());
                let contexts = contexts.clone();
                let starts = Arc::new(Mutex::new(0u32));
                ChildSpec {
                    name,
                    restart,
                    uses: uses(name),
                    start: Box::new(move |ctx, guard| {
                        contexts
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(name, ctx.clone());
                        let _ = ctx_tx.send(ctx);
                        let mut n = starts.lock().unwrap_or_else(|e| e.into_inner());
                        *n += 1;
                        if matches!(start, Start::FailFirst) && *n == 1 {
                            push(&log, format!("refused {name}"));
                            return Err(format!("{name} cannot start yet"));
                        }
                        push(&log, format!("start {name}"));
                        let addr = Stub {
                            name,
                            guard,
                            log: log.clone(),
                        }
                        .start();
                        addrs
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(name, addr.clone());
                        Ok(ChildHandle {
                            stop: addr.clone().recipient(),
                            panic: addr.recipient(),
                        })
                    }),
                }
            })
            .collect();
        let kernel = Kernel::boot(config, specs).expect("boot");
        // The kernel actor starts its children once it runs; the first context arrives then.
        let states = ctx_rx.recv().await.expect("a child started").states;
        Node {
            kernel,
            log,
            addrs,
            contexts,
            states,
            _dir: dir,
        }
    }

    fn addr(&self, name: &str) -> Addr<Stub> {
        self.addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} was never started"))
    }

    /// The context `name` was last started with: its view of the store and registry.
    fn context(&self, name: &str) -> ServiceContext {
        self.contexts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} was never started"))
    }

    /// What the stand-ins did since the last call.
    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The status of `name` now.
    fn status(&self, name: &str) -> ServiceStatus {
        self.states
            .borrow()
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    /// Waits (in virtual time) until `check` holds for the services' states.
    async fn until(&mut self, what: &str, check: impl Fn(&[ServiceStatus]) -> bool) {
        let mut states = self.states.clone();
        let waiting = states.wait_for(|s| check(s));
        match tokio::time::timeout(T, waiting).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => panic!("the kernel went away while waiting for {what}"),
            Err(_) => panic!(
                "timed out waiting for {what}; states: {:?}",
                self.states.borrow()
            ),
        }
    }

    /// Waits until every service in `names` runs with the given restart counts.
    async fn running(&mut self, expected: &[(&str, u32)]) {
        let what = format!("{expected:?} running");
        self.until(&what, |states| {
            expected.iter().all(|(name, restarts)| {
                states.iter().any(|s| {
                    s.name == *name && s.state == ServiceState::Running && s.restarts == *restarts
                })
            })
        })
        .await;
    }

    /// Waits until `name` is in `state`.
    async fn state(&mut self, name: &str, state: ServiceState) {
        let what = format!("{name} {}", state.as_str());
        self.until(&what, |states| {
            states.iter().any(|s| s.name == name && s.state == state)
        })
        .await;
    }
}

/// Runs `test` inside an actix system on a current-thread runtime with a paused clock (timers
/// fire as soon as nothing else can run), then lets the system run until it stops; answers the
/// node's exit code.
fn run<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> i32 {
    let runner = System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
    });
    runner.block_on(test());
    runner.run_with_code().expect("system")
}

fn supervisor(strategy: Strategy, max_restarts: u32, period_secs: u64) -> SupervisorConfig {
    SupervisorConfig {
        strategy,
        max_restarts,
        period_secs,
    }
}

use RestartType::{Permanent, Temporary, Transient};
use Start::{Always, FailFirst};

#[test]
fn one_for_one_restarts_only_the_child_that_died() {
    let code = run(|| async {
        let mut node = Node::boot(
            supervisor(Strategy::OneForOne, 5, 10),
            &[
                ("a", Permanent, Always),
                ("b", Permanent, Always),
                ("c", Permanent, Always),
            ],
        )
        .await;
        node.running(&[("a", 0), ("b", 0), ("c", 0)]).await;
        assert_eq!(node.take_log(), ["start a", "start b", "start c"]);

        node.addr("b").do_send(InjectPanic);
        node.running(&[("a", 0), ("b", 1), ("c", 0)]).await;
        let starts: Vec<String> = node
            .take_log()
            .into_iter()
            .filter(|l| l.starts_with("start"))
            .collect();
        assert_eq!(starts, ["start b"], "a and c were left alone");
        assert_eq!(node.status("b").last_error, "panicked");
        node.kernel.shutdown(0);
    });
    assert_eq!(code, 0);
}

#[test]
fn rest_for_one_restarts_the_child_and_those_started_after_it() {
    let code = run(|| async {
        let mut node = Node::boot(
            supervisor(Strategy::RestForOne, 5, 10),
            &[
                ("a", Permanent, Always),
                ("b", Permanent, Always),
                ("c", Transient, Always),
                ("d", Temporary, Always),
            ],
        )
        .await;
        node.running(&[("a", 0), ("b", 0), ("c", 0), ("d", 0)])
            .await;
        node.take_log();

        node.addr("b").do_send(Exit::Fail("lost its socket"));
        node.running(&[("a", 0), ("b", 1), ("c", 0)]).await;
        node.state("d", ServiceState::Stopped).await;
        // The later children stop, last started first, before b and c start again in order;
        // a temporary child is never restarted, whatever the strategy.
        assert_eq!(
            node.take_log(),
            ["stop b", "stop d", "stop c", "start b", "start c"]
        );
        assert_eq!(node.status("b").last_error, "failed: lost its socket");
        // Stopping c and d was part of the restart, not a crash of theirs.
        assert_eq!(node.status("c").last_error, "");
        node.kernel.shutdown(0);
    });
    assert_eq!(code, 0);
}

#[test]
fn restart_types_decide_after_a_normal_exit_and_after_a_crash() {
    let code = run(|| async {
        let mut node = Node::boot(
            supervisor(Strategy::OneForOne, 10, 10),
            &[
                ("perm", Permanent, Always),
                ("trans", Transient, Always),
                ("trans2", Transient, Always),
                ("temp", Temporary, Always),
                ("temp2", Temporary, Always),
            ],
        )
        .await;
        let all = [
            ("perm", 0),
            ("trans", 0),
            ("trans2", 0),
            ("temp", 0),
            ("temp2", 0),
        ];
        node.running(&all).await;
        node.take_log();

        // A normal exit: only a permanent child comes back.
        for name in ["perm", "trans", "temp"] {
            node.addr(name).do_send(Exit::Normal);
        }
        node.running(&[("perm", 1)]).await;
        node.state("trans", ServiceState::Stopped).await;
        node.state("temp", ServiceState::Stopped).await;
        assert_eq!(node.status("trans").restarts, 0);
        assert_eq!(node.status("temp").restarts, 0);

        // A crash: a transient child comes back, a temporary one is left failed.
        node.addr("trans2").do_send(Exit::Fail("gave up"));
        node.addr("temp2").do_send(InjectPanic);
        node.running(&[("trans2", 1)]).await;
        node.state("temp2", ServiceState::Failed).await;
        assert_eq!(node.status("trans2").last_error, "failed: gave up");
        assert_eq!(node.status("temp2").restarts, 0);
        assert_eq!(node.status("temp2").last_error, "panicked");
        node.kernel.shutdown(0);
    });
    assert_eq!(code, 0);
}

#[test]
fn too_many_restarts_within_the_period_stop_the_node_with_exit_code_1() {
    let code = run(|| async {
        let mut node = Node::boot(
            supervisor(Strategy::OneForOne, 2, 10),
            &[("a", Permanent, Always), ("b", Permanent, Always)],
        )
        .await;
        node.running(&[("a", 0), ("b", 0)]).await;
        for restarts in 1..=2 {
            node.addr("b").do_send(InjectPanic);
            node.running(&[("b", restarts)]).await;
        }
        // The third crash within 10 s is one too many: b is failed and the whole node stops,
        // every child, last started first.
        node.take_log();
        node.addr("b").do_send(InjectPanic);
        node.state("b", ServiceState::Failed).await;
        node.state("a", ServiceState::Stopped).await;
        assert_eq!(node.take_log(), ["stop b", "stop a"]);
    });
    assert_eq!(code, 1, "escalation exits non-zero");
}

#[test]
fn restarts_spread_wider_than_the_period_never_escalate() {
    let code = run(|| async {
        let mut node = Node::boot(
            supervisor(Strategy::OneForOne, 2, 10),
            &[("a", Permanent, Always)],
        )
        .await;
        node.running(&[("a", 0)]).await;
        for restarts in 1..=5 {
            node.addr("a").do_send(InjectPanic);
            node.running(&[("a", restarts)]).await;
            // Beyond the window: earlier restarts no longer count.
            tokio::time::sleep(Duration::from_secs(11)).await;
        }
        node.kernel.shutdown(0);
    });
    assert_eq!(code, 0);
}

#[test]
fn restarts_back_off_while_they_come_close_together() {
    let code = run(|| async {
        let mut node = Node::boot(
            supervisor(Strategy::OneForOne, 10, 60),
            &[("a", Permanent, Always)],
        )
        .await;
        node.running(&[("a", 0)]).await;
        let mut delays = Vec::new();
        for restarts in 1..=4 {
            let crashed = tokio::time::Instant::now();
            node.addr("a").do_send(InjectPanic);
            node.running(&[("a", restarts)]).await;
            delays.push(crashed.elapsed());
        }
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800], "100 ms, doubling");
        node.kernel.shutdown(0);
    });
    assert_eq!(code, 0);
}

#[test]
fn shutdown_stops_children_in_reverse_start_order() {
    let code = run(|| async {
        let mut node = Node::boot(
            supervisor(Strategy::OneForOne, 5, 10),
            &[
                ("a", Permanent, Always),
                ("b", Permanent, Always),
                ("c", Permanent, Always),
            ],
        )
        .await;
        node.running(&[("a", 0), ("b", 0), ("c", 0)]).await;
        node.take_log();
        node.kernel.shutdown(0);
        node.until("every child stopped", |states| {
            states.iter().all(|s| s.state == ServiceState::Stopped)
        })
        .await;
        assert_eq!(node.take_log(), ["stop c", "stop b", "stop a"]);
        // Nothing is restarted while the node stops.
        for name in ["a", "b", "c"] {
            assert_eq!(node.status(name).restarts, 0);
        }
    });
    assert_eq!(code, 0);
}

#[test]
fn a_failed_start_is_one_restart_and_its_stale_report_is_ignored() {
    let code = run(|| async {
        let mut node = Node::boot(
            supervisor(Strategy::OneForOne, 5, 10),
            &[("a", Permanent, Always), ("b", Permanent, FailFirst)],
        )
        .await;
        // b's first start fails; the guard it was given goes with the failed start and reports
        // too, under a generation already replaced: one restart, not two.
        node.running(&[("a", 0), ("b", 1)]).await;
        assert_eq!(node.status("b").last_error, "failed: b cannot start yet");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(node.take_log(), ["start a", "refused b", "start b"]);
        assert_eq!(node.status("b").restarts, 1);
        node.kernel.shutdown(0);
    });
    assert_eq!(code, 0);
}

/// What the dependency tests' children declare: `net` provides the handle `net`, `app` needs
/// it, `gw` only calls a protocol `app` answers.
fn network_and_app(name: &str) -> Uses {
    match name {
        "net" => Uses {
            provides: &["net"],
            ..Uses::default()
        },
        "app" => Uses {
            needs: &["net"],
            provides: &["app.v1"],
            ..Uses::default()
        },
        "gw" => Uses {
            calls: &["app.v1"],
            ..Uses::default()
        },
        _ => Uses::default(),
    }
}

#[test]
fn a_service_that_needs_a_handle_restarts_after_its_provider_whatever_the_strategy() {
    let code = run(|| async {
        let mut node = Node::boot_uses(
            supervisor(Strategy::OneForOne, 5, 10),
            &[
                ("net", Permanent, Always),
                ("app", Permanent, Always),
                ("gw", Permanent, Always),
            ],
            network_and_app,
        )
        .await;
        node.running(&[("net", 0), ("app", 0), ("gw", 0)]).await;
        node.take_log();

        // app took net's handle when it started: it starts again after the new net. gw only
        // calls app's protocol, looked up per call: it is left alone.
        node.addr("net").do_send(InjectPanic);
        node.running(&[("net", 1), ("app", 0), ("gw", 0)]).await;
        let log = node.take_log();
        let starts: Vec<&str> = log
            .iter()
            .map(String::as_str)
            .filter(|l| l.starts_with("start"))
            .collect();
        assert_eq!(starts, ["start net", "start app"], "{log:?}");
        assert!(
            log.contains(&"stop app".to_owned()),
            "app stopped first: {log:?}"
        );
        assert_eq!(node.status("app").last_error, "", "not a crash of app's");

        // A crash of app alone restarts app alone.
        node.addr("app").do_send(InjectPanic);
        node.running(&[("net", 1), ("app", 1), ("gw", 0)]).await;
        node.kernel.shutdown(0);
    });
    assert_eq!(code, 0);
}

#[test]
fn a_handle_no_earlier_service_provides_is_a_boot_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().join("node"),
        ..Config::default()
    };
    let child = |name, uses| ChildSpec {
        name,
        restart: Permanent,
        uses,
        start: Box::new(|_, _| Err("never started".to_owned())),
    };
    let runner = System::new();
    let err = runner.block_on(async {
        // app comes before the service that provides its handle.
        let children = vec![
            child("app", network_and_app("app")),
            child("net", network_and_app("net")),
        ];
        Kernel::boot(config, children).err().expect("refused")
    });
    assert_eq!(
        err.to_string(),
        "service app needs net, which no service started before it provides"
    );
}

#[test]
fn a_service_reaches_only_what_it_declares() {
    let code = run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            data_dir: dir.path().join("node"),
            ..Config::default()
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let spec = ChildSpec {
            name: "app",
            restart: Permanent,
            uses: Uses {
                trees: &["mine"],
                provides: &["app.v1"],
                ..Uses::default()
            },
            start: Box::new(move |ctx, guard| {
                let _ = tx.send(ctx);
                let addr = Stub {
                    name: "app",
                    guard,
                    log: Log::default(),
                }
                .start();
                Ok(ChildHandle {
                    stop: addr.clone().recipient(),
                    panic: addr.recipient(),
                })
            }),
        };
        let kernel = Kernel::boot(config, vec![spec]).expect("boot");
        let ctx = rx.recv().await.expect("started");
        assert!(ctx.store.insert("mine", b"k", b"v").is_ok());
        let err = ctx.store.get("tokens", b"k").expect_err("undeclared tree");
        assert!(err.to_string().contains("service app"), "{err}");
        assert!(ctx.keypair().is_err(), "the secret key is not declared");
        assert!(ctx.admin_token().is_err(), "nor the admin token");
        assert_eq!(
            ctx.peer_id.to_string().len(),
            52,
            "the peer id is for everyone"
        );
        assert!(ctx.registry.provide("app.v1", 1u32).is_ok());
        let err = ctx
            .registry
            .provide("other.v1", 1u32)
            .expect_err("undeclared");
        assert!(err.to_string().contains("without declaring it"), "{err}");
        let err = ctx
            .registry
            .take::<u32>("app.v1")
            .expect_err("not declared as needed");
        assert!(err.to_string().contains("takes app.v1"), "{err}");
        kernel.shutdown(0);
    });
    assert_eq!(code, 0);
}

/// The protocol `app` answers in the registry tests: a number.
struct AppV1;

impl Protocol for AppV1 {
    const NAME: &'static str = "app.v1";
    type Request = Reply<u32>;
}

#[test]
fn what_a_service_registered_is_withdrawn_when_it_exits() {
    let code = run(|| async {
        let mut node = Node::boot_uses(
            supervisor(Strategy::OneForOne, 5, 10),
            &[("app", Permanent, Always), ("gw", Permanent, Always)],
            |name| match name {
                "app" => Uses {
                    provides: &["app.v1"],
                    ..Uses::default()
                },
                _ => network_and_app(name),
            },
        )
        .await;
        node.running(&[("app", 0), ("gw", 0)]).await;
        let answer = |n: u32| {
            move |reply: Reply<u32>| {
                let _ = reply.send(Ok(n));
                Box::pin(async { Ok(()) }) as futures::future::BoxFuture<'static, _>
            }
        };
        let register = |node: &Node, n: u32| {
            node.context("app")
                .registry
                .route::<AppV1>(move |reply| answer(n)(reply))
                .expect("app declares app.v1");
        };
        register(&node, 1);
        let gw = node.context("gw").registry;
        assert_eq!(
            gw.ask::<AppV1, _>(|reply| reply).await.expect("answered"),
            1
        );

        // Between app's crash and its restart, callers hear UNAVAILABLE, not a dead route.
        node.addr("app").do_send(Exit::Fail("lost its mind"));
        node.state("app", ServiceState::Restarting).await;
        let err = gw
            .ask::<AppV1, _>(|reply| reply)
            .await
            .expect_err("app is down");
        assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
        assert!(
            err.to_string().contains("no service answers app.v1"),
            "{err}"
        );
        assert!(
            !node
                .context("gw")
                .registry
                .routes()
                .iter()
                .any(|(_, s)| *s == "app"),
            "nothing of app's is left"
        );

        // The new instance registers again, and callers reach it.
        node.running(&[("app", 1), ("gw", 0)]).await;
        register(&node, 2);
        assert_eq!(
            gw.ask::<AppV1, _>(|reply| reply).await.expect("answered"),
            2
        );
        node.kernel.shutdown(0);
    });
    assert_eq!(code, 0);
}
