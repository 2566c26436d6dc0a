//! The checks of this node's place in the network: listeners, reachability from outside,
//! relay reservations, the DHT, its peers, and its clock against theirs.

use futures::future::join_all;
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use p2pos_kernel::events::now_ms;
use p2pos_proto::{
    monitor::v1::Check,
    overlay::v1::OverlayStatus,
    wire::v1::{DiagAsk, DiagClockAsk, diag_ask},
};
use p2pos_protocols::network::{Error, Network};
use tokio::time::{Duration, Instant};

use super::check::{Evidence, count, fail, ok, warn};
use crate::diag;

/// How long the DHT's test look-up may take.
const LOOKUP_WAIT: Duration = Duration::from_secs(10);
/// Most remembered peers dialled, and how long each may take.
const MAX_REDIALS: usize = 8;
const REDIAL_WAIT: Duration = Duration::from_secs(5);
/// Most peers whose clocks are asked.
const MAX_CLOCKS: usize = 8;
/// Peers whose clocks must agree before this node's is called wrong (a failure).
const CLOCK_QUORUM: usize = 3;
/// Clock differences that warn (signed records and invites carry times) and fail (records
/// from more than 10 minutes ahead are refused by every node).
const SKEW_WARN_MS: i64 = 30_000;
const SKEW_FAIL_MS: i64 = 600_000;

/// The node listens somewhere.
pub(crate) fn listeners(status: &OverlayStatus) -> Check {
    let direct: Vec<&String> = status
        .listen_addresses
        .iter()
        .filter(|a| !a.contains("/p2p-circuit"))
        .collect();
    if direct.is_empty() {
        return fail(
            "listeners",
            "the node listens on no address: no peer can connect to it",
            "check the --listen addresses (or `listen` in the config); another program may hold \
             the port (`ss -lntup`)",
        );
    }
    let addresses = match direct.len() {
        1 => "1 address".to_owned(),
        n => format!("{n} addresses"),
    };
    ok("listeners", format!("listening on {addresses}"))
        .evidence(direct.iter().map(|a| a.to_string()))
}

/// The ports to forward on a router for a node listening on `addrs`: its direct QUIC and TCP
/// ports as people write them ("TCP/4001 and UDP/4001"), and the first as `--external-address`
/// takes it ("tcp/4001").
pub(crate) fn port_to_forward(addrs: &[String]) -> Option<(String, String)> {
    let mut people: Vec<String> = Vec::new();
    let mut first = None;
    for addr in addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
        if addr.iter().any(|p| p == Protocol::P2pCircuit) {
            continue;
        }
        let quic = addr.iter().any(|p| matches!(p, Protocol::QuicV1));
        let port = addr.iter().find_map(|p| match p {
            Protocol::Udp(port) if quic && port != 0 => {
                Some((format!("UDP/{port}"), format!("udp/{port}/quic-v1")))
            }
            Protocol::Tcp(port) if port != 0 => {
                Some((format!("TCP/{port}"), format!("tcp/{port}")))
            }
            _ => None,
        });
        if let Some((shown, tail)) = port
            && !people.contains(&shown)
        {
            people.push(shown);
            first.get_or_insert(tail);
        }
    }
    Some((people.join(" and "), first?))
}

/// Whether peers elsewhere can reach the node directly, and how its NAT maps ports.
pub(crate) fn reachability(status: &OverlayStatus) -> Check {
    let evidence = [
        format!("AutoNAT: {}", status.reachability),
        format!("NAT mapping: {}", status.nat_mapping),
        format!(
            "confirmed external addresses: {}",
            match status.external_addresses.is_empty() {
                true => "none".to_owned(),
                false => status.external_addresses.join(", "),
            }
        ),
    ];
    let (port, tail) = port_to_forward(&status.listen_addresses)
        .unwrap_or_else(|| ("its port".into(), "tcp/<port>".into()));
    let check = match (status.reachability.as_str(), status.nat_mapping.as_str()) {
        ("public", _) => ok("reachability", "reachable directly from the internet"),
        (_, "port-randomizing") => warn(
            "reachability",
            "behind a NAT that gives each destination a new port: peers behind NATs reach \
             this node only through relays",
            format!(
                "forward {port} on the router to this computer (or turn on UPnP / NAT-PMP), then \
                 declare it: --external-address /ip4/<public ip>/{tail}"
            ),
        ),
        ("private", _) => ok(
            "reachability",
            "behind a NAT: peers reach this node through its relays, then directly where hole \
             punching gets through",
        ),
        _ => ok(
            "reachability",
            "not known yet: AutoNAT needs peers elsewhere to dial this node back",
        ),
    };
    check.evidence(evidence)
}

