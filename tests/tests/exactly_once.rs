//! Exactly once, end to end, under `kill -9`: an app sends 10,000 messages, each with its own
//! idempotency key, retrying every `Send` with the same key until its node answers, while the
//! sender's and the receiver's nodes are each killed with SIGKILL (and restarted on the same
//! data directory and port) at least 10 times at random moments; the receiving app reads with
//! `Receive`, acknowledges, and reads again after its node comes back. Every message reaches
//! the receiving app under one message id and one (sender, epoch, sequence), and none comes
//! again after its `Ack` was answered. And the key's own rules over gRPC: a retry answers the
//! first message (across a restart too), a changed one is refused, and the bound refuses new
//! keys without dropping kept ones.
//!
//! `EXACTLY_ONCE_WITHOUT_KEYS=1` runs the kill test with no keys (the client retries all the
//! same): it then fails, showing that it catches a node that sends a message twice.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt;
use p2pos_client::{Client, KeyedMessage, messages::is_retryable};
use p2pos_proto::app::v1::{AckRequest, DeliveryState, ReceiveRequest, SendRequest};
use p2pos_tests::{
    Node, free_port,
    messages::{counts, node_with_config},
    open_session, p2pctl, wait_for,
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use tonic::Code;

const APP: &str = "ledger";
const MESSAGES: usize = 10_000;
/// Kills of each node.
const KILLS_EACH: usize = 12;
/// `Send` calls in flight at once.
const CONCURRENCY: usize = 64;
/// The receiving app acknowledges after this many messages (and whenever its stream is idle).
const ACK_EVERY: usize = 50;
/// The whole run's deadline.
const RUN: Duration = Duration::from_secs(150);

/// A node listening on a fixed loopback port too, so that its peer finds it again after a
/// restart; and that port.
fn node_on_fixed_port() -> (Node, u16) {
    let port = free_port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    (Node::start(&["--listen", &listen]), port)
}

/// Has `node` dial `peer_id` at its fixed `port` (so that the address it keeps for the peer is
/// the one that outlives the peer's restarts).
fn dial_fixed(node: &Node, peer_id: &str, port: u16) {
    let addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}");
    let (ok, out, err) = p2pctl(node, &["dial", &addr]);
    assert!(ok, "dial {addr}: {out}{err}");
}

/// What the receiving app saw.
#[derive(Default)]
struct Seen {
    /// Payload → (message id, sender epoch, sequence) and inbox id of its first arrival.
    first: HashMap<Bytes, ((u64, u64, u64), u64)>,
    /// Arrivals of a message already seen (allowed before its `Ack`: at least once).
    repeats: usize,
    /// The highest inbox id whose `Ack` was answered.
    acked: u64,
    /// What broke the promise.
    violations: Vec<String>,
}

impl Seen {
    fn arrived(&mut self, payload: Bytes, ids: (u64, u64, u64), inbox_id: u64) {
        if inbox_id <= self.acked {
            self.violations.push(format!(
                "{:?} (inbox id {inbox_id}) arrived again after the Ack of {} was answered",
                String::from_utf8_lossy(&payload),
                self.acked
            ));
        }
        match self.first.get(&payload) {
            None => {
                self.first.insert(payload, (ids, inbox_id));
            }
            // Stored again under a new inbox id after the first one was acknowledged: the app
            // sees a message twice after its `Ack`, whatever the new id.
            Some((_, first_inbox)) if *first_inbox <= self.acked => self.violations.push(format!(
                "{:?} (first inbox id {first_inbox}, acknowledged) arrived again as inbox id \
                     {inbox_id}",
                String::from_utf8_lossy(&payload)
            )),
            Some((first, _)) if *first == ids => self.repeats += 1,
            Some((first, _)) => self.violations.push(format!(
                "{:?} arrived twice as different messages: (message id, epoch, sequence) {first:?} \
                 and {ids:?}",
                String::from_utf8_lossy(&payload)
            )),
        }
    }
}

/// How long the receiving app waits for its node to answer a call (a node killed while it
/// answers leaves the call to the connection's end).
const CALL_WAIT: Duration = Duration::from_secs(10);

/// What the receiving app met, said once each time it changes (so that a run that stops
/// delivering says why in its output).
#[derive(Default)]
struct Hitches {
    last: Option<String>,
}

impl Hitches {
    fn met(&mut self, what: String) {
        if self.last.as_deref() != Some(what.as_str()) {
            eprintln!("the receiving app: {what}");
            self.last = Some(what);
        }
    }
}

