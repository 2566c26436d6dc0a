//! Jobs across peers on real nodes: WebAssembly programs placed by the resource manager on
//! peers that lend, run in the sandbox, and answered exactly; limits end a job with their
//! reason while the runner keeps serving; a node that does not lend refuses; a runner killed
//! mid-job is replaced; replicas that disagree are reported; a submitter that goes away stops
//! its runs; a hundred jobs across two runners all complete.

use std::{path::PathBuf, time::Duration};

use p2pos_client::Client;
use p2pos_proto::jobs::v1::{
    File, Job, JobRef, JobSpec, Limits, ListRequest, Placement, Reason, RunState, State,
    SubmitRequest,
};
use p2pos_tests::{Node, full_mesh_with, p2pctl, wait_for};

const T: Duration = Duration::from_secs(60);

fn module(path: &str) -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn sandbox_module(name: &str) -> Vec<u8> {
    module(&format!("services/tasks/sandbox/tests/modules/{name}.wat"))
}

fn spec(module: Vec<u8>, on: &[&String]) -> JobSpec {
    JobSpec {
        module: module.into(),
        placement: Some(Placement {
            peers: on.iter().map(|p| (*p).clone()).collect(),
            group: String::new(),
        }),
        limits: Some(Limits {
            memory_bytes: 16 << 20,
            ..Limits::default()
        }),
        ..JobSpec::default()
    }
}

/// Submits `spec` and follows it to its end: the last snapshot.
async fn run(client: &Client, spec: JobSpec) -> Job {
    let mut events = client
        .jobs()
        .submit(SubmitRequest {
            spec: Some(spec),
            detach: false,
        })
        .await
        .expect("submit")
        .into_inner();
    let mut last = None;
    let follow = async {
        while let Some(event) = events.message().await.expect("an event") {
            last = event.job;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), follow)
        .await
        .expect("the job ends within 2 min");
    let job = last.expect("at least one event");
    assert!(
        matches!(
            State::try_from(job.state),
            Ok(State::Done | State::Failed | State::Cancelled)
        ),
        "the stream ends with the job: {job:?}"
    );
    job
}

fn stdout(job: &Job) -> String {
    String::from_utf8_lossy(&job.result.as_ref().expect("a result").stdout).into_owned()
}

fn state(job: &Job) -> State {
    State::try_from(job.state).expect("a state")
}

fn reason(job: &Job) -> Reason {
    Reason::try_from(job.reason).expect("a reason")
}

