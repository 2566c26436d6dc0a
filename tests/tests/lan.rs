//! A LAN of two test hosts (network namespaces joined by veth): nodes started with the
//! defaults find each other by mDNS and connect, with no ticket and no dial.

use p2pos_tests::{Lan, Node, connected_peer};

#[tokio::test(flavor = "multi_thread")]
async fn nodes_on_a_lan_find_each_other_by_mdns() {
    let Some(lan) = Lan::create() else {
        eprintln!("skipped: network namespaces cannot be created here (needs root and iproute2)");
        return;
    };
    let mut a = Node::start_in_netns(&lan.hosts[0], &[]);
    let mut b = Node::start_in_netns(&lan.hosts[1], &[]);
    let b_id = b.peer_id().await;
    let client = a.client().await;
    let peer = connected_peer(&client, &b_id, "A to find B by mDNS").await;
    assert!(
        peer.addresses.iter().any(|a| a.starts_with("/ip4/10.213.")),
        "connected over the LAN: {:?}",
        peer.addresses
    );
    drop((a, b));
}
