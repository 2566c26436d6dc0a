//! The control plane under load: the latency of `ListPeers` and `GetInfo` on an idle node, then
//! on the same node while 100 channel opens wait on peers that never answer (the node takes as
//! many at once as its `max_opens`, 32 by default, and refuses the rest at once) and a flood of
//! `Send`s goes to a peer that is offline. The ratio loaded / idle is the figure: both measured
//! in the same run, on the same node, by a client on a thread and runtime of its own (so that
//! its calls never wait behind the load generator's tasks in this process).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use p2pos_client::{Client, Target};
use p2pos_proto::{
    app::v1::{ChannelInput, OpenChannel, SendRequest, SessionRequest, channel_input},
    node::v1::GetInfoRequest,
    overlay::v1::ListPeersRequest,
};
use tokio::{net::TcpListener, task::JoinSet};

use crate::scenarios::percentile;

/// Channel opens issued at once.
const OPENS: usize = 100;
/// Tasks sending messages to the offline peer, each one after the other.
const SENDERS: usize = 8;
/// How long the node may take to reach the silent peers.
const REACH: Duration = Duration::from_secs(10);

/// p50 and p99 of `calls` control calls (alternately `ListPeers` and `GetInfo`), in µs.
async fn latencies(client: &Client, calls: usize) -> anyhow::Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls {
        let started = Instant::now();
        if i % 2 == 0 {
            client.overlay().list_peers(ListPeersRequest {}).await?;
        } else {
            client.node().get_info(GetInfoRequest {}).await?;
        }
        samples.push(started.elapsed());
    }
    samples.sort_unstable();
    Ok((percentile(&samples, 50), percentile(&samples, 99)))
}

/// [`latencies`] from a client of its own, on an OS thread and a current-thread runtime of
/// their own: what the node answers, not how busy this process's runtime is.
async fn latencies_apart(target: &Target, calls: usize) -> anyhow::Result<(f64, f64)> {
    let target = target.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("control-prober".into())
        .spawn(move || {
            let measured = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| {
                    runtime.block_on(async {
                        let client = Client::connect(&target).await?;
                        latencies(&client, calls).await
                    })
                });
            let _ = tx.send(measured);
        })?;
    rx.await
        .context("the prober thread ended without an answer")?
}

/// A peer id nobody has.
fn stranger() -> String {
    libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string()
}

/// Idle and loaded `(p50, p99)` of `calls` control calls on the node behind `admin`, with
/// `load` (other connections to the same node) carrying the load.
pub(crate) async fn control_plane(
    admin: &Client,
    target: &Target,
    load: Vec<Client>,
    calls: usize,
) -> anyhow::Result<((f64, f64), (f64, f64))> {
    let idle = latencies_apart(target, calls).await?;

    admin
        .apps()
        .session(SessionRequest {
            app_id: "load".into(),
            group: String::new(),
        })
        .await
        .context("a session for the load")?;
    // Peers that never answer: a listener that takes connections and says nothing.
    let blackhole = TcpListener::bind("127.0.0.1:0").await?;
    let port = blackhole.local_addr()?.port();
    let reached = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let counting = reached.clone();
    tasks.spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = blackhole.accept().await {
            counting.fetch_add(1, Ordering::SeqCst);
            if held.len() < 64 {
                held.push(socket);
            }
        }
    });
    let silent: Vec<String> = (0..4)
        .map(|_| format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", stranger()))
        .collect();
    for i in 0..OPENS {
        let client = load[i % load.len()].clone();
        let peer = silent[i % silent.len()].clone();
        tasks.spawn(async move {
            let (mut tx, rx) = futures::channel::mpsc::channel::<ChannelInput>(1);
            let open = ChannelInput {
                kind: Some(channel_input::Kind::Open(OpenChannel {
                    app_id: "load".into(),
                    peer,
                    batch: false,
                    half_close: false,
                    group: String::new(),
                    transport: 0,
                })),
            };
            let _ = tx.send(open).await;
            if let Ok(response) = client.apps().channel(rx).await {
                let _ = response.into_inner().next().await;
            }
            drop(tx);
        });
    }
    let offline = stranger();
    let stop = Arc::new(AtomicBool::new(false));
    for i in 0..SENDERS {
        let client = load[i % load.len()].clone();
        let (offline, stop) = (offline.clone(), stop.clone());
        tasks.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let request = SendRequest {
                    app_id: "load".into(),
                    peer: offline.clone(),
                    payload: Bytes::from(format!("message {n}")),
                    idempotency_key: Default::default(),
                };
                let _ = client.apps().send(request).await;
                n += 1;
            }
        });
    }
    let started = Instant::now();
    while reached.load(Ordering::SeqCst) == 0 {
        anyhow::ensure!(
            started.elapsed() < REACH,
            "the node never reached the silent peers"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let loaded = latencies_apart(target, calls).await;
    stop.store(true, Ordering::SeqCst);
    tasks.abort_all();
    Ok((idle, loaded?))
}
