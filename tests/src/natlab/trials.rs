//! `p2posd` nodes in a [`NatLab`], measured as issue 17 checks them: a relay on the lab's
//! internet, kept for every trial, and per trial two fresh nodes (new data directories), one in
//! each home of a pair: how long each takes to hold a relay reservation, whether one reaches
//! the other by peer id alone, and whether and when a direct connection joins the relayed one.
//!
//! Trials run side by side, one per home pair of the lab, each on its own pair (its own
//! routers), so that none sees another's traffic.

use std::{
    fmt,
    net::Ipv4Addr,
    sync::Mutex,
    time::{Duration, Instant},
};

use futures::StreamExt;
use p2pos_client::Client;
use p2pos_proto::{
    monitor::v1::GetStatusRequest,
    overlay::v1::{DialRequest, GetTicketRequest, ListPeersRequest, PeerInfo},
};

use super::{Internet, NatLab};
use crate::{Node, poll_until};

/// How long a trial waits for a node's relay reservation after its start. The goal is 5 s;
/// waiting longer measures how far off a node is.
pub const RESERVATION_DEADLINE: Duration = Duration::from_secs(30);
/// How long A's dial of B by peer id may take.
pub const DIAL_DEADLINE: Duration = Duration::from_secs(10);
/// How long after the dial a trial waits for a direct connection, unless its lab's
/// [`Config::direct_within`](super::Config::direct_within) says otherwise.
pub const DIRECT_DEADLINE: Duration = Duration::from_secs(15);
/// The relay's port, for TCP and for QUIC.
pub const RELAY_PORT: u16 = 4001;
/// How long after a trial's nodes answered the next trial starts at the latest, when they do
/// not hold their reservations before.
pub const PACE: Duration = Duration::from_millis(2500);

/// What the home nodes listen on (and so which transport hole punching has to work for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Only TCP.
    Tcp,
    /// Only QUIC.
    Quic,
    /// Both, as nodes do by default.
    Both,
}

impl Transport {
    /// The `--listen` value of a home node.
    fn listen(self) -> &'static str {
        match self {
            Transport::Tcp => "/ip4/0.0.0.0/tcp/0",
            Transport::Quic => "/ip4/0.0.0.0/udp/0/quic-v1",
            Transport::Both => "/ip4/0.0.0.0/tcp/0,/ip4/0.0.0.0/udp/0/quic-v1",
        }
    }

    /// A public node's addresses for this transport.
    fn addresses(self, ip: Ipv4Addr, port: u16) -> Vec<String> {
        let tcp = format!("/ip4/{ip}/tcp/{port}");
        let quic = format!("/ip4/{ip}/udp/{port}/quic-v1");
        match self {
            Transport::Tcp => vec![tcp],
            Transport::Quic => vec![quic],
            Transport::Both => vec![tcp, quic],
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "TCP",
            Transport::Quic => "QUIC",
            Transport::Both => "TCP+QUIC",
        })
    }
}

/// Flags every node of `lab` needs for its internet: on a private one, private addresses count
/// as external.
fn internet_flags(lab: &NatLab) -> Vec<String> {
    match lab.config().internet {
        Internet::Public => Vec::new(),
        Internet::Private => vec!["--trust-private-addresses".to_owned()],
    }
}

/// Starts a node in namespace `ns` with `args`; the time is taken just before.
fn start_node(ns: &str, args: &[String]) -> (Node, Instant) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    (Node::start_in_netns(ns, &args), started)
}

/// The lab's relay: a node on the internet that listens on TCP and QUIC port [`RELAY_PORT`] and
/// declares those addresses reachable (`--external-address`).
pub struct Relay {
    /// The node.
    pub node: Node,
    /// Its peer id.
    pub peer_id: String,
    ip: Ipv4Addr,
    port: u16,
}

impl Relay {
    /// Starts the relay of `lab` and waits until it answers.
    pub async fn start(lab: &NatLab) -> Relay {
        Relay::start_on(lab, RELAY_PORT).await
    }

