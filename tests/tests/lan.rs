//! A LAN of two test hosts (network namespaces joined by veth): nodes started with the
//! defaults find each other by mDNS and connect, with no ticket and no dial.

use p2pos_tests::{Lan, Node, connected_peer};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root / netns: run by .ci/run (tools/run-tests --include-ignored)"]
async fn nodes_on_a_lan_find_each_other_by_mdns() {
    let lan = Lan::create().expect("network namespaces (this test needs root and iproute2)");
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
