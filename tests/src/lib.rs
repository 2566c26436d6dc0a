//! Harness for the integration tests: starts real `p2posd` processes on loopback addresses
//! and temporary data directories, connects to them over gRPC, and waits on conditions with
//! deadlines.
//!
//! The binaries are found next to the test executable (`target/<profile>/`); build them first
//! (`cargo build --workspace --bins`), as the README's test command does.

pub mod cdp;
pub mod groups;

pub use groups::form_group;
pub mod messages;
pub mod natlab;
pub mod tasks;

use std::{
    fs::File,
    future::Future,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use p2pos_client::{Client, Gateway, Target};
use p2pos_proto::{
    app::v1::{IncomingChannel, SessionEvent, SessionRequest, session_event},
    service::v1::{RegisterRequest, ReplyError, ReplyRequest, reply_request},
};
use tokio::task::JoinHandle;

/// How long a node may take to start answering.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// Runs `p2posd --repair` on the (stopped) node's data directory `data_dir`.
pub fn repair_store(data_dir: &Path) -> std::process::Output {
    Command::new(bin("p2posd"))
        .arg("--repair")
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run p2posd --repair")
}

/// Path of one of the workspace's binaries.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Polls `check` until it returns `Some`, or fails the test after `deadline` saying `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_until(deadline, check).await {
        Some(value) => value,
        None => panic!("timed out after {deadline:?} waiting for {what}"),
    }
}

/// Polls `check` (every 50 ms) until it returns `Some`, or answers `None` after `deadline`:
/// for a test that says more than [`wait_for`] when the wait fails, or measures it.
pub async fn poll_until<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `p2posd` process with its own data directory.
pub struct Node {
    /// Its data directory (kept across restarts).
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
    args: Vec<String>,
    netns: Option<String>,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
    /// Whether it also listens on `/ip4/127.0.0.1/tcp/0` (all but [`Node::start_relayed`]).
    default_listen: bool,
    /// Environment variables it gets besides the log level.
    env: Vec<(String, String)>,
}

impl Node {
    /// Starts a node on 127.0.0.1 with mDNS off and `extra` flags.
    pub fn start(extra: &[&str]) -> Node {
        let mut node = Node::start_paused(extra);
        node.spawn();
        node
    }

    /// Starts a node inside network namespace `netns` with the default listen addresses and
    /// mDNS on (as on a LAN), plus `extra` flags.
    pub fn start_in_netns(netns: &str, extra: &[&str]) -> Node {
        let mut node = Node::start_paused(extra);
        node.netns = Some(netns.to_owned());
        node.spawn();
        node
    }

