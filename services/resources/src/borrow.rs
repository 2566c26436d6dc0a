//! The borrowing side: asking peers over `/p2pos/resources/1` for their offers (`Find`) and
//! for leases, and keeping the leases this node holds.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream::FuturesUnordered};
use libp2p::PeerId;
use p2pos_kernel::{ServiceError, events::now_ms};
use p2pos_proto::{
    resources::v1::{
        Amounts, FindReply, FindRequest, Lease, LeaseReply, Match, Mismatch, Offer, Refusal,
        Refused,
    },
    wire::v1::{
        ResourcesAnswer, ResourcesAsk, ResourcesLeaseAsk, ResourcesOfferAsk, ResourcesReleaseAsk,
        ResourcesRenewAsk, resources_answer, resources_ask,
    },
};
use p2pos_protocols::{
    names::covers,
    network::{Network, open_signed},
    wire::{read_message, write_message},
};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use prost::Message;

use crate::lend::{FRAME_WAIT, MAX_FRAME, OFFER_TYPE, PROTOCOL, refused, short_of};

/// The DHT key every node that lends anything provides.
pub const OFFERS_KEY: &str = "/p2pos/resources/offers";
/// How long reaching one peer and hearing its answer may take.
const ASK_WAIT: Duration = Duration::from_secs(10);
/// How long a DHT look-up for lenders may take.
const FIND_WAIT: Duration = Duration::from_secs(5);
/// Candidates one look-up asks: found in the DHT, given, or a group's members.
pub const MAX_CANDIDATES: usize = 32;
/// Matches answered when the request gives no limit, and the most it may ask for.
const DEFAULT_MATCHES: usize = 16;
const MAX_MATCHES: usize = 64;
/// Leases this node holds at once.
pub const MAX_HELD: usize = 256;

/// Sends `ask` to `peer` and reads its answer; how long the round trip took.
pub async fn ask(
    net: &Network,
    peer: PeerId,
    ask: &ResourcesAsk,
) -> Result<(ResourcesAnswer, Duration), Refused> {
    let unreachable = |why: String| refused(Refusal::Unreachable, format!("{peer}: {why}"));
    let round = async {
        net.connect(peer, Vec::new(), ASK_WAIT)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let started = Instant::now();
        let stream = net
            .open_stream(peer, PROTOCOL)
            .await
            .map_err(|e| unreachable(format!("no resource manager there ({e})")))?;
        let mut io = stream.compat();
        write_message(&mut io, ask, FRAME_WAIT)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let answer: ResourcesAnswer = read_message(&mut io, MAX_FRAME, FRAME_WAIT)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok((answer, started.elapsed()))
    };
    tokio::time::timeout(ASK_WAIT * 2, round)
        .await
        .unwrap_or_else(|_| Err(unreachable("no answer in time".into())))
}

/// The offer in `signed`, if `peer` signed it and it names `peer`.
fn open_offer(peer: PeerId, signed: &[u8]) -> Result<Offer, Refused> {
    let forged = || {
        refused(
            Refusal::Unreachable,
            format!("{peer} answered an offer it did not sign"),
        )
    };
    let (signer, payload) = open_signed(OFFER_TYPE, signed).ok_or_else(forged)?;
    let offer = Offer::decode(payload.as_slice()).map_err(|_| forged())?;
    if signer != peer || offer.peer_id != peer.to_string() {
        return Err(forged());
    }
    let (total, free) = (
        offer.total.unwrap_or_default(),
        offer.free.unwrap_or_default(),
    );
    let sane = |a: &Amounts| a.cpu.is_finite() && a.cpu >= 0.0;
    if !sane(&total)
        || !sane(&free)
        || free.cpu > total.cpu
        || free.memory_bytes > total.memory_bytes
        || free.disk_bytes > total.disk_bytes
    {
        return Err(refused(
            Refusal::Unreachable,
            format!("{peer} answered an offer that does not add up"),
        ));
    }
    Ok(offer)
}

