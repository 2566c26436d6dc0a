//! The group pubsub scenario: N real nodes on loopback form a group (each dials the founder,
//! then joins with an invite of the founder's; the groups service connects members to each
//! other as it syncs them), every node follows one topic, and paced messages from a rotating
//! publisher are timed from just before `Publish` to their arrival on every other member's
//! subscription. A direct channel between two of the same nodes, timed one way in the same
//! way, is the baseline.
//!
//! Every time is read from one clock, [`stamp_ns`], in this process: the publisher writes it
//! into the message, each subscription's reader compares it with the time of arrival.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use p2pos_proto::group::v1::{
    CreateRequest, GroupRef, InviteRequest, JoinRequest, PublishRequest, SubscribeRequest,
};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::TCP;
use crate::node::{Node, Transport};
use crate::pipe::stamp_ns;
use crate::report::{Goal, Row};
use crate::scenarios;

/// The app whose topic the scenario uses.
const APP: &str = "bench";
/// The topic.
const TOPIC: &str = "latency";
/// Bytes of each message (a kind byte, numbers, its sending time, padding).
const SIZE: usize = 64;
/// Nodes started, or dialing, at once.
const AT_ONCE: usize = 8;
/// Flags of the group's nodes: nothing they do not need (mDNS is off already).
const FLAGS: &[&str] = &["--no-relay-server"];
/// How long forming the group, or getting every member to follow the topic, may take.
const FORM_DEADLINE: Duration = Duration::from_secs(180);
/// How long after the last publication the scenario waits for what is still missing.
const DRAIN: Duration = Duration::from_secs(10);
/// How long probes wait for their arrival before the laggards publish again.
const PROBE_WAIT: Duration = Duration::from_secs(2);
/// How long the nodes' CPU is measured with the group formed and nothing published.
const IDLE: Duration = Duration::from_secs(2);
/// The group is at rest once its nodes use at most this much CPU each (in cores) over [`IDLE`].
const IDLE_CORES_PER_NODE: f64 = 0.012;
/// Longest wait for the group to come to rest (the run goes on, with the CPU it measured).
const SETTLE_DEADLINE: Duration = Duration::from_secs(120);
/// Attempts of each join.
const JOIN_ATTEMPTS: usize = 3;
/// Pause between looks at the members each node sees (no event says a join has spread).
const POLL: Duration = Duration::from_millis(50);
/// Hops a message takes from its publisher to a member: publishing floods to every follower
/// and every member is connected to every other (each publication's `sent_to` confirms it).
pub(crate) const HOPS: u32 = 1;

/// What one group size measured.
pub(crate) struct GroupFigures {
    /// Members.
    pub(crate) size: usize,
    /// Messages timed.
    pub(crate) messages: usize,
    /// Pause between two publications.
    pub(crate) interval: Duration,
    /// Arrivals (message, member other than its publisher), each member once.
    pub(crate) expected: u64,
    /// Of them, those that came.
    pub(crate) delivered: u64,
    /// Of those, the ones caught up (not live gossip).
    pub(crate) caught_up: u64,
    /// Publish → arrival, sorted.
    pub(crate) latencies: Vec<Duration>,
    /// Publications whose `sent_to` named every other member.
    pub(crate) sent_to_all: usize,
    /// From just before each `Publish` to its reply, sorted.
    pub(crate) calls: Vec<Duration>,
    /// A direct channel between two members, one way, sorted.
    pub(crate) direct: Vec<Duration>,
    /// From spawning the first node to every node answering.
    pub(crate) start: Duration,
    /// Dialing the founder and forming the group (every node sees every member).
    pub(crate) form: Duration,
    /// From every member following to the group at rest.
    pub(crate) settle: Duration,
    /// Joins tried again.
    pub(crate) join_retries: usize,
    /// Subscribing and probing until every member's probe reaches every other.
    pub(crate) ready: Duration,
    /// Resident memory of all nodes after the run, in MiB, and of the largest.
    pub(crate) rss_total_mib: f64,
    pub(crate) rss_max_mib: f64,
    /// CPU the nodes used while idle in the group and while the messages were published, in
    /// cores (1.0: one core busy).
    pub(crate) cpu_idle: f64,
    pub(crate) cpu_publish: f64,
}

