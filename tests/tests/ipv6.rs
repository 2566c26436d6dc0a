//! Real global IPv6 prefixes count as global (issue 17): two test hosts in network namespaces
//! on a link with addresses of 2a01:4f8::/32 (Hetzner's; libp2p-autonat 0.16 called every
//! unicast prefix whose first group ends in 1–5 or 8 non-global, so AutoNAT never tested such
//! addresses and nodes there were never found public — vendored and fixed). Inside the
//! namespaces the addresses reach nothing else.

use p2pos_tests::{Lan, Node, status_when};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root / netns: run by .ci/run (tools/run-tests --include-ignored)"]
async fn a_node_on_a_real_global_ipv6_prefix_is_found_public() {
    let link = Lan::with_addresses(
        "p2pos6",
        ["2a01:4f8:1::1/64", "2a01:4f8:1::2/64"],
        &["nodad"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let listen = ["--listen", "/ip6/::/tcp/4001", "--no-mdns"];
    let mut a = Node::start_in_netns(&link.hosts[0], &listen);
    let a_id = a.peer_id().await;
    let bootstrap = format!("/ip6/2a01:4f8:1::1/tcp/4001/p2p/{a_id}");
    let mut args = listen.to_vec();
    args.extend(["--bootstrap", &bootstrap]);
    let mut b = Node::start_in_netns(&link.hosts[1], &args);
    let client = b.client().await;
    // A tests B's address (it dials it back) and B confirms it: public, so it holds no
    // reservation and serves as a relay.
    let status = status_when(&client, "AutoNAT to find B public on 2a01:4f8::/32", |s| {
        s.reachability == "public"
    })
    .await;
    assert!(
        status
            .external_addresses
            .iter()
            .any(|a| a.starts_with("/ip6/2a01:4f8:1::2/tcp/4001")),
        "the global address confirmed: {:?}",
        status.external_addresses
    );
    assert!(status.relays.is_empty(), "public: no reservation");
    drop((a, b, link));
}