/// A node behind a NAT holds relay reservations (else nobody elsewhere can reach it).
pub(crate) fn relays(status: &OverlayStatus) -> Check {
    let held = status.relays.len();
    match (status.reachability.as_str(), held) {
        ("public", _) => ok("relays", "not needed: the node is reachable directly"),
        (_, n) if n > 0 => ok(
            "relays",
            format!("reservations held on {}", count(n, "relay")),
        )
        .evidence(status.relays.iter().map(|r| format!("relay {r}"))),
        ("private", _) => fail(
            "relays",
            "behind a NAT and no relay reservation: peers elsewhere cannot reach this node",
            "connect to a public P2P OS node (`p2pctl dial TICKET`, or --bootstrap); public \
             nodes serve as relays",
        ),
        _ => ok(
            "relays",
            "none held, none needed yet (reachability not known)",
        ),
    }
}

/// The DHT knows peers, and a look-up runs to its end with some of them answering.
pub(crate) async fn dht(net: &Network, status: &OverlayStatus) -> Check {
    let started = Instant::now();
    let lookup = tokio::time::timeout(LOOKUP_WAIT, net.find_peer(PeerId::random())).await;
    let took = started.elapsed();
    // A look-up asks its peers over connections: with none open once it ended, no peer of the
    // routing table answered it (it ends at once when every dial fails).
    let answered = net.peers().await.is_ok_and(|p| !p.is_empty());
    let table = format!(
        "routing table: {}",
        count(status.routing_table_size as usize, "peer")
    );
    match lookup {
        Ok(Err(Error::DhtDisabled)) => {
            return ok(
                "dht",
                "off on this node (--no-kademlia): peers are reached by ticket",
            );
        }
        Ok(Ok(_) | Err(Error::PeerNotFound(_))) if status.routing_table_size > 0 && answered => ok(
            "dht",
            format!("{table}; a test look-up ran in {} ms", took.as_millis()),
        ),
        Ok(Ok(_) | Err(Error::PeerNotFound(_))) if status.routing_table_size > 0 => warn(
            "dht",
            "no peer of the routing table answered a test look-up: they are offline, or this \
             node cannot reach them; peers cannot be found by peer id meanwhile",
            "connect to a P2P OS node that is online (`p2pctl dial TICKET`, or --bootstrap); \
             `p2pctl doctor PEER` on one of them tells why it does not answer",
        ),
        Ok(Ok(_) | Err(Error::PeerNotFound(_))) => warn(
            "dht",
            "the DHT knows no peer: peers cannot be found by peer id, nor this node by others",
            "connect to a P2P OS node that is online (`p2pctl dial TICKET`, or --bootstrap)",
        ),
        Ok(Err(e)) => warn(
            "dht",
            format!("a test look-up failed: {e}"),
            "see `p2pctl logs --level warn`",
        ),
        Err(_) => warn(
            "dht",
            format!("a test look-up did not end within {LOOKUP_WAIT:?}"),
            "peers in the routing table do not answer: the network may drop this node's \
             traffic (a firewall?)",
        ),
    }
    .evidence([table])
}

/// Peers are connected, and the remembered ones that are not answer a dial.
pub(crate) async fn peers(net: &Network, status: &OverlayStatus) -> Check {
    let connected: Vec<&str> = status.peers.iter().map(|p| p.peer_id.as_str()).collect();
    let remembered = net.remembered(usize::MAX).await.unwrap_or_default();
    let absent: Vec<(PeerId, Vec<Multiaddr>)> = remembered
        .iter()
        .filter(|(p, _)| !connected.contains(&p.to_string().as_str()))
        .take(MAX_REDIALS)
        .cloned()
        .collect();
    let dials = join_all(absent.iter().map(|(peer, addrs)| async move {
        (*peer, net.connect(*peer, addrs.clone(), REDIAL_WAIT).await)
    }))
    .await;
    let mut evidence = vec![format!(
        "{} connected, {} remembered",
        connected.len(),
        remembered.len()
    )];
    let mut unreached = 0;
    for (peer, result) in &dials {
        match result {
            Ok(addr) => evidence.push(format!("remembered {peer}: reached at {addr}")),
            Err(e) => {
                unreached += 1;
                evidence.push(format!("remembered {peer}: {e}"));
            }
        }
    }
    let reached = connected.len() + dials.len() - unreached;
    let check = if reached == 0 && remembered.is_empty() {
        warn(
            "peers",
            "no peers: this node knows nobody yet",
            "give it a friend's ticket (`p2pctl dial TICKET`) or a bootstrap peer (--bootstrap)",
        )
    } else if reached == 0 {
        fail(
            "peers",
            format!(
                "no peer is connected, and none of the {} remembered peers dialled answers",
                dials.len()
            ),
            "this node may be offline, or its peers are: check the network connection, then \
             `p2pctl doctor PEER` for one of them",
        )
    } else if unreached > 0 {
        warn(
            "peers",
            format!(
                "{} did not answer a dial",
                count(unreached, "remembered peer")
            ),
            "they may be offline; `p2pctl doctor PEER` tells more about one",
        )
    } else {
        ok("peers", format!("{} connected", count(reached, "peer")))
    };
    check.evidence(evidence)
}

