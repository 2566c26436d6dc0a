//! The lending side: the owner's policy, the leases granted under it, and the server of
//! `/p2pos/resources/1` that answers peers (offers, leases, renewals, releases). Every answer
//! is decided here, under one short lock; nothing is ever granted beyond the policy.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use libp2p::{PeerId, StreamProtocol};
use p2pos_kernel::events::now_ms;
use p2pos_proto::{
    resources::v1::{Amounts, Inventory, Lease, Offer, Refusal, Refused, Sharing, When},
    wire::v1::{
        ResourcesAnswer, ResourcesAsk, ResourcesLeaseAsk, ResourcesRenewAsk, resources_answer,
        resources_ask,
    },
};
use p2pos_protocols::{
    network::{InboundStream, Network},
    wire::{read_message, write_message},
};
use prost::Message;
use tokio::sync::watch;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::policy;

/// `/p2pos/resources/1`.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pos/resources/1");
/// The payload type an offer is signed as.
pub const OFFER_TYPE: &str = "/p2pos/resources/offer";
/// Largest ask or answer.
pub const MAX_FRAME: usize = 4096;
/// How long one side may take to send its frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);
/// Leases one peer may hold here at once.
pub const MAX_LEASES_PER_PEER: usize = 16;
/// Leases granted here at once, all peers together.
pub const MAX_LEASES: usize = 1024;
/// A lease's length when the ask gives none, in seconds.
pub const TTL_DEFAULT: u32 = 300;
/// The shortest lease that may be asked for, in seconds.
pub const TTL_MIN: u32 = 10;
/// The longest lease that may be asked for, in seconds.
pub const TTL_MAX: u32 = 86_400;

/// A lease granted here.
#[derive(Debug, Clone)]
struct Granted {
    holder: PeerId,
    amounts: Amounts,
    until: Instant,
    until_ms: u64,
    app_id: String,
    /// Set when a run claimed it (one run per lease); cancelled when the lease ends.
    claimed: Option<CancellationToken>,
}

impl Drop for State {
    /// The lender goes: no run may outlive the leases it holds.
    fn drop(&mut self) {
        for granted in self.granted.values() {
            granted.end();
        }
    }
}

impl Granted {
    /// The lease ends: the run that claimed it, if any, is told.
    fn end(&self) {
        if let Some(claimed) = &self.claimed {
            claimed.cancel();
        }
    }
}

#[derive(Debug, Default)]
struct State {
    sharing: Sharing,
    granted: HashMap<String, Granted>,
}

/// The lender: cheap to clone.
#[derive(Clone)]
pub struct Lender {
    state: Arc<Mutex<State>>,
    inventory: watch::Receiver<Inventory>,
    local: PeerId,
}

/// A refusal for `reason`, with its line for people.
pub(crate) fn refused(reason: Refusal, message: impl Into<String>) -> Refused {
    Refused {
        reason: reason as i32,
        message: message.into(),
    }
}

/// Why `offer` cannot serve `needs` now (its owner is busy, or it lacks one of them), if so.
pub(crate) fn short_of(offer: &Offer, needs: &Amounts) -> Option<Refused> {
    if offer.owner_busy {
        return Some(refused(
            Refusal::OwnerBusy,
            "it lends only while its owner is not using the machine, and the owner is busy",
        ));
    }
    let free = offer.free.unwrap_or_default();
    let lacks = [
        (
            needs.cpu > free.cpu + 1e-9,
            Refusal::InsufficientCpu,
            format!("{} cores needed, {} free", needs.cpu, free.cpu),
        ),
        (
            needs.memory_bytes > free.memory_bytes,
            Refusal::InsufficientMemory,
            format!(
                "{} bytes of memory needed, {} free",
                needs.memory_bytes, free.memory_bytes
            ),
        ),
        (
            needs.disk_bytes > free.disk_bytes,
            Refusal::InsufficientDisk,
            format!(
                "{} bytes of disk needed, {} free",
                needs.disk_bytes, free.disk_bytes
            ),
        ),
    ];
    lacks
        .into_iter()
        .find(|(short, _, _)| *short)
        .map(|(_, reason, message)| refused(reason, message))
}