/// The receiving app: reads every message of [`APP`] on its node and acknowledges them, opening
/// `Receive` again whenever its node went away; until `done`.
async fn receiving_app(client: Client, seen: Arc<Mutex<Seen>>, done: Arc<AtomicBool>) {
    let mut hitches = Hitches::default();
    while !done.load(Ordering::Acquire) {
        let request = ReceiveRequest { app_id: APP.into() };
        let stream = match tokio::time::timeout(CALL_WAIT, client.apps().receive(request)).await {
            Ok(Ok(stream)) => stream,
            failed => {
                hitches.met(match failed {
                    Ok(Err(status)) => format!("Receive: {status}"),
                    _ => format!("Receive: no answer within {CALL_WAIT:?}"),
                });
                // The node is down or starting: it is back in a moment.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        hitches.met("receiving".into());
        let mut stream = stream.into_inner();
        let mut unacked: Option<u64> = None;
        let mut since_ack = 0;
        loop {
            let next = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
            let message = match next {
                Ok(Some(Ok(message))) => Some(message),
                Ok(None) => break,
                Ok(Some(Err(status))) => {
                    hitches.met(format!("Receive's stream: {status}"));
                    break;
                }
                Err(_) if done.load(Ordering::Acquire) => break,
                Err(_) => None,
            };
            if let Some(m) = message {
                seen.lock().expect("seen").arrived(
                    m.payload,
                    (m.message_id, m.sender_epoch, m.sequence),
                    m.inbox_id,
                );
                unacked = Some(m.inbox_id);
                since_ack += 1;
                if since_ack < ACK_EVERY {
                    continue;
                }
            }
            // Every ACK_EVERY messages, and when the stream is idle.
            if let Some(inbox_id) = unacked {
                let ack = AckRequest {
                    app_id: APP.into(),
                    inbox_id,
                };
                match tokio::time::timeout(CALL_WAIT, client.apps().ack(ack)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(status)) => {
                        hitches.met(format!("Ack: {status}"));
                        break;
                    }
                    Err(_) => {
                        hitches.met(format!("Ack: no answer within {CALL_WAIT:?}"));
                        break;
                    }
                }
                let mut seen = seen.lock().expect("seen");
                seen.acked = seen.acked.max(inbox_id);
                unacked = None;
                since_ack = 0;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_messages_arrive_exactly_once_while_both_nodes_are_killed() {
    let with_keys = std::env::var_os("EXACTLY_ONCE_WITHOUT_KEYS").is_none();
    let seed = std::env::var("EXACTLY_ONCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed {seed} (set EXACTLY_ONCE_SEED to run the same kills again)");
    let mut rng = StdRng::seed_from_u64(seed);

    let (mut sender, sender_port) = node_on_fixed_port();
    let (mut receiver, receiver_port) = node_on_fixed_port();
    let (sender_id, receiver_id) = (sender.peer_id().await, receiver.peer_id().await);
    // Each has reached the other at its fixed port, so each redials the other there when it
    // starts again.
    dial_fixed(&sender, &receiver_id, receiver_port);
    dial_fixed(&receiver, &sender_id, sender_port);
    let sending = sender.app_client(APP).await;
    let reading = receiver.app_client(APP).await;
    // Registered on the receiver before anything is sent (its messages are its own from then).
    drop(open_session(&reading, APP).await);

    // The kill plan: at random points of the sending (after so many answers), each node
    // KILLS_EACH times, in random order.
    let mut plan: Vec<(usize, bool)> = (0..2 * KILLS_EACH)
        .map(|i| (rng.gen_range(100..MESSAGES - 100), i % 2 == 0))
        .collect();
    plan.sort_unstable();
    let mut whose: Vec<bool> = plan.iter().map(|(_, s)| *s).collect();
    whose.shuffle(&mut rng);
    let plan: Vec<(usize, bool, u64)> = plan
        .iter()
        .zip(whose)
        .map(|((at, _), s)| (*at, s, rng.gen_range(0..150)))
        .collect();

    let started = Instant::now();
    let answered = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let done = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(receiving_app(reading.clone(), seen.clone(), done.clone()));

    // The killer: kill -9 at each point of the plan, then start the node again on its data
    // directory and port, and wait until it answers.
    let progress = answered.clone();
    let watched = (answered.clone(), seen.clone());
    let watcher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let arrived = watched.1.lock().expect("seen").first.len();
            eprintln!(
                "{:?}: {} answered, {arrived} arrived",
                started.elapsed(),
                watched.0.load(Ordering::Acquire)
            );
        }
    });
    let killer = tokio::spawn(async move {
        let mut restart_ms = Vec::new();
        for (at, kill_sender, jitter_ms) in plan {
            wait_for("the sending to reach a kill point", RUN, || {
                let reached = progress.load(Ordering::Acquire) >= at;
                async move { reached.then_some(()) }
            })
            .await;
            // Somewhere inside the calls in flight.
            tokio::time::sleep(Duration::from_millis(jitter_ms)).await;
            let node = if kill_sender {
                &mut sender
            } else {
                &mut receiver
            };
            let down = Instant::now();
            node.kill();
            node.restart();
            node.client().await;
            restart_ms.push(down.elapsed().as_millis());
            eprintln!(
                "{:?}: killed the {} at {at} answers; answering again after {:?}",
                started.elapsed(),
                if kill_sender { "sender" } else { "receiver" },
                down.elapsed()
            );
        }
        (sender, receiver, restart_ms)
    });

    // The sending app: every message with its own key, retried with it until answered.
    let replies: Vec<(usize, u64)> = futures::stream::iter(0..MESSAGES)
        .map(|i| {
            let client = sending.clone();
            let answered = answered.clone();
            let to = receiver_id.clone();
            async move {
                let payload = Bytes::from(format!("entry {i:05}"));
                let reply = if with_keys {
                    let message = KeyedMessage::new(APP, to, payload, format!("entry-{i}"));
                    client.send_until_answered(&message, RUN).await
                } else {
                    send_without_key(&client, to, payload).await
                };
                let reply = reply.unwrap_or_else(|e| panic!("entry {i} was not sent: {e}"));
                answered.fetch_add(1, Ordering::AcqRel);
                (i, reply.message_id)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let sent_in = started.elapsed();
    let (mut sender, receiver, restart_ms) = killer.await.expect("the killer");
    let sending = sender.app_client(APP).await;
    let mut receiver = receiver;
    let reading = receiver.app_client(APP).await;

    // Every message arrives.
    wait_for("every message to reach the receiving app", RUN, || {
        let n = seen.lock().expect("seen").first.len();
        async move { (n == MESSAGES).then_some(()) }
    })
    .await;
    let delivered_in = started.elapsed();
    // Nothing is left to send, nothing unacknowledged: no copy can still come.
    wait_for(
        "the sender's outbox and the receiver's inbox to empty",
        RUN,
        || {
            let (sending, reading) = (sending.clone(), reading.clone());
            async move {
                let outbox = counts(&sending, APP).await.1;
                let inbox = counts(&reading, APP).await.0;
                (outbox == 0 && inbox == 0).then_some(())
            }
        },
    )
    .await;
    done.store(true, Ordering::Release);
    reader.await.expect("the receiving app");
    watcher.abort();

    let seen = seen.lock().expect("seen");
    assert!(
        seen.violations.is_empty(),
        "{} violations, the first: {:#?}",
        seen.violations.len(),
        &seen.violations[..seen.violations.len().min(5)]
    );
    // Each key's answer names the message that arrived.
    let mut ids = HashSet::new();
    for (i, message_id) in replies {
        let payload = Bytes::from(format!("entry {i:05}"));
        let ((arrived_id, _, _), _) = seen.first[&payload];
        assert_eq!(
            arrived_id, message_id,
            "entry {i}: Send answered message {message_id}, message {arrived_id} arrived"
        );
        assert!(
            ids.insert(message_id),
            "message id {message_id} answered twice"
        );
    }
    let mut sequences: HashSet<(u64, u64)> = HashSet::new();
    for ((_, epoch, sequence), _) in seen.first.values() {
        assert!(
            sequences.insert((*epoch, *sequence)),
            "two messages under one sequence"
        );
    }
    eprintln!(
        "{MESSAGES} messages, {KILLS_EACH} kills of each node (restart to answering: {:?} ms): \
         all answered in {sent_in:?}, all arrived in {delivered_in:?}; {} arrivals again before \
         their Ack",
        restart_ms, seen.repeats
    );
}

/// `Send` with no key, retried on a lost answer as [`Client::send_until_answered`] does with
/// one (for `EXACTLY_ONCE_WITHOUT_KEYS`).
async fn send_without_key(
    client: &Client,
    peer: String,
    payload: Bytes,
) -> Result<p2pos_proto::app::v1::SendReply, tonic::Status> {
    let until = Instant::now() + RUN;
    loop {
        let request = SendRequest {
            app_id: APP.into(),
            peer: peer.clone(),
            payload: payload.clone(),
            idempotency_key: Bytes::new(),
        };
        match client.apps().send(request).await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(status) if !is_retryable(&status) || Instant::now() > until => {
                return Err(status);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `Send` of `payload` with `key` to `peer` as app [`APP`].
async fn send_keyed(
    client: &Client,
    peer: &str,
    payload: &'static str,
    key: &[u8],
) -> Result<(u64, DeliveryState), tonic::Status> {
    let reply = client
        .apps()
        .send(SendRequest {
            app_id: APP.into(),
            peer: peer.to_owned(),
            payload: Bytes::from_static(payload.as_bytes()),
            idempotency_key: Bytes::copy_from_slice(key),
        })
        .await?
        .into_inner();
    Ok((reply.message_id, reply.state()))
}

/// A peer id of a peer nobody has seen.
fn some_peer() -> String {
    libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_answers_its_message_refuses_another_and_is_bounded() {
    let (mut node, _config) = node_with_config("[overlay]\nmax_send_keys_per_app = 3\n");
    let client = node.app_client(APP).await;
    // A peer never reached: its messages wait in the outbox.
    let peer = some_peer();

    let (first, state) = send_keyed(&client, &peer, "order 1", b"order-1")
        .await
        .expect("send");
    assert_eq!(state, DeliveryState::Queued);
    let again = send_keyed(&client, &peer, "order 1", b"order-1")
        .await
        .expect("retry");
    assert_eq!(again, (first, DeliveryState::Queued), "the same message");
    assert_eq!(counts(&client, APP).await.1, 1, "one copy in the outbox");

    // The same key for another message: refused, saying so.
    let err = send_keyed(&client, &peer, "order 2", b"order-1")
        .await
        .expect_err("another payload");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("idempotency key") && err.message().contains("payload"),
        "{}",
        err.message()
    );
    let other_peer = some_peer();
    let err = send_keyed(&client, &other_peer, "order 1", b"order-1")
        .await
        .expect_err("another peer");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("peer"), "{}", err.message());
    // A key is at most 64 bytes.
    let err = send_keyed(&client, &peer, "order 9", &[b'k'; 65])
        .await
        .expect_err("too long");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("64"), "{}", err.message());

    // The bound (3 here): a fourth key is refused, the kept ones still answer, and a message
    // without a key still goes.
    let second = send_keyed(&client, &peer, "order 2", b"order-2")
        .await
        .expect("send")
        .0;
    send_keyed(&client, &peer, "order 3", &[b'k'; 64])
        .await
        .expect("a 64-byte key");
    let err = send_keyed(&client, &peer, "order 4", b"order-4")
        .await
        .expect_err("past the bound");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("3 idempotency keys") && err.message().contains("24 h"),
        "{}",
        err.message()
    );
    let no_key = send_keyed(&client, &peer, "order 4", b"")
        .await
        .expect("no key");
    assert_eq!(no_key.1, DeliveryState::Queued);

    // `p2pctl send --key`: the second run answers the first one's message.
    let sent_by_p2pctl = || {
        let (ok, out, err) = p2pctl(
            &node,
            &["send", &peer, "notes", "hello", "--key", "note-1", "--json"],
        );
        assert!(ok, "p2pctl send --key: {out}{err}");
        out
    };
    let first_run = sent_by_p2pctl();
    assert!(first_run.contains("\"queued\""), "{first_run}");
    assert_eq!(sent_by_p2pctl(), first_run, "the same message id and state");
    // An empty key would quietly send without one: refused before anything is sent.
    let (ok, out, err) = p2pctl(&node, &["send", &peer, "notes", "hello", "--key", ""]);
    assert!(!ok && err.contains("1 to 64 bytes"), "{out}{err}");

    // Across a restart (the answer lost with the node), the key still names its message.
    assert!(node.stop().await.success());
    node.restart();
    let client = node.app_client(APP).await;
    let again = send_keyed(&client, &peer, "order 2", b"order-2")
        .await
        .expect("retry after the restart");
    assert_eq!(again, (second, DeliveryState::Queued));
    assert_eq!(counts(&client, APP).await.1, 4, "no new copy");
}
