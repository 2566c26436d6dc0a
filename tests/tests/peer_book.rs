//! The peer book stores only addresses the node connected to: a listen address a peer claims
//! through identify (here a raw libp2p peer claiming a port of the test's choosing) is dialled
//! back at most once, then neither stored nor dialled at the next start; a peer that was dialled
//! by a friend stores the friend's address once it connected back to it, and redials it after a
//! restart.

use std::{
    io::ErrorKind,
    net::TcpListener,
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{Multiaddr, PeerId, identify, identity::Keypair};
use p2pos_proto::monitor::v1::{EventsRequest, event};
use p2pos_tests::{Node, connected_peer, p2pctl, status_when, wait_for};

const T: Duration = Duration::from_secs(30);

/// Connections accepted on `trap` so far (each is closed at once: no libp2p there).
fn accepted(trap: &TcpListener) -> usize {
    let mut n = 0;
    loop {
        match trap.accept() {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
            Err(e) => panic!("the trap failed: {e}"),
        }
    }
}

/// The peers `node`'s stored book holds (read from its store while it is stopped).
fn stored_peers(node: &Node) -> Vec<(PeerId, Vec<Multiaddr>)> {
    let store = p2pos_kernel::store::SledStore::open(&node.data_dir.join("store"))
        .expect("the stopped node's store");
    p2pos_network::stored_peers(store.as_ref())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_a_peer_claims_is_neither_stored_nor_dialled_at_start() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    let a_client = a.client().await;
    let b_id = b.peer_id().await;
    let (ok, _, err) = p2pctl(&a, &["dial", &b.ticket().await]);
    assert!(ok, "{err}");

    // The liar claims to listen on a port the test holds: any dial of it shows here.
    let trap = TcpListener::bind("127.0.0.1:0").expect("trap");
    trap.set_nonblocking(true).expect("nonblocking");
    let claimed: Multiaddr = format!(
        "/ip4/127.0.0.1/tcp/{}",
        trap.local_addr().expect("port").port()
    )
    .parse()
    .expect("multiaddr");
    let key = Keypair::generate_ed25519();
    let liar = key.public().to_peer_id();
    let mut swarm = p2pos_tests::bare_swarm(key, |key| {
        identify::Behaviour::new(identify::Config::new(
            "/p2pos/1.0.0".to_owned(),
            key.public(),
        ))
    });
    swarm.add_external_address(claimed.clone());
    let ticket = a_client
        .overlay()
        .get_ticket(p2pos_proto::overlay::v1::GetTicketRequest {})
        .await
        .expect("ticket")
        .into_inner();
    let a_addr: Multiaddr = ticket.addresses[0].parse().expect("an address");
    swarm.dial(a_addr).expect("dial");
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });

    connected_peer(&a_client, &liar.to_string(), "the liar to reach A").await;
    // A heard the claim and checked it once (the liar came from 127.0.0.1): nothing answered.
    wait_for("A to check the claimed address once", T, || async {
        (accepted(&trap) > 0).then_some(())
    })
    .await;

    let status = status_when(&a_client, "A's status", |_| true).await;
    assert_eq!(status.remembered_peers, 1, "B only");
    assert!(a.stop().await.success());
    let book = stored_peers(&a);
    let b_peer: PeerId = b_id.parse().expect("peer id");
    assert!(
        book.iter()
            .any(|(p, addrs)| *p == b_peer && !addrs.is_empty()),
        "B, which A dialled, is stored: {book:?}"
    );
    assert!(
        !book.iter().any(|(p, _)| *p == liar),
        "the liar, which A never connected to, is not: {book:?}"
    );
    assert!(
        !book.iter().flat_map(|(_, a)| a).any(|a| *a == claimed),
        "nor the address it claimed: {book:?}"
    );

    accepted(&trap);
    a.restart();
    let a_client = a.client().await;
    connected_peer(&a_client, &b_id, "A to redial B at start").await;
    // A's start-up dials go out together, and a loopback TCP connect completes well before the
    // noise handshake with B does: a dial of the claimed address would show by now. Watch a
    // moment longer all the same.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        assert_eq!(accepted(&trap), 0, "A dialled the claimed address at start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_dialled_by_a_friend_redials_the_friend_after_a_restart() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    let a_id = a.peer_id().await;
    let b_client = b.client().await;
    let (ok, _, err) = p2pctl(&a, &["dial", &b.ticket().await]);
    assert!(ok, "{err}");
    // B was dialled; it checks A's claimed listen address by connecting to it, and stores it.
    status_when(&b_client, "B to remember A", |s| s.remembered_peers == 1).await;
    assert!(b.stop().await.success());
    let a_peer: PeerId = a_id.parse().expect("peer id");
    let book = stored_peers(&b);
    assert!(
        book.iter()
            .any(|(p, addrs)| *p == a_peer && !addrs.is_empty()),
        "B stored A's address once it connected to it: {book:?}"
    );
    b.restart();
    let b_client = b.client().await;
    connected_peer(&b_client, &a_id, "B to redial A at start").await;
}