/// `Find`: asks each candidate for its offer, at once, and ranks those that cover the needs.
pub async fn find(net: &Network, request: FindRequest) -> Result<FindReply, ServiceError> {
    // A group's members were put in `peers` by the service.
    let FindRequest {
        needs,
        peers,
        explain,
        limit,
        group: _,
    } = request;
    let needs = needs.unwrap_or_default();
    crate::policy::check_amounts(&needs, f64::INFINITY).map_err(ServiceError::invalid)?;
    let limit = match limit as usize {
        0 => DEFAULT_MATCHES,
        n => n.min(MAX_MATCHES),
    };
    let mut candidates = Vec::new();
    if peers.is_empty() {
        let found = net
            .find_providers(OFFERS_KEY.to_owned(), MAX_CANDIDATES, FIND_WAIT, true)
            .await;
        if let Ok(found) = found {
            candidates.extend(found.providers.into_iter().map(|p| p.peer));
        }
    } else {
        if peers.len() > MAX_CANDIDATES {
            return Err(ServiceError::invalid(format!(
                "at most {MAX_CANDIDATES} peers to look at, not {}",
                peers.len()
            )));
        }
        for peer in &peers {
            let parsed: PeerId = peer.trim().parse().map_err(|_| {
                ServiceError::invalid(format!(
                    "{:?} is not a peer id",
                    peer.chars().take(80).collect::<String>()
                ))
            })?;
            if !candidates.contains(&parsed) {
                candidates.push(parsed);
            }
        }
    }
    candidates.retain(|p| *p != net.local_peer_id());
    let offer_ask = ResourcesAsk {
        kind: Some(resources_ask::Kind::Offer(ResourcesOfferAsk {})),
    };
    let mut asks: FuturesUnordered<_> = candidates
        .into_iter()
        .map(|peer| {
            let offer_ask = &offer_ask;
            async move { (peer, ask(net, peer, offer_ask).await) }
        })
        .collect();
    let mut matches = Vec::new();
    let mut others = Vec::new();
    while let Some((peer, answered)) = asks.next().await {
        let outcome = match answered {
            Ok((
                ResourcesAnswer {
                    kind: Some(resources_answer::Kind::SignedOffer(signed)),
                },
                rtt,
            )) => match open_offer(peer, &signed) {
                Err(why) => Err(why),
                Ok(offer) => match short_of(&offer, &needs) {
                    None => Ok(Match {
                        offer: Some(offer),
                        rtt_us: u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX),
                        signed_offer: signed,
                    }),
                    Some(why) => Err(why),
                },
            },
            Ok((
                ResourcesAnswer {
                    kind: Some(resources_answer::Kind::Refused(why)),
                },
                _,
            )) => Err(why),
            Ok(_) => Err(refused(Refusal::Unreachable, "an answer that is no offer")),
            Err(why) => Err(why),
        };
        match outcome {
            Ok(found) => matches.push(found),
            Err(refused) if explain => others.push(Mismatch {
                peer_id: peer.to_string(),
                refused: Some(refused),
            }),
            Err(_) => {}
        }
    }
    matches.sort_by(|a, b| {
        let free = |m: &Match| m.offer.as_ref().and_then(|o| o.free).unwrap_or_default();
        let (fa, fb) = (free(a), free(b));
        fb.cpu
            .total_cmp(&fa.cpu)
            .then(fb.memory_bytes.cmp(&fa.memory_bytes))
            .then(a.rtt_us.cmp(&b.rtt_us))
    });
    matches.truncate(limit);
    others.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
    Ok(FindReply { matches, others })
}

/// The leases this node holds on peers; cheap to clone.
#[derive(Clone, Default)]
pub struct Holder {
    held: Arc<Mutex<HashMap<String, Lease>>>,
}

