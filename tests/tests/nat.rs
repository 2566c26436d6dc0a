//! The NAT lab (issue 17, "reachable behind NATs by peer id alone"): two homes behind NAT
//! routers and a relay on the internet, in network namespaces. First the lab itself is checked
//! (its routers translate and filter as home routers do); then, per scenario, fresh nodes in
//! both homes of each trial are measured against the goals: every dial by peer id
//! alone reaches the peer, a relay reservation within 5 s (p95), a direct connection in at least
//! 90 % of the trials where the NATs keep a host's port, and apps' channels and messages arrive
//! whole, once and in order across a port-randomizing NAT.
//!
//! Each scenario prints its numbers (nextest shows them for passing tests too, see
//! `.config/nextest.toml`). `P2POS_NAT_TRIALS` sets the trials per scenario (default 20);
//! `P2POS_NAT_LOGS=DIR` keeps the node logs and the routers' conntrack tables of every trial
//! that fell short of a goal.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use bytes::Bytes;
use p2pos_tests::natlab::{
    Config, Home, Internet, Nat, NatLab, Unsolicited,
    apps::{channel_carries, messages_arrive},
    in_namespace,
    report::{Summary, percentile},
    trials::{Pair, Relay, Transport, trials},
};

/// Trials per scenario.
fn trial_count() -> usize {
    std::env::var("P2POS_NAT_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20)
}

/// Most trials running side by side in one lab (one home pair each; each trial takes one of the
/// relay's circuits while it runs).
const SIDE_BY_SIDE: usize = 10;

/// The lab of `config`, or the test fails saying what is missing.
fn lab(config: Config) -> NatLab {
    NatLab::create(config).unwrap_or_else(|e| panic!("{e}"))
}

// ---- The lab itself --------------------------------------------------------------------------

/// Runs `f` inside namespace `ns`.
fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    in_namespace(ns, f).unwrap_or_else(|e| panic!("{e}"))
}

/// What the relay sees of a TCP connection and of a UDP datagram from `home`'s host, with the
/// host's own local ports: `[(local, seen); 2]` for TCP, then UDP; and the TCP connect time.
fn outbound(lab: &NatLab, home: &Home) -> ([(u16, SocketAddr); 2], Duration) {
    let relay = SocketAddr::from((lab.relay_ip(), 7000));
    let (listener, udp) = inside(lab.relay_ns(), || {
        (
            TcpListener::bind("0.0.0.0:7000").expect("relay TCP"),
            UdpSocket::bind("0.0.0.0:7000").expect("relay UDP"),
        )
    });
    let (stream, connect_time) = inside(&home.host, move || {
        let start = Instant::now();
        let stream = TcpStream::connect_timeout(&relay, Duration::from_secs(5));
        (
            stream.expect("the host reaches the relay over TCP"),
            start.elapsed(),
        )
    });
    let (_, tcp_seen) = listener.accept().expect("the relay accepts");
    let host_udp = inside(&home.host, || {
        UdpSocket::bind("0.0.0.0:0").expect("host UDP")
    });
    host_udp.send_to(b"hello", relay).expect("send");
    udp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let (_, udp_seen) = udp
        .recv_from(&mut [0; 16])
        .expect("the relay gets the datagram");
    // The answer gets back through the NAT.
    udp.send_to(b"hello yourself", udp_seen).expect("answer");
    host_udp
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    host_udp
        .recv_from(&mut [0; 32])
        .expect("the host gets the relay's answer");
    let local = |a: std::io::Result<SocketAddr>| a.expect("local address").port();
    (
        [
            (local(stream.local_addr()), tcp_seen),
            (local(host_udp.local_addr()), udp_seen),
        ],
        connect_time,
    )
}

