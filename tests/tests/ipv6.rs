//! Real global IPv6 prefixes count as global (issue 17): two test hosts in network namespaces
//! on a link with addresses of 2a01:4f8::/32 (Hetzner's; libp2p-autonat 0.16 called every
//! unicast prefix whose first group ends in 1–5 or 8 non-global, so AutoNAT never tested such
//! addresses and nodes there were never found public — vendored and fixed). Inside the
//! namespaces the addresses reach nothing else.

use std::process::{Command, Stdio};

use p2pos_tests::{Node, status_when};

/// Two namespaces joined by a veth pair with global IPv6 addresses, removed on drop.
struct Link {
    hosts: [String; 2],
}

impl Link {
    fn create() -> Result<Link, String> {
        let id = std::process::id();
        let link = Link {
            hosts: [format!("p2pos6-{id}-a"), format!("p2pos6-{id}-b")],
        };
        let veth = [
            format!("p6v{}a", id % 100_000),
            format!("p6v{}b", id % 100_000),
        ];
        let [a, b] = &link.hosts;
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec![
                "link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1],
            ],
            vec!["link", "set", &veth[0], "netns", a],
            vec!["link", "set", &veth[1], "netns", b],
            vec![
                "-n",
                a,
                "addr",
                "add",
                "2a01:4f8:1::1/64",
                "dev",
                &veth[0],
                "nodad",
            ],
            vec![
                "-n",
                b,
                "addr",
                "add",
                "2a01:4f8:1::2/64",
                "dev",
                &veth[1],
                "nodad",
            ],
            vec!["-n", a, "link", "set", &veth[0], "up"],
            vec!["-n", b, "link", "set", &veth[1], "up"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let ok = Command::new("ip")
                .args(&step)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!(
                    "`ip {}` failed (this test needs root and iproute2)",
                    step.join(" ")
                ));
            }
        }
        Ok(link)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", host])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root / netns: run by .ci/run (tools/run-tests --include-ignored)"]
async fn a_node_on_a_real_global_ipv6_prefix_is_found_public() {
    let link = Link::create().unwrap_or_else(|e| panic!("{e}"));
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
