//! The task-control service in-process, as the admin drives it: real helper processes
//! (`/bin/sh`, `/bin/sleep`) started, logged, restarted, failed, signalled and stopped, and
//! every helper stopped or killed when the service stops or panics.

mod support;

use std::time::{Duration, Instant};

use p2pos_kernel::{ErrorCode, InjectPanic, StopService};
use p2pos_proto::{
    monitor::v1::event::Kind,
    tasks::v1::{HelperState, RestartPolicy, SignalHelperRequest},
};
use support::{Node, Req, T, alive, eventually, r, spec};

/// Helper states published on the event bus for `name`, until `last` (or the deadline).
async fn states_until(
    events: &mut tokio::sync::broadcast::Receiver<p2pos_proto::monitor::v1::Event>,
    name: &str,
    last: &str,
) -> Vec<String> {
    let mut states = Vec::new();
    let until = tokio::time::Instant::now() + T;
    while let Ok(Ok(event)) = tokio::time::timeout_at(until, events.recv()).await {
        if let Some(Kind::Helper(h)) = event.kind
            && h.name == name
        {
            states.push(h.state.clone());
            if h.state == last {
                break;
            }
        }
    }
    states
}

/// The token a running process was given (`P2POS_TOKEN` in its environment).
fn token_of(pid: u32) -> String {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(b"P2POS_TOKEN="))
        .map(|token| String::from_utf8(token.to_vec()).expect("utf-8"))
        .expect("P2POS_TOKEN set")
}

#[actix_rt::test]
async fn a_failing_helper_is_restarted_with_its_logs_kept_then_fails() {
    let node = Node::boot().await;
    // Each run leaves the token it was given in its directory.
    let mut failing = spec(
        "failing",
        "/bin/sh",
        &["-c", "echo hi; echo \"$P2POS_TOKEN\" > token; exit 3"],
    );
    failing.restart = RestartPolicy::OnFailure as i32;
    failing.max_restarts = 2;
    let added = node.add("", failing).await.expect("add");
    assert_eq!(added.state(), HelperState::Stopped);
    assert_eq!(added.helper_app_id, "_node:failing");

    let mut events = node.ctx.events.subscribe();
    let mut follow = node.logs("", "", "failing", 0, true).await.expect("logs");
    let started = node
        .status("", Req::Start(r("", "failing")))
        .await
        .expect("start");
    assert_eq!(started.state(), HelperState::Running);
    assert!(started.pid > 0);
    assert!(started.started_at_ms > 0);

    let failed = node.wait_state("", "failing", HelperState::Failed).await;
    assert_eq!(
        failed.reason,
        "restarted 2 times within 60 s; giving up (last: exited with code 3)"
    );
    assert_eq!(failed.restarts, 2);
    assert_eq!(failed.pid, 0);
    let exit = failed.last_exit.expect("an exit");
    assert_eq!((exit.code, exit.signal.as_str()), (Some(3), ""));
    assert_eq!(
        states_until(&mut events, "failing", "failed").await,
        [
            "running", "backoff", "running", "backoff", "running", "failed"
        ]
    );

    // One "hi" per run, kept across restarts, and seen by the follower as they came.
    for _ in 0..3 {
        let line = tokio::time::timeout(T, follow.recv())
            .await
            .expect("in time")
            .expect("a line");
        assert_eq!(line.text, "hi");
    }
    // A run's output is read to its end before its exit is reported.
    assert_eq!(node.log_texts("", "failing").await, ["hi", "hi", "hi"]);
    let token = std::fs::read_to_string(node.data_dir().join("helpers/_node/failing/token"))
        .expect("the last run's token");
    assert!(token.trim().starts_with("helper-"), "{token}");
    assert_eq!(
        node.token_app(token.trim()).await,
        None,
        "a failed helper has no token"
    );

    // A start through the API starts counting afresh.
    let again = node
        .status("", Req::Start(r("", "failing")))
        .await
        .expect("start again");
    assert_eq!((again.state(), again.restarts), (HelperState::Running, 0));
    node.wait_state("", "failing", HelperState::Failed).await;

    let missing = node
        .logs("", "", "nobody", 0, false)
        .await
        .expect_err("unknown");
    assert_eq!(missing.code, ErrorCode::NotFound);
}