/// Arrivals seen by the subscriptions' readers.
#[derive(Default)]
struct Seen {
    /// Per member, the members whose probe it got.
    probes: Vec<HashSet<usize>>,
    /// Per member, per message number, when it came (and whether it was caught up).
    arrivals: Vec<Vec<Option<(u64, bool)>>>,
    /// Arrivals recorded.
    count: u64,
}

/// [`Seen`], shared with the readers; `changed` tells of each arrival.
#[derive(Clone, Default)]
struct Shared {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A probe of member `from`.
fn probe(from: usize) -> Bytes {
    let mut data = BytesMut::with_capacity(SIZE);
    data.put_u8(b'p');
    data.put_u32(from as u32);
    data.resize(SIZE, 0);
    data.freeze()
}

/// Timed message `number`, sent at `stamp`.
fn timed(number: usize, stamp: u64) -> Bytes {
    let mut data = BytesMut::with_capacity(SIZE);
    data.put_u8(b'm');
    data.put_u32(number as u32);
    data.put_u64(stamp);
    data.resize(SIZE, 0);
    data.freeze()
}

/// Messages timed for a group of `size`: 1000 / size, at least 100 and at most 200.
pub(crate) fn messages_for(size: usize) -> usize {
    (1000 / size.max(1)).clamp(100, 200)
}

/// The pause between publications for a group of `size`: 20 ms, or 2 ms per member past ten
/// (100 ms at 50), so that every member's node takes each message in before the next on this
/// 2-core machine (at 50 members and 20 ms the 50 nodes need 1.8 cores and messages queue).
pub(crate) fn interval_for(size: usize) -> Duration {
    Duration::from_millis((2 * size as u64).max(20))
}

/// Runs the scenario for a group of `size` nodes, `messages` messages one every `interval`.
pub(crate) async fn run(
    bin: &Path,
    size: usize,
    messages: usize,
    interval: Duration,
) -> anyhow::Result<GroupFigures> {
    if size < 3 {
        bail!("a group of the scenario has at least 3 members (got {size})");
    }
    let started = Instant::now();
    let nodes: Vec<Node> = futures::stream::iter(0..size)
        .map(|_| Node::start_with(bin, TCP, FLAGS))
        .buffered(AT_ONCE)
        .try_collect()
        .await?;
    let start = started.elapsed();
    let mut ids = Vec::with_capacity(size);
    let mut tickets = Vec::with_capacity(size);
    for node in &nodes {
        let (ticket, id) = node.ticket().await?;
        tickets.push(ticket);
        ids.push(id);
    }

    let started = Instant::now();
    futures::stream::iter(&nodes[1..])
        .map(|node| node.dial(&tickets[0]))
        .buffer_unordered(AT_ONCE)
        .try_collect::<()>()
        .await
        .context("dialing the founder")?;
    let (group, join_retries) = form(&nodes).await?;
    let form = started.elapsed();

    let started = Instant::now();
    let shared = Shared::default();
    {
        let mut seen = shared.lock();
        seen.probes = vec![HashSet::new(); size];
        seen.arrivals = vec![vec![None; messages]; size];
    }
    // One reader per member; dropped (so aborted) at the end of the run.
    let mut readers = JoinSet::new();
    for (member, node) in nodes.iter().enumerate() {
        let mut stream = node
            .client()
            .groups()
            .subscribe(SubscribeRequest {
                group: group.clone(),
                app: APP.to_owned(),
                topic: TOPIC.to_owned(),
                since_ms: 0,
            })
            .await
            .with_context(|| format!("member {member} subscribes"))?
            .into_inner();
        let shared = shared.clone();
        readers.spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                let now = stamp_ns();
                record(&shared, member, &message.data, now, message.replayed);
            }
        });
    }
    until_followed(&nodes, &group, &ids, &shared).await?;
    let ready = started.elapsed();

    // Joining and the catch-up at the start of following keep the nodes busy for a while
    // (about 25 s at 50 nodes here): what is timed is the group at rest.
    let settling = Instant::now();
    let cpu_idle = loop {
        let from = cpu(&nodes)?;
        tokio::time::sleep(IDLE).await;
        let cores = (cpu(&nodes)?.saturating_sub(from)).as_secs_f64() / IDLE.as_secs_f64();
        if cores <= IDLE_CORES_PER_NODE * size as f64 || settling.elapsed() > SETTLE_DEADLINE {
            break cores;
        }
    };
    let settle = settling.elapsed();
    let direct = {
        let server = nodes[2].serve_bench().await?;
        let pipe = nodes[1].open(&ids[2], Transport::Grpc).await?;
        let times = scenarios::one_way(pipe, messages as u64, SIZE, interval).await?;
        server.abort();
        times
    };

    let publish_from = cpu(&nodes)?;
    let publish_at = Instant::now();
    let (stamps, sent_to_all, calls) = publish(&nodes, &group, &ids, messages, interval).await?;
    let cpu_publish = (cpu(&nodes)?.saturating_sub(publish_from)).as_secs_f64()
        / publish_at.elapsed().as_secs_f64();
    let expected = (messages * (size - 1)) as u64;
    let drain_until = tokio::time::Instant::now() + DRAIN;
    loop {
        let changed = shared.changed.notified();
        if shared.lock().count >= expected {
            break;
        }
        if tokio::time::timeout_at(drain_until, changed).await.is_err() {
            break;
        }
    }
    drop(readers);

    let seen = shared.lock();
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut caught_up = 0;
    for (member, arrivals) in seen.arrivals.iter().enumerate() {
        for (number, arrival) in arrivals.iter().enumerate() {
            if number % size == member {
                continue;
            }
            if let Some((at, replayed)) = arrival {
                latencies.push(Duration::from_nanos(at.saturating_sub(stamps[number])));
                caught_up += u64::from(*replayed);
            }
        }
    }
    latencies.sort_unstable();
    let mut rss = Vec::with_capacity(size);
    for node in &nodes {
        rss.push(node.rss_mib()?);
    }
    Ok(GroupFigures {
        size,
        messages,
        interval,
        expected,
        delivered: latencies.len() as u64,
        caught_up,
        latencies,
        sent_to_all,
        calls,
        direct,
        start,
        form,
        join_retries,
        ready,
        settle,
        rss_total_mib: rss.iter().sum(),
        rss_max_mib: rss.iter().copied().fold(0.0, f64::max),
        cpu_idle,
        cpu_publish,
    })
}