    /// Starts a node as [`Node::start`] does, with `env` in its environment.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Node {
        let mut node = Node::start_paused(extra);
        node.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        node.spawn();
        node
    }

    /// Starts a node with `args` and no listen address of its own (mDNS off): they give all
    /// it listens on.
    pub fn start_with(args: &[&str]) -> Node {
        let mut node = Node::start_paused(args);
        node.default_listen = false;
        node.spawn();
        node
    }

    /// Starts a node as [`Node::start`] does, with its data in `data_dir` (a file system the
    /// test prepared).
    pub fn start_at(data_dir: &Path, extra: &[&str]) -> Node {
        let mut node = Node::start_paused(extra);
        node.data_dir = data_dir.to_owned();
        node.spawn();
        node
    }

    /// A node not started yet.
    fn start_paused(args: &[&str]) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("p2pos-")
            .tempdir()
            .expect("temp dir");
        Node {
            log: dir.path().join("p2posd.log"),
            data_dir: dir.path().join("node"),
            _dir: Some(dir),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            netns: None,
            child: None,
            starts: 0,
            default_listen: true,
            env: Vec::new(),
        }
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = match &self.netns {
            Some(ns) => {
                // `ip netns exec` execs the daemon, so the pid is p2posd's own.
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(bin("p2posd"));
                cmd
            }
            None => {
                let mut cmd = Command::new(bin("p2posd"));
                if self.default_listen {
                    cmd.args(["--listen", "/ip4/127.0.0.1/tcp/0"]);
                }
                cmd.arg("--no-mdns");
                cmd
            }
        };
        let child = cmd
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env(
                "P2POS_LOG",
                // A test run may ask for more (e.g. `P2POS_TEST_LOG=info,p2pos_groups=debug`).
                std::env::var("P2POS_TEST_LOG")
                    .unwrap_or_else(|_| "info,libp2p=warn,libp2p_kad=error,sled=warn".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn p2posd");
        self.child = Some(child);
        self.starts += 1;
    }

    /// Copies the workspace binary `name` into the node's plug-in directory
    /// (`<data dir>/plugins`, the default), where apps may start it as a helper. Returns its
    /// path there.
    pub fn install_plugin(&self, name: &str) -> PathBuf {
        let dir = self.data_dir.join("plugins");
        std::fs::create_dir_all(&dir).expect("plug-in directory");
        let path = dir.join(name);
        std::fs::copy(bin(name), &path).expect("copy the plug-in");
        path
    }

    /// The gateway target of this node (unix socket, admin).
    pub fn target(&self) -> Target {
        Target::new(
            Gateway::Unix(self.data_dir.join("gateway.sock")),
            None,
            Some(self.data_dir.clone()),
        )
        .expect("target")
    }

    /// A connected client, once the node answers (fails the test after [`START_DEADLINE`]).
    pub async fn client(&mut self) -> Client {
        let target = self.target();
        let until = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.try_exit() {
                panic!(
                    "p2posd exited with {status} before answering; log:\n{}",
                    self.log()
                );
            }
            if let Ok(client) = Client::connect(&target).await {
                let info = client
                    .node()
                    .get_info(p2pos_proto::node::v1::GetInfoRequest {})
                    .await;
                if info.is_ok() {
                    return client;
                }
            }
            assert!(
                Instant::now() < until,
                "p2posd did not answer within {START_DEADLINE:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client on the unix socket with a token scoped to `app_id` (from `Node.CreateAppToken`).
    pub async fn app_client(&mut self, app_id: &str) -> Client {
        let admin = self.client().await;
        let token = admin
            .node()
            .create_app_token(p2pos_proto::node::v1::CreateAppTokenRequest {
                app_id: app_id.to_owned(),
                ttl_secs: 0,
            })
            .await
            .expect("app token")
            .into_inner()
            .token;
        let target = Target::new(
            Gateway::Unix(self.data_dir.join("gateway.sock")),
            Some(token),
            Some(self.data_dir.clone()),
        )
        .expect("target");
        Client::connect(&target)
            .await
            .expect("connect with the app token")
    }

    /// The node's peer id.
    pub async fn peer_id(&mut self) -> String {
        let client = self.client().await;
        client
            .node()
            .get_info(p2pos_proto::node::v1::GetInfoRequest {})
            .await
            .expect("get_info")
            .into_inner()
            .peer_id
    }

    /// The node's ticket.
    pub async fn ticket(&mut self) -> String {
        let client = self.client().await;
        client
            .overlay()
            .get_ticket(p2pos_proto::overlay::v1::GetTicketRequest {})
            .await
            .expect("get_ticket")
            .into_inner()
            .ticket
    }

    /// Everything the node has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        wait_for("p2posd to exit", deadline, || {
            let status = self.try_exit();
            async move { status }
        })
        .await
    }

    /// SIGTERM, then waits (up to 15 s) for a clean exit.
    pub async fn stop(&mut self) -> ExitStatus {
        let child = self.child.as_ref().expect("running");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(15)).await;
        self.child = None;
        status
    }

    /// SIGKILL (the node dies without cleaning up anything), then waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node first");
        self.spawn();
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- p2posd log ({}) ----\n{}",
                self.data_dir.display(),
                self.log()
            );
        }
    }
}

