//! The swarm task's side of group gossip: the commands (scopes, subscribing, publishing,
//! followers) and the messages gossipsub hands over, validated against the scope's members.

use std::collections::HashSet;

use bytes::Bytes;
use libp2p::{
    PeerId,
    gossipsub::{self, IdentTopic, MessageAcceptance, PublishError},
};
use p2pos_protocols::network::{
    Error, GossipMessage, Reply,
    gossip::{MAX_MESSAGE, scope_of},
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::{
    event_loop::EventLoop,
    gossip::{MAX_SCOPES, ScopedGossip, followers, topic_params},
};

impl EventLoop {
    fn gossip(&mut self) -> &mut ScopedGossip {
        &mut self.swarm.behaviour_mut().gossip
    }

    pub(crate) fn gossip_scope(&mut self, scope: String, members: HashSet<PeerId>) {
        let scopes = self.gossip().scopes.clone();
        let (removed, added_refused) = {
            let mut access = scopes.lock();
            let old = match members.is_empty() {
                // This node left: it no longer follows or publishes on the scope's topics, so
                // who follows them no longer matters.
                true => {
                    access.scopes.remove(&scope);
                    return;
                }
                false
                    if access.scopes.len() >= MAX_SCOPES && !access.scopes.contains_key(&scope) =>
                {
                    warn!(scope, "gossip scope ignored: {MAX_SCOPES} scopes are held");
                    return;
                }
                false => access
                    .scopes
                    .insert(scope.clone(), members.clone())
                    .unwrap_or_default(),
            };
            let removed: HashSet<PeerId> = old.difference(&members).copied().collect();
            // New members whose subscriptions were refused before this node knew them.
            let mut added_refused = Vec::new();
            for peer in members.difference(&old) {
                if let Some(refused) = access.refused.get_mut(peer)
                    && refused.remove(&scope)
                {
                    if refused.is_empty() {
                        access.refused.remove(peer);
                    }
                    added_refused.push(*peer);
                }
            }
            (removed, added_refused)
        };
        // Gossipsub keeps a subscription until the peer's connections close (and hears one only
        // when it is made or a connection opens): a removed member that follows one of the
        // scope's topics is disconnected so that it no longer gets them (its renewed
        // subscriptions are refused by the filter), and a new member whose subscription was
        // refused is disconnected and dialled again so that gossipsub hears it anew.
        let following: Vec<PeerId> = self
            .gossip()
            .inner
            .all_peers()
            .filter(|(peer, topics)| {
                removed.contains(peer)
                    && topics
                        .iter()
                        .any(|t| scope_of(t.as_str()) == Some(scope.as_str()))
            })
            .map(|(peer, _)| *peer)
            .collect();
        for peer in following {
            info!(%peer, scope, "disconnecting a removed member that follows the group's topics");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        for peer in added_refused {
            if self.connections.contains_key(&peer)
                && self.gossip_state.redial.len() < MAX_SCOPES
                && self.swarm.disconnect_peer_id(peer).is_ok()
            {
                debug!(%peer, scope, "reconnecting a new member whose gossip subscription was refused");
                self.gossip_state.redial.insert(peer);
            }
        }
    }

    /// A peer's last connection closed: its refused subscriptions are forgotten (a new
    /// connection sends them again), and it is dialled again if gossip asked for that.
    pub(crate) fn gossip_disconnected(&mut self, peer: PeerId) {
        self.gossip().scopes.lock().refused.remove(&peer);
        if self.gossip_state.redial.remove(&peer) {
            let (reply, _) = oneshot::channel();
            self.connect(peer, Vec::new(), reply);
        }
    }

    pub(crate) fn gossip_subscribe(
        &mut self,
        topic: String,
        sink: mpsc::Sender<GossipMessage>,
        reply: Reply<()>,
    ) {
        let topic = IdentTopic::new(topic);
        let gossip = self.gossip();
        let result = gossip
            .subscribe_locally(&topic)
            .map(|_| ())
            .map_err(|e| Error::Gossip(e.to_string()));
        if result.is_ok() {
            let _ = gossip.inner.set_topic_params(topic.clone(), topic_params());
            self.gossip_state.sinks.insert(topic.hash(), sink);
        }
        let _ = reply.send(result);
    }

    pub(crate) fn gossip_unsubscribe(&mut self, topic: String) {
        let topic = IdentTopic::new(topic);
        let hash = topic.hash();
        // A newer subscription to the same topic keeps it.
        if self
            .gossip_state
            .sinks
            .get(&hash)
            .is_some_and(|sink| !sink.is_closed())
        {
            return;
        }
        self.gossip_state.sinks.remove(&hash);
        self.gossip().inner.unsubscribe(&topic);
    }

    pub(crate) fn gossip_publish(
        &mut self,
        topic: String,
        payload_type: &str,
        payload: Vec<u8>,
        reply: Reply<(Bytes, Vec<PeerId>)>,
    ) {
        let envelope: Bytes =
            match p2pos_protocols::network::sign_with(&self.keypair, payload_type, payload) {
                Ok(envelope) => envelope.into(),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            };
        let hash = IdentTopic::new(topic).hash();
        let gossip = self.gossip();
        let followers = followers(&gossip.inner, &hash);
        let result = match gossip.inner.publish(hash, envelope.to_vec()) {
            Ok(_) => Ok((envelope, followers)),
            // No member online follows it now, or every follower's queue is full: they catch
            // up later, as if offline.
            Err(PublishError::NoPeersSubscribedToTopic | PublishError::AllQueuesFull(_)) => {
                Ok((envelope, Vec::new()))
            }
            Err(PublishError::MessageTooLarge) => Err(Error::RecordTooLarge {
                size: envelope.len(),
                limit: MAX_MESSAGE,
            }),
            Err(e) => Err(Error::Gossip(e.to_string())),
        };
        let _ = reply.send(result);
    }

    pub(crate) fn gossip_followers(&mut self, topic: String, reply: oneshot::Sender<Vec<PeerId>>) {
        let hash = IdentTopic::new(topic).hash();
        let _ = reply.send(followers(&self.gossip().inner, &hash));
    }

    pub(crate) fn on_gossip(&mut self, event: gossipsub::Event) {
        let gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        } = event
        else {
            debug!("gossip: {event:?}");
            return;
        };
        let scopes = self.gossip().scopes.clone();
        let author = message.source;
        let acceptance = match author {
            Some(author) if scopes.allows(&message.topic, &author) => MessageAcceptance::Accept,
            // Relayed by a member: its view of the member list may be ahead of this node's (a
            // member this node has not heard of yet). Dropped, but not held against it.
            Some(author)
                if author != propagation_source
                    && scopes.allows(&message.topic, &propagation_source) =>
            {
                debug!(from = %propagation_source, %author, "gossip message ignored: its author is not a member here (yet)");
                MessageAcceptance::Ignore
            }
            _ => {
                debug!(from = %propagation_source, ?author, topic = %message.topic, "gossip message rejected: its author is not a member");
                MessageAcceptance::Reject
            }
        };
        let accepted = acceptance == MessageAcceptance::Accept;
        match acceptance {
            MessageAcceptance::Accept => self.metrics.gossip_accepted.inc(),
            MessageAcceptance::Reject => self.metrics.gossip_rejected.inc(),
            MessageAcceptance::Ignore => 0,
        };
        self.gossip().inner.report_message_validation_result(
            &message_id,
            &propagation_source,
            acceptance,
        );
        let (true, Some(author)) = (accepted, author) else {
            return;
        };
        if let Some(sink) = self.gossip_state.sinks.get(&message.topic) {
            // A full queue drops it here (it is still forwarded): catch-up fills the gap.
            let sent = sink.try_send(GossipMessage {
                author,
                from: propagation_source,
                data: message.data.into(),
            });
            // Its subscription is gone (the unsubscribe command may have been lost).
            if let Err(mpsc::error::TrySendError::Closed(_)) = sent {
                self.gossip_state.sinks.remove(&message.topic);
                let topic = message.topic.clone();
                self.gossip()
                    .inner
                    .unsubscribe(&IdentTopic::new(topic.into_string()));
            }
        }
    }
}