/// Notes what `member`'s subscription got at `now`.
fn record(shared: &Shared, member: usize, data: &[u8], now: u64, replayed: bool) {
    let number = |at: usize| -> Option<usize> {
        let bytes: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_be_bytes(bytes) as usize)
    };
    let mut seen = shared.lock();
    match (data.first(), number(1)) {
        (Some(b'p'), Some(from)) => {
            if let Some(probes) = seen.probes.get_mut(member) {
                probes.insert(from);
            }
        }
        // A member's own publications reach its own subscription too: not counted.
        (Some(b'm'), Some(n)) if n % seen.arrivals.len() != member => {
            let new = seen
                .arrivals
                .get_mut(member)
                .and_then(|a| a.get_mut(n))
                .is_some_and(|slot| slot.replace((now, replayed)).is_none());
            if new {
                seen.count += 1;
            }
        }
        _ => {}
    }
    drop(seen);
    shared.changed.notify_waiters();
}

/// The founder creates the group and invites each other node, which joins; answers its id, and
/// how many joins were tried again, once every node sees every member.
async fn form(nodes: &[Node]) -> anyhow::Result<(String, usize)> {
    let mut retries = 0;
    let founder = nodes[0].client();
    let group = founder
        .groups()
        .create(CreateRequest {
            name: "bench".to_owned(),
        })
        .await?
        .into_inner()
        .id;
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let invite = founder
            .groups()
            .invite(InviteRequest {
                group: group.clone(),
                ..InviteRequest::default()
            })
            .await?
            .into_inner()
            .invite;
        // A join whose stream the founder dropped is tried again (and counted): libp2p-stream
        // drops inbound streams past its accept buffer (64 per protocol since the vendored
        // patch, one before), and the joiner then sees "connection is closed".
        let mut attempt = 1;
        loop {
            let joined = node
                .client()
                .groups()
                .join(JoinRequest {
                    invite: invite.clone(),
                    name: String::new(),
                })
                .await;
            match joined {
                Ok(_) => break,
                Err(status) if attempt < JOIN_ATTEMPTS => {
                    eprintln!("p2pos-bench: node {i} joins again: {}", status.message());
                    attempt += 1;
                    retries += 1;
                }
                Err(status) => {
                    bail!("node {i} joins ({JOIN_ATTEMPTS} attempts): {status}");
                }
            }
        }
    }
    let deadline = Instant::now() + FORM_DEADLINE;
    for (i, node) in nodes.iter().enumerate() {
        loop {
            let members = node
                .client()
                .groups()
                .members(GroupRef {
                    group: group.clone(),
                })
                .await?
                .into_inner()
                .members
                .len();
            if members == nodes.len() {
                break;
            }
            if Instant::now() > deadline {
                bail!("node {i} sees {members} members of {}", nodes.len());
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok((group, retries))
}

/// Each member publishes probes until one of its publications went to every other member and
/// every other member's subscription got one of its probes.
async fn until_followed(
    nodes: &[Node],
    group: &str,
    ids: &[String],
    shared: &Shared,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + FORM_DEADLINE;
    let mut sent_to_all = vec![false; nodes.len()];
    loop {
        let heard_by_all = |from: usize| {
            let seen = shared.lock();
            seen.probes
                .iter()
                .enumerate()
                .all(|(member, got)| member == from || got.contains(&from))
        };
        let laggards: Vec<usize> = (0..nodes.len())
            .filter(|&i| !(sent_to_all[i] && heard_by_all(i)))
            .collect();
        if laggards.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {} members not yet followed by every other after {FORM_DEADLINE:?}",
                laggards.len(),
                nodes.len()
            );
        }
        let replies: Vec<(usize, bool)> = futures::stream::iter(laggards)
            .map(|i| async move {
                let reply = nodes[i]
                    .client()
                    .groups()
                    .publish(PublishRequest {
                        group: group.to_owned(),
                        app: APP.to_owned(),
                        topic: TOPIC.to_owned(),
                        data: probe(i),
                        report_ms: 0,
                    })
                    .await?
                    .into_inner();
                anyhow::Ok((i, to_all(&reply.sent_to, ids, i)))
            })
            .buffer_unordered(AT_ONCE)
            .try_collect()
            .await?;
        for (i, all) in replies {
            sent_to_all[i] |= all;
        }
        let wait_until = tokio::time::Instant::now() + PROBE_WAIT;
        loop {
            let changed = shared.changed.notified();
            if (0..nodes.len()).all(heard_by_all) {
                break;
            }
            if tokio::time::timeout_at(wait_until, changed).await.is_err() {
                break;
            }
        }
    }
}