/// Runs `p2pctl` against `node` with `args`; returns (success, stdout, stderr).
pub fn p2pctl(node: &Node, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("p2pctl"))
        .arg("--data-dir")
        .arg(&node.data_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run p2pctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `p2p-chat` process whose stdin we type into and whose stdout we read.
pub struct Chat {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Chat {
    /// Starts `p2p-chat --data-dir <node> [peer]`.
    pub fn start(node: &Node, peer: Option<&str>) -> Chat {
        Chat::start_with_args(node, peer, &[])
    }

    /// Starts `p2p-chat --data-dir <node> <args...> [peer]` (e.g. `--call-audio FILE`).
    pub fn start_with_args(node: &Node, peer: Option<&str>, args: &[&str]) -> Chat {
        let mut cmd = Command::new(bin("p2p-chat"));
        cmd.arg("--data-dir").arg(&node.data_dir).args(args);
        if let Some(peer) = peer {
            cmd.arg(peer);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn p2p-chat");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Chat {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// Types one line.
    pub fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to p2p-chat");
        stdin.flush().expect("flush");
    }

    /// Waits for an output line containing `needle`; returns it.
    pub fn expect_line(&mut self, needle: &str, deadline: Duration) -> String {
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
                    "p2p-chat printed no line containing {needle:?} within {deadline:?}; it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Every line read so far (by [`Chat::expect_line`]).
    pub fn printed(&self) -> &[String] {
        &self.seen
    }

    /// Closes stdin and waits for the process to exit.
    pub fn finish(mut self, deadline: Duration) -> ExitStatus {
        self.stdin = None;
        let until = Instant::now() + deadline;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < until,
                "p2p-chat did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two network namespaces joined by a veth pair: a LAN of two test hosts, removed on drop.
pub struct Lan {
    /// The namespaces' names.
    pub hosts: [String; 2],
}

impl Lan {
    /// Creates the LAN on 10.213.x.0/24, or `None` where namespaces cannot be made (not root,
    /// no `ip`).
    pub fn create() -> Option<Lan> {
        let subnet = 1 + std::process::id() % 250;
        let addrs = [
            format!("10.213.{subnet}.1/24"),
            format!("10.213.{subnet}.2/24"),
        ];
        Lan::with_addresses("p2pos", [&addrs[0], &addrs[1]], &[]).ok()
    }

    /// Creates the LAN with `addrs` (with their prefix length) on the hosts' ends, each added
    /// with `flags` too (`nodad` for IPv6); namespaces named `<tag>-<pid>-a|b`. The error
    /// names the `ip` command that failed.
    pub fn with_addresses(tag: &str, addrs: [&str; 2], flags: &[&str]) -> Result<Lan, String> {
        let id = std::process::id();
        let lan = Lan {
            hosts: [format!("{tag}-{id}-a"), format!("{tag}-{id}-b")],
        };
        let short = &tag[tag.len().saturating_sub(3)..];
        let veth = [
            format!("{short}{}a", id % 100_000),
            format!("{short}{}b", id % 100_000),
        ];
        let [a, b] = &lan.hosts;
        let mut steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec![
                "link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1],
            ],
            vec!["link", "set", &veth[0], "netns", a],
            vec!["link", "set", &veth[1], "netns", b],
        ];
        for ((host, dev), addr) in lan.hosts.iter().zip(&veth).zip(addrs) {
            let mut add = vec!["-n", host, "addr", "add", addr, "dev", dev];
            add.extend_from_slice(flags);
            steps.push(add);
        }
        for (host, dev) in lan.hosts.iter().zip(&veth) {
            steps.push(vec!["-n", host, "link", "set", dev, "up"]);
            steps.push(vec!["-n", host, "link", "set", "lo", "up"]);
        }
        for step in steps {
            let ok = Command::new("ip")
                .args(&step)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!(
                    "`ip {}` failed (this test needs root and iproute2)",
                    step.join(" ")
                ));
            }
        }
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for host in &self.hosts {
            // Deleting a namespace removes its end of the veth pair, and so the pair.
            let _ = Command::new("ip")
                .args(["netns", "del", host])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Waits until `client`'s node is connected to `peer_id`; returns what it says of the peer.
pub async fn connected_peer(
    client: &Client,
    peer_id: &str,
    what: &str,
) -> p2pos_proto::overlay::v1::PeerInfo {
    wait_for(what, START_DEADLINE, || {
        let client = client.clone();
        async move {
            let peers = client
                .overlay()
                .list_peers(p2pos_proto::overlay::v1::ListPeersRequest {})
                .await
                .ok()?
                .into_inner();
            peers.peers.into_iter().find(|p| p.peer_id == peer_id)
        }
    })
    .await
}

/// Waits until `client`'s node reports a status that satisfies `ok`; returns it.
pub async fn status_when(
    client: &Client,
    what: &str,
    ok: impl Fn(&p2pos_proto::monitor::v1::NodeStatus) -> bool,
) -> p2pos_proto::monitor::v1::NodeStatus {
    let ok = &ok;
    wait_for(what, START_DEADLINE, || {
        let client = client.clone();
        async move {
            let status = client
                .monitor()
                .get_status(p2pos_proto::monitor::v1::GetStatusRequest {})
                .await
                .ok()?
                .into_inner();
            ok(&status).then_some(status)
        }
    })
    .await
}

/// Opens a session of app `app` on `client`'s node and waits for its `Registered`.
pub async fn open_session(client: &Client, app: &str) -> tonic::Streaming<SessionEvent> {
    let mut session = client
        .apps()
        .session(SessionRequest {
            app_id: app.into(),
            group: String::new(),
        })
        .await
        .expect("session")
        .into_inner();
    let first = tokio::time::timeout(START_DEADLINE, session.next())
        .await
        .expect("registered in time")
        .expect("the session stays open")
        .expect("registered");
    assert!(
        matches!(first.kind, Some(session_event::Kind::Registered(_))),
        "the first session event is Registered: {first:?}"
    );
    session
}

/// The next channel announced on a session, within `deadline`.
pub async fn next_incoming(
    session: &mut tonic::Streaming<SessionEvent>,
    deadline: Duration,
) -> IncomingChannel {
    let event = tokio::time::timeout(deadline, session.next())
        .await
        .expect("a channel is announced in time")
        .expect("the session stays open")
        .expect("no error");
    match event.kind {
        Some(session_event::Kind::Incoming(incoming)) => incoming,
        other => panic!("expected an incoming channel, got {other:?}"),
    }
}

/// Provides `service` as app `app` on `client`'s node: opens the app's session, registers the
/// service (with `description`) and answers its calls until the returned task is aborted (the
/// session then ends).
///
/// Each call is answered, in a task of its own so calls are answered at once, with what
/// `answer` makes of its payload: `Some(Ok(payload))`, `Some(Err((code, message)))` for a
/// provider error, or `None` to leave it unanswered. Each channel opened to the app goes to
/// `on_channel`, which must accept it (or not) itself.
pub async fn provide(
    client: Client,
    app: &str,
    service: &str,
    description: &str,
    answer: impl Fn(Bytes) -> Option<Result<Bytes, (tonic::Code, String)>> + Send + 'static,
    on_channel: impl Fn(IncomingChannel) + Send + 'static,
) -> JoinHandle<()> {
    let mut session = open_session(&client, app).await;
    client
        .services()
        .register(RegisterRequest {
            app_id: app.into(),
            service: service.into(),
            description: description.into(),
            certificates: Vec::new(),
        })
        .await
        .expect("register");
    let app = app.to_owned();
    tokio::spawn(async move {
        while let Some(Ok(event)) = session.next().await {
            match event.kind {
                Some(session_event::Kind::Call(call)) => {
                    let result = match answer(call.payload) {
                        None => continue,
                        Some(Ok(payload)) => reply_request::Result::Payload(payload),
                        Some(Err((code, message))) => reply_request::Result::Error(ReplyError {
                            code: code as u32,
                            message,
                        }),
                    };
                    let reply = ReplyRequest {
                        app_id: app.clone(),
                        call_id: call.call_id,
                        result: Some(result),
                    };
                    let client = client.clone();
                    tokio::spawn(async move {
                        let _ = client.services().reply(reply).await;
                    });
                }
                Some(session_event::Kind::Incoming(incoming)) => on_channel(incoming),
                _ => {}
            }
        }
    })
}

/// A loopback TCP port free a moment ago, below the kernel's ephemeral range
/// (`ip_local_port_range`): a port the kernel picks for a `:0` bind (a node's own listeners,
/// started before the port is used) is never this one. Each test process starts from its own
/// place in the range (tests run in processes of their own) and never hands a port out twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOWEST);
    let start = std::process::id().wrapping_mul(7919) % span.max(1);
    for _ in 0..span {
        let port = LOWEST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span.max(1);
        if let Ok(port) = u16::try_from(port)
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    // No room below the ephemeral range: a port the kernel picks.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    l.local_addr().expect("addr").port()
}

/// The whole HTTP/1.0 response (status line, headers, body) to `GET path` on `addr`.
pub fn http_get(addr: &str, path: &str) -> String {
    http_get_with(addr, path, &[("Host", addr)])
}

/// The whole HTTP/1.0 response to `GET path` on `addr`, sent with exactly `headers` (`Host`
/// included, or not).
pub fn http_get_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP endpoint");
    let mut request = format!("GET {path} HTTP/1.0\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
}

/// The status code of an HTTP response as [`http_get`] returns it.
pub fn http_status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"))
}

/// `n` nodes, each connected to every other (dialed by ticket with `p2pctl`), and their peer
/// ids in the same order.
pub async fn full_mesh(n: usize) -> (Vec<Node>, Vec<String>) {
    full_mesh_with(n, &[]).await
}

/// [`full_mesh`] of nodes started with `extra` arguments.
pub async fn full_mesh_with(n: usize, extra: &[&str]) -> (Vec<Node>, Vec<String>) {
    let mut nodes: Vec<Node> = (0..n).map(|_| Node::start(extra)).collect();
    let mut ids = Vec::new();
    let mut tickets = Vec::new();
    for node in &mut nodes {
        ids.push(node.peer_id().await);
        tickets.push(node.ticket().await);
    }
    for (i, node) in nodes.iter().enumerate() {
        for ticket in tickets.iter().skip(i + 1) {
            let (ok, out, err) = p2pctl(node, &["dial", ticket]);
            assert!(ok, "node {i} dials: {out}{err}");
        }
    }
    (nodes, ids)
}

/// `n` nodes, every other one connected to the first (the hub sees each dial), with a client of
/// each and their peer ids, in the same order.
pub async fn star(n: usize) -> (Vec<Node>, Vec<Client>, Vec<String>) {
    let mut nodes: Vec<Node> = (0..n).map(|_| Node::start(&[])).collect();
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for node in &mut nodes {
        clients.push(node.client().await);
        ids.push(node.peer_id().await);
    }
    let hub = nodes[0].ticket().await;
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let (ok, _, err) = p2pctl(node, &["dial", &hub]);
        assert!(ok, "{err}");
        connected_peer(&clients[0], &ids[i], "the hub to see the dial").await;
    }
    (nodes, clients, ids)
}

/// A swarm of the test's own (no `p2posd`): TCP, noise and yamux, with `behaviour`, for
/// talking to nodes as a bare libp2p peer (an attacker, a liar, a forger).
pub fn bare_swarm<B: libp2p::swarm::NetworkBehaviour>(
    key: libp2p::identity::Keypair,
    behaviour: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|key| behaviour(key))
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// A relay on loopback and nodes reached only through it (issue 17): no namespaces needed.
impl Node {
    /// Starts a relay on a fixed loopback port, declared as its external address (so it serves
    /// as a relay at once), with `extra` flags; answers it and its address, `/p2p/<id>` last.
    pub async fn start_relay(extra: &[&str]) -> (Node, String) {
        let addr = format!("/ip4/127.0.0.1/tcp/{}", free_port());
        let mut args = vec!["--listen", &addr, "--external-address", &addr];
        args.extend_from_slice(extra);
        let mut relay = Node::start(&args);
        let id = relay.peer_id().await;
        (relay, format!("{addr}/p2p/{id}"))
    }

    /// Starts a node whose only listen address is a circuit through `relay` (an address ending
    /// in `/p2p/<relay id>`), which it also bootstraps from: peers reach it only through the
    /// relay. `extra` flags too.
    pub fn start_relayed(relay: &str, extra: &[&str]) -> Node {
        let circuit = format!("{relay}/p2p-circuit");
        let mut args = vec!["--listen", &circuit, "--bootstrap", relay];
        args.extend_from_slice(extra);
        Node::start_with(&args)
    }

    /// Starts the stopped node again with `extra` flags added to those it had (a node reached
    /// only through a relay given a direct listener too, say).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.args.extend(extra.iter().map(|s| (*s).to_owned()));
        self.restart();
    }
}

impl Chat {
    /// Takes every line the chat has printed so far without waiting, and answers all lines
    /// read (see [`Chat::printed`]).
    pub fn read_printed(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }
}