#[actix_rt::test]
async fn a_stopped_helper_is_gone_and_its_token_revoked() {
    let node = Node::boot().await;
    node.add("", spec("sleeper", "/bin/sleep", &["30"]))
        .await
        .expect("add");
    let running = node
        .status("", Req::Start(r("", "sleeper")))
        .await
        .expect("start");
    let pid = running.pid;
    assert!(alive(pid));
    let issued = token_of(pid);
    assert!(
        issued.starts_with("helper-") && issued.len() == 71,
        "{issued}"
    );
    assert_eq!(
        node.token_app(&issued).await.as_deref(),
        Some("_node:sleeper")
    );

    // Starting a running helper answers its state.
    let same = node
        .status("", Req::Start(r("", "sleeper")))
        .await
        .expect("start");
    assert_eq!(same.pid, pid);
    let err = node
        .call("", Req::Remove(r("", "sleeper")))
        .await
        .expect_err("running");
    assert_eq!(err.code, ErrorCode::FailedPrecondition);

    let began = Instant::now();
    let stopped = node
        .status("", Req::Stop(r("", "sleeper")))
        .await
        .expect("stop");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "within the timeout"
    );
    assert_eq!(stopped.state(), HelperState::Stopped);
    assert_eq!(stopped.reason, "stopped through the API");
    assert_eq!(stopped.last_exit.expect("exit").signal, "SIGTERM");
    assert!(!alive(pid), "the process is gone");
    assert_eq!(node.token_app(&issued).await, None, "its token is revoked");

    // A signal sent through the API is not a failure: the helper is not restarted.
    let running = node
        .status("", Req::Restart(r("", "sleeper")))
        .await
        .expect("restart");
    assert_ne!(running.pid, pid);
    node.status(
        "",
        Req::Signal(SignalHelperRequest {
            helper: Some(r("", "sleeper")),
            signal: "TERM".into(),
        }),
    )
    .await
    .expect("signal");
    let exited = node.wait_state("", "sleeper", HelperState::Exited).await;
    assert_eq!(exited.reason, "killed by SIGTERM");
    let err = node
        .status(
            "",
            Req::Signal(SignalHelperRequest {
                helper: Some(r("", "sleeper")),
                signal: "SIGHUP".into(),
            }),
        )
        .await
        .expect_err("not running");
    assert_eq!(err.code, ErrorCode::FailedPrecondition);
    node.call("", Req::Remove(r("", "sleeper")))
        .await
        .expect("remove");
    let err = node.get("", "", "sleeper").await.expect_err("removed");
    assert_eq!(err.code, ErrorCode::NotFound);
}

#[actix_rt::test]
async fn an_ignored_stop_signal_is_followed_by_sigkill() {
    let node = Node::boot().await;
    let mut stubborn = spec(
        "stubborn",
        "/bin/sh",
        &["-c", "trap '' TERM; echo ready; sleep 30"],
    );
    stubborn.stop_timeout_ms = 300;
    node.add("", stubborn).await.expect("add");
    let pid = node
        .status("", Req::Start(r("", "stubborn")))
        .await
        .expect("start")
        .pid;
    eventually("the trap to be set", T, || async {
        node.log_texts("", "stubborn")
            .await
            .contains(&"ready".to_owned())
            .then_some(())
    })
    .await;
    let began = Instant::now();
    let stopped = node
        .status("", Req::Stop(r("", "stubborn")))
        .await
        .expect("stop");
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(stopped.state(), HelperState::Stopped);
    assert_eq!(stopped.last_exit.expect("exit").signal, "SIGKILL");
    assert!(!alive(pid));
}

#[actix_rt::test]
async fn stopping_the_service_stops_every_helper() {
    let mut node = Node::boot().await;
    let mut pids = Vec::new();
    for name in ["one", "two"] {
        node.add("", spec(name, "/bin/sleep", &["30"]))
            .await
            .expect("add");
        let s = node
            .status("", Req::Start(r("", name)))
            .await
            .expect("start");
        pids.push(s.pid);
    }
    let handle = node.handle().await;
    tokio::time::timeout(T, handle.stop.send(StopService))
        .await
        .expect("stopped in time")
        .expect("stop");
    for pid in &pids {
        assert!(!alive(*pid), "helper {pid} stopped with the service");
    }
    // The kernel restarts the service: the specs are still there, stopped.
    let s = node
        .wait_for("", "", "one", "the service back", |_| true)
        .await;
    assert_eq!(s.state(), HelperState::Stopped);
}

#[actix_rt::test]
async fn a_panic_kills_every_helper_and_the_specs_survive() {
    let mut node = Node::boot().await;
    let mut always = spec("always", "/bin/sleep", &["30"]);
    always.restart = RestartPolicy::Always as i32;
    node.add("", always).await.expect("add");
    let pid = node
        .status("", Req::Start(r("", "always")))
        .await
        .expect("start")
        .pid;
    let issued = token_of(pid);
    let handle = node.handle().await;
    handle.panic.do_send(InjectPanic);
    eventually("the helper killed", T, || async {
        (!alive(pid)).then_some(())
    })
    .await;
    let back = node
        .wait_for("", "", "always", "the service back", |_| true)
        .await;
    assert_eq!(back.state(), HelperState::Stopped);
    assert_eq!(back.spec.expect("spec").restart(), RestartPolicy::Always);
    assert_eq!(
        node.token_app(&issued).await,
        None,
        "no token outlives the service"
    );
}
