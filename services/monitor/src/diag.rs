//! `/p2pos/diag/1`: what nodes tell each other for diagnosis. Any peer may ask this node's
//! clock; its view of itself (reachability, NAT mapping, addresses, relays, its connection to
//! the asker) and of its connections to other peers only a peer its owner allows
//! (`[monitor] allow_diagnosis`). One ask, one answer, then the stream closes.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;

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
use prost::Message;
use tokio::time::Instant;

use crate::within::within;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::{debug, warn};

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
/// Longest reason a view gives for being relayed.
const MAX_WHY: usize = 1024;

/// How long a decision about a peer is reused: a peer asking again and again costs one look at
/// the groups per this long.
const DECISION_TTL: Duration = Duration::from_secs(10);
/// Most peers whose decisions are kept.
const MAX_DECISIONS: usize = 256;
/// How long the groups service may take to say who is a member.
const GROUPS_WAIT: Duration = Duration::from_secs(5);

/// Who may see more than this node's clock.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    peers: HashSet<PeerId>,
    /// Group ids or names, whose current members may.
    groups: Vec<String>,
}

/// Whether a peer may see this node's view (else why not), and when that was decided.
type Decision = (Instant, Result<(), String>);

/// The policy, with its recent decisions.
#[derive(Clone)]
struct Gate {
    policy: Policy,
    registry: Registry,
    decided: Arc<Mutex<HashMap<PeerId, Decision>>>,
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
}

impl Gate {
    /// Whether `peer` may see this node's view; else why not. A decision is reused for
    /// [`DECISION_TTL`].
    async fn allows(&self, peer: PeerId) -> Result<(), String> {
        if self.policy.peers.contains(&peer) {
            return Ok(());
        }
        let kept = self.decided.lock().ok().and_then(|d| d.get(&peer).cloned());
        if let Some((at, decided)) = kept
            && at.elapsed() < DECISION_TTL
        {
            return decided;
        }
        let decided = self.member_of_an_allowed_group(peer).await;
        if let Ok(mut kept) = self.decided.lock() {
            if kept.len() >= MAX_DECISIONS {
                kept.retain(|_, (at, _)| at.elapsed() < DECISION_TTL);
            }
            if kept.len() < MAX_DECISIONS {
                kept.insert(peer, (Instant::now(), decided.clone()));
            }
        }
        decided
    }

    /// Whether `peer` is a current member of a group the policy names. A name counts only
    /// when exactly one group this node holds has it (a group's admins can rename it; a
    /// group id is the sure way to name one).
    async fn member_of_an_allowed_group(&self, peer: PeerId) -> Result<(), String> {
        let refused = format!(
            "this node's owner does not allow {peer} to diagnose it (they can, with \
             `--allow-diagnosis {peer}` or `allow_diagnosis = [\"{peer}\"]` under [monitor])"
        );
        if self.policy.groups.is_empty() {
            return Err(refused);
        }
        let held = within(
            GROUPS_WAIT,
            self.registry
                .ask::<Groups, _>(|reply| groups::Request::List { reply }),
        )
        .await;
        let held = match held {
            Ok(list) => list.groups,
            Err(_) => return Err(format!("{refused}; its groups service does not answer")),
        };
        for wanted in &self.policy.groups {
            let by_id = held.iter().find(|g| g.id == *wanted);
            let by_name: Vec<_> = held.iter().filter(|g| g.name == *wanted).collect();
            let id = match (by_id, by_name.as_slice()) {
                (Some(g), _) => g.id.clone(),
                (None, [g]) => g.id.clone(),
                (None, []) => continue,
                (None, _) => {
                    warn!(
                        group = wanted.as_str(),
                        "allow_diagnosis names a group by a name that several groups have: \
                         none of them is allowed (name it by its id)"
                    );
                    continue;
                }
            };
            let member = within(
                GROUPS_WAIT,
                self.registry
                    .ask::<Groups, bool>(|reply| groups::Request::IsMember {
                        group: id,
                        peer,
                        reply,
                    }),
            )
            .await;
            if matches!(member, Ok(true)) {
                return Ok(());
            }
        }
        Err(refused)
    }
}

