//! `doctor GROUP`: how each member of a group is connected to each other member (direct,
//! relayed or not at all), asked of every member that allows this node to diagnose it.

use futures::{StreamExt, stream};
use libp2p::PeerId;
use p2pos_kernel::{Registry, ServiceError};
use p2pos_proto::{
    monitor::v1::{Check, MatrixRow},
    wire::v1::{DiagAsk, DiagLinksAsk, diag_ask},
};
use p2pos_protocols::{Groups, groups, network::Network};
use tokio::time::Duration;

use super::check::{Evidence, fail, ok, warn};
use crate::{diag, within::within};

/// Members asked at once.
const MEMBERS_AT_ONCE: usize = 8;
/// How long reaching a member may take.
const MEMBER_WAIT: Duration = Duration::from_secs(15);

/// The members (this node first) and their rows, and the check that sums them up.
pub(crate) async fn matrix(
    net: &Network,
    registry: &Registry,
    group: String,
) -> Result<(Vec<String>, Vec<MatrixRow>, Check), ServiceError> {
    let members = within(
        MEMBER_WAIT,
        registry.ask::<Groups, _>(|reply| groups::Request::Members { group, reply }),
    )
    .await?;
    let name = members.group.map(|g| g.name).unwrap_or_default();
    let local = net.local_peer_id();
    let mut peers: Vec<PeerId> = members
        .members
        .iter()
        .filter_map(|m| m.peer_id.parse().ok())
        .filter(|p| *p != local)
        .collect();
    let left_out = peers.len().saturating_sub(diag::MAX_LINKS - 1);
    peers.truncate(diag::MAX_LINKS - 1);
    peers.insert(0, local);
    let infos = net
        .peers()
        .await
        .map_err(|e| ServiceError::unavailable(e.to_string()))?;
    let own = MatrixRow {
        peer_id: local.to_string(),
        links: peers
            .iter()
            .map(|p| match *p == local {
                true => "self".to_owned(),
                false => {
                    diag::link_state(infos.iter().find(|i| i.peer_id == p.to_string())).to_owned()
                }
            })
            .collect(),
        error: String::new(),
    };
    // A few members at a time: each may need a DHT look-up and a dial.
    let asked: Vec<MatrixRow> = stream::iter(peers[1..].to_vec())
        .map(|member| {
            let (net, peers) = (net.clone(), peers.clone());
            async move { row(&net, &peers, member).await }
        })
        .buffered(MEMBERS_AT_ONCE)
        .collect()
        .await;
    let rows: Vec<MatrixRow> = std::iter::once(own).chain(asked).collect();
    let mut check = summary(&name, &peers, &rows);
    if left_out > 0 {
        check.evidence.push(format!(
            "{left_out} more members are left out: a matrix holds {} at most",
            diag::MAX_LINKS
        ));
    }
    Ok((peers.iter().map(ToString::to_string).collect(), rows, check))
}

/// `member`'s row: its links to every member, as it tells them.
async fn row(net: &Network, members: &[PeerId], member: PeerId) -> MatrixRow {
    let unknown = |error: String| MatrixRow {
        peer_id: member.to_string(),
        links: members
            .iter()
            .map(|p| if *p == member { "self" } else { "unknown" }.to_owned())
            .collect(),
        error,
    };
    if let Err(e) = net.connect(member, Vec::new(), MEMBER_WAIT).await {
        return unknown(format!("unreachable: {e}"));
    }
    let ask = DiagAsk {
        kind: Some(diag_ask::Kind::Links(DiagLinksAsk {
            peer_ids: members.iter().map(|p| p.to_bytes().into()).collect(),
        })),
    };
    let answer = match diag::ask(net, member, ask).await {
        Ok((answer, _)) => answer,
        Err(e) => return unknown(e),
    };
    if !answer.refused.is_empty() {
        return unknown(answer.refused);
    }
    let links = members
        .iter()
        .map(|p| {
            if *p == member {
                return "self".to_owned();
            }
            let told = answer
                .links
                .iter()
                .find(|l| PeerId::from_bytes(&l.peer_id).is_ok_and(|l| l == *p));
            match told.map(|l| l.state.as_str()) {
                Some(state @ ("direct" | "relayed" | "none")) => state.to_owned(),
                _ => "unknown".to_owned(),
            }
        })
        .collect();
    MatrixRow {
        peer_id: member.to_string(),
        links,
        error: String::new(),
    }
}

/// All direct: ok; some relayed or unknown: warn; a member no other reaches: fail.
fn summary(name: &str, members: &[PeerId], rows: &[MatrixRow]) -> Check {
    let count = |state: &str| {
        rows.iter()
            .flat_map(|r| r.links.iter())
            .filter(|l| *l == state)
            .count()
    };
    let (direct, relayed, none, unknown) = (
        count("direct"),
        count("relayed"),
        count("none"),
        count("unknown"),
    );
    let evidence: Vec<String> = rows
        .iter()
        .filter(|r| !r.error.is_empty())
        .map(|r| format!("{}: {}", r.peer_id, r.error))
        .collect();
    let tally = format!(
        "group {name:?}, {} members: {direct} links direct, {relayed} relayed, {none} none, \
         {unknown} unknown",
        members.len()
    );
    // A member that no one who answered is connected to.
    let cut_off: Vec<String> = members
        .iter()
        .enumerate()
        .filter(|(column, _)| {
            rows.iter()
                .filter(|r| r.error.is_empty())
                .all(|r| matches!(r.links[*column].as_str(), "none" | "self"))
        })
        .map(|(_, p)| p.to_string())
        .collect();
    let check = if members.len() > 1 && !cut_off.is_empty() {
        fail(
            "links",
            format!("{tally}; no member is connected to {}", cut_off.join(", ")),
            "it is offline or unreachable: `p2pctl doctor PEER` on it tells why",
        )
    } else if relayed + none + unknown > 0 {
        warn(
            "links",
            tally,
            "`p2pctl doctor PEER` on a relayed or missing pair tells why; members that do not \
             answer can allow this node with --allow-diagnosis group:NAME",
        )
    } else {
        ok("links", tally)
    };
    check.evidence(evidence)
}
