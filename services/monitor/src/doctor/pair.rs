//! `doctor PEER`: can this node reach the peer, how (addresses, transport, direct or
//! relayed, hole punching), how fast, which protocols answer — and the peer's own view when it
//! allows this node to see it, so that a relayed pair is told why and what would fix it.

use std::time::Duration;

use libp2p::PeerId;
use p2pos_kernel::{ServiceError, events::now_ms};
use p2pos_proto::{
    monitor::v1::Check,
    overlay::v1::OverlayStatus,
    wire::v1::{DiagAnswer, DiagAsk, DiagView, DiagViewAsk, diag_ask},
};
use p2pos_protocols::network::{HolePunch, Network, PeerDetail, ticket::parse_target};
use tokio::time::Instant;

use super::{
    check::{Evidence, fail, ok, warn},
    explain::{Side, why_relayed},
    network::port_to_forward,
};
use crate::diag::{self, told};

/// How long reaching the peer may take (a DHT look-up included).
const REACH_WAIT: Duration = Duration::from_secs(30);
/// How long the doctor waits for a fresh connection to settle (identify, hole punching), and
/// how often it looks.
const SETTLE_WAIT: Duration = Duration::from_secs(5);
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// How long a ping may take.
const PING_WAIT: Duration = Duration::from_secs(10);
/// Most of its protocols listed as evidence.
const MAX_LISTED: usize = 24;

/// The checks of the pair of this node and `target` (a peer id or ticket); an error when the
/// target names no peer.
pub(crate) async fn checks(net: &Network, target: &str) -> Result<Vec<Check>, ServiceError> {
    let (peer, addrs) = parse_target(target).map_err(|e| ServiceError::invalid(e.to_string()))?;
    if peer == net.local_peer_id() {
        return Err(ServiceError::invalid(format!(
            "{peer} is this node; run `p2pctl doctor` without a peer to check this node"
        )));
    }
    let started = Instant::now();
    let reached = net.connect(peer, addrs, REACH_WAIT).await;
    let took = started.elapsed();
    let reach = match &reached {
        Ok(addr) => ok(
            "reach",
            format!("reached in {} ms at {addr}", took.as_millis()),
        ),
        Err(e) => fail(
            "reach",
            format!("cannot reach {peer}: {e}"),
            "the peer may be offline, or not in the DHT yet: ask its owner for a fresh ticket \
             (`p2pctl ticket` on their node) and run `p2pctl doctor TICKET`",
        ),
    };
    if reached.is_err() {
        return Ok(vec![reach]);
    }
    let view_ask = DiagAsk {
        kind: Some(diag_ask::Kind::View(DiagViewAsk {})),
    };
    let (status, detail, pinged, viewed) = tokio::join!(
        net.status(),
        identified(net, peer),
        net.ping(peer, Vec::new(), PING_WAIT),
        diag::ask(net, peer, view_ask),
    );
    let down = |e: p2pos_protocols::network::Error| ServiceError::unavailable(e.to_string());
    let status = status.map_err(down)?;
    let detail = detail.map_err(down)?;
    let view = match &viewed {
        Ok((
            DiagAnswer {
                view: Some(view), ..
            },
            _,
        )) => Some(view.clone()),
        _ => None,
    };
    Ok(vec![
        reach,
        connection(peer, &status, &detail, view.as_ref()),
        protocols(&detail, pinged.map_err(|e| e.to_string()), viewed.is_ok()),
        peer_view(net.local_peer_id(), peer, &viewed),
    ])
}

