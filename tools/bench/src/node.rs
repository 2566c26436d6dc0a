//! The system under test: real `p2posd` processes on loopback, driven over their gRPC gateways
//! with `p2pos-client`, exactly as an application would (app → gRPC → node → network → node →
//! gRPC → app).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use p2pos_client::{Client, Gateway, Target};
use p2pos_proto::app::v1::{
    AcceptChannel, ChannelInput, ChannelTransport, OpenChannel, SessionRequest, session_event,
};
use p2pos_proto::node::v1::GetInfoRequest;
use p2pos_proto::overlay::v1::{DialRequest, GetTicketRequest};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::pipe::{Pipe, respond};

/// How long a node may take to answer, or a peer to show addresses, before the run fails.
const STARTUP_DEADLINE: Duration = Duration::from_secs(15);
/// Pause between attempts to reach a starting node's gateway (no event says it is up).
const POLL: Duration = Duration::from_millis(1);

/// One running `p2posd` with its own temporary data directory; killed when dropped.
pub(crate) struct Node {
    child: Child,
    client: Client,
    /// From spawning the process to the first answered `Node.GetInfo`.
    pub(crate) start_to_answer: Duration,
    dir: tempfile::TempDir,
}

impl Node {
    /// Spawns `p2posd` listening on `listen` and waits for its gateway to answer.
    pub(crate) async fn start(bin: &Path, listen: &str) -> anyhow::Result<Node> {
        Node::start_with(bin, listen, &[]).await
    }

    /// [`Node::start`] with more flags for `p2posd`.
    pub(crate) async fn start_with(
        bin: &Path,
        listen: &str,
        flags: &[&str],
    ) -> anyhow::Result<Node> {
        let dir = tempfile::tempdir()?;
        let log = std::fs::File::create(dir.path().join("p2posd.log"))?;
        let target = Target::new(
            Gateway::Unix(dir.path().join("gateway.sock")),
            None,
            Some(dir.path().to_path_buf()),
        )?;
        let started = Instant::now();
        let mut child = Command::new(bin)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--listen", listen, "--no-mdns"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let client = loop {
            if let Ok(client) = Client::connect(&target).await
                && client.node().get_info(GetInfoRequest {}).await.is_ok()
            {
                break client;
            }
            if let Some(status) = child.try_wait()? {
                bail!("p2posd exited with {status}: {}", log_tail(dir.path()));
            }
            if started.elapsed() > STARTUP_DEADLINE {
                bail!("p2posd did not answer in time: {}", log_tail(dir.path()));
            }
            tokio::time::sleep(POLL).await;
        };
        Ok(Node {
            start_to_answer: started.elapsed(),
            child,
            client,
            dir,
        })
    }

    /// A new connection to the node's gateway.
    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.target()?).await?)
    }

    /// Where the node's gateway is, and its admin token.
    pub(crate) fn target(&self) -> anyhow::Result<Target> {
        Ok(Target::new(
            Gateway::Unix(self.dir.path().join("gateway.sock")),
            None,
            Some(self.dir.path().to_path_buf()),
        )?)
    }

    /// The connection the node was started with.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().ok_or_else(|| anyhow!("p2posd has exited"))
    }

    /// CPU time the process has used (user and system), from `/proc/<pid>/stat`.
    pub(crate) fn cpu_time(&self) -> anyhow::Result<Duration> {
        let pid = self.pid()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // After the command name, in parentheses: state, ..., utime (14th field), stime (15th).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| -> anyhow::Result<u64> {
            Ok(fields
                .get(i)
                .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
                .parse()?)
        };
        // Linux reports these in USER_HZ, 100 per second on every architecture it exposes.
        Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
    }

    /// Resident memory of the process, in MiB, from `/proc/<pid>/status`.
    pub(crate) fn rss_mib(&self) -> anyhow::Result<f64> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
        Ok(kib / 1024.0)
    }

    /// This node's ticket and peer id, once it has listen addresses.
    pub(crate) async fn ticket(&self) -> anyhow::Result<(String, String)> {
        let started = Instant::now();
        loop {
            let ticket = self
                .client
                .overlay()
                .get_ticket(GetTicketRequest {})
                .await?
                .into_inner();
            if !ticket.addresses.is_empty() {
                return Ok((ticket.ticket, ticket.peer_id));
            }
            if started.elapsed() > STARTUP_DEADLINE {
                bail!(
                    "the node has no listen address: {}",
                    log_tail(self.dir.path())
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Dials the node of `ticket`.
    pub(crate) async fn dial(&self, ticket: &str) -> anyhow::Result<()> {
        self.client
            .overlay()
            .dial(DialRequest {
                target: ticket.to_owned(),
                timeout_ms: 0,
            })
            .await?;
        Ok(())
    }

    /// A new channel from this node's bench app for `transport` to `peer`'s.
    pub(crate) async fn open(&self, peer: &str, transport: Transport) -> anyhow::Result<Pipe> {
        let open = OpenChannel {
            app_id: transport.app_id().to_owned(),
            peer: peer.to_owned(),
            batch: true,
            half_close: false,
            group: String::new(),
            transport: transport.proto(),
        };
        Ok(pipe(self.client.open_channel(open).await?))
    }

    /// Opens the bench apps' sessions (one per transport) and serves every channel announced
    /// on them with the responder, over the same transport.
    pub(crate) async fn serve_bench(&self) -> anyhow::Result<JoinHandle<()>> {
        let mut sessions = Vec::new();
        for transport in [Transport::Grpc, Transport::Socket] {
            let mut session = self
                .client
                .apps()
                .session(SessionRequest {
                    app_id: transport.app_id().to_owned(),
                    group: String::new(),
                })
                .await?
                .into_inner();
            match session.message().await? {
                Some(event) if matches!(event.kind, Some(session_event::Kind::Registered(_))) => {}
                other => bail!("expected Registered, got {other:?}"),
            }
            sessions.push((transport, session));
        }
        let client = self.client.clone();
        Ok(tokio::spawn(async move {
            let serving = sessions.into_iter().map(|(transport, mut session)| {
                let client = client.clone();
                async move {
                    while let Ok(Some(event)) = session.message().await {
                        if let Some(session_event::Kind::Incoming(incoming)) = event.kind {
                            // One task per announced channel: the benchmarks open at most 16
                            // at once.
                            let client = client.clone();
                            tokio::spawn(async move {
                                let accept = AcceptChannel {
                                    channel_id: incoming.channel_id,
                                    app_id: transport.app_id().to_owned(),
                                    batch: true,
                                    half_close: false,
                                    transport: transport.proto(),
                                };
                                if let Ok(channel) = client.accept_channel(accept).await {
                                    let _ = respond(pipe(channel)).await;
                                }
                            });
                        }
                    }
                }
            });
            futures::future::join_all(serving).await;
        }))
    }
}

/// How a bench app's channels carry their frames between the app and its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Messages of the gRPC call (`frames` batches).
    Grpc,
    /// A data socket.
    Socket,
}

impl Transport {
    /// For progress lines.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Transport::Grpc => "gRPC messages",
            Transport::Socket => "data sockets",
        }
    }

    /// The bench app of this transport (so that the responder uses the same).
    fn app_id(self) -> &'static str {
        match self {
            Transport::Grpc => "bench",
            Transport::Socket => "bench-socket",
        }
    }

    fn proto(self) -> i32 {
        match self {
            Transport::Grpc => ChannelTransport::Grpc as i32,
            Transport::Socket => ChannelTransport::SocketFrames as i32,
        }
    }
}