    /// Another public node on the internet beside the relay, listening on `port` (a second
    /// observer of home nodes' addresses, say).
    pub async fn start_on(lab: &NatLab, port: u16) -> Relay {
        let ip = lab.relay_ip();
        let mut args = vec![
            "--listen".to_owned(),
            format!("/ip4/0.0.0.0/tcp/{port},/ip4/0.0.0.0/udp/{port}/quic-v1"),
        ];
        for address in Transport::Both.addresses(ip, port) {
            args.extend(["--external-address".to_owned(), address]);
        }
        args.extend(internet_flags(lab));
        let (mut node, _) = start_node(lab.relay_ns(), &args);
        let peer_id = node.peer_id().await;
        Relay {
            node,
            peer_id,
            ip,
            port,
        }
    }

    /// The `--bootstrap` value that points a node of `transport` at the relay.
    pub fn bootstrap(&self, transport: Transport) -> String {
        let with_id: Vec<String> = transport
            .addresses(self.ip, self.port)
            .into_iter()
            .map(|a| format!("{a}/p2p/{}", self.peer_id))
            .collect();
        with_id.join(",")
    }
}

/// A node started in a home, with a client of it.
pub struct HomeNode {
    /// The node.
    pub node: Node,
    /// An admin client of it.
    pub client: Client,
    /// Its peer id.
    pub peer_id: String,
    /// Just before its process started.
    pub started: Instant,
}

impl HomeNode {
    /// Starts a fresh node in the home host `ns`, listening on `transport` and knowing only the
    /// relay; waits until it answers.
    pub async fn start(lab: &NatLab, relay: &Relay, ns: &str, transport: Transport) -> HomeNode {
        HomeNode::start_with(lab, &[relay], ns, transport, &[]).await
    }

    /// Starts a fresh node in the home host `ns`, listening on `transport`, knowing the public
    /// nodes `public` and with `extra` flags; waits until it answers.
    pub async fn start_with(
        lab: &NatLab,
        public: &[&Relay],
        ns: &str,
        transport: Transport,
        extra: &[String],
    ) -> HomeNode {
        let mut args = vec!["--listen".to_owned(), transport.listen().to_owned()];
        for node in public {
            args.extend(["--bootstrap".to_owned(), node.bootstrap(transport)]);
        }
        args.extend(internet_flags(lab));
        args.extend_from_slice(extra);
        let (mut node, started) = start_node(ns, &args);
        let client = node.client().await;
        let peer_id = node.peer_id().await;
        HomeNode {
            node,
            client,
            peer_id,
            started,
        }
    }

    /// How long after its start the node first listed a relayed (`/p2p-circuit`) listen
    /// address: it holds a reservation. `None` if not within [`RESERVATION_DEADLINE`].
    pub async fn reservation(&self) -> Option<Duration> {
        let left = RESERVATION_DEADLINE.saturating_sub(self.started.elapsed());
        poll_until(left, || async {
            let status = self
                .client
                .monitor()
                .get_status(GetStatusRequest {})
                .await
                .ok()?
                .into_inner();
            let relayed = status
                .listen_addresses
                .iter()
                .any(|a| a.contains("/p2p-circuit"));
            relayed.then(|| self.started.elapsed())
        })
        .await
    }

    /// Dials `peer` by its peer id alone (no ticket, no address): how long it took, or why it
    /// failed.
    pub async fn dial_by_id(&self, peer: &str) -> Result<Duration, String> {
        self.dial(peer).await
    }

    /// This node's ticket (its addresses as it sees them, relayed ones included).
    pub async fn ticket(&self) -> String {
        self.client
            .overlay()
            .get_ticket(GetTicketRequest {})
            .await
            .expect("get_ticket")
            .into_inner()
            .ticket
    }

    /// Dials `target` (a peer id, ticket or multiaddr): how long it took, or why it failed.
    pub async fn dial(&self, target: &str) -> Result<Duration, String> {
        let start = Instant::now();
        let request = DialRequest {
            target: target.to_owned(),
            timeout_ms: u32::try_from(DIAL_DEADLINE.as_millis()).unwrap_or(u32::MAX),
        };
        // A little longer than the dial's own timeout: the node answers that one itself.
        let mut overlay = self.client.overlay();
        let dial = overlay.dial(request);
        match tokio::time::timeout(DIAL_DEADLINE + Duration::from_secs(5), dial).await {
            Ok(Ok(_)) => Ok(start.elapsed()),
            Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer within {DIAL_DEADLINE:?}")),
        }
    }

