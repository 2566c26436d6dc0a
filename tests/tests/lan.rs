//! A LAN of two test hosts (network namespaces joined by veth): nodes started with the
//! defaults find each other by mDNS and connect, with no ticket and no dial.

use std::time::Duration;

use p2pos_proto::overlay::v1::ListPeersRequest;
use p2pos_tests::{Lan, Node, wait_for};

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
    let peer = wait_for("A to find B by mDNS", Duration::from_secs(30), || {
        let client = client.clone();
        let b_id = b_id.clone();
        async move {
            let peers = client
                .overlay()
                .list_peers(ListPeersRequest {})
                .await
                .ok()?
                .into_inner();
            peers.peers.into_iter().find(|p| p.peer_id == b_id)
        }
    })
    .await;
    assert!(
        peer.addresses.iter().any(|a| a.starts_with("/ip4/10.213.")),
        "connected over the LAN: {:?}",
        peer.addresses
    );
    drop((a, b));
}