/// What the relay gets when it sends, unsolicited, a TCP SYN and a UDP datagram to the port
/// `home`'s host listens on at its router: the errors of the connect and of the datagram's
/// answer. Fails if anything reaches the host.
fn unsolicited(lab: &NatLab, home: &Home) -> (ErrorKind, ErrorKind) {
    let (listener, udp) = inside(&home.host, || {
        let listener = TcpListener::bind("0.0.0.0:0").expect("host TCP");
        listener.set_nonblocking(true).expect("nonblocking");
        let udp = UdpSocket::bind("0.0.0.0:0").expect("host UDP");
        udp.set_nonblocking(true).expect("nonblocking");
        (listener, udp)
    });
    let ports = (
        listener.local_addr().expect("addr").port(),
        udp.local_addr().expect("addr").port(),
    );
    let wan = home.wan_ip;
    let errors = inside(lab.relay_ns(), move || {
        let tcp = TcpStream::connect_timeout(&(wan, ports.0).into(), Duration::from_secs(1))
            .map(|_| ())
            .expect_err("nothing answers unsolicited TCP");
        let udp = UdpSocket::bind("0.0.0.0:0").expect("UDP");
        udp.connect((wan, ports.1)).expect("connect");
        udp.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        udp.send(b"anyone?").expect("send");
        let answer = udp.recv(&mut [0; 16]).map(|_| ()).expect_err("no answer");
        (tcp.kind(), answer.kind())
    });
    let tcp = listener.accept().map(|(_, from)| from);
    assert_eq!(
        tcp.map_err(|e| e.kind()).err(),
        Some(ErrorKind::WouldBlock),
        "unsolicited TCP never reaches the host"
    );
    let udp_got = udp.recv_from(&mut [0; 16]).map(|(_, from)| from);
    assert_eq!(
        udp_got.map_err(|e| e.kind()).err(),
        Some(ErrorKind::WouldBlock),
        "an unsolicited datagram never reaches the host"
    );
    errors
}

/// The source port `home`'s router gives the host's UDP port once an unsolicited datagram from
/// the relay to that port went to the router first (a peer's hole-punching packet that arrived
/// before the host's own), with the host's port.
fn port_after_unsolicited(lab: &NatLab, home: &Home) -> (u16, u16) {
    let host_udp = inside(&home.host, || {
        UdpSocket::bind("0.0.0.0:0").expect("host UDP")
    });
    let port = host_udp.local_addr().expect("addr").port();
    let wan = home.wan_ip;
    inside(lab.relay_ns(), move || {
        let udp = UdpSocket::bind("0.0.0.0:7001").expect("relay UDP");
        udp.connect((wan, port)).expect("connect");
        udp.send(b"punch").expect("unsolicited");
        // The router's answer (an ICMP error) or, from a dropping router, none: either way the
        // datagram has been through the router.
        udp.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let _ = udp.recv(&mut [0; 16]);
    });
    let relay_udp = inside(lab.relay_ns(), || {
        UdpSocket::bind("0.0.0.0:7001").expect("relay UDP")
    });
    host_udp
        .send_to(b"punch back", (lab.relay_ip(), 7001))
        .expect("send");
    relay_udp
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let (_, seen) = relay_udp
        .recv_from(&mut [0; 16])
        .expect("the relay gets it");
    (port, seen.port())
}

/// How much longer than its links' latency a round trip may take in the lab.
const MARGIN: Duration = Duration::from_millis(50);