/// `ttl_secs` as asked (0: the default), or why not.
pub fn ttl(ttl_secs: u32) -> Result<u32, Refused> {
    match ttl_secs {
        0 => Ok(TTL_DEFAULT),
        t if (TTL_MIN..=TTL_MAX).contains(&t) => Ok(t),
        t => Err(refused(
            Refusal::Invalid,
            format!("a lease lasts {TTL_MIN} to {TTL_MAX} s, not {t}"),
        )),
    }
}

impl Lender {
    /// A lender under `sharing`, judging the owner's activity from `inventory`.
    pub fn new(local: PeerId, sharing: Sharing, inventory: watch::Receiver<Inventory>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                sharing,
                granted: HashMap::new(),
            })),
            inventory,
            local,
        }
    }

    /// The state, with ended leases dropped.
    fn state(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        state.granted.retain(|_, g| {
            let lasts = g.until > now;
            if !lasts {
                g.end();
            }
            lasts
        });
        state
    }

    /// The policy.
    pub fn sharing(&self) -> Sharing {
        self.state().sharing.clone()
    }

    /// Replaces the policy; leases granted stay until they end.
    pub fn set_sharing(&self, sharing: Sharing) {
        self.state().sharing = sharing;
    }

    /// Whether the owner is using the machine now (the CPU busy share not due to this node and
    /// its helpers is at or above `threshold` percent).
    fn owner_busy(&self, threshold: f64) -> bool {
        let inventory = self.inventory.borrow();
        let Some(cpu) = &inventory.cpu else {
            return false;
        };
        let cores = f64::from(cpu.logical_cores.max(1));
        let ours = inventory.node.map_or(0.0, |n| n.cpu_percent)
            + inventory
                .helpers
                .iter()
                .filter_map(|h| h.usage)
                .map(|u| u.cpu_percent)
                .sum::<f64>();
        cpu.usage_percent - ours / cores >= threshold
    }

    /// What `peer` may see (`in_group`: it is a member of a group the policy lends to): the
    /// offer, or why not.
    fn offer(&self, state: &State, peer: &PeerId, in_group: bool) -> Result<Offer, Refused> {
        let sharing = &state.sharing;
        if !policy::lends(sharing) {
            return Err(refused(Refusal::NotShared, "this node lends nothing"));
        }
        let id = peer.to_string();
        if !in_group && !sharing.peers.contains(&id) {
            return Err(refused(
                Refusal::NotAllowed,
                format!("this node does not lend to {id}"),
            ));
        }
        let total = sharing.amounts.unwrap_or_default();
        let mut free = total;
        for g in state.granted.values() {
            free.cpu = (free.cpu - g.amounts.cpu).max(0.0);
            free.memory_bytes = free.memory_bytes.saturating_sub(g.amounts.memory_bytes);
            free.disk_bytes = free.disk_bytes.saturating_sub(g.amounts.disk_bytes);
        }
        let when = When::try_from(sharing.when).unwrap_or(When::Always);
        Ok(Offer {
            peer_id: self.local.to_string(),
            total: Some(total),
            free: Some(free),
            when: when as i32,
            owner_busy: when == When::Idle && self.owner_busy(policy::idle_below(sharing)),
            at_ms: now_ms(),
        })
    }

    /// Answers one ask from `peer` (`in_group`: a member of a group the policy lends to); an
    /// offer comes back unsigned, as `Err`, for the caller to sign.
    pub fn answer(
        &self,
        peer: PeerId,
        ask: ResourcesAsk,
        in_group: bool,
    ) -> Result<ResourcesAnswer, Offer> {
        use resources_answer::Kind;
        let kind = match ask.kind {
            Some(resources_ask::Kind::Offer(_)) => {
                match self.offer(&self.state(), &peer, in_group) {
                    Ok(offer) => return Err(offer),
                    Err(why) => Kind::Refused(why),
                }
            }
            Some(resources_ask::Kind::Lease(ask)) => match self.lease(peer, ask, in_group) {
                Ok(lease) => Kind::Lease(lease),
                Err(why) => Kind::Refused(why),
            },
            Some(resources_ask::Kind::Renew(ask)) => match self.renew(peer, ask, in_group) {
                Ok(lease) => Kind::Lease(lease),
                Err(why) => Kind::Refused(why),
            },
            Some(resources_ask::Kind::Release(ask)) => {
                let mut state = self.state();
                if state
                    .granted
                    .get(&ask.lease_id)
                    .is_some_and(|g| g.holder == peer)
                    && let Some(granted) = state.granted.remove(&ask.lease_id)
                {
                    granted.end();
                }
                Kind::Released(true)
            }
            None => Kind::Refused(refused(Refusal::Invalid, "an empty ask")),
        };
        Ok(ResourcesAnswer { kind: Some(kind) })
    }

    fn lease(
        &self,
        peer: PeerId,
        ask: ResourcesLeaseAsk,
        in_group: bool,
    ) -> Result<Lease, Refused> {
        let ResourcesLeaseAsk {
            amounts,
            ttl_secs,
            app_id,
        } = ask;
        let amounts = amounts.unwrap_or_default();
        let ttl = ttl(ttl_secs)?;
        policy::check_amounts(&amounts, f64::INFINITY)
            .map_err(|why| refused(Refusal::Invalid, why))?;
        if amounts.cpu == 0.0 && amounts.memory_bytes == 0 && amounts.disk_bytes == 0 {
            return Err(refused(Refusal::Invalid, "a lease of nothing"));
        }
        let app_id: String = app_id.chars().take(128).collect();
        let mut state = self.state();
        let offer = self.offer(&state, &peer, in_group)?;
        if let Some(why) = short_of(&offer, &amounts) {
            return Err(why);
        }
        let held = state.granted.values().filter(|g| g.holder == peer).count();
        if held >= MAX_LEASES_PER_PEER {
            return Err(refused(
                Refusal::TooManyLeases,
                format!("{peer} holds {held} leases here, the most one peer may"),
            ));
        }
        if state.granted.len() >= MAX_LEASES {
            return Err(refused(
                Refusal::TooManyLeases,
                format!("this node has granted {MAX_LEASES} leases, the most it keeps"),
            ));
        }
        let lease_id = format!("{:016x}", rand::random::<u64>());
        let granted = Granted {
            holder: peer,
            amounts,
            until: Instant::now() + Duration::from_secs(u64::from(ttl)),
            until_ms: now_ms() + u64::from(ttl) * 1000,
            app_id,
            claimed: None,
        };
        let lease = self.lease_of(&lease_id, &granted);
        state.granted.insert(lease_id, granted);
        Ok(lease)
    }

    /// Claims the lease `lease_id` that `peer` holds here for one run: the lease, and a token
    /// cancelled when the lease ends (it expires, or its holder gives it back); or why not:
    /// this node lends nothing (and `peer` holds no lease from before), no such lease of
    /// `peer`, or a run claimed it already.
    pub fn claim(
        &self,
        peer: &PeerId,
        lease_id: &str,
    ) -> Result<(Lease, CancellationToken), Refused> {
        let mut state = self.state();
        let lends = policy::lends(&state.sharing);
        match state
            .granted
            .get_mut(lease_id)
            .filter(|g| g.holder == *peer)
        {
            Some(granted) if granted.claimed.is_some() => Err(refused(
                Refusal::Invalid,
                format!("lease {lease_id:?} is in use by another run (one run per lease)"),
            )),
            Some(granted) => {
                let ends = CancellationToken::new();
                granted.claimed = Some(ends.clone());
                let granted = granted.clone();
                Ok((self.lease_of(lease_id, &granted), ends))
            }
            None if !lends => Err(refused(Refusal::NotShared, "this node lends nothing")),
            None => Err(refused(
                Refusal::UnknownLease,
                format!("no lease {lease_id:?} of {peer} here"),
            )),
        }
    }

    /// Ends the lease `lease_id` of `holder` (the run it served ended: a lease serves one).
    pub fn end(&self, holder: &PeerId, lease_id: &str) {
        let mut state = self.state();
        if let Entry::Occupied(granted) = state.granted.entry(lease_id.to_owned())
            && granted.get().holder == *holder
        {
            granted.remove().end();
        }
    }

    /// Extends a lease of `peer`, if the policy still lends to it now (a peer no longer
    /// allowed, or an owner now busy, keeps its lease only until it ends).
    fn renew(
        &self,
        peer: PeerId,
        ask: ResourcesRenewAsk,
        in_group: bool,
    ) -> Result<Lease, Refused> {
        let ttl = ttl(ask.ttl_secs)?;
        let mut state = self.state();
        let offer = self.offer(&state, &peer, in_group)?;
        if let Some(busy) = short_of(&offer, &Amounts::default()) {
            return Err(busy);
        }
        let Some(granted) = state
            .granted
            .get_mut(&ask.lease_id)
            .filter(|g| g.holder == peer)
        else {
            return Err(refused(
                Refusal::UnknownLease,
                format!("no lease {:?} of {peer} here", ask.lease_id),
            ));
        };
        granted.until = Instant::now() + Duration::from_secs(u64::from(ttl));
        granted.until_ms = now_ms() + u64::from(ttl) * 1000;
        let granted = granted.clone();
        Ok(self.lease_of(&ask.lease_id, &granted))
    }

    fn lease_of(&self, lease_id: &str, granted: &Granted) -> Lease {
        Lease {
            lease_id: lease_id.to_owned(),
            lender: self.local.to_string(),
            holder: granted.holder.to_string(),
            amounts: Some(granted.amounts),
            expires_at_ms: granted.until_ms,
            app_id: granted.app_id.clone(),
        }
    }

    /// The leases granted here that have not ended.
    pub fn granted(&self) -> Vec<Lease> {
        let state = self.state();
        let mut leases: Vec<Lease> = state
            .granted
            .iter()
            .map(|(id, g)| self.lease_of(id, g))
            .collect();
        leases.sort_by(|a, b| a.lease_id.cmp(&b.lease_id));
        leases
    }

    /// Serves one inbound stream: one ask, one answer. `membership` tells whether the asker is
    /// a member of one of the groups the policy lends to.
    pub async fn serve<M, Fut>(
        self,
        peer: PeerId,
        stream: InboundStream,
        membership: M,
        net: Network,
    ) where
        M: FnOnce(Vec<String>, PeerId) -> Fut,
        Fut: Future<Output = bool>,
    {
        let max = stream.max_frame();
        let mut io = stream.compat();
        let ask: ResourcesAsk = match read_message(&mut io, max, FRAME_WAIT).await {
            Ok(ask) => ask,
            Err(e) => {
                debug!(%peer, "a bad resources ask: {e}");
                return;
            }
        };
        let groups = self.sharing().groups;
        let in_group = !groups.is_empty() && membership(groups, peer).await;
        let answer = match self.answer(peer, ask, in_group) {
            Ok(answer) => answer,
            Err(offer) => match net.sign(OFFER_TYPE, offer.encode_to_vec()).await {
                Ok(signed) => ResourcesAnswer {
                    kind: Some(resources_answer::Kind::SignedOffer(signed.into())),
                },
                Err(e) => {
                    debug!(%peer, "cannot sign an offer: {e}");
                    return;
                }
            },
        };
        if let Err(e) = write_message(&mut io, &answer, FRAME_WAIT).await {
            debug!(%peer, "cannot answer a resources ask: {e}");
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
    }
}