impl Holder {
    /// The held leases, with ended ones dropped.
    fn held(&self) -> MutexGuard<'_, HashMap<String, Lease>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        held.retain(|_, lease| lease.expires_at_ms > now);
        held
    }

    /// The held leases that `caller_app` may see (`None`: all), by id.
    pub fn list(&self, caller_app: Option<&str>) -> Vec<Lease> {
        let mut leases: Vec<Lease> = self
            .held()
            .values()
            .filter(|l| caller_app.is_none_or(|app| covers(app, &l.app_id)))
            .cloned()
            .collect();
        leases.sort_by(|a, b| a.lease_id.cmp(&b.lease_id));
        leases
    }

    /// Asks `peer` for a lease of `amounts` for `app_id`, and keeps it if granted.
    pub async fn lease(
        &self,
        net: &Network,
        peer: PeerId,
        amounts: Amounts,
        ttl_secs: u32,
        app_id: String,
    ) -> LeaseReply {
        if self.held().len() >= MAX_HELD {
            return refusal(too_many());
        }
        let lease_ask = ResourcesAsk {
            kind: Some(resources_ask::Kind::Lease(ResourcesLeaseAsk {
                amounts: Some(amounts),
                ttl_secs,
                app_id: app_id.clone(),
            })),
        };
        let asked = Asked {
            lender: peer,
            holder: net.local_peer_id(),
            renewing: None,
            amounts,
            app_id,
            ttl_secs,
        };
        self.keep(ask(net, peer, &lease_ask).await, asked)
    }

    /// Extends a held lease, if `caller_app` may (`None`: the admin).
    pub async fn renew(
        &self,
        net: &Network,
        caller_app: Option<&str>,
        lease_id: String,
        ttl_secs: u32,
    ) -> LeaseReply {
        let held = match self.find(caller_app, &lease_id) {
            Ok(held) => held,
            Err(why) => return refusal(why),
        };
        let Ok(lender) = held.lender.parse::<PeerId>() else {
            return refusal(refused(
                Refusal::UnknownLease,
                "a held lease with a bad lender",
            ));
        };
        let renew_ask = ResourcesAsk {
            kind: Some(resources_ask::Kind::Renew(ResourcesRenewAsk {
                lease_id: lease_id.clone(),
                ttl_secs,
            })),
        };
        let answered = ask(net, lender, &renew_ask).await;
        if let Ok((
            ResourcesAnswer {
                kind: Some(resources_answer::Kind::Refused(why)),
            },
            _,
        )) = &answered
            && why.reason == Refusal::UnknownLease as i32
        {
            // The lender no longer has it (it ended, or the lender restarted).
            self.held().remove(&lease_id);
        }
        let asked = Asked {
            lender,
            holder: net.local_peer_id(),
            renewing: Some(lease_id),
            amounts: held.amounts.unwrap_or_default(),
            app_id: held.app_id,
            ttl_secs,
        };
        self.keep(answered, asked)
    }

    /// Gives a held lease back, if `caller_app` may (`None`: the admin). The lease is
    /// forgotten here even if the lender cannot be told (it ends there by itself).
    pub async fn release(
        &self,
        net: &Network,
        caller_app: Option<&str>,
        lease_id: String,
    ) -> Result<(), Refused> {
        let lender = self.find(caller_app, &lease_id)?.lender;
        self.held().remove(&lease_id);
        let Ok(lender) = lender.parse::<PeerId>() else {
            return Ok(());
        };
        let release_ask = ResourcesAsk {
            kind: Some(resources_ask::Kind::Release(ResourcesReleaseAsk {
                lease_id,
            })),
        };
        let _ = ask(net, lender, &release_ask).await;
        Ok(())
    }

    /// Held lease `lease_id`, if `caller_app` may act on it.
    fn find(&self, caller_app: Option<&str>, lease_id: &str) -> Result<Lease, Refused> {
        self.held()
            .get(lease_id)
            .filter(|l| caller_app.is_none_or(|app| covers(app, &l.app_id)))
            .cloned()
            .ok_or_else(|| {
                refused(
                    Refusal::UnknownLease,
                    format!("this node holds no lease {lease_id:?}"),
                )
            })
    }

    /// Keeps the lease `answered` carries, as this node asked for it: the lender's word is
    /// taken for the lease id and the end (no later than asked for), never for whose it is,
    /// what it holds or whom it is for.
    fn keep(
        &self,
        answered: Result<(ResourcesAnswer, Duration), Refused>,
        asked: Asked,
    ) -> LeaseReply {
        let lease = match answered {
            Ok((
                ResourcesAnswer {
                    kind: Some(resources_answer::Kind::Lease(lease)),
                },
                _,
            )) => lease,
            Ok((
                ResourcesAnswer {
                    kind: Some(resources_answer::Kind::Refused(why)),
                },
                _,
            )) => return refusal(why),
            Ok(_) => return refusal(refused(Refusal::Unreachable, "an answer that is no lease")),
            Err(why) => return refusal(why),
        };
        let bad = |why: &str| {
            refusal(refused(
                Refusal::Unreachable,
                format!("{} answered a lease that {why}", asked.lender),
            ))
        };
        if lease.lender != asked.lender.to_string() {
            return bad("it did not lend");
        }
        if lease.lease_id.is_empty() || lease.lease_id.len() > 64 {
            return bad("has no usable id");
        }
        if asked
            .renewing
            .as_ref()
            .is_some_and(|id| *id != lease.lease_id)
        {
            return bad("is not the one renewed");
        }
        let ttl = u64::from(crate::lend::ttl(asked.ttl_secs).unwrap_or(crate::lend::TTL_MAX));
        // A minute of slack for the two clocks.
        let latest = now_ms() + ttl * 1000 + 60_000;
        let kept = Lease {
            lease_id: lease.lease_id,
            lender: asked.lender.to_string(),
            holder: asked.holder.to_string(),
            amounts: Some(asked.amounts),
            expires_at_ms: lease.expires_at_ms.min(latest),
            app_id: asked.app_id,
        };
        let mut held = self.held();
        match held.get(&kept.lease_id) {
            // Another lender's lease by that id: this one is not to be trusted.
            Some(other) if other.lender != kept.lender => return bad("has another's id"),
            Some(_) => {}
            None if held.len() >= MAX_HELD => return refusal(too_many()),
            None => {}
        }
        held.insert(kept.lease_id.clone(), kept.clone());
        LeaseReply {
            lease: Some(kept),
            refused: None,
        }
    }
}

