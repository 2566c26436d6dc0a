//! Helper applications: real helper processes (`p2pos-test-helper`, copied into the node's
//! plug-in directory) started, stopped, restarted, supervised and cleaned up by a real node,
//! driven over gRPC and `p2pctl`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt;
use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};
use p2pos_proto::{
    app::v1::{
        ChannelInput, OpenChannel, SessionRequest, channel_input, channel_output, session_event,
    },
    monitor::v1::{EventsRequest, event},
    tasks::v1::{HelperSpec, HelperState, ListHelpersRequest, LogsRequest, RestartPolicy},
};
use p2pos_tests::{
    Node, p2pctl,
    tasks::{add, alive, get, helper_ref, in_state, logs, start},
    wait_for,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const T: Duration = Duration::from_secs(30);
const PROGRAM: &str = "p2pos-test-helper";

fn spec(app: &str, name: &str, args: &[&str]) -> HelperSpec {
    HelperSpec {
        name: name.into(),
        app_id: app.into(),
        program: PROGRAM.into(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        restart: RestartPolicy::Never as i32,
        ..HelperSpec::default()
    }
}

/// The pids in the banner lines of every program that wrote one, in order.
fn banner_pids(lines: &[String]) -> Vec<u32> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("helper running pid="))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

/// Processes whose process group is `pgid`, in pid order.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(") ")?;
                    // state ppid pgrp ...
                    rest.split(' ').nth(2)?.parse::<u32>().ok()
                })
                == Some(pgid)
        })
        .collect::<std::collections::BTreeSet<u32>>()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_helper_is_started_stopped_restarted_and_its_output_kept() {
    let mut node = Node::start(&[]);
    node.install_plugin(PROGRAM);
    let client = node.client().await;

    let mut demo = spec("", "demo", &["run"]);
    demo.env.insert("FOO".into(), "bar".into());
    let added = add(&client, demo).await.expect("add");
    assert_eq!(added.state, HelperState::Stopped as i32);
    assert_eq!(added.pid, 0);

    let running = start(&client, "", "demo").await.expect("start");
    assert_eq!(running.state, HelperState::Running as i32);
    assert_eq!(running.helper_app_id, "_node:demo");
    let first_pid = running.pid;
    assert!(alive(first_pid), "pid {first_pid} runs");
    // Its output is kept, and its environment is exactly what the node passes on.
    let lines = wait_for("the helper's first lines", T, || {
        let client = client.clone();
        async move {
            let lines = logs(&client, "", "demo").await;
            lines
                .iter()
                .any(|l| l.starts_with("env P2POS_TOKEN"))
                .then_some(lines)
        }
    })
    .await;
    let program_pid = banner_pids(&lines)[0];
    assert_eq!(
        group_members(first_pid),
        [first_pid, program_pid],
        "the helper runs in its own process group, under the node's shim (the group leader)"
    );
    let env: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("env "))
        .collect();
    assert_eq!(
        env,
        [
            "FOO",
            "P2POS_APP_ID",
            "P2POS_GATEWAY",
            "P2POS_HELPER",
            "P2POS_HELPER_DIR",
            "P2POS_HELPER_OWNER",
            "P2POS_TOKEN"
        ],
        "nothing is inherited from the node (it has PATH, HOME and P2POS_LOG)"
    );

    // Following the log sees the next run.
    let mut follow = client
        .tasks()
        .logs(LogsRequest {
            helper: Some(helper_ref("", "demo")),
            follow: true,
            tail: 1,
        })
        .await
        .expect("follow")
        .into_inner();
    let restarted = client
        .tasks()
        .restart_helper(helper_ref("", "demo"))
        .await
        .expect("restart")
        .into_inner();
    assert_eq!(restarted.state, HelperState::Running as i32);
    assert_ne!(restarted.pid, first_pid);
    assert!(!alive(first_pid), "the first run is gone");
    let followed = tokio::time::timeout(T, async {
        let mut seen = Vec::new();
        while let Some(line) = follow.next().await {
            let text = line.expect("followed line").text;
            if text.starts_with("helper running") && seen.iter().any(|l| l == "got SIGTERM") {
                return seen;
            }
            seen.push(text);
        }
        panic!("the log stream ended; saw {seen:?}");
    })
    .await
    .expect("the new run's banner is followed");
    assert!(
        followed.iter().all(|l| !l.starts_with("helper running")),
        "the first thing after the stop is the second run's banner: {followed:?}"
    );

    let stopped = client
        .tasks()
        .stop_helper(helper_ref("", "demo"))
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(stopped.state, HelperState::Stopped as i32);
    assert_eq!(stopped.pid, 0);
    assert_eq!(stopped.last_exit.and_then(|e| e.code), Some(0));
    assert!(!stopped.reason.is_empty());
    assert!(!alive(restarted.pid));

    // An exit code, and the reason for people.
    add(&client, spec("", "three", &["exit", "3"]))
        .await
        .expect("add");
    start(&client, "", "three").await.expect("start");
    let exited = in_state(&client, "", "three", HelperState::Exited).await;
    assert_eq!(exited.last_exit.and_then(|e| e.code), Some(3));
    assert!(
        exited.reason.contains("exited with code 3"),
        "{}",
        exited.reason
    );

    // The same through p2pctl.
    let (ok, out, err) = p2pctl(&node, &["helpers", "logs", "three"]);
    assert!(ok, "{err}");
    assert!(out.contains("exiting with 3"), "{out}");
    let (ok, out, err) = p2pctl(&node, &["helpers", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains("demo") && out.contains("three"), "{out}");
    let (ok, _, err) = p2pctl(&node, &["helpers", "start", "demo"]);
    assert!(ok, "{err}");
    let pid = in_state(&client, "", "demo", HelperState::Running)
        .await
        .pid;
    let (ok, _, err) = p2pctl(&node, &["helpers", "stop", "demo"]);
    assert!(ok, "{err}");
    assert!(!alive(pid));
    let (ok, _, err) = p2pctl(&node, &["helpers", "remove", "demo"]);
    assert!(ok, "{err}");
    let list = client
        .tasks()
        .list_helpers(ListHelpersRequest::default())
        .await
        .expect("list")
        .into_inner();
    let names: Vec<&str> = list
        .helpers
        .iter()
        .filter_map(|h| h.spec.as_ref())
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["three"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_loop_backs_off_then_is_marked_failed() {
    let mut node = Node::start(&[]);
    node.install_plugin(PROGRAM);
    let client = node.client().await;
    let mut events = client
        .monitor()
        .events(EventsRequest {})
        .await
        .expect("events")
        .into_inner();

    let mut crasher = spec("", "crasher", &["exit", "7"]);
    crasher.restart = RestartPolicy::OnFailure as i32;
    crasher.max_restarts = 3;
    crasher.restart_period_secs = 60;
    add(&client, crasher).await.expect("add");
    start(&client, "", "crasher").await.expect("start");

    let failed = in_state(&client, "", "crasher", HelperState::Failed).await;
    assert_eq!(failed.restarts, 3);
    assert_eq!(failed.last_exit.and_then(|e| e.code), Some(7));
    assert!(failed.reason.contains("giving up"), "{}", failed.reason);

    // Every transition was an event: four runs (the start and three restarts), each after a
    // longer back-off than the one before, then `failed`.
    let mut runs = Vec::new();
    tokio::time::timeout(T, async {
        while let Some(event) = events.next().await {
            let event = event.expect("event");
            let Some(event::Kind::Helper(h)) = event.kind else {
                continue;
            };
            if h.name != "crasher" {
                continue;
            }
            match h.state.as_str() {
                "running" => runs.push(event.at_ms),
                "failed" => return,
                _ => {}
            }
        }
    })
    .await
    .expect("the failed event");
    assert_eq!(runs.len(), 4, "one start and three restarts: {runs:?}");
    for (i, pair) in runs.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let back_off = 100u64 << i;
        assert!(
            gap >= back_off * 9 / 10,
            "restart {} came {gap} ms after the previous run; the back-off is {back_off} ms",
            i + 1
        );
    }
    assert_eq!(get(&client, "", "crasher").await.pid, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apps_helpers_stop_when_its_session_ends() {
    let mut node = Node::start(&[]);
    node.install_plugin(PROGRAM);
    let app = node.app_client("demoapp").await;

    add(&app, spec("", "worker", &["run"])).await.expect("add");
    let mut keeper = spec("demoapp", "keeper", &["run"]);
    keeper.outlive_session = true;
    add(&app, keeper).await.expect("add");

    // No session, no helper.
    let err = start(&app, "", "worker").await.expect_err("no session");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(get(&app, "demoapp", "worker").await.pid, 0);

    let mut session = app
        .apps()
        .session(SessionRequest {
            app_id: "demoapp".into(),
            group: String::new(),
        })
        .await
        .expect("session")
        .into_inner();
    session
        .next()
        .await
        .expect("registered")
        .expect("registered");
    let first = start(&app, "", "worker").await.expect("start").pid;
    // Restarted by the admin, it still lives by the app's session.
    let admin = node.client().await;
    let worker = admin
        .tasks()
        .restart_helper(helper_ref("demoapp", "worker"))
        .await
        .expect("admin restart")
        .into_inner()
        .pid;
    assert_ne!(worker, first);
    let keeper = start(&app, "demoapp", "keeper").await.expect("start").pid;
    assert!(alive(worker) && alive(keeper));
    assert_eq!(
        get(&app, "demoapp", "worker").await.helper_app_id,
        "demoapp:worker"
    );

    // Another app can neither see nor stop them.
    let intruder = node.app_client("intruder").await;
    let err = intruder
        .tasks()
        .stop_helper(helper_ref("demoapp", "worker"))
        .await
        .expect_err("not its helper");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let seen = intruder
        .tasks()
        .list_helpers(ListHelpersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(seen.helpers.is_empty(), "{seen:?}");
    assert!(alive(worker));
    // Nor can an app whose id merely starts with the same letters and a dot.
    let dotted = node.app_client("demoapp.worker").await;
    let err = dotted
        .tasks()
        .get_helper(helper_ref("demoapp", "worker"))
        .await
        .expect_err("another app");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // The app goes away: its helper stops within 2 s; the one that outlives sessions stays.
    drop(session);
    let went = Instant::now();
    wait_for(
        "the worker to stop",
        Duration::from_secs(2),
        || async move { (!alive(worker)).then_some(()) },
    )
    .await;
    eprintln!(
        "worker stopped {:?} after the session ended",
        went.elapsed()
    );
    let stopped = in_state(&app, "demoapp", "worker", HelperState::Stopped).await;
    assert!(stopped.reason.contains("session"), "{}", stopped.reason);
    assert!(alive(keeper), "the keeper outlives the session");
    assert_eq!(
        get(&app, "demoapp", "keeper").await.state,
        HelperState::Running as i32
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_with_sigkill_leaves_no_helper_behind() {
    // Orphans are re-parented to this test process, so it can see they were killed and reap
    // them, whatever this machine's init does.
    nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
    let mut node = Node::start(&[]);
    node.install_plugin(PROGRAM);
    let client = node.client().await;
    let mut pids = Vec::new();
    for (name, args) in [
        ("one", &["run", "--fork"][..]),
        ("stubborn", &["run", "--ignore-term"][..]),
        ("three", &["run"][..]),
    ] {
        add(&client, spec("", name, args)).await.expect("add");
        pids.push(start(&client, "", name).await.expect("start").pid);
    }
    // The stubborn one has set up its SIGTERM handler.
    wait_for("the stubborn helper to ignore SIGTERM", T, || {
        let client = client.clone();
        async move {
            logs(&client, "", "stubborn")
                .await
                .contains(&"ignoring SIGTERM".to_owned())
                .then_some(())
        }
    })
    .await;

    // Everything of theirs: the shims (group leaders), the programs, and the program that
    // "one" started itself (a second banner in its log).
    for (name, programs) in [("one", 2), ("stubborn", 1), ("three", 1)] {
        let banners = wait_for("the banners", T, || {
            let client = client.clone();
            async move {
                let banners = banner_pids(&logs(&client, "", name).await);
                (banners.len() == programs).then_some(banners)
            }
        })
        .await;
        pids.extend(banners);
    }
    assert_eq!(
        pids.len(),
        7,
        "3 shims, 3 programs and a grandchild: {pids:?}"
    );
    let node_pid = node.pid().expect("running");
    kill(Pid::from_raw(node_pid as i32), Signal::SIGKILL).expect("kill -9 p2posd");
    let killed = Instant::now();
    node.wait_exit(T).await;

    let mut reaped: HashMap<u32, WaitStatus> = HashMap::new();
    wait_for("every helper to die", Duration::from_secs(2), || {
        for &pid in &pids {
            if reaped.contains_key(&pid) {
                continue;
            }
            match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(status) => {
                    reaped.insert(pid, status);
                }
                // Not our child (any more): only fine if it is gone.
                Err(_) if !alive(pid) => {
                    reaped.insert(pid, WaitStatus::StillAlive);
                }
                Err(_) => {}
            }
        }
        let done = reaped.len() == pids.len();
        async move { done.then_some(()) }
    })
    .await;
    eprintln!(
        "every helper process gone {:?} after kill -9",
        killed.elapsed()
    );
    for pid in &pids {
        assert!(
            matches!(
                reaped[pid],
                WaitStatus::Signaled(_, Signal::SIGKILL, _) | WaitStatus::StillAlive
            ),
            "helper {pid}: {:?}",
            reaped[pid]
        );
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "no zombie of helper {pid} is left"
        );
        assert!(
            group_members(*pid).is_empty(),
            "nothing of group {pid} is left"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_helper_specs_are_refused_and_nothing_starts() {
    let mut node = Node::start(&[]);
    let installed = node.install_plugin(PROGRAM);
    let plugins = installed.parent().expect("plug-in dir").to_path_buf();
    std::os::unix::fs::symlink("/bin/sleep", plugins.join("escape")).expect("symlink out");
    std::os::unix::fs::symlink(PROGRAM, plugins.join("alias")).expect("symlink in");
    std::fs::write(plugins.join("not-executable"), "#!/bin/sh\n").expect("write");
    let app = node.app_client("demoapp").await;

    let cases = [
        ("../p2pos-test-helper", tonic::Code::InvalidArgument),
        ("/bin/true", tonic::Code::InvalidArgument),
        ("escape", tonic::Code::InvalidArgument),
        ("sub/../../p2pos-test-helper", tonic::Code::InvalidArgument),
        ("missing", tonic::Code::NotFound),
        ("not-executable", tonic::Code::FailedPrecondition),
    ];
    for (program, code) in cases {
        let mut bad = spec("", "bad", &["run"]);
        bad.program = program.into();
        let err = add(&app, bad).await.expect_err(program);
        assert_eq!(err.code(), code, "{program}: {err:?}");
        assert!(!err.message().is_empty());
    }
    // An app may not make its program load other code.
    let mut preload = spec("", "preload", &["run"]);
    preload
        .env
        .insert("LD_PRELOAD".into(), "/tmp/evil.so".into());
    let err = add(&app, preload).await.expect_err("LD_PRELOAD");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // Nor get a token for a helper's app id.
    let err = node
        .client()
        .await
        .node()
        .create_app_token(p2pos_proto::node::v1::CreateAppTokenRequest {
            app_id: "demoapp:fake".into(),
            ttl_secs: 0,
        })
        .await
        .expect_err("a helper's app id");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let mut bad_name = spec("", "bad/name", &["run"]);
    bad_name.program = PROGRAM.into();
    let err = add(&app, bad_name).await.expect_err("bad name");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = add(&app, spec("other", "x", &["run"]))
        .await
        .expect_err("another app's spec");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // A symlink that stays inside the directory is fine.
    let mut alias = spec("", "alias", &["run"]);
    alias.program = "alias".into();
    add(&app, alias)
        .await
        .expect("a symlink inside the plug-in dir");

    // A program removed after its spec was added: the start fails, nothing runs.
    let client = node.client().await;
    add(&client, spec("", "vanishing", &["run"]))
        .await
        .expect("add");
    std::fs::remove_file(&installed).expect("remove the program");
    let err = start(&client, "", "vanishing").await.expect_err("gone");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let list = client
        .tasks()
        .list_helpers(ListHelpersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(
        list.helpers.iter().all(|h| h.pid == 0),
        "nothing started: {list:?}"
    );

    // p2pctl says so in one line.
    let (ok, _, err) = p2pctl(&node, &["helpers", "add", "evil", "../evil"]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("outside"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_and_its_helper_talk_through_a_local_channel() {
    let mut node = Node::start(&[]);
    node.install_plugin(PROGRAM);
    let own_id = node.peer_id().await;
    let app = node.app_client("demoapp").await;
    let mut session = app
        .apps()
        .session(SessionRequest {
            app_id: "demoapp".into(),
            group: String::new(),
        })
        .await
        .expect("session")
        .into_inner();
    assert!(matches!(
        session.next().await.expect("event").expect("event").kind,
        Some(session_event::Kind::Registered(_))
    ));
    add(&app, spec("", "echo", &["echo"])).await.expect("add");
    let started = start(&app, "", "echo").await.expect("start");
    assert_eq!(started.helper_app_id, "demoapp:echo");

    // The helper opens its own session with the token it was given; the app reaches it with
    // the same channel API as a remote peer, naming its own node.
    let (tx, mut output) = wait_for("a channel to the helper", T, || {
        let app = app.clone();
        let own_id = own_id.clone();
        async move {
            let (tx, rx) = mpsc::channel(8);
            tx.send(ChannelInput {
                kind: Some(channel_input::Kind::Open(OpenChannel {
                    app_id: "demoapp:echo".into(),
                    peer: own_id,
                    batch: false,
                    half_close: false,
                    group: String::new(),
                    transport: 0,
                })),
            })
            .await
            .ok()?;
            let mut output = app
                .apps()
                .channel(ReceiverStream::new(rx))
                .await
                .ok()?
                .into_inner();
            match output.next().await {
                Some(Ok(_opened)) => Some((tx, output)),
                _ => None,
            }
        }
    })
    .await;
    for frame in ["ping", "", "pong"] {
        tx.send(ChannelInput {
            kind: Some(channel_input::Kind::Data(Bytes::from(frame))),
        })
        .await
        .expect("send");
        let echoed = tokio::time::timeout(T, output.next())
            .await
            .expect("echo in time")
            .expect("stream open")
            .expect("frame");
        assert_eq!(
            echoed.kind,
            Some(channel_output::Kind::Data(Bytes::from(frame)))
        );
    }
    drop(session);
}
