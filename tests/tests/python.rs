//! The Python client (`userland/python`) against real daemons: the word-count example provider on
//! node B and its client on node A, which finds the provider by service name through the DHT;
//! the group-chat example between two members of a group; the jobs-map example across a group
//! whose members lend; and the package's own unit tests.
//!
//! Python comes from `P2POS_PYTHON`, else `target/python-venv/bin/python` when it exists, else
//! `python3`; it needs grpcio and grpcio-tools, which `tools/run-tests` (through
//! `userland/python/setup-venv`) installs. A missing environment fails the tests, saying so.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use p2pos_tests::{Node, p2pctl};

const T: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn package_dir() -> PathBuf {
    repo().join("userland/python")
}

/// The python that runs the package, checked: its stubs generated (the generator does nothing
/// when they are up to date) and grpc importable. Fails the test with what to do otherwise.
fn python() -> PathBuf {
    let python = match std::env::var_os("P2POS_PYTHON").filter(|p| !p.is_empty()) {
        Some(python) => PathBuf::from(python),
        None => {
            let venv = repo().join("target/python-venv/bin/python");
            if venv.exists() {
                venv
            } else {
                PathBuf::from("python3")
            }
        }
    };
    let fix = "run tools/run-tests (or userland/python/setup-venv, which makes \
               target/python-venv), or set P2POS_PYTHON to a python3 with grpcio and grpcio-tools";
    for (what, args) in [
        ("generate the stubs", vec!["generate.py"]),
        (
            "import grpc and the stubs",
            vec!["-c", "import grpc, p2pos.service.v1.service_pb2_grpc"],
        ),
    ] {
        let out = Command::new(&python)
            .args(&args)
            .current_dir(package_dir())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| {
                panic!(
                    "the Python environment is missing: cannot run {}: {err}; {fix}",
                    python.display()
                )
            });
        assert!(
            out.status.success(),
            "the Python environment is missing: {} cannot {what}: {}; {fix}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    python
}

/// `python examples/<script> --data-dir <data_dir> <args>`, with nothing of the caller's
/// `P2POS_*` environment.
fn example(python: &Path, script: &str, data_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(package_dir().join("examples").join(script))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("PYTHONPATH", package_dir())
        .env_remove("P2POS_GATEWAY")
        .env_remove("P2POS_TOKEN")
        .env_remove("P2POS_DATA_DIR");
    cmd
}

/// Runs `client.py` on `node` with `args`, `stdin` as its standard input.
fn client(python: &Path, node: &Node, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = example(python, "client.py", &node.data_dir, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client.py");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write to client.py");
    drop(input);
    child.wait_with_output().expect("client.py output")
}

/// A running `provider.py`, killed on drop.
struct Provider {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: tempfile::NamedTempFile,
}

impl Provider {
    fn start(python: &Path, node: &Node) -> Provider {
        Provider::start_example(python, node, "provider.py", &[])
    }

    /// Any long-running example, `script` with `args`.
    fn start_example(python: &Path, node: &Node, script: &str, args: &[&str]) -> Provider {
        let stderr = tempfile::NamedTempFile::new().expect("temp file");
        let mut child = example(python, script, &node.data_dir, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("stderr file"))
            .spawn()
            .expect("spawn the example");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Provider {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits for an output line containing `needle`; returns it.
    fn expect_line(&mut self, needle: &str, deadline: Duration) -> String {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "provider.py printed no line containing {needle:?} within {deadline:?}; \
                     stdout:\n{}\nstderr:\n{}",
                    self.seen.join("\n"),
                    std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
                ),
            }
        }
    }

    /// SIGTERM, then waits for it to exit.
    fn stop(&mut self, deadline: Duration) -> ExitStatus {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for provider.py") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "provider.py did not exit within {deadline:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn python_provider_on_b_answers_the_python_client_on_a() {
    let python = python();
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    a.client().await;
    let b_id = b.peer_id().await;
    let b_ticket = b.ticket().await;
    let (ok, out, err) = p2pctl(&a, &["dial", &b_ticket]);
    assert!(ok, "A dials B: {out}{err}");

    let mut provider = Provider::start(&python, &b);
    provider.expect_line(&format!("serving wordcount/1 as {b_id}"), T);

    // A knows only the service name; the client retries while the DHT look-up finds B.
    let out = client(&python, &a, &["hello big world", "héllo\nwörld"], b"");
    assert!(out.status.success(), "client.py: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        r#"{"words": 5, "lines": 2, "chars": 27}"#
    );
    provider.expect_line("call ", T);

    // Text from standard input, not UTF-8: the provider's refusal is the caller's status.
    let out = client(&python, &a, &[], b"ab\xffcd");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error: INVALID_ARGUMENT: the text is not valid UTF-8 (byte 2"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    provider.expect_line("refused", T);

    // The provider stops cleanly; its service is gone with its session.
    let status = provider.stop(T);
    assert!(status.success(), "provider.py exited with {status}");
    let started = Instant::now();
    let out = client(
        &python,
        &a,
        &["--retry-for", "2", "--timeout", "5", "anyone there?"],
        b"",
    );
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error: UNAVAILABLE: ") || stderr.starts_with("error: NOT_FOUND: "),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        took < Duration::from_secs(15),
        "gave up after {took:?}, retrying for 2 s with 5 s deadlines"
    );
}

/// `examples/echo_channel.py` on two nodes: the Python `Channel` over data sockets, frames
/// and a byte stream, with half-close both ways.
#[tokio::test(flavor = "multi_thread")]
async fn python_channels_on_data_sockets_echo_frames_and_byte_streams() {
    let python = python();
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    a.client().await;
    let b_ticket = b.ticket().await;
    let mut server = Provider::start_example(&python, &b, "echo_channel.py", &["serve"]);
    server.expect_line("ready", T);
    let lines: String = (0..2000)
        .map(|i| format!("line {i} {}\n", "x".repeat(i % 50)))
        .collect();
    for mode in [&[][..], &["--stream"][..]] {
        let mut args = vec!["send", b_ticket.as_str()];
        args.extend_from_slice(mode);
        let mut child = example(&python, "echo_channel.py", &a.data_dir, &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn echo_channel.py send");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(lines.as_bytes()).expect("write");
        drop(input);
        let out = child.wait_with_output().expect("output");
        assert!(out.status.success(), "send {mode:?}: {}", text(&out.stderr));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            lines,
            "every line comes back, in order ({mode:?})"
        );
        server.expect_line("served channel", T);
    }
}

#[test]
fn python_client_without_a_node_says_unavailable() {
    let python = python();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = example(
        &python,
        "client.py",
        dir.path(),
        &["--retry-for", "0", "hello"],
    )
    .stdin(Stdio::null())
    .output()
    .expect("run client.py");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("error: UNAVAILABLE: "), "{stderr}");
    assert!(stderr.contains("gateway.sock"), "{stderr}");
}

#[test]
fn python_package_unit_tests_pass() {
    let python = python();
    let out = Command::new(&python)
        .args(["-m", "unittest", "discover", "-s", "tests"])
        .current_dir(package_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run the Python unit tests");
    assert!(
        out.status.success(),
        "python -m unittest failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Runs the Python test module `module` (under `userland/python/tests`), which starts real
/// nodes with the workspace's `p2posd` and `p2pctl` (found through `P2POS_BIN_DIR`), and checks
/// that its `tests` tests ran and passed, none skipped.
fn python_unittest(module: &str, tests: usize) {
    let python = python();
    let bin_dir = p2pos_tests::bin("p2posd")
        .parent()
        .expect("the binaries' directory")
        .to_path_buf();
    p2pos_tests::bin("p2pctl");
    let out = Command::new(&python)
        .args(["-m", "unittest", "-v", module])
        .current_dir(package_dir())
        .env("P2POS_BIN_DIR", &bin_dir)
        .env("PYTHONPATH", package_dir())
        .env_remove("P2POS_GATEWAY")
        .env_remove("P2POS_TOKEN")
        .env_remove("P2POS_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run the Python test");
    let report = text(&out.stderr);
    assert!(
        out.status.success(),
        "python -m unittest {module} failed:\n{}\n{report}",
        text(&out.stdout)
    );
    assert!(!report.contains("skipped"), "{report}");
    // unittest says "Ran 1 test", "Ran 2 tests".
    let plural = if tests == 1 { "" } else { "s" };
    assert!(
        report.contains(&format!("Ran {tests} test{plural} ")),
        "{report}"
    );
}

/// The group-chat example (`examples/group_chat.py`) between two real nodes in a group: the
/// Python test `tests/test_group_chat.py` forms the group and types on one member.
#[test]
fn python_group_chat_between_two_members() {
    python_unittest("tests.test_group_chat", 2);
}

/// The jobs-map example (`examples/jobs_map.py`) across a group of three real nodes: the Python
/// test `tests/test_jobs_map.py` has two members lend to the group and maps `collatz.wat` over
/// 1-100 from the third; every result is exact and both lenders ran some.
#[test]
fn python_jobs_map_over_a_group() {
    python_unittest("tests.test_jobs_map", 1);
}

/// `p2pos.Channel` between two real nodes (`tests/test_channel.py`): 1 MiB frame exact, 10,000
/// small frames in order, half-close both ways, a peer that goes away seen as an error.
#[test]
fn python_channel_between_two_nodes() {
    python_unittest("tests.test_channel", 3);
}

/// Plain `grpcio` as its docs show it (`grpc.insecure_channel("unix://" + path)`, no options):
/// health, reflection through the v1alpha-only `grpcio-reflection` client, an `Apps` call (refused
/// without the admin token of `gateway.token`, answered with it), and
/// every `:authority` a client may send, on the socket and on the TCP gateway
/// (`tests/python/plain_grpcio.py`).
#[tokio::test(flavor = "multi_thread")]
async fn plain_grpcio_with_default_options_reaches_the_node() {
    let python = python();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let tcp = format!("127.0.0.1:{port}");
    let mut node = Node::start(&["--gateway-tcp", &tcp]);
    node.client().await;
    let token = std::fs::read_to_string(node.data_dir.join("gateway.token")).expect("token");
    let script = repo().join("tests/python/plain_grpcio.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(node.data_dir.join("gateway.sock"))
        .arg(&tcp)
        .arg(token.trim())
        .env("PYTHONPATH", package_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run plain_grpcio.py");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "plain grpcio failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    for check in [
        "ok health",
        "ok reflection v1alpha:",
        "ok no token: unauthenticated",
        "ok apps:",
        "ok default authority",
        "ok unix authority 'localhost'",
        "ok tcp authority 'localhost'",
    ] {
        assert!(stdout.contains(check), "no {check:?} in:\n{stdout}");
    }
    assert_eq!(
        stdout.lines().filter(|l| l.contains("authority")).count(),
        1 + 4 + 4,
        "{stdout}"
    );
}