/// Whether `sent_to` names every member but `publisher`.
fn to_all(sent_to: &[String], ids: &[String], publisher: usize) -> bool {
    ids.iter()
        .enumerate()
        .all(|(i, id)| i == publisher || sent_to.contains(id))
}

/// Publishes `messages` timed messages, one every `interval`, message n from member n mod N;
/// answers each one's sending time, how many went to every other member, and how long each
/// call took (sorted).
async fn publish(
    nodes: &[Node],
    group: &str,
    ids: &[String],
    messages: usize,
    interval: Duration,
) -> anyhow::Result<(Vec<u64>, usize, Vec<Duration>)> {
    let mut stamps = Vec::with_capacity(messages);
    // One task per publication, so that a slow `Publish` does not hold the next back: at most
    // `messages` (a few hundred).
    let mut calls = JoinSet::new();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0..messages {
        ticks.tick().await;
        let publisher = n % nodes.len();
        let client = nodes[publisher].client().clone();
        let group = group.to_owned();
        let ids = ids.to_vec();
        let stamp = stamp_ns();
        stamps.push(stamp);
        calls.spawn(async move {
            let reply = client
                .groups()
                .publish(PublishRequest {
                    group,
                    app: APP.to_owned(),
                    topic: TOPIC.to_owned(),
                    data: timed(n, stamp),
                    report_ms: 0,
                })
                .await
                .map_err(|status| anyhow!("publishing message {n}: {status}"))?
                .into_inner();
            let took = Duration::from_nanos(stamp_ns().saturating_sub(stamp));
            anyhow::Ok((to_all(&reply.sent_to, &ids, publisher), took))
        });
    }
    let mut sent_to_all = 0;
    let mut took = Vec::with_capacity(messages);
    while let Some(call) = calls.join_next().await {
        let (all, call) = call??;
        sent_to_all += usize::from(all);
        took.push(call);
    }
    took.sort_unstable();
    Ok((stamps, sent_to_all, took))
}