/// `lender` lends `cpu` cores and 2 GiB to `to`.
fn share(lender: &Node, cpu: &str, to: &[&String]) {
    let mut args = vec!["resources", "share", "--cpu", cpu, "--memory", "2GiB"];
    for peer in to {
        args.extend(["--to", peer.as_str()]);
    }
    let (ok, out, err) = p2pctl(lender, &args);
    assert!(ok, "share: {out}{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_placed_by_resources_runs_exactly_and_limits_end_jobs_with_their_reason() {
    let (mut nodes, ids) = full_mesh_with(3, &[]).await;
    let (a, b) = (&ids[0], &ids[1]);
    share(&nodes[1], "2", &[a]);
    let client = nodes[0].client().await;

    // Placed by the resource manager (found in the DHT: B is the one peer that lends).
    let job = wait_for("a job placed on a lender found in the DHT", T, || {
        let client = &client;
        async move {
            let mut spec = spec(sandbox_module("hello"), &[]);
            spec.placement = None;
            let job = run(client, spec).await;
            (state(&job) == State::Done).then_some(job)
        }
    })
    .await;
    assert_eq!(stdout(&job), "hello, world\n");
    assert_eq!(job.result.as_ref().unwrap().exit_code, 0);
    assert_eq!(job.runs.last().unwrap().runner, *b);
    assert_eq!(job.message, "exit 0");

    // Arguments, standard input and the exit code, exactly.
    let mut echo = spec(sandbox_module("echo"), &[b]);
    echo.stdin = b"line one\nline two\n".to_vec().into();
    assert_eq!(stdout(&run(&client, echo).await), "line one\nline two\n");
    let mut args = spec(sandbox_module("args"), &[b]);
    args.name = "argv0".into();
    args.args = vec!["x y".into(), "z".into()];
    assert_eq!(stdout(&run(&client, args).await), "argv0\0x y\0z\0");
    let exit3 = run(&client, spec(sandbox_module("exit3"), &[b])).await;
    assert_eq!(state(&exit3), State::Done);
    assert_eq!(exit3.result.as_ref().unwrap().exit_code, 3);

    // Memory: 4 MiB, grown a page at a time until refused.
    let mut grow = spec(sandbox_module("grow"), &[b]);
    grow.limits.as_mut().unwrap().memory_bytes = 4 << 20;
    let grow = run(&client, grow).await;
    assert_eq!(
        (state(&grow), reason(&grow)),
        (State::Failed, Reason::OutOfMemory)
    );
    assert!(grow.message.contains("memory limit"), "{}", grow.message);
    // A loop forever: its wall time, or its fuel.
    let mut spin = spec(sandbox_module("spin"), &[b]);
    spin.limits.as_mut().unwrap().timeout_ms = 500;
    let spin_timed = run(&client, spin.clone()).await;
    assert_eq!(reason(&spin_timed), Reason::TimedOut, "{spin_timed:?}");
    spin.limits.as_mut().unwrap().fuel = 100_000;
    spin.limits.as_mut().unwrap().timeout_ms = 30_000;
    assert_eq!(reason(&run(&client, spin).await), Reason::OutOfFuel);
    // Files outside its scratch directory are not there for it; its own files come back.
    let mut files = spec(sandbox_module("files"), &[b]);
    files.files = vec![File {
        path: "in/given.txt".into(),
        data: b"input".to_vec().into(),
    }];
    let files = run(&client, files).await;
    let result = files.result.as_ref().expect("a result");
    assert_eq!(state(&files), State::Done);
    assert_eq!(result.exit_code, 63, "EPERM for ../outside: {files:?}");
    let names: Vec<&str> = result.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(names, ["out.txt"], "only what it made comes back");
    // Its disk: a file stops growing at 16 MiB (EFBIG), the directory at 64 MiB.
    let mut one_file = spec(module("tests/modules/jobs/fill.wat"), &[b]);
    one_file.args = vec!["one".into()];
    let one_file = run(&client, one_file).await;
    assert_eq!(state(&one_file), State::Done, "{one_file:?}");
    let result = one_file.result.as_ref().unwrap();
    assert_eq!(result.exit_code, 22, "WASI's EFBIG");
    assert_eq!(result.files[0].data.len(), 16 << 20);
    let many = run(&client, spec(module("tests/modules/jobs/fill.wat"), &[b])).await;
    assert_eq!(
        (state(&many), reason(&many)),
        (State::Failed, Reason::OutOfDisk)
    );
    assert!(many.message.contains("64 MiB"), "{}", many.message);
    // No socket for it: the module is refused, naming what it asked for.
    let socket = run(&client, spec(module("tests/modules/jobs/socket.wat"), &[b])).await;
    assert_eq!(reason(&socket), Reason::InvalidModule);
    assert!(socket.message.contains("sock_open"), "{}", socket.message);
    // Not WebAssembly at all.
    let garbage = run(&client, spec(b"\0asm garbage".to_vec(), &[b])).await;
    assert_eq!(reason(&garbage), Reason::InvalidModule);

    // The runner kept serving.
    let again = run(&client, spec(sandbox_module("hello"), &[b])).await;
    assert_eq!(stdout(&again), "hello, world\n");
    // And a spec out of bounds never leaves the submitter.
    let mut bad = spec(sandbox_module("hello"), &[b]);
    bad.replicas = 3;
    let err = client
        .jobs()
        .submit(SubmitRequest {
            spec: Some(bad),
            detach: false,
        })
        .await
        .expect_err("replicas need determinism");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("deterministic"), "{}", err.message());
    drop(nodes.remove(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_not_lending_refuses_with_not_shared_and_a_stranger_with_not_allowed() {
    let (mut nodes, ids) = full_mesh_with(3, &[]).await;
    let (b, c) = (&ids[1], &ids[2]);
    let stranger = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    share(&nodes[2], "1", &[&stranger]);
    let client = nodes[0].client().await;
    let job = run(&client, spec(sandbox_module("hello"), &[b])).await;
    assert_eq!(
        (state(&job), reason(&job)),
        (State::Failed, Reason::NotShared)
    );
    assert!(job.message.contains("lends nothing"), "{}", job.message);
    let job = run(&client, spec(sandbox_module("hello"), &[c])).await;
    assert_eq!(
        (state(&job), reason(&job)),
        (State::Failed, Reason::NotAllowed)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_killed_mid_job_is_replaced_and_the_job_completes_elsewhere() {
    let (mut nodes, ids) = full_mesh_with(3, &[]).await;
    let (a, b, c) = (&ids[0], &ids[1], &ids[2]);
    share(&nodes[1], "1", &[a]);
    share(&nodes[2], "1", &[a]);
    let client = nodes[0].client().await;
    let mut events = client
        .jobs()
        .submit(SubmitRequest {
            spec: Some(spec(
                module("tests/modules/jobs/nap_then_done.wat"),
                &[b, c],
            )),
            detach: false,
        })
        .await
        .expect("submit")
        .into_inner();
    // Running somewhere: kill that node.
    let first = loop {
        let job = events
            .message()
            .await
            .expect("event")
            .expect("not ended")
            .job
            .unwrap();
        assert!(
            !matches!(state(&job), State::Done | State::Failed),
            "{job:?}"
        );
        if state(&job) == State::Running {
            break job.runs.last().unwrap().runner.clone();
        }
    };
    let victim = ids.iter().position(|id| *id == first).unwrap();
    nodes[victim].kill();
    let mut last = None;
    while let Some(event) = tokio::time::timeout(T, events.message())
        .await
        .expect("events go on")
        .expect("event")
    {
        last = event.job;
    }
    let job = last.unwrap();
    assert_eq!(state(&job), State::Done, "{job:?}");
    assert_eq!(stdout(&job), "done\n");
    let runs: Vec<(String, RunState)> = job
        .runs
        .iter()
        .map(|r| (r.runner.clone(), RunState::try_from(r.state).unwrap()))
        .collect();
    let other = if first == *b { c } else { b };
    assert_eq!(
        runs,
        [
            (first, RunState::RunLost),
            (other.clone(), RunState::RunDone)
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_agree_or_their_disagreement_names_the_runner() {
    let mut nodes: Vec<Node> = Vec::new();
    let (mut honest, _) = full_mesh_with(3, &[]).await;
    nodes.append(&mut honest);
    let liar = Node::start_with_env(&[], &[("P2POS_TEST_CORRUPT_JOB_RESULTS", "1")]);
    nodes.push(liar);
    let mut ids = Vec::new();
    for node in &mut nodes {
        ids.push(node.peer_id().await);
    }
    let ticket = nodes[3].ticket().await;
    for node in &nodes[..3] {
        let (ok, out, err) = p2pctl(node, &["dial", &ticket]);
        assert!(ok, "{out}{err}");
    }
    let a = &ids[0];
    for lender in &nodes[1..] {
        share(lender, "1", &[a]);
    }
    let client = nodes[0].client().await;
    let entropy = || {
        let mut s = spec(sandbox_module("entropy"), &[&ids[1], &ids[2]]);
        s.deterministic = true;
        s.limits.as_mut().unwrap().fuel = 1_000_000;
        s
    };
    let mut two = entropy();
    two.replicas = 2;
    let job = run(&client, two).await;
    assert_eq!(state(&job), State::Done, "{job:?}");
    assert_eq!(job.message, "2 replicas agree: exit 0");
    assert_eq!(job.runs.len(), 2);
    assert_eq!(job.runs[0].digest, job.runs[1].digest);

    let mut three = entropy();
    three.replicas = 3;
    three.placement.as_mut().unwrap().peers.push(ids[3].clone());
    let job = run(&client, three).await;
    assert_eq!(
        (state(&job), reason(&job)),
        (State::Failed, Reason::Disagreement)
    );
    assert!(
        job.message.contains(&ids[3]),
        "names the liar: {}",
        job.message
    );
    assert!(job.result.is_none(), "no result is accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submitter_that_goes_away_stops_its_runs_and_cancel_stops_a_detached_job() {
    let (mut nodes, ids) = full_mesh_with(2, &[]).await;
    let (a, b) = (&ids[0], &ids[1]);
    share(&nodes[1], "1", &[a]);
    let client = nodes[0].client().await;
    let runner = nodes[1].client().await;
    let hosted = || async {
        runner
            .jobs()
            .list(ListRequest {})
            .await
            .expect("list")
            .into_inner()
            .hosted
            .len()
    };
    let spin = spin_spec(b);
    let mut events = client
        .jobs()
        .submit(SubmitRequest {
            spec: Some(spin.clone()),
            detach: false,
        })
        .await
        .expect("submit")
        .into_inner();
    let id = loop {
        let job = events.message().await.unwrap().unwrap().job.unwrap();
        if state(&job) == State::Running {
            break job.job_id;
        }
    };
    assert_eq!(hosted().await, 1);
    // Its sandbox runs behind the shim, confined to its job directory, with no TCP at all.
    let (_, ps, _) = run_ps();
    let sandbox = ps
        .lines()
        .find(|l| l.contains("__p2pos-helper-shim") && l.contains("__p2pos-wasm-job"))
        .unwrap_or_else(|| panic!("no sandbox among:\n{ps}"));
    assert!(sandbox.contains("--no-tcp"), "{sandbox}");
    assert!(sandbox.contains("--fs-rw"), "{sandbox}");
    drop(events);
    wait_for("the runner to stop the run", T, || async {
        (hosted().await == 0).then_some(())
    })
    .await;
    let job = client
        .jobs()
        .get(JobRef { job_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&job), State::Cancelled);

    // Detached: it runs on without its follower, until cancelled.
    let mut events = client
        .jobs()
        .submit(SubmitRequest {
            spec: Some(spin),
            detach: true,
        })
        .await
        .unwrap()
        .into_inner();
    let id = events.message().await.unwrap().unwrap().job.unwrap().job_id;
    drop(events);
    wait_for("the detached job to run", T, || async {
        (hosted().await == 1).then_some(())
    })
    .await;
    client
        .jobs()
        .cancel(JobRef { job_id: id.clone() })
        .await
        .unwrap();
    wait_for("the cancelled run to stop", T, || async {
        (hosted().await == 0).then_some(())
    })
    .await;
    let (ok, out, err) = p2pctl(&nodes[0], &["jobs", "status", &id, "--json"]);
    assert!(ok && out.contains("CANCELLED"), "{out}{err}");

    // The submitting node dies: its runs stop too.
    let mut events = client
        .jobs()
        .submit(SubmitRequest {
            spec: Some(spin_spec(b)),
            detach: true,
        })
        .await
        .unwrap()
        .into_inner();
    events.message().await.unwrap().unwrap();
    wait_for("the third job to run", T, || async {
        (hosted().await == 1).then_some(())
    })
    .await;
    nodes[0].kill();
    wait_for("the runner to stop the dead submitter's run", T, || async {
        (hosted().await == 0).then_some(())
    })
    .await;
    // Nothing of the run is left on the runner: no sandbox process, no job directory.
    let jobs_dir = nodes[1].data_dir.join("jobs");
    wait_for("the job directory to go", T, || {
        let jobs_dir = jobs_dir.clone();
        async move {
            let left = std::fs::read_dir(&jobs_dir).map_or(0, |d| d.count());
            (left == 0).then_some(())
        }
    })
    .await;
    let (_, ps, _) = run_ps();
    assert!(!ps.contains(&jobs_dir.display().to_string()), "{ps}");
    nodes.clear();
}

fn spin_spec(on: &String) -> JobSpec {
    let mut spin = spec(sandbox_module("spin"), &[on]);
    spin.limits.as_mut().expect("limits").timeout_ms = 600_000;
    spin
}

/// Every process's command line.
fn run_ps() -> (bool, String, String) {
    let out = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_small_jobs_across_two_runners_all_complete() {
    let (mut nodes, ids) = full_mesh_with(3, &[]).await;
    share(&nodes[1], "2", &[&ids[0]]);
    share(&nodes[2], "2", &[&ids[0]]);
    let client = nodes[0].client().await;
    let jobs = (0..100).map(|i| {
        let client = client.clone();
        let mut s = spec(sandbox_module("args"), &[&ids[1], &ids[2]]);
        s.args = vec![i.to_string()];
        s.limits.as_mut().unwrap().cpu = 0.1;
        async move { (i, run(&client, s).await) }
    });
    let done = futures::future::join_all(jobs).await;
    let mut runners = std::collections::BTreeSet::new();
    for (i, job) in done {
        assert_eq!(state(&job), State::Done, "job {i}: {job:?}");
        assert_eq!(stdout(&job), format!("job\0{i}\0"));
        runners.insert(job.runs.last().unwrap().runner.clone());
    }
    assert_eq!(runners.len(), 2, "both runners ran some");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "builds userland/jobs/primes.rs with Debian's rustc for wasm32-wasi (apt-get install \
            rustc libstd-rust-dev-wasm32 lld-14; .ci/run installs them as root)"]
async fn a_rust_program_built_for_wasi_runs_on_a_peer() {
    let out = tempfile::tempdir().unwrap();
    let wasm = out.path().join("primes.wasm");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = std::process::Command::new("/usr/bin/rustc")
        .args(["--target", "wasm32-wasi", "-O", "-C", "strip=symbols"])
        .arg(root.join("userland/jobs/primes.rs"))
        .arg("-o")
        .arg(&wasm)
        .output()
        .expect("Debian's rustc (see the ignore reason)");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let (mut nodes, ids) = full_mesh_with(2, &[]).await;
    share(&nodes[1], "1", &[&ids[0]]);
    let client = nodes[0].client().await;
    let mut job = spec(std::fs::read(&wasm).unwrap(), &[&ids[1]]);
    job.args = vec!["1000000".into()];
    let job = run(&client, job).await;
    assert_eq!(stdout(&job), "primes below 1000000: 78498\n", "{job:?}");
}

/// `p2pctl jobs run` as a user runs it: the job's output as it is, the job's exit code, one
/// error line and exit 1 for a job that failed; `list` and `status` show them.
#[tokio::test(flavor = "multi_thread")]
async fn p2pctl_jobs_run_prints_the_output_and_exits_with_the_jobs_code() {
    let (nodes, ids) = full_mesh_with(2, &[]).await;
    share(&nodes[1], "1", &[&ids[0]]);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let modules = root.join("services/tasks/sandbox/tests/modules");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(p2pos_tests::bin("p2pctl"))
            .arg("--data-dir")
            .arg(&nodes[0].data_dir)
            .args(["jobs", "run", "--on", &ids[1], "--memory", "16M"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("p2pctl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let hello = modules.join("hello.wat").display().to_string();
    assert_eq!(
        run(&[&hello]),
        (Some(0), "hello, world\n".into(), String::new())
    );
    let exit3 = modules.join("exit3.wat").display().to_string();
    assert_eq!(run(&[&exit3]).0, Some(3));
    let spin = modules.join("spin.wat").display().to_string();
    let (code, out, err) = run(&["--timeout", "300ms", &spin]);
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert!(
        err.starts_with("error: job ") && err.contains("failed: timed_out: "),
        "{err}"
    );
    let (ok, list, err) = p2pctl(&nodes[0], &["jobs", "list", "--json"]);
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    let states: Vec<&str> = list["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["FAILED", "DONE", "DONE"], "newest first: {list}");
}
