//! The baseline: two bare rust-libp2p swarms in this process with the node's transport stack
//! (TCP with nodelay + noise + yamux, or QUIC) and `libp2p-stream` on a test protocol, framed like
//! the P2P OS wire protocols (4-byte big-endian lengths).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, noise, tcp, yamux};
use libp2p_stream::Control;
use tokio::task::JoinHandle;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::pipe::{Pipe, respond};
use crate::scenarios;

/// The benchmark's own protocol.
const PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pos-bench/1");
/// Long enough that no connection closes mid-run.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Two connected swarms; B answers every stream with the responder. Stopped when dropped.
pub(crate) struct RawPair {
    control: Control,
    b_peer: PeerId,
    tasks: Vec<JoinHandle<()>>,
}

impl RawPair {
    /// Starts B listening on `listen`, and A connected to it.
    pub(crate) async fn start(listen: &str) -> anyhow::Result<RawPair> {
        let (b_addr, b_peer, mut tasks) = listener(listen).await?;
        let mut a = swarm()?;
        connect(&mut a, b_addr).await?;
        let control = a.behaviour().new_control();
        tasks.push(drive(a));
        Ok(RawPair {
            control,
            b_peer,
            tasks,
        })
    }

    /// A new stream from A to B.
    pub(crate) async fn open(&self) -> anyhow::Result<Pipe> {
        let stream = self
            .control
            .clone()
            .open_stream(self.b_peer, PROTOCOL)
            .await?;
        let (read, write) = tokio::io::split(stream.compat());
        Ok(Pipe::framed(read, write))
    }

    /// Dial plus first message: a fresh pair of swarms, timed from A's dial to the echo of one
    /// `size`-byte message on a new stream (building A's swarm is not counted).
    pub(crate) async fn first_message(listen: &str, size: usize) -> anyhow::Result<Duration> {
        let (b_addr, b_peer, tasks) = listener(listen).await?;
        let mut a = swarm()?;
        let started = Instant::now();
        connect(&mut a, b_addr).await?;
        let control = a.behaviour().new_control();
        let mut pair = RawPair {
            control,
            b_peer,
            tasks,
        };
        pair.tasks.push(drive(a));
        let mut pipe = pair.open().await?;
        scenarios::first_message(&mut pipe, size).await?;
        Ok(started.elapsed())
    }
}

impl Drop for RawPair {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn swarm() -> anyhow::Result<Swarm<libp2p_stream::Behaviour>> {
    Ok(SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build())
}

/// Swarm B: listening, answering streams; its full address, peer id, and its tasks.
async fn listener(listen: &str) -> anyhow::Result<(Multiaddr, PeerId, Vec<JoinHandle<()>>)> {
    let mut b = swarm()?;
    b.listen_on(listen.parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = b.select_next_some().await {
            break address;
        }
    };
    let peer = *b.local_peer_id();
    let mut incoming = b.behaviour().new_control().accept(PROTOCOL)?;
    let acceptor = tokio::spawn(async move {
        while let Some((_, stream)) = incoming.next().await {
            // One task per stream: the benchmarks open at most 16 at once.
            tokio::spawn(async move {
                let (read, write) = tokio::io::split(stream.compat());
                let _ = respond(Pipe::framed(read, write)).await;
            });
        }
    });
    Ok((
        addr.with(Protocol::P2p(peer)),
        peer,
        vec![drive(b), acceptor],
    ))
}

/// Dials `addr` and drives `swarm` until the connection is up.
async fn connect(
    swarm: &mut Swarm<libp2p_stream::Behaviour>,
    addr: Multiaddr,
) -> anyhow::Result<()> {
    swarm.dial(addr).context("dial")?;
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { .. } => return Ok(()),
            SwarmEvent::OutgoingConnectionError { error, .. } => bail!("dial failed: {error}"),
            _ => {}
        }
    }
}

/// Runs a swarm's event loop until aborted.
fn drive(mut swarm: Swarm<libp2p_stream::Behaviour>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    })
}