/// CPU time used so far by all of `nodes`.
fn cpu(nodes: &[Node]) -> anyhow::Result<Duration> {
    nodes.iter().map(Node::cpu_time).sum()
}

impl GroupFigures {
    /// The table's rows.
    pub(crate) fn rows(&self) -> Vec<Row> {
        let n = self.size;
        let us = |sorted: &[Duration], pct| scenarios::percentile(sorted, pct);
        let direct_p50 = us(&self.direct, 50);
        let baseline = Some(direct_p50 * f64::from(HOPS));
        let max = self
            .latencies
            .last()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
        let row = |scenario: String, unit, p2pos, baseline, goal| Row {
            scenario,
            unit,
            p2pos,
            baseline,
            ceiling: None,
            floor: None,
            goal,
        };
        vec![
            row(
                format!("group of {n}, pubsub delivered (of {})", self.expected),
                "%",
                self.delivered as f64 * 100.0 / self.expected as f64,
                None,
                Goal::AtLeast(100.0),
            ),
            row(
                format!("group of {n}, publish → member, p50 (baseline: direct ×{HOPS})"),
                "µs",
                us(&self.latencies, 50),
                baseline,
                Goal::None,
            ),
            row(
                format!("group of {n}, publish → member, p99 (baseline: direct ×{HOPS})"),
                "µs",
                us(&self.latencies, 99),
                baseline,
                Goal::RatioAtMost(3.0),
            ),
            row(
                format!("group of {n}, publish → member, max"),
                "µs",
                max,
                baseline,
                Goal::None,
            ),
            row(
                format!("group of {n}, direct channel one-way, p50"),
                "µs",
                direct_p50,
                None,
                Goal::None,
            ),
            row(
                format!("group of {n}, direct channel one-way, p99"),
                "µs",
                us(&self.direct, 99),
                None,
                Goal::None,
            ),
            row(
                format!("group of {n}, publications sent to every member"),
                "%",
                self.sent_to_all as f64 * 100.0 / self.messages as f64,
                None,
                Goal::None,
            ),
            row(
                format!("group of {n}, nodes' resident memory, total"),
                "MiB",
                self.rss_total_mib,
                None,
                Goal::None,
            ),
            row(
                format!("group of {n}, nodes' CPU while publishing (idle)"),
                "cores",
                self.cpu_publish,
                Some(self.cpu_idle),
                Goal::None,
            ),
        ]
    }

    /// What the table leaves out, for `--json`.
    pub(crate) fn details(&self) -> Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        json!({
            "size": self.size,
            "messages": self.messages,
            "interval_ms": ms(self.interval),
            "expected": self.expected,
            "delivered": self.delivered,
            "caught_up": self.caught_up,
            "sent_to_every_member": self.sent_to_all,
            "publish_call_p50_us": scenarios::percentile(&self.calls, 50),
            "publish_call_p99_us": scenarios::percentile(&self.calls, 99),
            "hops": HOPS,
            "start_ms": ms(self.start),
            "form_ms": ms(self.form),
            "join_retries": self.join_retries,
            "ready_ms": ms(self.ready),
            "settle_ms": ms(self.settle),
            "rss_max_mib": self.rss_max_mib,
        })
    }

    /// A line for people about what the table leaves out.
    pub(crate) fn summary(&self) -> String {
        format!(
            "group of {}: {} messages, one every {:?}, {} of {} arrivals ({} caught up), {} of {} \
             publications sent to every member, Publish answered in {:.0} µs (p50); nodes started in {:.1} s, group formed in {:.1} \
             s ({} joins tried again), every member followed in {:.1} s, at rest {:.1} s later; largest node {:.1} MiB",
            self.size,
            self.messages,
            self.interval,
            self.delivered,
            self.expected,
            self.caught_up,
            self.sent_to_all,
            self.messages,
            scenarios::percentile(&self.calls, 50),
            self.start.as_secs_f64(),
            self.form.as_secs_f64(),
            self.join_retries,
            self.ready.as_secs_f64(),
            self.settle.as_secs_f64(),
            self.rss_max_mib,
        )
    }
}
