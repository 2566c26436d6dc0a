//! The ceiling: plain loopback TCP (nodelay) between this process and a child copy of it (the
//! hidden `tcp-peer` subcommand), with the same framing and responder.
//!
//! And the floor of P2P OS's shape: the same TCP through two relay processes (hidden
//! `tcp-relay`), which only copy bytes, back to a responder in this process. An app's bytes
//! cross the same processes through P2P OS (app → node A → node B → app), so no design with
//! the node in its own process can beat these figures.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::pipe::{Pipe, respond};
use crate::scenarios;

/// The child process serving TCP connections on a loopback port; killed when dropped.
pub(crate) struct TcpPeer {
    _child: Child,
    port: u16,
}

impl TcpPeer {
    /// Re-executes this binary as `tcp-peer` and reads the port it listens on.
    pub(crate) async fn start() -> anyhow::Result<TcpPeer> {
        let (child, port) = spawn_child(&["tcp-peer"]).await?;
        Ok(TcpPeer {
            _child: child,
            port,
        })
    }

    /// A new connection to the child.
    pub(crate) async fn open(&self) -> anyhow::Result<Pipe> {
        connect(self.port).await
    }

    /// Connect plus the echo of one `size`-byte message.
    pub(crate) async fn first_message(&self, size: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut pipe = self.open().await?;
        scenarios::first_message(&mut pipe, size).await?;
        Ok(started.elapsed())
    }
}

/// Two relay processes in a row in front of a responder in this process; killed when dropped.
pub(crate) struct RelayChain {
    _relays: [Child; 2],
    server: JoinHandle<()>,
    port: u16,
}

impl RelayChain {
    /// Starts the responder, then the relay next to it, then the one in front.
    pub(crate) async fn start() -> anyhow::Result<RelayChain> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let target = listener.local_addr()?.port().to_string();
        let server = tokio::spawn(serve_with_responder(listener));
        let (back, back_port) = spawn_child(&["tcp-relay", &target]).await?;
        let (front, port) = spawn_child(&["tcp-relay", &back_port.to_string()]).await?;
        Ok(RelayChain {
            _relays: [front, back],
            server,
            port,
        })
    }

    /// A new connection through both relays.
    pub(crate) async fn open(&self) -> anyhow::Result<Pipe> {
        connect(self.port).await
    }
}

impl Drop for RelayChain {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Re-executes this binary with `args` and reads the port the child prints.
async fn spawn_child(args: &[&str]) -> anyhow::Result<(Child, u16)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await?;
    let port = line
        .trim()
        .parse()
        .with_context(|| format!("`{}` did not print its port", args.join(" ")))?;
    Ok((child, port))
}

async fn connect(port: u16) -> anyhow::Result<Pipe> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    Ok(Pipe::framed(read, write))
}

/// Serves every connection with the responder.
async fn serve_with_responder(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        // One task per connection: the driver opens at most 16 at once.
        tokio::spawn(async move {
            let (read, write) = stream.into_split();
            let _ = respond(Pipe::framed(read, write)).await;
        });
    }
}

/// The `tcp-peer` child: serves every connection with the responder until stdin closes (the
/// parent has gone).
pub(crate) async fn serve() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    let server = tokio::spawn(serve_with_responder(listener));
    until_parent_gone().await;
    server.abort();
    Ok(())
}

/// The `tcp-relay` child: copies the bytes of every connection to and from a new connection to
/// `127.0.0.1:to`, until stdin closes.
pub(crate) async fn relay(to: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    let server = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", to)).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut inbound,
                    &mut outbound,
                    RELAY_BUFFER,
                    RELAY_BUFFER,
                )
                .await;
            });
        }
    });
    until_parent_gone().await;
    server.abort();
    Ok(())
}

/// A relay's copy buffer, each way.
const RELAY_BUFFER: usize = 64 * 1024;

async fn until_parent_gone() {
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
}