#[cfg(test)]
mod tests {
    use p2pos_proto::{
        resources::v1::{Cpu, ProcessUsage},
        wire::v1::{ResourcesOfferAsk, ResourcesReleaseAsk},
    };

    use super::*;

    fn lender(peers: &[PeerId], when: When, busy: f64) -> (Lender, watch::Sender<Inventory>) {
        let inventory = Inventory {
            cpu: Some(Cpu {
                logical_cores: 2,
                usage_percent: busy,
                ..Cpu::default()
            }),
            node: Some(ProcessUsage {
                cpu_percent: 20.0,
                ..ProcessUsage::default()
            }),
            ..Inventory::default()
        };
        let (tx, rx) = watch::channel(inventory);
        let sharing = Sharing {
            amounts: Some(Amounts {
                cpu: 1.0,
                memory_bytes: 1000,
                disk_bytes: 0,
            }),
            peers: peers.iter().map(PeerId::to_string).collect(),
            groups: Vec::new(),
            when: when as i32,
            idle_below_percent: 50.0,
        };
        (Lender::new(PeerId::random(), sharing, rx), tx)
    }

    fn ask_lease(cpu: f64, memory_bytes: u64) -> ResourcesAsk {
        ResourcesAsk {
            kind: Some(resources_ask::Kind::Lease(ResourcesLeaseAsk {
                amounts: Some(Amounts {
                    cpu,
                    memory_bytes,
                    disk_bytes: 0,
                }),
                ttl_secs: 0,
                app_id: "app".into(),
            })),
        }
    }