    /// What the node says of its connections to `peer`, if it has any.
    pub async fn peer(&self, peer: &str) -> Option<PeerInfo> {
        let peers = self
            .client
            .overlay()
            .list_peers(ListPeersRequest {})
            .await
            .ok()?
            .into_inner();
        peers.peers.into_iter().find(|p| p.peer_id == peer)
    }

    /// What the node's status says of how its NAT maps ports.
    pub async fn nat_mapping(&self) -> String {
        match self.client.monitor().get_status(GetStatusRequest {}).await {
            Ok(status) => status.into_inner().nat_mapping,
            Err(e) => format!("(no status: {e})"),
        }
    }

    /// How long until the node holds a direct (not relayed) connection to `peer`; `None` if not
    /// within `within`.
    pub async fn direct(&self, peer: &str, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        poll_until(within, || async {
            let info = self.peer(peer).await?;
            info.direct.then(|| start.elapsed())
        })
        .await
    }
}

/// The two nodes of one trial: A in home A of a pair, B in home B.
pub struct Pair {
    /// The node in home A.
    pub a: HomeNode,
    /// The node in home B.
    pub b: HomeNode,
}

impl Pair {
    /// Starts fresh nodes in both homes of pair `pair` at once.
    pub async fn start(lab: &NatLab, relay: &Relay, pair: usize, transport: Transport) -> Pair {
        let [home_a, home_b] = lab.homes(pair);
        let (a, b) = tokio::join!(
            HomeNode::start(lab, relay, &home_a.host, transport),
            HomeNode::start(lab, relay, &home_b.host, transport),
        );
        Pair { a, b }
    }

    /// Stops both nodes as their users would (SIGTERM): they say goodbye to the relay, which
    /// frees their reservations and circuits for the next trials at once (a killed QUIC
    /// node's would stay until the relay's connection to it timed out).
    pub async fn stop(&mut self) {
        tokio::join!(self.a.node.stop(), self.b.node.stop());
    }

    /// Both nodes' [`HomeNode::reservation`], waited for at once.
    pub async fn reservations(&self) -> [Option<Duration>; 2] {
        let (a, b) = tokio::join!(self.a.reservation(), self.b.reservation());
        [a, b]
    }
}

/// What one trial measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its number, from 0.
    pub trial: usize,
    /// For A and B, how long after start each held a relay reservation (`None`: not within
    /// [`RESERVATION_DEADLINE`]).
    pub reservations: [Option<Duration>; 2],
    /// A's dial of B by peer id alone: how long it took, or its error.
    pub dial: Result<Duration, String>,
    /// When the dial by peer id failed, A's dial of B by B's ticket (so that hole punching is
    /// measured even so): how long it took, or its error.
    pub ticket_dial: Option<Result<Duration, String>>,
    /// How long after the (successful) dial A held a direct connection to B (`None`: not
    /// within the lab's `direct_within`, or no dial succeeded).
    pub direct: Option<Duration>,
    /// What A said of its connections to B at the end, and B of A.
    pub seen: [Option<PeerInfo>; 2],
    /// What A and B said at the end of how their NATs map ports.
    pub nat_mapping: [String; 2],
}

impl Outcome {
    fn all_well(&self) -> bool {
        self.reservations.iter().all(Option::is_some) && self.dial.is_ok() && self.direct.is_some()
    }
}