#[test]
#[ignore = "needs root / netns / nftables: run by .ci/run (tools/run-tests --include-ignored)"]
fn the_lab_translates_and_filters_as_home_routers_do() {
    let (delay, relay_delay) = (Duration::from_millis(10), Duration::from_millis(20));
    let labs = [
        lab(Config {
            nats: [Nat::DROPPING, Nat::RANDOM_PORTS],
            delay,
            relay_delay,
            ..Config::default()
        }),
        lab(Config {
            internet: Internet::Private,
            nats: [Nat::REJECTING, Nat::ACCEPTING],
            delay,
            relay_delay,
            ..Config::default()
        }),
    ];
    for lab in &labs {
        for (home, nat) in lab.homes(0).iter().zip(lab.config().nats) {
            let what = format!("{:?} internet, home behind {nat:?}", lab.config().internet);
            let (seen, connect_time) = outbound(lab, home);
            println!("{what}: TCP, UDP (host port, seen) {seen:?}; TCP connect {connect_time:?}");
            for (local, seen) in seen {
                assert_eq!(seen.ip(), home.wan_ip, "{what}: the relay sees the router");
                // One in 64 511 times a random port is the host's own: fine for a test.
                assert_eq!(
                    seen.port() == local,
                    !nat.random_ports,
                    "{what}: port {local} seen as {}",
                    seen.port()
                );
            }
            // Host to relay is two links each way (the router's and the relay's): a round trip,
            // plus the router's ARP for the relay, which takes as long.
            let round_trip = 2 * (delay + relay_delay);
            assert!(
                connect_time >= 2 * round_trip && connect_time < 2 * round_trip + MARGIN,
                "{what}: TCP connect took {connect_time:?}"
            );
            let (tcp, udp) = unsolicited(lab, home);
            println!("{what}: unsolicited TCP {tcp:?}, UDP {udp:?}");
            let expected = match nat.unsolicited {
                Unsolicited::Drop => (ErrorKind::TimedOut, ErrorKind::WouldBlock),
                Unsolicited::Reject | Unsolicited::Accept => {
                    (ErrorKind::ConnectionRefused, ErrorKind::ConnectionRefused)
                }
            };
            assert_eq!((tcp, udp), expected, "{what}: unsolicited TCP, UDP");
            if !nat.random_ports {
                let (port, seen) = port_after_unsolicited(lab, home);
                println!("{what}: after an unsolicited datagram, port {port} seen as {seen}");
                // Accepted, the unsolicited datagram leaves a conntrack entry for the same
                // pair of addresses, and the router masquerades the host's flow to another
                // port; dropped or rejected, it leaves none.
                assert_eq!(
                    seen == port,
                    nat.unsolicited != Unsolicited::Accept,
                    "{what}: after an unsolicited datagram, port {port} seen as {seen}"
                );
            }
        }
    }
}

// ---- Nodes in the lab --------------------------------------------------------------------------

/// What a scenario's peers end with.
#[derive(Clone, Copy)]
enum Expect {
    /// The NATs keep a host's port: hole punching reaches a direct connection in at least
    /// this percentage of the trials (issue 17's goal: 90).
    Direct(usize),
    /// The peers stay relayed, and both say why.
    Relayed,
}

/// The goals of issue 17 for `summary`; the goals it misses, each with what was measured.
fn missed_goals(summary: &Summary, expect: Expect) -> Vec<String> {
    let n = summary.trials();
    let mut missed = Vec::new();
    if summary.reached() < n {
        missed.push(format!(
            "dial by peer id alone: {}/{n} reached, goal {n}/{n}",
            summary.reached()
        ));
    }
    let p95 = percentile(&summary.reservations(), 95.0);
    if p95.is_none_or(|t| t > Duration::from_secs(5)) {
        missed.push(format!(
            "relay reservation p95 {}, goal <= 5 s",
            p95.map_or("not within the deadline".to_owned(), |t| format!("{t:.2?}"))
        ));
    }
    if let Expect::Direct(percent) = expect
        && summary.direct() < (n * percent).div_ceil(100)
    {
        let needed = (n * percent).div_ceil(100);
        missed.push(format!(
            "direct connection: {}/{n}, goal >= {needed}/{n}",
            summary.direct()
        ));
    }
    let unexplained = summary.unexplained_relayed();
    if matches!(expect, Expect::Relayed) && unexplained > 0 {
        missed.push(format!(
            "relayed without saying why (`why_relayed` empty on A or B): {unexplained}/{n}"
        ));
    }
    missed
}

/// Runs the scenario's trials in a lab of `config` with home nodes on `transport`, prints the
/// numbers, and fails the test with every goal it misses.
async fn scenario(config: Config, transport: Transport, expect: Expect) {
    let n = trial_count();
    let lab = lab(Config {
        pairs: SIDE_BY_SIDE.min(n),
        ..config
    });
    let [nat_a, nat_b] = lab.config().nats;
    let label = format!(
        "{transport}; routers {} and {}; {:?} internet; {:?} per home link, {:?} to the relay",
        describe(nat_a),
        describe(nat_b),
        lab.config().internet,
        lab.config().delay,
        lab.config().relay_delay,
    );
    let relay = Relay::start(&lab).await;
    let outcomes = trials(&lab, &relay, transport, n, &file_label(&label)).await;
    let summary = Summary {
        label,
        outcomes,
        direct_within: lab.config().direct_within,
    };
    println!("{summary}");
    let missed = missed_goals(&summary, expect);
    assert!(
        missed.is_empty(),
        "{}: goals missed:\n  {}",
        summary.label,
        missed.join("\n  ")
    );
    drop(relay);
}

