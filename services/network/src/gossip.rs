//! Gossip confined to scopes (groups): libp2p gossipsub, wrapped so that only a scope's
//! members can follow its topics and only messages authored by them are accepted.
//!
//! Gossipsub sends a topic's messages to every connected peer that said it follows the topic,
//! and asks its subscription filter about subscriptions without saying from whom. The
//! [`ScopedGossip`] behaviour wraps it and notes the peer of each event it hands on, so the
//! [`ScopeFilter`] refuses a subscription from a peer that is not a member of the topic's
//! scope: gossipsub never counts it among the followers, so nothing on the topic (mesh,
//! flood-publish, gossip) is ever sent to it. A member removed later is disconnected by the
//! swarm task when it follows a topic of that scope, so gossipsub forgets its subscriptions and
//! its renewed ones are filtered. Messages are validated by hand: a message whose author is not
//! a member is `Reject`ed, which lowers the score of the peer that forwarded it.
//!
//! Parameters are tuned for groups of 2 to 50 members: a message is flood-published to every
//! follower, a mesh of 2 to 12 peers (6 wanted) forwards it, and a publication with no follower
//! online is not an error (catch-up delivers it later).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    gossipsub::{
        self, IdentityTransform, MessageAuthenticity, PeerScoreParams, PeerScoreThresholds,
        TopicHash, TopicScoreParams, TopicSubscriptionFilter,
    },
    identity::Keypair,
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm,
    },
};
use p2pos_protocols::network::{
    GossipMessage,
    gossip::{MAX_MESSAGE, scope_of},
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::debug;

/// Bytes of framing gossip adds to a message (signature, key, topic, sequence number).
const FRAMING: usize = 1024;
/// How often gossipsub maintains its meshes.
const HEARTBEAT: Duration = Duration::from_millis(700);
/// Most scopes a node keeps members for (one per group held).
pub(crate) const MAX_SCOPES: usize = 256;

/// Peers whose refused subscriptions are remembered, at most (and scopes per peer).
const MAX_REFUSED_PEERS: usize = 1024;
const MAX_REFUSED_SCOPES: usize = 16;

/// Who may follow each scope, and the peer whose event gossipsub is handling now.
#[derive(Default)]
pub(crate) struct Access {
    /// The peer whose event gossipsub handles now.
    current: Option<PeerId>,
    /// Set while this node subscribes itself.
    local: bool,
    pub(crate) scopes: HashMap<String, HashSet<PeerId>>,
    /// Peers whose subscription to a scope's topic was refused (not members then, as this
    /// node knew): if one becomes a member, gossipsub must hear its subscription again.
    pub(crate) refused: HashMap<PeerId, HashSet<String>>,
}

/// Shared between the filter inside gossipsub and the swarm task.
#[derive(Clone, Default)]
pub(crate) struct Scopes(Arc<Mutex<Access>>);

impl Scopes {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Access> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `peer` is a member of `topic`'s scope.
    pub(crate) fn allows(&self, topic: &TopicHash, peer: &PeerId) -> bool {
        scope_of(topic.as_str()).is_some_and(|scope| {
            self.lock()
                .scopes
                .get(scope)
                .is_some_and(|m| m.contains(peer))
        })
    }
}

/// Gossipsub's subscription filter: only members of a topic's scope may follow it.
pub(crate) struct ScopeFilter(Scopes);

impl TopicSubscriptionFilter for ScopeFilter {
    /// Asked for this node's own subscriptions (marked `local`) and, through gossipsub's default
    /// `allow_incoming_subscription`, for each peer's (its peer noted by [`ScopedGossip`]);
    /// anything else is refused.
    fn can_subscribe(&mut self, topic: &TopicHash) -> bool {
        let mut access = self.0.lock();
        let Some(scope) = scope_of(topic.as_str()) else {
            return false;
        };
        let Some(peer) = access.current else {
            return access.local;
        };
        let allowed = access.scopes.get(scope).is_some_and(|m| m.contains(&peer));
        if !allowed {
            debug!(%peer, %topic, "gossip subscription refused: not a member");
            if access.refused.len() < MAX_REFUSED_PEERS || access.refused.contains_key(&peer) {
                let scopes = access.refused.entry(peer).or_default();
                if scopes.len() < MAX_REFUSED_SCOPES {
                    scopes.insert(scope.to_owned());
                }
            }
        }
        allowed
    }
}

pub(crate) type Inner = gossipsub::Behaviour<IdentityTransform, ScopeFilter>;

/// Gossipsub that knows, while it handles a peer's event, which peer it is.
pub(crate) struct ScopedGossip {
    pub(crate) inner: Inner,
    pub(crate) scopes: Scopes,
}

/// Gossipsub for this node, signing with `key`.
pub(crate) fn behaviour(key: &Keypair) -> Result<ScopedGossip, String> {
    let config = gossipsub::ConfigBuilder::default()
        // Ids no one can guess without the message: gossipsub serves its message cache to
        // any peer that asks by id (IWANT), follower or not, and the default id (author and
        // a sequence number counting up) can be guessed.
        .message_id_fn(|message| {
            let mut h = Sha256::new();
            h.update(message.topic.as_str().as_bytes());
            h.update(message.source.map(|p| p.to_bytes()).unwrap_or_default());
            h.update(message.sequence_number.unwrap_or_default().to_be_bytes());
            h.update(&message.data);
            gossipsub::MessageId::from(&h.finalize()[..20])
        })
        .heartbeat_interval(HEARTBEAT)
        .mesh_n(6)
        .mesh_n_low(2)
        .mesh_n_high(12)
        .mesh_outbound_min(1)
        .gossip_lazy(6)
        .flood_publish(true)
        .max_transmit_size(MAX_MESSAGE + FRAMING)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .build()
        .map_err(|e| format!("gossip configuration: {e}"))?;
    let scopes = Scopes::default();
    let mut inner = Inner::new_with_subscription_filter(
        MessageAuthenticity::Signed(key.clone()),
        config,
        ScopeFilter(scopes.clone()),
    )?;
    // Members of small groups often share an address (one machine, one NAT): colocation is
    // not held against them; membership, not addresses, decides who takes part.
    let params = PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..PeerScoreParams::default()
    };
    inner.with_peer_score(params, PeerScoreThresholds::default())?;
    Ok(ScopedGossip { inner, scopes })
}