/// One trial on pair `pair`: fresh nodes in both homes; their reservations; A dials B by peer
/// id alone (once both hold a reservation, or gave up on one), and if that fails by B's
/// ticket; then the wait for a direct connection; then both nodes stop. If `P2POS_NAT_LOGS`
/// names a directory, the nodes' logs and their routers' translations (`conntrack -L`) of a
/// trial that fell short of anything go there (`<label>-<trial>-a.log`, `-a.conntrack`, and
/// B's).
///
/// `started` is called once the nodes hold their reservations, or [`PACE`] after they
/// answered, whichever comes first: the next trial may start then.
pub async fn trial(
    lab: &NatLab,
    relay: &Relay,
    pair: usize,
    transport: Transport,
    (label, trial): (&str, usize),
    started: impl FnOnce(),
) -> Outcome {
    let mut nodes = Pair::start(lab, relay, pair, transport).await;
    let reservations = {
        let reservations = nodes.reservations();
        tokio::pin!(reservations);
        match tokio::time::timeout(PACE, &mut reservations).await {
            Ok(reservations) => {
                started();
                reservations
            }
            Err(_) => {
                started();
                reservations.await
            }
        }
    };
    let dial = nodes.a.dial_by_id(&nodes.b.peer_id).await;
    let ticket_dial = match dial {
        Ok(_) => None,
        Err(_) => Some(nodes.a.dial(&nodes.b.ticket().await).await),
    };
    let connected = dial.is_ok() || ticket_dial.as_ref().is_some_and(Result::is_ok);
    // Direct for both: each side's new streams take the direct connection.
    let direct = match connected {
        true => {
            let start = Instant::now();
            let within = lab.config().direct_within;
            let a_sees = nodes.a.direct(&nodes.b.peer_id, within).await;
            // What is left of the wait (B sees it when A does, or a moment later).
            let left = within
                .saturating_sub(start.elapsed())
                .max(Duration::from_secs(2));
            let b_sees = nodes.b.direct(&nodes.a.peer_id, left).await;
            a_sees.and(b_sees).map(|_| start.elapsed())
        }
        false => None,
    };
    let seen = [
        nodes.a.peer(&nodes.b.peer_id).await,
        nodes.b.peer(&nodes.a.peer_id).await,
    ];
    let nat_mapping = [nodes.a.nat_mapping().await, nodes.b.nat_mapping().await];
    let outcome = Outcome {
        trial,
        reservations,
        dial,
        ticket_dial,
        direct,
        seen,
        nat_mapping,
    };
    if !outcome.all_well()
        && let Some(dir) = std::env::var_os("P2POS_NAT_LOGS")
    {
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let homes = lab.homes(pair);
        for ((side, node), home) in [("a", &nodes.a), ("b", &nodes.b)].into_iter().zip(homes) {
            let path = dir.join(format!("{label}-{trial}-{side}.log"));
            let _ = std::fs::write(path, node.node.log());
            // The router's translations, where the `conntrack` tool is there.
            let flows = lab.conntrack(&home.router).unwrap_or_else(|e| e);
            let path = dir.join(format!("{label}-{trial}-{side}.conntrack"));
            let _ = std::fs::write(path, flows);
        }
    }
    nodes.stop().await;
    outcome
}

/// `trials` trials, up to as many side by side as `lab` has home pairs, each on a pair no other
/// running trial uses, each started once the one before holds its reservations (or after
/// [`PACE`]). Outcomes in trial order.
///
/// Starting a node takes a debug build some 0.4 s of CPU: nodes started all at once on a small
/// machine would measure the machine, not the network.
pub async fn trials(
    lab: &NatLab,
    relay: &Relay,
    transport: Transport,
    trials: usize,
    label: &str,
) -> Vec<Outcome> {
    let pairs = lab.config().pairs;
    let free = Mutex::new((0..pairs).collect::<Vec<usize>>());
    let take = || free.lock().expect("pair pool").pop();
    // How many trials have started (their nodes reserved, or PACE passed).
    let (started, starts) = tokio::sync::watch::channel(0usize);
    let mut outcomes: Vec<Outcome> = futures::stream::iter(0..trials)
        .map(|i| {
            let (take, free, started) = (&take, &free, &started);
            let mut starts = starts.clone();
            async move {
                let _ = starts.wait_for(|n| *n >= i).await;
                // At most `pairs` trials run at once, so a pair is free.
                let pair = take().expect("a free home pair");
                let on_start = || started.send_modify(|n| *n += 1);
                let outcome = trial(lab, relay, pair, transport, (label, i), on_start).await;
                free.lock().expect("pair pool").push(pair);
                outcome
            }
        })
        .buffer_unordered(pairs)
        .collect()
        .await;
    outcomes.sort_by_key(|o| o.trial);
    outcomes
}