    fn reason(answer: &Result<ResourcesAnswer, Offer>) -> Option<Refusal> {
        match answer.as_ref().map(|a| &a.kind) {
            Ok(Some(resources_answer::Kind::Refused(r))) => Refusal::try_from(r.reason).ok(),
            _ => None,
        }
    }

    fn lease_id(answer: Result<ResourcesAnswer, Offer>) -> String {
        match answer.map(|a| a.kind) {
            Ok(Some(resources_answer::Kind::Lease(lease))) => lease.lease_id,
            other => panic!("no lease: {other:?}"),
        }
    }

    #[test]
    fn a_lease_serves_one_run_which_hears_when_it_ends() {
        let (friend, other) = (PeerId::random(), PeerId::random());
        let (lender, _inventory) = lender(&[friend, other], When::Always, 10.0);
        let id = lease_id(lender.answer(friend, ask_lease(0.5, 100), false));
        let refused_for = |peer: &PeerId, id: &str| {
            lender
                .claim(peer, id)
                .err()
                .and_then(|r| Refusal::try_from(r.reason).ok())
        };
        assert_eq!(refused_for(&other, &id), Some(Refusal::UnknownLease));
        let (lease, ends) = lender.claim(&friend, &id).expect("claimed");
        assert_eq!(lease.amounts.unwrap().cpu, 0.5);
        assert_eq!(
            refused_for(&friend, &id),
            Some(Refusal::Invalid),
            "one run only"
        );
        assert!(!ends.is_cancelled());
        let release = ResourcesAsk {
            kind: Some(resources_ask::Kind::Release(ResourcesReleaseAsk {
                lease_id: id.clone(),
            })),
        };
        lender.answer(friend, release, false).expect("released");
        assert!(ends.is_cancelled(), "the run hears its lease ended");
        // The runner ends a lease whose run ended: its room is free at once.
        let id = lease_id(lender.answer(friend, ask_lease(1.0, 100), false));
        assert_eq!(
            reason(&lender.answer(friend, ask_lease(0.5, 100), false)),
            Some(Refusal::InsufficientCpu)
        );
        lender.end(&other, &id);
        assert_eq!(lender.granted().len(), 1, "only its holder's lease ends");
        lender.end(&friend, &id);
        assert!(lender.granted().is_empty());
        // Lending nothing, and holding nothing: NOT_SHARED.
        lender.set_sharing(Sharing::default());
        assert_eq!(refused_for(&friend, "nope"), Some(Refusal::NotShared));
    }