/// What this node asked a lender for.
struct Asked {
    lender: PeerId,
    holder: PeerId,
    /// The lease renewed, or `None` for a new one.
    renewing: Option<String>,
    amounts: Amounts,
    app_id: String,
    ttl_secs: u32,
}

fn too_many() -> Refused {
    refused(
        Refusal::TooManyLeases,
        format!("this node holds {MAX_HELD} leases, the most it keeps"),
    )
}

fn refusal(why: Refused) -> LeaseReply {
    LeaseReply {
        lease: None,
        refused: Some(why),
    }
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;
    use p2pos_protocols::network::sign_with;

    use super::*;

    #[test]
    fn only_an_offer_the_lender_signed_for_itself_is_taken() {
        let (lender, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let lender_id = lender.public().to_peer_id();
        let offer = |peer: PeerId| Offer {
            peer_id: peer.to_string(),
            ..Offer::default()
        };
        let signed =
            sign_with(&lender, OFFER_TYPE, offer(lender_id).encode_to_vec()).expect("sign");
        assert_eq!(
            open_offer(lender_id, &signed).expect("genuine").peer_id,
            lender_id.to_string()
        );

        // Signed by someone else, naming the lender.
        let forged = sign_with(&other, OFFER_TYPE, offer(lender_id).encode_to_vec()).expect("sign");
        assert!(open_offer(lender_id, &forged).is_err());
        // Signed by the lender, naming someone else.
        let other_id = other.public().to_peer_id();
        let misnamed =
            sign_with(&lender, OFFER_TYPE, offer(other_id).encode_to_vec()).expect("sign");
        assert!(open_offer(lender_id, &misnamed).is_err());
        // Signed as something else, and no envelope at all.
        let wrong_type =
            sign_with(&lender, "/p2pos/other", offer(lender_id).encode_to_vec()).expect("sign");
        assert!(open_offer(lender_id, &wrong_type).is_err());
        assert!(open_offer(lender_id, b"junk").is_err());
    }
}
