//! `/p2pos/diag/1`: what nodes tell each other for diagnosis. Any peer may ask this node's
//! clock; its view of itself (reachability, NAT mapping, addresses, relays, its connection to
//! the asker) and of its connections to other peers only a peer its owner allows
//! (`[monitor] allow_diagnosis`). One ask, one answer, then the stream closes.

use std::{collections::HashSet, time::Duration};

use libp2p::{PeerId, StreamProtocol};
use p2pos_kernel::{Registry, events::now_ms};
use p2pos_proto::{
    overlay::v1::PeerInfo,
    wire::v1::{DiagAnswer, DiagAsk, DiagLink, DiagView, diag_ask},
};
use p2pos_protocols::{
    Groups, groups,
    network::{Accepting, InboundStream, Limits, Network, accept::drop_stream},
    wire::{read_message, write_message},
};
use tokio::time::Instant;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::debug;

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pos/diag/1");
/// Longest ask.
const MAX_ASK: usize = 4 * 1024;
/// Longest answer.
const MAX_ANSWER: usize = 16 * 1024;
/// Most peers one links ask names.
pub const MAX_LINKS: usize = 64;
/// How long a frame may take each way.
const FRAME_WAIT: Duration = Duration::from_secs(5);
/// Asks served at once, in all and per peer.
const INBOUND_TOTAL: usize = 16;
const INBOUND_PER_PEER: usize = 2;
/// Most addresses (of each kind) a view lists.
const MAX_VIEW_ADDRS: usize = 16;

/// Who may see more than this node's clock.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    peers: HashSet<PeerId>,
    /// Group names or ids, whose current members may.
    groups: Vec<String>,
}

impl Policy {
    /// From `allow_diagnosis`: peer ids and `group:NAME`.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut policy = Policy::default();
        for entry in entries {
            match entry.strip_prefix("group:") {
                Some("") => return Err("allow_diagnosis: `group:` needs a group name".into()),
                Some(group) => policy.groups.push(group.to_owned()),
                None => {
                    let peer = entry.parse().map_err(|_| {
                        format!("allow_diagnosis: {entry:?} is neither a peer id nor group:NAME")
                    })?;
                    policy.peers.insert(peer);
                }
            }
        }
        Ok(policy)
    }

    /// Whether `peer` may see this node's view; else why not.
    async fn allows(&self, registry: &Registry, peer: PeerId) -> Result<(), String> {
        if self.peers.contains(&peer) {
            return Ok(());
        }
        for group in &self.groups {
            let members = registry
                .ask::<Groups, _>(|reply| groups::Request::Members {
                    group: group.clone(),
                    reply,
                })
                .await;
            if let Ok(members) = members
                && members
                    .members
                    .iter()
                    .any(|m| m.peer_id == peer.to_string())
            {
                return Ok(());
            }
        }
        Err(format!(
            "this node's owner does not allow {peer} to diagnose it (they can, with \
             `--allow-diagnosis {peer}` or `allow_diagnosis = [\"{peer}\"]` under [monitor])"
        ))
    }
}

/// Serves the protocol until the guard is dropped.
pub fn serve(net: &Network, registry: Registry, policy: Policy) -> Result<Accepting, String> {
    let answering = net.clone();
    net.accept(
        PROTOCOL,
        Limits {
            total: INBOUND_TOTAL,
            per_peer: INBOUND_PER_PEER,
            max_frame: MAX_ASK,
            idle: FRAME_WAIT,
        },
        move |peer, stream| {
            answer(
                peer,
                stream,
                answering.clone(),
                registry.clone(),
                policy.clone(),
            )
        },
        drop_stream,
    )
    .map_err(|e| e.to_string())
}