/// Serves the protocol until the guard is dropped.
pub fn serve(net: &Network, registry: Registry, policy: Policy) -> Result<Accepting, String> {
    let answering = net.clone();
    let gate = Gate {
        policy,
        registry,
        decided: Arc::default(),
    };
    net.accept(
        PROTOCOL,
        Limits {
            total: INBOUND_TOTAL,
            per_peer: INBOUND_PER_PEER,
            max_frame: MAX_ASK,
            idle: FRAME_WAIT,
        },
        move |peer, stream| answer(peer, stream, answering.clone(), gate.clone()),
        drop_stream,
    )
    .map_err(|e| e.to_string())
}

async fn answer(peer: PeerId, stream: InboundStream, net: Network, gate: Gate) {
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
        Some(diag_ask::Kind::View(_)) => match gate.allows(peer).await {
            Ok(()) => match view(&net, peer).await {
                Some(view) => answer.view = Some(view),
                None => answer.refused = "its network service does not answer".into(),
            },
            Err(why) => answer.refused = why,
        },
        Some(diag_ask::Kind::Links(links)) => match gate.allows(peer).await {
            Ok(()) => match links_of(&net, &links.peer_ids).await {
                Ok(links) => answer.links = links,
                Err(why) => answer.refused = why,
            },
            Err(why) => answer.refused = why,
        },
        None => answer.refused = "an ask of a kind this node does not know".into(),
    }
    answer.now_ms = now_ms();
    if answer.encoded_len() > MAX_ANSWER {
        // Not expected (every part is capped), but the asker would refuse it whole.
        answer = DiagAnswer {
            now_ms: answer.now_ms,
            refused: "its answer would be too large".into(),
            ..DiagAnswer::default()
        };
    }
    if let Err(e) = write_message(&mut io, &answer, FRAME_WAIT).await {
        debug!(%peer, "cannot answer a diagnosis ask: {e}");
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
}

/// How this node is connected to each peer of `ids`: one link each, in their order, without
/// why a relayed one is relayed (64 of those would not fit in an answer).
async fn links_of(net: &Network, ids: &[Bytes]) -> Result<Vec<DiagLink>, String> {
    if ids.len() > MAX_LINKS {
        return Err(format!("at most {MAX_LINKS} peers per ask"));
    }
    let peers = ids
        .iter()
        .map(|b| PeerId::from_bytes(b).map_err(|_| "an ask named something that is not a peer id"))
        .collect::<Result<Vec<PeerId>, _>>()?;
    let infos = net.peers().await.map_err(|e| e.to_string())?;
    Ok(peers
        .iter()
        .map(|p| DiagLink {
            why_relayed: String::new(),
            ..link_of(*p, infos.iter().find(|i| i.peer_id == p.to_string()))
        })
        .collect())
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
        asker: Some(DiagLink {
            why_relayed: told(info.map_or("", |i| i.why_relayed.as_str()), MAX_WHY),
            ..link_of(asker, info)
        }),
        listen_addresses: capped(status.listen_addresses),
        external_addresses: capped(status.external_addresses),
        relays: status.relays,
    })
}

/// Text a peer told (in a diagnosis answer, its identify): control characters escaped, cut
/// to `max` bytes — it goes into a report people read on a terminal.
pub fn told(text: &str, max: usize) -> String {
    // Up to `max` bytes of the text, then the mark if it was cut.
    crate::logs::one_line(text, max + '…'.len_utf8())
}

/// What a peer answered, made safe to show and reason on: known words only where words are
/// expected, addresses and peer ids that parse, text escaped and cut.
fn checked(answer: DiagAnswer) -> DiagAnswer {
    let DiagAnswer {
        now_ms,
        refused,
        view,
        links,
    } = answer;
    DiagAnswer {
        now_ms,
        refused: told(&refused, 512),
        view: view.map(checked_view),
        links: links
            .into_iter()
            .take(MAX_LINKS)
            .map(checked_link)
            .collect(),
    }
}