    #[test]
    fn leases_never_exceed_the_offer_and_strangers_see_nothing() {
        let (friend, stranger) = (PeerId::random(), PeerId::random());
        let (lender, _inventory) = lender(&[friend], When::Always, 10.0);
        let offer = ResourcesAsk {
            kind: Some(resources_ask::Kind::Offer(ResourcesOfferAsk {})),
        };
        assert_eq!(
            reason(&lender.answer(stranger, offer.clone(), false)),
            Some(Refusal::NotAllowed)
        );
        assert_eq!(
            reason(&lender.answer(stranger, ask_lease(0.5, 10), false)),
            Some(Refusal::NotAllowed)
        );

        let first = lease_id(lender.answer(friend, ask_lease(0.75, 600), false));
        assert_eq!(
            reason(&lender.answer(friend, ask_lease(0.5, 10), false)),
            Some(Refusal::InsufficientCpu)
        );
        assert_eq!(
            reason(&lender.answer(friend, ask_lease(0.25, 600), false)),
            Some(Refusal::InsufficientMemory)
        );
        let _second = lease_id(lender.answer(friend, ask_lease(0.25, 400), false));
        assert_eq!(lender.granted().len(), 2);
        match lender.answer(friend, offer, false) {
            Err(o) => {
                let free = o.free.expect("free");
                assert!(free.cpu.abs() < 1e-9 && free.memory_bytes == 0, "{free:?}");
            }
            other => panic!("{other:?}"),
        }

        // A stranger cannot give a friend's lease back; the friend can.
        let release = |id: &str| ResourcesAsk {
            kind: Some(resources_ask::Kind::Release(ResourcesReleaseAsk {
                lease_id: id.to_owned(),
            })),
        };
        let _ = lender.answer(stranger, release(&first), false);
        assert_eq!(lender.granted().len(), 2);
        let _ = lender.answer(friend, release(&first), false);
        assert_eq!(lender.granted().len(), 1);
        let third = lease_id(lender.answer(friend, ask_lease(0.5, 100), false));

        // Unshared: nothing for anyone, leases granted stay until they end, unrenewed.
        lender.set_sharing(Sharing::default());
        assert_eq!(
            reason(&lender.answer(friend, ask_lease(0.1, 1), false)),
            Some(Refusal::NotShared)
        );
        assert_eq!(lender.granted().len(), 2);
        let renew = ResourcesAsk {
            kind: Some(resources_ask::Kind::Renew(ResourcesRenewAsk {
                lease_id: third.clone(),
                ttl_secs: 60,
            })),
        };
        assert_eq!(
            reason(&lender.answer(friend, renew, false)),
            Some(Refusal::NotShared)
        );
    }