/// A topic's score parameters: only invalid messages (authors outside the scope) count, each
/// pushing the forwarding peer below the graylist threshold.
pub(crate) fn topic_params() -> TopicScoreParams {
    TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.9,
        ..TopicScoreParams::default()
    }
}

impl ScopedGossip {
    /// Subscribes this node to `topic` (the filter lets only this through with no peer noted).
    pub(crate) fn subscribe_locally(
        &mut self,
        topic: &gossipsub::IdentTopic,
    ) -> Result<bool, gossipsub::SubscriptionError> {
        self.scopes.lock().local = true;
        let result = self.inner.subscribe(topic);
        self.scopes.lock().local = false;
        result
    }

    fn with_peer<R>(&mut self, peer: PeerId, f: impl FnOnce(&mut Inner) -> R) -> R {
        self.scopes.lock().current = Some(peer);
        let result = f(&mut self.inner);
        self.scopes.lock().current = None;
        result
    }
}

impl NetworkBehaviour for ScopedGossip {
    type ConnectionHandler = <Inner as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = gossipsub::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.with_peer(peer, |inner| {
            inner.handle_established_inbound_connection(
                connection_id,
                peer,
                local_addr,
                remote_addr,
            )
        })
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.with_peer(peer, |inner| {
            inner.handle_established_outbound_connection(
                connection_id,
                peer,
                addr,
                role_override,
                port_use,
            )
        })
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        // Subscriptions arrive here: the filter sees whose they are.
        self.with_peer(peer, |inner| {
            inner.on_connection_handler_event(peer, connection_id, event);
        });
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

/// What the swarm task keeps for gossip.
#[derive(Default)]
pub(crate) struct GossipState {
    /// Where each followed topic's messages go.
    pub(crate) sinks: HashMap<TopicHash, mpsc::Sender<GossipMessage>>,
    /// Peers disconnected so that their refused subscriptions are heard again: dialled again
    /// once their last connection has closed.
    pub(crate) redial: HashSet<PeerId>,
}

/// The peers gossipsub knows to follow `topic` (members only: the filter saw to that).
pub(crate) fn followers(inner: &Inner, topic: &TopicHash) -> Vec<PeerId> {
    inner
        .all_peers()
        .filter(|(_, topics)| topics.contains(&topic))
        .map(|(peer, _)| *peer)
        .collect()
}
