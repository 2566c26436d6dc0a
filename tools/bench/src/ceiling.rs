//! The ceiling: plain loopback TCP (nodelay) between this process and a child copy of it (the
//! hidden `tcp-peer` subcommand), with the same framing and responder.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

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
        let mut child = Command::new(std::env::current_exe()?)
            .arg("tcp-peer")
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
            .context("tcp-peer did not print its port")?;
        Ok(TcpPeer {
            _child: child,
            port,
        })
    }

    /// A new connection to the child.
    pub(crate) async fn open(&self) -> anyhow::Result<Pipe> {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        Ok(Pipe::framed(read, write))
    }

    /// Connect plus the echo of one `size`-byte message.
    pub(crate) async fn first_message(&self, size: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut pipe = self.open().await?;
        scenarios::first_message(&mut pipe, size).await?;
        Ok(started.elapsed())
    }
}

/// The child's side: serves every connection with the responder until stdin closes (the parent
/// has gone).
pub(crate) async fn serve() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            // One task per connection: the parent opens at most 16 at once.
            tokio::spawn(async move {
                let (read, write) = stream.into_split();
                let _ = respond(Pipe::framed(read, write)).await;
            });
        }
    });
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    server.abort();
    Ok(())
}
