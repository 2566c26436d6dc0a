//! Reaching peers through relays, on loopback (issue 17): relays that declare their address
//! (`--external-address`, so they serve at once), and nodes that listen only through a relay —
//! no direct listener, as if behind a NAT that no hole punch gets through. The NAT lab
//! (`nat.rs`) checks the same behind real NAT routers.

use std::time::{Duration, Instant};

use p2pos_proto::{monitor::v1::NodeStatus, overlay::v1::DialRequest};
use p2pos_tests::{Node, connected_peer, free_port, status_when};

/// The relays (peer ids) `status` says the node holds a reservation on.
fn relays(status: &NodeStatus) -> &[String] {
    &status.relays
}

fn peer_id_of(relay: &str) -> &str {
    relay.rsplit('/').next().expect("/p2p/<id>")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_behind_a_relay_is_reached_by_its_peer_id_alone() {
    // With the DHT (its signed address record), and without it (asking the peers connected
    // to it: its relay).
    for dht in [true, false] {
        let (_r, relay) = Node::start_relay(&[]).await;
        let extra: &[&str] = if dht { &[] } else { &["--no-kademlia"] };
        let mut a = Node::start_relayed(&relay, extra);
        let mut b = Node::start_relayed(&relay, extra);
        let b_id = b.peer_id().await;
        let b_client = b.client().await;
        status_when(&b_client, "B to hold a reservation on the relay", |s| {
            relays(s).iter().any(|r| r == peer_id_of(&relay))
        })
        .await;
        let a_client = a.client().await;
        // A knows nobody but the relay: the look-up needs it connected (a node still dialling
        // its bootstrap peer finds nothing).
        connected_peer(&a_client, peer_id_of(&relay), "A to reach the relay").await;
        let dialled = a_client
            .overlay()
            .dial(DialRequest {
                target: b_id.clone(),
                timeout_ms: 10_000,
            })
            .await
            .unwrap_or_else(|e| panic!("dial B by its peer id alone (dht {dht}): {e}"))
            .into_inner();
        assert!(
            dialled.address.contains("/p2p-circuit"),
            "reached through the relay: {}",
            dialled.address
        );
        let peer = connected_peer(&a_client, &b_id, "A to list B").await;
        assert!(!peer.direct, "no direct path on loopback here: {peer:?}");
        assert_eq!(peer.relays, [peer_id_of(&relay)], "through which relay");
        assert!(!peer.why_relayed.is_empty(), "and why not direct: {peer:?}");
        drop((a, b));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_holds_two_reservations_within_seconds_and_reserves_again_when_a_relay_goes() {
    let mut relays_up = Vec::new();
    for _ in 0..3 {
        relays_up.push(Node::start_relay(&[]).await);
    }
    let bootstrap: Vec<&str> = relays_up.iter().map(|(_, a)| a.as_str()).collect();
    let bootstrap = bootstrap.join(",");
    let started = Instant::now();
    // A node with a direct listener on loopback, which AutoNAT cannot call public: it
    // reserves without waiting for a verdict.
    let mut node = Node::start(&["--bootstrap", &bootstrap]);
    let client = node.client().await;
    let status = status_when(&client, "the node to hold two reservations", |s| {
        relays(s).len() == 2
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "two reservations {took:?} after start (goal: within 5 s)"
    );
    let held = relays(&status).to_vec();
    assert_ne!(held[0], held[1], "on two different relays");
    // A relay it holds a reservation on goes away: it reserves on the third.
    let (gone, gone_addr) = relays_up
        .iter_mut()
        .find(|(_, addr)| held.iter().any(|h| h == peer_id_of(addr)))
        .expect("a held relay is one of the three");
    let gone_id = peer_id_of(gone_addr).to_owned();
    gone.kill();
    status_when(&client, "a reservation on the relay that is left", |s| {
        relays(s).len() == 2 && !relays(s).contains(&gone_id)
    })
    .await;
    drop(node);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_declares_its_address_holds_no_reservation() {
    let (_r, relay) = Node::start_relay(&[]).await;
    let port = free_port();
    let addr = format!("/ip4/127.0.0.1/tcp/{port}");
    let mut node = Node::start_with(&[
        "--listen",
        &addr,
        "--external-address",
        &addr,
        "--bootstrap",
        &relay,
    ]);
    let client = node.client().await;
    // Identify told it the relay serves (its agent is known), and it still holds none.
    let relay_id = peer_id_of(&relay).to_owned();
    let peer = connected_peer(&client, &relay_id, "the node to connect to the relay").await;
    let status = status_when(&client, "the relay's identify", |s| {
        s.peers
            .iter()
            .any(|p| p.peer_id == relay_id && !p.agent_version.is_empty())
    })
    .await;
    assert!(peer.direct);
    assert!(status.relays.is_empty(), "public: {:?}", status.relays);
    assert_eq!(status.reachability, "public");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_meets_its_bootstrap_peer_again_after_it_restarts() {
    // A peer that is no relay (nothing would be reserved on it), and a node that listens on
    // nothing: the peer cannot dial it back, so only the node itself can reconnect.
    let mut peer = Node::start(&[]);
    let peer_id = peer.peer_id().await;
    let ticket = peer.ticket().await;
    let mut node = Node::start_with(&["--bootstrap", &ticket]);
    let client = node.client().await;
    connected_peer(&client, &peer_id, "the node to reach its bootstrap peer").await;
    // Its only peer goes, and comes back at the same address (its port is remembered): the
    // node meets it again by itself.
    peer.kill();
    status_when(&client, "the node to see the peer gone", |s| {
        s.peers.is_empty()
    })
    .await;
    peer.restart();
    connected_peer(
        &client,
        &peer_id,
        "the node to dial its bootstrap peer again",
    )
    .await;
}