fn checked_view(view: DiagView) -> DiagView {
    let DiagView {
        version,
        reachability,
        nat_mapping,
        listen_addresses,
        external_addresses,
        relays,
        asker,
    } = view;
    let addresses = |all: Vec<String>| -> Vec<String> {
        all.iter()
            .filter_map(|a| a.parse::<libp2p::Multiaddr>().ok())
            .take(MAX_VIEW_ADDRS)
            .map(|a| a.to_string())
            .collect()
    };
    DiagView {
        version: told(&version, 64),
        reachability: known(&reachability, &["public", "private", "unknown"]),
        nat_mapping: known(
            &nat_mapping,
            &[
                "none",
                "endpoint-independent",
                "port-randomizing",
                "unknown",
            ],
        ),
        listen_addresses: addresses(listen_addresses),
        external_addresses: addresses(external_addresses),
        relays: relays
            .iter()
            .filter_map(|r| r.parse::<PeerId>().ok())
            .take(MAX_VIEW_ADDRS)
            .map(|r| r.to_string())
            .collect(),
        asker: asker.map(checked_link),
    }
}

fn checked_link(link: DiagLink) -> DiagLink {
    let DiagLink {
        peer_id,
        state,
        transport,
        rtt_us,
        why_relayed,
    } = link;
    DiagLink {
        peer_id,
        state: known(&state, &["direct", "relayed", "none"]),
        transport: known(&transport, &["tcp", "quic", "relay", "other", ""]),
        rtt_us,
        why_relayed: told(&why_relayed, MAX_WHY),
    }
}

/// `word` if it is one of `words`, else "unknown".
fn known(word: &str, words: &[&str]) -> String {
    match words.contains(&word) {
        true => word.to_owned(),
        false => "unknown".to_owned(),
    }
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
        Ok((checked(answer), started.elapsed()))
    };
    tokio::time::timeout(FRAME_WAIT * 2, round)
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_a_peer_told_stays_one_short_line() {
        assert_eq!(told("ok", 10), "ok");
        assert_eq!(told("\x1b[2Jfake\nFAIL", 64), "\\u{1b}[2Jfake\\nFAIL");
        assert_eq!(told(&"x".repeat(100), 8), "xxxxxxxx…");
    }

    #[test]
    fn an_answer_keeps_only_what_makes_sense() {
        let peer = PeerId::random();
        let answer = checked(DiagAnswer {
            now_ms: 5,
            refused: "no\x1b[31m".into(),
            view: Some(DiagView {
                version: "0.1.0\n".into(),
                reachability: "public!".into(),
                nat_mapping: "port-randomizing".into(),
                listen_addresses: vec!["/ip4/1.2.3.4/tcp/1".into(), "rm -rf".into()],
                external_addresses: Vec::new(),
                relays: vec![peer.to_string(), "x".into()],
                asker: Some(DiagLink {
                    state: "direct".into(),
                    transport: "carrier pigeon".into(),
                    ..DiagLink::default()
                }),
            }),
            links: vec![DiagLink {
                state: "teleported".into(),
                ..DiagLink::default()
            }],
        });
        assert_eq!(answer.refused, "no\\u{1b}[31m");
        let view = answer.view.expect("view");
        assert_eq!(view.version, "0.1.0\\n");
        assert_eq!(view.reachability, "unknown");
        assert_eq!(view.nat_mapping, "port-randomizing");
        assert_eq!(view.listen_addresses, ["/ip4/1.2.3.4/tcp/1"]);
        assert_eq!(view.relays, [peer.to_string()]);
        let asker = view.asker.expect("asker");
        assert_eq!(
            (asker.state.as_str(), asker.transport.as_str()),
            ("direct", "unknown")
        );
        assert_eq!(answer.links[0].state, "unknown");
    }

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