/// This node's clock agrees with its peers'.
pub(crate) async fn clock(net: &Network, status: &OverlayStatus) -> Check {
    let mut peers: Vec<&p2pos_proto::overlay::v1::PeerInfo> = status.peers.iter().collect();
    // Direct ones first: a relay's round trip blurs the comparison.
    peers.sort_by_key(|p| !p.direct);
    let asks = peers
        .iter()
        .take(MAX_CLOCKS)
        .filter_map(|p| p.peer_id.parse::<PeerId>().ok());
    let answers = join_all(asks.map(|peer| async move {
        let ask = DiagAsk {
            kind: Some(diag_ask::Kind::Clock(DiagClockAsk {})),
        };
        let answered = diag::ask(net, peer, ask).await;
        (
            peer,
            answered.map(|(a, rtt)| skew_ms(a.now_ms, now_ms(), rtt)),
        )
    }))
    .await;
    let skews: Vec<(PeerId, i64)> = answers
        .iter()
        .filter_map(|(p, s)| s.as_ref().ok().map(|s| (*p, *s)))
        .collect();
    let evidence: Vec<String> = skews
        .iter()
        .map(|(p, s)| {
            format!(
                "{p}: its clock is {} ms {}",
                s.abs(),
                if *s < 0 { "behind" } else { "ahead" }
            )
        })
        .collect();
    let Some(median) = median(skews.iter().map(|(_, s)| *s).collect()) else {
        return ok("clock", "no peer to compare with");
    };
    // The peers' clocks against this one: a positive median means this node is behind.
    let off = median.abs();
    let side = if median > 0 { "behind" } else { "ahead of" };
    let remedy = "set the clock right and keep it so (`timedatectl set-ntp true`): signed \
                  address records, invites and offers carry times, and peers refuse those \
                  from more than 10 minutes ahead";
    // One or two peers may have the wrong clock themselves: only several agreeing fail it.
    let check = if off >= SKEW_FAIL_MS && skews.len() >= CLOCK_QUORUM {
        fail(
            "clock",
            format!("this node's clock is {} s {side} its peers'", off / 1000),
            remedy,
        )
    } else if off >= SKEW_WARN_MS {
        warn(
            "clock",
            format!("this node's clock is {} s {side} its peers'", off / 1000),
            remedy,
        )
    } else {
        ok(
            "clock",
            format!("within {off} ms of {}", count(skews.len(), "peer")),
        )
    };
    check.evidence(evidence)
}

/// How far ahead of this node a peer's clock is: it read `theirs` half a round trip before
/// this node read `ours`.
fn skew_ms(theirs: u64, ours: u64, rtt: Duration) -> i64 {
    let half = i64::try_from(rtt.as_millis() / 2).unwrap_or(i64::MAX);
    let (theirs, ours) = (
        i64::try_from(theirs).unwrap_or(i64::MAX),
        i64::try_from(ours).unwrap_or(i64::MAX),
    );
    theirs.saturating_sub(ours.saturating_sub(half))
}

/// The middle value (the lower of the two middle ones): one peer's clock cannot pull it past
/// the others'.
fn median(mut values: Vec<i64>) -> Option<i64> {
    values.sort_unstable();
    values.get(values.len().saturating_sub(1) / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_difference_allows_for_half_the_round_trip() {
        assert_eq!(skew_ms(10_050, 10_100, Duration::from_millis(100)), 0);
        assert_eq!(skew_ms(70_000, 10_000, Duration::ZERO), 60_000);
        assert_eq!(skew_ms(0, 60_000, Duration::ZERO), -60_000);
        assert_eq!(median(vec![5, -1, 3]), Some(3));
        assert_eq!(
            median(vec![0, 900_000]),
            Some(0),
            "one far-off clock of two"
        );
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn the_port_to_forward_is_the_first_direct_one() {
        let addrs = [
            "/ip4/1.2.3.4/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit"
                .to_owned(),
            "/ip4/10.0.0.2/udp/4001/quic-v1".to_owned(),
            "/ip4/10.0.0.2/tcp/4002".to_owned(),
        ];
        let port = |a: &[String]| port_to_forward(a).map(|(p, _)| p);
        assert_eq!(port(&addrs).as_deref(), Some("UDP/4001 and TCP/4002"));
        assert_eq!(port(&addrs[2..]).as_deref(), Some("TCP/4002"));
        assert_eq!(port(&[]), None);
        assert_eq!(
            port_to_forward(&addrs).map(|(_, t)| t).as_deref(),
            Some("udp/4001/quic-v1")
        );
    }
}