/// Two nodes, A connected to B, B serving the `bench` app.
pub(crate) struct Pair {
    a: Node,
    b: Node,
    b_ticket: String,
    b_peer: String,
    server: JoinHandle<()>,
}

impl Pair {
    /// Starts both nodes on `listen` and B's `bench` session; dials B from A if `connect`.
    pub(crate) async fn start(bin: &Path, listen: &str, connect: bool) -> anyhow::Result<Pair> {
        let a = Node::start(bin, listen).await?;
        let b = Node::start(bin, listen).await?;
        let (b_ticket, b_peer) = b.ticket().await?;
        let server = b.serve_bench().await?;
        let pair = Pair {
            a,
            b,
            b_ticket,
            b_peer,
            server,
        };
        if connect {
            pair.dial().await?;
        }
        Ok(pair)
    }

    /// Start-to-answer times of both nodes.
    pub(crate) fn start_times(&self) -> [Duration; 2] {
        [self.a.start_to_answer, self.b.start_to_answer]
    }

    /// A's data directory (its gateway socket and token inside).
    pub(crate) fn a_data_dir(&self) -> &Path {
        self.a.dir.path()
    }

    /// B's peer id.
    pub(crate) fn b_peer(&self) -> &str {
        &self.b_peer
    }

    /// A dials B with B's ticket.
    pub(crate) async fn dial(&self) -> anyhow::Result<()> {
        self.a.dial(&self.b_ticket).await
    }

    /// A new channel from A's app to B's app over `transport`.
    pub(crate) async fn open(&self, transport: Transport) -> anyhow::Result<Pipe> {
        self.a.open(&self.b_peer, transport).await
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Makes the SDK's channel into a pipe: frames fed between flushes go out as one batch, like
/// the buffered writes of the baseline.
fn pipe(channel: p2pos_client::Channel<ChannelInput>) -> Pipe {
    Pipe {
        tx: Box::pin(channel.sender.sink_map_err(anyhow::Error::from)),
        rx: Box::pin(
            channel
                .receiver
                .map(|frame| frame.map_err(|status| anyhow!("channel failed: {status}"))),
        ),
    }
}

/// The last lines of a node's log, for error messages.
fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("p2posd.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// `p2posd` from `--p2posd`, else next to this executable.
pub(crate) fn find_p2posd(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match flag {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("the bench executable has no directory"))?
            .join("p2posd"),
    };
    if !path.is_file() {
        bail!(
            "no p2posd at {} (build with `cargo build --release`, or pass --p2posd PATH)",
            path.display()
        );
    }
    Ok(path)
}