    #[test]
    fn a_member_of_a_group_lent_to_is_allowed() {
        let (lender, _inventory) = lender(&[], When::Always, 0.0);
        let mut sharing = lender.sharing();
        sharing.groups = vec!["friends".into()];
        lender.set_sharing(sharing);
        let member = PeerId::random();
        assert_eq!(
            reason(&lender.answer(member, ask_lease(0.5, 10), false)),
            Some(Refusal::NotAllowed)
        );
        lease_id(lender.answer(member, ask_lease(0.5, 10), true));
    }

    #[test]
    fn only_when_idle_means_not_while_the_owner_is_busy() {
        let friend = PeerId::random();
        // 80% busy of which the node's 20% of one core is 10%: the owner's 70% is over 50%.
        let (lender, inventory) = lender(&[friend], When::Idle, 80.0);
        assert_eq!(
            reason(&lender.answer(friend, ask_lease(0.5, 10), false)),
            Some(Refusal::OwnerBusy)
        );
        inventory.send_modify(|i| i.cpu.as_mut().expect("cpu").usage_percent = 30.0);
        lease_id(lender.answer(friend, ask_lease(0.5, 10), false));
    }

    #[test]
    fn bad_asks_are_refused() {
        let friend = PeerId::random();
        let (lender, _inventory) = lender(&[friend], When::Always, 0.0);
        for ask in [
            ask_lease(-1.0, 0),
            ask_lease(f64::INFINITY, 0),
            ask_lease(0.0, 0),
            ResourcesAsk { kind: None },
        ] {
            assert_eq!(
                reason(&lender.answer(friend, ask, false)),
                Some(Refusal::Invalid)
            );
        }
        let renew = ResourcesAsk {
            kind: Some(resources_ask::Kind::Renew(ResourcesRenewAsk {
                lease_id: "nope".into(),
                ttl_secs: 60,
            })),
        };
        assert_eq!(
            reason(&lender.answer(friend, renew, false)),
            Some(Refusal::UnknownLease)
        );
        let mut long = ask_lease(0.1, 0);
        if let Some(resources_ask::Kind::Lease(l)) = &mut long.kind {
            l.ttl_secs = TTL_MAX + 1;
        }
        assert_eq!(
            reason(&lender.answer(friend, long, false)),
            Some(Refusal::Invalid)
        );
    }
}