/// The connection a node dials back to check an inbound peer's claimed listen address is the
/// peer's doing, not the node's: it is closed once made, even when the peer's own connection
/// has gone meanwhile, so that peers cannot fill the room kept for the node's own dials by
/// making it dial them. Nor is it announced: the peer does not seem to connect again and leave.
#[tokio::test(flavor = "multi_thread")]
async fn a_check_of_a_claimed_address_is_closed_even_when_it_is_the_only_connection() {
    let mut a = Node::start(&[]);
    let a_client = a.client().await;
    let mut events = a_client
        .monitor()
        .events(EventsRequest {})
        .await
        .expect("events")
        .into_inner();
    let key = Keypair::generate_ed25519();
    let peer = key.public().to_peer_id().to_string();
    let mut swarm = p2pos_tests::bare_swarm(key, |key| {
        identify::Behaviour::new(identify::Config::new(
            "/p2pos/1.0.0".to_owned(),
            key.public(),
        ))
    });
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
        .expect("listen");
    // Where it listens is what it claims (and where A's check arrives).
    let listening = tokio::time::timeout(T, async {
        loop {
            if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
                swarm.select_next_some().await
            {
                return address;
            }
        }
    })
    .await
    .expect("listening");
    swarm.add_external_address(listening);
    let ticket = a_client
        .overlay()
        .get_ticket(p2pos_proto::overlay::v1::GetTicketRequest {})
        .await
        .expect("ticket")
        .into_inner();
    let a_addr: Multiaddr = ticket.addresses[0].parse().expect("an address");
    let a_addr_for_marker = a_addr.clone();
    swarm.dial(a_addr).expect("dial");
    let checked = tokio::time::timeout(T, async {
        // The peer's own connection to A, and A's check (the only inbound one) with when it
        // arrived.
        let (mut own, mut check) = (None, None);
        loop {
            match swarm.select_next_some().await {
                libp2p::swarm::SwarmEvent::ConnectionEstablished {
                    connection_id,
                    endpoint,
                    ..
                } if endpoint.is_dialer() => own = Some(connection_id),
                // A's check arrives: the peer leaves while it is set up, so that the check is
                // the only connection between them once it is.
                libp2p::swarm::SwarmEvent::IncomingConnection { connection_id, .. } => {
                    if let Some(own) = own.take() {
                        swarm.close_connection(own);
                    }
                    check = Some((connection_id, Instant::now()));
                }
                // Closed once set up (or, as A closes it at once, while the peer still sets
                // it up).
                libp2p::swarm::SwarmEvent::ConnectionClosed { connection_id, .. }
                | libp2p::swarm::SwarmEvent::IncomingConnectionError { connection_id, .. }
                    if check.is_some_and(|(id, _)| id == connection_id) =>
                {
                    return check.map(|(_, at)| at.elapsed());
                }
                _ => {}
            }
        }
    })
    .await
    .expect("A checks the claimed address, then closes the check");
    let lasted = checked.expect("a check");
    assert!(
        lasted < Duration::from_secs(5),
        "the check stayed open {lasted:?}"
    );
    // A announced the peer's own connection and its end, and nothing of the check: what A
    // published before another peer's connection (A's events are in order) is all there is.
    let marker = Keypair::generate_ed25519();
    let marker_id = marker.public().to_peer_id().to_string();
    let mut other = p2pos_tests::bare_swarm(marker, |_| libp2p::swarm::dummy::Behaviour);
    other.dial(a_addr_for_marker).expect("dial");
    let _driver = tokio::spawn(async move {
        loop {
            other.select_next_some().await;
        }
    });
    let seen = tokio::time::timeout(T, async {
        let mut seen = Vec::new();
        while let Some(event) = events.next().await {
            match event.expect("event").kind {
                Some(event::Kind::PeerConnected(c)) if c.peer_id == marker_id => return seen,
                Some(event::Kind::PeerConnected(c)) if c.peer_id == peer => seen.push("connected"),
                Some(event::Kind::PeerGone(g)) if g.peer_id == peer => seen.push("gone"),
                _ => {}
            }
        }
        seen
    })
    .await
    .expect("the other peer's connection announced");
    assert_eq!(seen, ["connected", "gone"], "what A announced of the peer");
}