/// "keeps ports, drops unsolicited" and the like.
fn describe(nat: Nat) -> String {
    let ports = match nat.random_ports {
        true => "randomizes ports",
        false => "keeps ports",
    };
    let unsolicited = match nat.unsolicited {
        Unsolicited::Drop => "drops",
        Unsolicited::Reject => "rejects",
        Unsolicited::Accept => "accepts",
    };
    format!("({ports}, {unsolicited} unsolicited)")
}

/// `label` as a file name's start.
fn file_label(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root / netns / nftables: run by .ci/run (tools/run-tests --include-ignored)"]
async fn tcp_through_dropping_nats_by_peer_id() {
    let config = Config {
        nats: [Nat::DROPPING; 2],
        ..Config::default()
    };
    scenario(config, Transport::Tcp, Expect::Direct(90)).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root / netns / nftables: run by .ci/run (tools/run-tests --include-ignored)"]
async fn quic_through_dropping_nats_by_peer_id() {
    let config = Config {
        nats: [Nat::DROPPING; 2],
        ..Config::default()
    };
    scenario(config, Transport::Quic, Expect::Direct(90)).await;
}

/// Rejecting routers between friends near each other (1 ms per home link) with a relay
/// farther away (25 ms): a SYN or datagram that arrives before the other side's own has left
/// is answered with a reset or an ICMP error, so the simultaneous open must be timed to the
/// millisecond, or retried. (At 10 ms per link the timing of DCUtR's synchronisation is good
/// enough by itself, and the code of before issue 17 passed; at 0 to 1 ms it fails 2 in 3.)
const NEAR: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(25));

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root / netns / nftables: run by .ci/run (tools/run-tests --include-ignored)"]
async fn tcp_through_rejecting_nats_by_peer_id() {
    let config = Config {
        nats: [Nat::REJECTING; 2],
        delay: NEAR.0,
        relay_delay: NEAR.1,
        ..Config::default()
    };
    scenario(config, Transport::Tcp, Expect::Direct(90)).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root / netns / nftables: run by .ci/run (tools/run-tests --include-ignored)"]
async fn quic_through_rejecting_nats_by_peer_id() {
    let config = Config {
        nats: [Nat::REJECTING; 2],
        delay: NEAR.0,
        relay_delay: NEAR.1,
        ..Config::default()
    };
    scenario(config, Transport::Quic, Expect::Direct(90)).await;
}

/// Routers whose own stack answers unsolicited packets (a TCP reset, an ICMP error), as
/// routers that accept them on the WAN side do: the issue counts them with the rejecting ones.
/// For QUIC it is harder still: an accepted datagram leaves a conntrack entry (30 s) for the
/// pair of addresses, so when the peer's first datagram arrives before the host's own has
/// left, the router gives the host's flow to that peer another port (see the lab's own test),
/// and the peer's datagrams to the port it was told are not answers to anything. (TCP through
/// these routers behaves as through rejecting ones: the reset ends the entry at once.) DCUtR's
/// synchronisation (a wait of half the relayed round trip, which processing overstates)
/// decides who is first: a quarter of first tries fail so. Every try within the entry's life
/// fails too, so the node tries again once it has expired (35 s after DCUtR gave up, some
/// 16 s after it started; twice at most): the trial waits for both tries. Measured: 14–15 of
/// 20 direct at once, the rest after the first try again (~53 s), 20/20 in all.
const ACCEPTING_QUIC_DIRECT_WITHIN: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root / netns / nftables: run by .ci/run (tools/run-tests --include-ignored)"]
async fn quic_through_accepting_nats_by_peer_id() {
    let config = Config {
        nats: [Nat::ACCEPTING; 2],
        direct_within: ACCEPTING_QUIC_DIRECT_WITHIN,
        ..Config::default()
    };
    scenario(config, Transport::Quic, Expect::Direct(90)).await;
}

/// Behind a port-randomizing NAT hole punching cannot work: the peers stay relayed, and every
/// dial by peer id still reaches the peer.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root / netns / nftables: run by .ci/run (tools/run-tests --include-ignored)"]
async fn through_a_port_randomizing_nat_by_peer_id() {
    let config = Config {
        nats: [Nat::DROPPING, Nat::RANDOM_PORTS],
        ..Config::default()
    };
    scenario(config, Transport::Both, Expect::Relayed).await;
}

/// An "internet" of private addresses (a carrier or campus NAT): nodes trust private
/// addresses as external, and everything works as on a public one.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root / netns / nftables: run by .ci/run (tools/run-tests --include-ignored)"]
async fn on_a_private_internet_by_peer_id() {
    let config = Config {
        internet: Internet::Private,
        nats: [Nat::DROPPING; 2],
        ..Config::default()
    };
    scenario(config, Transport::Both, Expect::Direct(90)).await;
}

/// An app's channel and messages between the two homes, one behind a port-randomizing NAT
/// (so the peers stay relayed): a 1 MiB frame, a 200 KiB frame (a long chat line) followed by
/// small ones; a 200 KiB message followed by small ones. Each arrives once, in order.
async fn apps_across_a_port_randomizing_nat(internet: Internet) {
    let lab = lab(Config {
        internet,
        nats: [Nat::DROPPING, Nat::RANDOM_PORTS],
        ..Config::default()
    });
    let relay = Relay::start(&lab).await;
    let nodes = Pair::start(&lab, &relay, 0, Transport::Both).await;
    let reservations = nodes.reservations().await;
    let dial = nodes.a.dial_by_id(&nodes.b.peer_id).await;
    println!("{internet:?} internet: reservations {reservations:?}; dial by peer id {dial:?}");
    let small = |what: &'static str| (1..=5).map(move |i| Bytes::from(format!("{what} {i}")));
    let frames: Vec<Bytes> = [
        Bytes::from(vec![0xab; 1024 * 1024]),
        Bytes::from(vec![b'x'; 200 * 1024]),
    ]
    .into_iter()
    .chain(small("line"))
    .collect();
    let messages: Vec<Bytes> = std::iter::once(Bytes::from(vec![b'y'; 200 * 1024]))
        .chain(small("message"))
        .collect();
    let (a, b, b_id) = (&nodes.a.client, &nodes.b.client, &nodes.b.peer_id);
    let channel = channel_carries(a, b, b_id, "natlab-chat", &frames).await;
    println!("channel: {channel:?}");
    let sent = messages_arrive(a, b, b_id, "natlab-chat", &messages).await;
    println!("messages: {sent:?}");
    let seen = nodes.a.peer(b_id).await;
    println!("A's connections to B at the end: {seen:?}");
    assert!(
        dial.is_ok() && channel.is_ok() && sent.is_ok(),
        "{internet:?} internet: dial by peer id {dial:?}; channel {channel:?}; messages {sent:?}"
    );
    // What this test is about: everything went through the relay.
    assert!(
        seen.is_some_and(|p| !p.direct),
        "A and B were to be connected only through the relay"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root / netns / nftables: run by .ci/run (tools/run-tests --include-ignored)"]
async fn apps_talk_across_a_port_randomizing_nat() {
    apps_across_a_port_randomizing_nat(Internet::Public).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root / netns / nftables: run by .ci/run (tools/run-tests --include-ignored)"]
async fn apps_talk_across_a_port_randomizing_nat_on_a_private_internet() {
    apps_across_a_port_randomizing_nat(Internet::Private).await;
}

/// The doctor on a pair that stays relayed because B's NAT gives each destination a new port:
/// B meets two public nodes (the relay and another), which see it at different ports, so it
/// knows how its NAT maps; B allows A to diagnose it, so A's verdict uses B's side and says
/// why they are relayed and what would fix it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root / netns / nftables: run by .ci/run (tools/run-tests --include-ignored)"]
async fn the_doctor_explains_why_a_pair_stays_relayed() {
    use p2pos_proto::monitor::v1::{DoctorRequest, Verdict};
    use p2pos_tests::{natlab::trials::HomeNode, poll_until, wait_for};

    let lab = lab(Config {
        nats: [Nat::DROPPING, Nat::RANDOM_PORTS],
        ..Config::default()
    });
    let relay = Relay::start(&lab).await;
    let observer = Relay::start_on(&lab, 4002).await;
    let [home_a, home_b] = lab.homes(0);
    let a = HomeNode::start(&lab, &relay, &home_a.host, Transport::Both).await;
    // B knows the relay by its QUIC address and the observer by its TCP one: each sees B over
    // one transport (as happens when each dial's fastest transport differs), so B must have
    // one of them see it over the other transport too before it can judge its NAT.
    let flags = [
        "--bootstrap".to_owned(),
        relay.bootstrap(Transport::Quic),
        "--bootstrap".to_owned(),
        observer.bootstrap(Transport::Tcp),
        "--allow-diagnosis".to_owned(),
        a.peer_id.clone(),
    ];
    let b = HomeNode::start_with(&lab, &[], &home_b.host, Transport::Both, &flags).await;
    let known = poll_until(Duration::from_secs(30), || async {
        (b.nat_mapping().await == "port-randomizing").then_some(())
    })
    .await;
    if known.is_none() {
        let status = b
            .client
            .monitor()
            .get_status(p2pos_proto::monitor::v1::GetStatusRequest {})
            .await;
        panic!(
            "B's NAT mapping is not known: {status:#?}\n{}",
            b.node.log()
        );
    }
    b.reservation().await.expect("B holds a reservation");
    a.dial_by_id(&b.peer_id)
        .await
        .expect("A reaches B by peer id");

    let doctor_b = || async {
        a.client
            .monitor()
            .doctor(DoctorRequest {
                peer: b.peer_id.clone(),
                ..DoctorRequest::default()
            })
            .await
            .expect("doctor B")
            .into_inner()
    };
    let report = doctor_b().await;
    let shown = format!("{report:#?}");
    let check = |name: &str| {
        report
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name}: {shown}"))
    };
    assert_eq!(check("reach").verdict(), Verdict::Ok, "{shown}");
    assert_eq!(check("peer-view").verdict(), Verdict::Ok, "{shown}");
    let connection = check("connection");
    assert_eq!(connection.verdict(), Verdict::Warn, "{shown}");
    assert!(
        connection.summary.starts_with(&format!(
            "relayed, because the peer {} is behind a NAT that maps ports per destination and \
             has no port mapping: you will stay relayed",
            b.peer_id
        )),
        "{shown}"
    );
    let remedy = &connection.remedy;
    assert!(remedy.starts_with("forwarding "), "{shown}");
    assert!(
        remedy.contains("TCP/") && remedy.contains("UDP/"),
        "{shown}"
    );
    assert_eq!(check("protocols").verdict(), Verdict::Ok, "{shown}");
    assert!(
        connection
            .remedy
            .contains(&format!("on the peer {}'s router", b.peer_id)),
        "{shown}"
    );

    // Once hole punching has given up, the pair's evidence lists the attempt and how it ended.
    let listed = wait_for(
        "the failed hole punch in the evidence",
        Duration::from_secs(60),
        || async {
            let report = doctor_b().await;
            let connection = report.checks.into_iter().find(|c| c.name == "connection");
            connection
                .into_iter()
                .flat_map(|c| c.evidence)
                .find(|e| e.starts_with("hole punch ") && e.contains(" ago: failed: "))
        },
    )
    .await;
    println!("evidence: {listed}");

    // B's own doctor says the same of its NAT, with the port to forward.
    let own = b
        .client
        .monitor()
        .doctor(DoctorRequest::default())
        .await
        .expect("B's doctor")
        .into_inner();
    let reach = own
        .checks
        .iter()
        .find(|c| c.name == "reachability")
        .expect("reachability");
    assert_eq!(reach.verdict(), Verdict::Warn, "{own:#?}");
    assert!(reach.remedy.starts_with("forward "), "{own:#?}");
    assert!(
        reach
            .remedy
            .contains("--external-address /ip4/<public ip>/"),
        "{own:#?}"
    );
}