/// What the network knows of `peer` once a fresh connection has settled — its identify heard,
/// and, if it is relayed, hole punching tried — or after [`SETTLE_WAIT`]. (The network tells
/// no event for either, so this looks every [`SETTLE_POLL`].)
async fn identified(
    net: &Network,
    peer: PeerId,
) -> Result<PeerDetail, p2pos_protocols::network::Error> {
    let deadline = Instant::now() + SETTLE_WAIT;
    loop {
        let detail = net.peer_detail(peer).await?;
        let settled = match &detail.info {
            None => true,
            Some(info) => {
                !detail.protocols.is_empty()
                    && (info.direct || detail.hole_punch != HolePunch::NotTried)
            }
        };
        if settled || Instant::now() >= deadline {
            return Ok(detail);
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// Direct or relayed, by which address and transport; why relayed, from both views.
fn connection(
    peer: PeerId,
    status: &OverlayStatus,
    detail: &PeerDetail,
    view: Option<&DiagView>,
) -> Check {
    let Some(info) = &detail.info else {
        return fail(
            "connection",
            "the connection closed as soon as it opened",
            "run the doctor again; if this repeats, see `p2pctl logs --level warn` on both nodes",
        );
    };
    let mut evidence: Vec<String> = info
        .addresses
        .iter()
        .map(|a| format!("connection: {a}"))
        .collect();
    evidence.push(format!(
        "this node: AutoNAT {}, NAT mapping {}",
        status.reachability, status.nat_mapping
    ));
    if let Some(view) = view {
        evidence.push(format!(
            "the peer: AutoNAT {}, NAT mapping {}",
            view.reachability, view.nat_mapping
        ));
    }
    evidence.push(format!(
        "hole punching: {}",
        match &detail.hole_punch {
            HolePunch::NotTried => "not tried".to_owned(),
            HolePunch::Succeeded => "succeeded".to_owned(),
            HolePunch::Failed(e) => format!("failed: {e}"),
        }
    ));
    for (at_ms, outcome) in &detail.hole_punches {
        let ago = now_ms().saturating_sub(*at_ms) / 1000;
        evidence.push(match outcome {
            Ok(()) => format!("hole punch {ago} s ago: direct"),
            Err(e) => format!("hole punch {ago} s ago: failed: {e}"),
        });
    }
    let known: Vec<String> = detail
        .known_addrs
        .iter()
        .take(8)
        .map(|a| a.to_string())
        .collect();
    if !known.is_empty() {
        evidence.push(format!("known addresses: {}", known.join(", ")));
    }
    let listen: Vec<String> = detail.listen_addrs.iter().map(|a| a.to_string()).collect();
    if !listen.is_empty() {
        evidence.push(format!("it says it listens on: {}", listen.join(", ")));
    }
    if let Some(observed) = &detail.observed_us {
        evidence.push(format!("the peer sees this node at {observed}"));
    }
    let rtt =
        (info.rtt_us > 0).then(|| format!("round trip {:.1} ms", info.rtt_us as f64 / 1000.0));
    if info.direct {
        let rtt = rtt.map(|r| format!(", {r}")).unwrap_or_default();
        return ok("connection", format!("direct over {}{rtt}", info.transport)).evidence(evidence);
    }
    let us = Side {
        name: "this node".to_owned(),
        reachability: status.reachability.clone(),
        nat_mapping: status.nat_mapping.clone(),
        port: port_to_forward(&status.listen_addresses),
    };
    let them = view.map(|v| Side {
        name: format!("the peer {peer}"),
        reachability: v.reachability.clone(),
        nat_mapping: v.nat_mapping.clone(),
        port: port_to_forward(&v.listen_addresses),
    });
    let (summary, remedy) = why_relayed(&us, them.as_ref(), &detail.hole_punch);
    warn(
        "connection",
        {
            let via =
                (!info.relays.is_empty()).then(|| format!("through {}", info.relays.join(", ")));
            let how: Vec<String> = via.into_iter().chain(rtt).collect();
            match how.is_empty() {
                true => summary,
                false => format!("{summary} ({})", how.join(", ")),
            }
        },
        remedy,
    )
    .evidence(evidence)
}

/// It answers a ping and says which protocols it speaks.
fn protocols(detail: &PeerDetail, pinged: Result<Duration, String>, diag: bool) -> Check {
    let own: Vec<&String> = detail
        .protocols
        .iter()
        .filter(|p| p.starts_with("/p2pos/"))
        .collect();
    let agent = detail
        .info
        .as_ref()
        .map_or("", |i| i.agent_version.as_str());
    let mut evidence = vec![format!("agent: {}", told(agent, 128))];
    evidence.extend(
        detail
            .protocols
            .iter()
            .take(MAX_LISTED)
            .map(|p| format!("speaks {}", told(p, 128))),
    );
    evidence.push(format!(
        "diagnosis asks: {}",
        if diag { "answered" } else { "not answered" }
    ));
    match pinged {
        Ok(rtt) if !own.is_empty() => ok(
            "protocols",
            format!(
                "answers ping in {:.1} ms; speaks {} P2P OS protocols",
                rtt.as_secs_f64() * 1000.0,
                own.len()
            ),
        ),
        Ok(_) => warn(
            "protocols",
            "answers ping but lists no P2P OS protocol: it is another libp2p node, or its \
             services are down",
            "if it runs P2P OS, run `p2pctl doctor` on it",
        ),
        Err(e) => warn(
            "protocols",
            format!("no answer to a ping: {e}"),
            "the connection may be failing: run the doctor again",
        ),
    }
    .evidence(evidence)
}

/// The peer's own view, when it allows this node to see it.
fn peer_view(
    local: PeerId,
    peer: PeerId,
    viewed: &Result<(DiagAnswer, Duration), String>,
) -> Check {
    let answer = match viewed {
        Ok((answer, _)) => answer,
        Err(e) => {
            return warn(
                "peer-view",
                format!("the peer does not answer diagnosis asks: {e}"),
                "it may run an older P2P OS, or be another libp2p node: the verdict uses this \
                 node's side only",
            );
        }
    };
    let Some(view) = &answer.view else {
        if !answer
            .refused
            .starts_with("this node's owner does not allow")
        {
            return warn(
                "peer-view",
                format!(
                    "the peer could not tell its side ({}): the verdict uses this node's side only",
                    answer.refused
                ),
                "run the doctor again in a moment; `p2pctl doctor` on the peer tells more",
            );
        }
        return warn(
            "peer-view",
            "the peer does not let this node see its side: the verdict uses this node's side \
             only",
            format!(
                "its owner can allow it: `p2posd --allow-diagnosis {local}` (or allow_diagnosis \
                 under [monitor] in its config; `group:NAME` allows a whole group)"
            ),
        );
    };
    let link = view.asker.clone().unwrap_or_default();
    let mut evidence = vec![
        format!("version: {}", view.version),
        format!("AutoNAT: {}", view.reachability),
        format!("NAT mapping: {}", view.nat_mapping),
        format!("relays held: {}", view.relays.len()),
    ];
    evidence.extend(
        view.listen_addresses
            .iter()
            .map(|a| format!("listens on {a}")),
    );
    evidence.extend(
        view.external_addresses
            .iter()
            .map(|a| format!("external {a}")),
    );
    if !link.why_relayed.is_empty() {
        evidence.push(format!("why relayed, as it sees it: {}", link.why_relayed));
    }
    ok(
        "peer-view",
        format!(
            "{peer} sees this node as {} ({})",
            link.state,
            match link.transport.as_str() {
                "" => "no connection",
                t => t,
            }
        ),
    )
    .evidence(evidence)
}