async fn answer(
    peer: PeerId,
    stream: InboundStream,
    net: Network,
    registry: Registry,
    policy: Policy,
) {
    let max = stream.max_frame();
    let mut io = stream.compat();
    let ask: DiagAsk = match read_message(&mut io, max, FRAME_WAIT).await {
        Ok(ask) => ask,
        Err(e) => {
            debug!(%peer, "a bad diagnosis ask: {e}");
            return;
        }
    };
    let mut answer = DiagAnswer::default();
    match ask.kind {
        Some(diag_ask::Kind::Clock(_)) => {}
        Some(diag_ask::Kind::View(_)) => match policy.allows(&registry, peer).await {
            Ok(()) => answer.view = view(&net, peer).await,
            Err(why) => answer.refused = why,
        },
        Some(diag_ask::Kind::Links(links)) => match policy.allows(&registry, peer).await {
            Ok(()) if links.peer_ids.len() > MAX_LINKS => {
                answer.refused = format!("at most {MAX_LINKS} peers per ask");
            }
            Ok(()) => {
                let peers: Vec<PeerId> = links
                    .peer_ids
                    .iter()
                    .filter_map(|b| PeerId::from_bytes(b).ok())
                    .collect();
                let infos = net.peers().await.unwrap_or_default();
                answer.links = peers
                    .iter()
                    .map(|p| link_of(*p, infos.iter().find(|i| i.peer_id == p.to_string())))
                    .collect();
            }
            Err(why) => answer.refused = why,
        },
        None => answer.refused = "an ask of a kind this node does not know".into(),
    }
    answer.now_ms = now_ms();
    if let Err(e) = write_message(&mut io, &answer, FRAME_WAIT).await {
        debug!(%peer, "cannot answer a diagnosis ask: {e}");
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
}

/// This node's view of itself and of its connection to `asker`.
async fn view(net: &Network, asker: PeerId) -> Option<DiagView> {
    let status = net.status().await.ok()?;
    let capped = |mut v: Vec<String>| {
        v.truncate(MAX_VIEW_ADDRS);
        v
    };
    let info = status.peers.iter().find(|p| p.peer_id == asker.to_string());
    Some(DiagView {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        reachability: status.reachability.clone(),
        nat_mapping: status.nat_mapping.clone(),
        asker: Some(link_of(asker, info)),
        listen_addresses: capped(status.listen_addresses),
        external_addresses: capped(status.external_addresses),
        relays: status.relays,
    })
}

/// How this node is connected to `peer`, from its entry among the connected peers.
pub fn link_of(peer: PeerId, info: Option<&PeerInfo>) -> DiagLink {
    DiagLink {
        peer_id: peer.to_bytes().into(),
        state: link_state(info).to_owned(),
        transport: info.map(|i| i.transport.clone()).unwrap_or_default(),
        rtt_us: info.map_or(0, |i| i.rtt_us),
        why_relayed: info.map(|i| i.why_relayed.clone()).unwrap_or_default(),
    }
}

/// "direct", "relayed" or "none".
pub fn link_state(info: Option<&PeerInfo>) -> &'static str {
    match info {
        Some(i) if i.direct => "direct",
        Some(_) => "relayed",
        None => "none",
    }
}

/// Asks `peer` (connected, or reachable by known addresses): its answer and the round trip.
pub async fn ask(
    net: &Network,
    peer: PeerId,
    ask: DiagAsk,
) -> Result<(DiagAnswer, Duration), String> {
    let round = async {
        let stream = net
            .open_stream(peer, PROTOCOL)
            .await
            .map_err(|e| format!("it does not answer diagnosis asks ({e})"))?;
        let mut io = stream.compat();
        let started = Instant::now();
        write_message(&mut io, &ask, FRAME_WAIT)
            .await
            .map_err(|e| e.to_string())?;
        let answer: DiagAnswer = read_message(&mut io, MAX_ANSWER, FRAME_WAIT)
            .await
            .map_err(|e| e.to_string())?;
        Ok((answer, started.elapsed()))
    };
    tokio::time::timeout(FRAME_WAIT * 2, round)
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_takes_peer_ids_and_groups_and_refuses_the_rest() {
        let peer = PeerId::random();
        let policy = Policy::parse(&[peer.to_string(), "group:friends".into()]).expect("policy");
        assert!(policy.peers.contains(&peer));
        assert_eq!(policy.groups, ["friends"]);
        assert!(Policy::parse(&["group:".into()]).is_err());
        let err = Policy::parse(&["bob".into()]).expect_err("not a peer id");
        assert!(err.contains("neither a peer id nor group:NAME"), "{err}");
    }
}
