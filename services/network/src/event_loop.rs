//! The swarm task: owns the [`Swarm`], listens, dials bootstrap and known peers, turns swarm
//! events into state (connections, round-trip times, agents, reachability), node events and
//! metrics, and remembers peers and listen ports in the store.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat,
    core::transport::ListenerId,
    identify,
    identity::Keypair,
    kad, mdns,
    multiaddr::Protocol,
    swarm::{ConnectionId, SwarmEvent},
};
use p2pos_kernel::{EventBus, Store, store::Writer};
use p2pos_proto::monitor::v1::{PeerConnected, PeerGone, event::Kind};
use tokio::{
    sync::{broadcast, mpsc, oneshot, watch},
    time::Instant,
};
use tracing::{debug, info, warn};

use p2pos_protocols::network::{
    Announced, Announcements, Command, NetEvent, Reply,
    detail::{MAX_LISTEN, MAX_PROTOCOL_NAME, MAX_PROTOCOLS},
};

use crate::{
    behaviour::{Behaviour, BehaviourEvent, is_relay_hop},
    circuits::Circuits,
    gossip::GossipState,
    metrics::SwarmMetrics,
    nat::{Answer, Direct, Published, Relays},
    peers::{self, PeerBook, is_dialable},
    provider_cache::ProviderCache,
    reach::Reach,
    scope::{is_relayed, usable},
    waiting::{PendingConnect, ProviderQuery, RecordQuery},
};

/// How often stale waiters are dropped and late ticket requests answered.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How long a freshly started node may take to bind its remembered ports.
const PORT_PATIENCE: Duration = Duration::from_secs(1);
/// The first and longest waits between dials of the bootstrap peers while none is connected.
const REDIAL_FIRST: Duration = Duration::from_secs(5);
const REDIAL_MAX: Duration = Duration::from_secs(5 * 60);
/// How long a freshly started node waits for its listeners before it dials.
const LISTEN_WAIT: Duration = Duration::from_millis(500);
/// Most known peers dialled at start.
const MAX_STARTUP_DIALS: usize = 64;
/// Answers of `whois` asks waiting for the loop.
const WHOIS_ANSWERS: usize = 64;

/// What a connected peer's identify said, bounded.
pub(crate) struct Identified {
    pub(crate) agent: String,
    pub(crate) protocols: Vec<String>,
    /// Its listen addresses as it sent them, unfiltered: shown for diagnosis, and dialled only
    /// at the IPs this node is connected to the peer from (`claimed_at_connected_ips`).
    pub(crate) listen: Vec<Multiaddr>,
}

/// The task that owns the swarm.
pub(crate) struct EventLoop {
    pub(crate) swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    pub(crate) net_events: broadcast::Sender<NetEvent>,
    pub(crate) events: EventBus,
    store: Arc<dyn Store>,
    /// Writes what the swarm task learns (peers, listen ports) off its thread.
    writer: Writer,
    pub(crate) metrics: SwarmMetrics,
    pub(crate) book: PeerBook,
    /// Open connections per peer, with their remote addresses.
    pub(crate) connections: HashMap<PeerId, Vec<(ConnectionId, Multiaddr)>>,
    /// Last ping round-trip time per connected peer, and when it was measured.
    pub(crate) rtt: HashMap<PeerId, (Duration, Instant)>,
    /// What identify reported, per connected peer.
    pub(crate) identified: HashMap<PeerId, Identified>,
    pub(crate) connects: HashMap<PeerId, PendingConnect>,
    pub(crate) pings: HashMap<PeerId, Vec<Reply<Duration>>>,
    pub(crate) lookups: HashMap<kad::QueryId, PeerId>,
    pub(crate) lookup_of: HashMap<PeerId, kad::QueryId>,
    pub(crate) finds: HashMap<PeerId, Vec<Reply<Vec<Multiaddr>>>>,
    pub(crate) tickets: Vec<(Instant, oneshot::Sender<p2pos_proto::overlay::v1::Ticket>)>,
    /// AutoNAT's verdict: "unknown", "public" or "private" ("public" from the start when the
    /// operator declared external addresses).
    pub(crate) reachability: &'static str,
    /// The configured bootstrap peers, dialled at start and again while no peer is connected.
    bootstrap: Vec<(PeerId, Vec<Multiaddr>)>,
    /// While no peer is connected: when to dial the bootstrap peers again, and the wait after.
    alone: Option<(Instant, Duration)>,
    /// Relays known, and the reservations held on them.
    pub(crate) relays: Relays,
    /// Hole punching and direct connections to peers reached through relays.
    pub(crate) direct: Direct,
    /// Relays' circuit limits, and the relayed connections they apply to.
    pub(crate) circuits: Circuits,
    /// Whether private addresses count as reachable from outside (`trust_private_addresses`).
    pub(crate) trust_private: bool,
    /// What this node last put in the DHT about its own addresses.
    pub(crate) published: Published,
    /// Gets of peers' address records in progress, both ways.
    pub(crate) peer_record_queries: HashMap<kad::QueryId, PeerId>,
    pub(crate) peer_record_of: HashMap<PeerId, kad::QueryId>,
    /// The signed peer record each connected peer sent through identify (`whois` answers
    /// with it).
    pub(crate) signed_records: HashMap<PeerId, bytes::Bytes>,
    /// Peers asked about through `whois`: how many asked peers have yet to answer.
    pub(crate) whois_pending: HashMap<PeerId, usize>,
    /// Opens the streams of `whois` asks.
    pub(crate) stream_control: libp2p_stream::Control,
    /// Where `whois` asks answer, and where the loop hears them.
    pub(crate) whois_answers: mpsc::Sender<Answer>,
    whois_rx: mpsc::Receiver<Answer>,
    /// The node's key: it signs the records this node puts in the DHT.
    pub(crate) keypair: Keypair,
    /// Record puts and gets in progress.
    pub(crate) record_queries: HashMap<kad::QueryId, RecordQuery>,
    /// The keys each announcer wants provided; an announcer whose sender is gone is dropped.
    pub(crate) wanted: Vec<watch::Receiver<BTreeSet<String>>>,
    /// The keys announced in the DHT now.
    pub(crate) providing: BTreeSet<String>,
    /// How the announcement of each key provided went (told to every announcer).
    pub(crate) announced: std::collections::BTreeMap<String, Announced>,
    /// Where each announcer hears how announcements went; dropped once its announcer is gone.
    pub(crate) announce_status: Vec<watch::Sender<Announcements>>,
    /// Keys whose announcement failed: when to try again, and the back-off after that.
    pub(crate) announce_retry: HashMap<String, (Instant, Duration)>,
    /// Look-ups of providers in progress.
    pub(crate) provider_queries: HashMap<kad::QueryId, ProviderQuery>,
    /// The look-up in progress per key (callers of one key share it).
    pub(crate) provider_query_of: HashMap<String, kad::QueryId>,
    /// Providers found by recent look-ups.
    pub(crate) provider_cache: ProviderCache,
    /// How providers fared, and when peers were last connected.
    pub(crate) reach: Reach,
    /// Followed gossip topics.
    pub(crate) gossip_state: GossipState,
    /// Dials checking a peer's claimed listen addresses ([`EventLoop::probe`]), in flight.
    pub(crate) probes: HashSet<ConnectionId>,
    /// Peers whose claimed listen addresses were checked this run.
    pub(crate) probed: HashSet<PeerId>,
    /// Probe connections set up and being closed: never announced, nor counted among the
    /// peer's connections (at most [`MAX_PROBES`](crate::connect) at once: each was a probe).
    pub(crate) closing_probes: HashSet<ConnectionId>,
}

/// What the swarm task is made of.
pub(crate) struct Parts {
    /// The swarm.
    pub(crate) swarm: Swarm<Behaviour>,
    /// The node's key, for signing records.
    pub(crate) keypair: Keypair,
    /// Commands from every handle.
    pub(crate) commands: mpsc::Receiver<Command>,
    /// Where connection events go, for other services.
    pub(crate) net_events: broadcast::Sender<NetEvent>,
    /// The node's event bus.
    pub(crate) events: EventBus,
    /// The network's store trees, for reading what it remembers.
    pub(crate) store: Arc<dyn Store>,
    /// Writes what it learns, off its thread.
    pub(crate) writer: Writer,
    /// Its metrics.
    pub(crate) metrics: SwarmMetrics,
    /// Whether private addresses count as reachable from outside.
    pub(crate) trust_private: bool,
}

impl EventLoop {
    /// A loop over `parts.swarm`, taking commands from `parts.commands`.
    pub(crate) fn new(parts: Parts) -> Self {
        let Parts {
            swarm,
            keypair,
            commands,
            net_events,
            events,
            store,
            writer,
            metrics,
            trust_private,
        } = parts;
        let stream_control = swarm.behaviour().stream.new_control();
        let (whois_answers, whois_rx) = mpsc::channel(WHOIS_ANSWERS);
        Self {
            swarm,
            commands,
            net_events,
            events,
            book: PeerBook::load(store.as_ref(), writer.clone()),
            writer,
            store,
            metrics,
            connections: HashMap::new(),
            rtt: HashMap::new(),
            identified: HashMap::new(),
            connects: HashMap::new(),
            pings: HashMap::new(),
            lookups: HashMap::new(),
            lookup_of: HashMap::new(),
            finds: HashMap::new(),
            tickets: Vec::new(),
            reachability: "unknown",
            bootstrap: Vec::new(),
            alone: None,
            relays: Relays::default(),
            direct: Direct::default(),
            circuits: Circuits::default(),
            trust_private,
            published: Published::default(),
            peer_record_queries: HashMap::new(),
            peer_record_of: HashMap::new(),
            signed_records: HashMap::new(),
            whois_pending: HashMap::new(),
            stream_control,
            whois_answers,
            whois_rx,
            wanted: Vec::new(),
            keypair,
            record_queries: HashMap::new(),
            providing: BTreeSet::new(),
            announced: std::collections::BTreeMap::new(),
            announce_status: Vec::new(),
            announce_retry: HashMap::new(),
            provider_queries: HashMap::new(),
            provider_query_of: HashMap::new(),
            provider_cache: ProviderCache::default(),
            reach: Reach::default(),
            gossip_state: GossipState::default(),
            probes: HashSet::new(),
            probed: HashSet::new(),
            closing_probes: HashSet::new(),
        }
    }

    /// Runs until shut down or until every handle is gone.
    pub(crate) async fn run(
        mut self,
        listen: Vec<Multiaddr>,
        external: Vec<Multiaddr>,
        bootstrap: Vec<(PeerId, Vec<Multiaddr>)>,
    ) {
        let listeners = self.listen(listen).await;
        self.until_listening(listeners).await;
        if !external.is_empty() {
            // Declared by the operator: reachable, so no relay is needed, and the node serves
            // as a relay and a DHT server from the start.
            self.reachability = "public";
            for addr in external {
                info!(%addr, "external address declared");
                self.swarm.add_external_address(addr);
            }
        }
        self.bootstrap = bootstrap;
        self.dial_at_start();
        self.alone = Some((Instant::now() + REDIAL_FIRST, REDIAL_FIRST));
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reply = loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => break Some(reply),
                    Some(command) => self.on_command(command),
                    None => break None,
                },
                _ = housekeeping.tick() => self.housekeeping(),
                Some(answer) = self.whois_rx.recv() => self.on_whois_answer(answer),
                changed = wanted_changed(&mut self.wanted) => {
                    if let Some(gone) = changed {
                        // That announcer was dropped: its keys are withdrawn.
                        self.wanted.swap_remove(gone);
                    }
                    self.provide_wanted();
                }
            }
        };
        info!("overlay network stopping");
        drop(self); // closes every listener and connection
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }

    /// Listens on the configured addresses (the remembered port where one was chosen by the
    /// OS before); answers the direct listeners (not through a relay).
    async fn listen(&mut self, configured: Vec<Multiaddr>) -> HashSet<ListenerId> {
        let remembered = peers::load_listen_addrs(self.store.as_ref());
        let first = peers::remembered_ports(&configured, &remembered);
        let mut direct = HashSet::new();
        for (addr, again) in configured.into_iter().zip(first) {
            let relayed = is_relayed(&addr);
            if let Some(again) = again
                && peers::port_is_free(&again, PORT_PATIENCE).await
                && let Ok(id) = self.swarm.listen_on(again.clone())
            {
                if !relayed {
                    direct.insert(id);
                }
                continue;
            }
            match self.swarm.listen_on(addr.clone()) {
                Ok(id) if !relayed => {
                    direct.insert(id);
                }
                Ok(_) => {}
                Err(e) => warn!("cannot listen on {addr}: {e}"),
            }
        }
        direct
    }

    /// Serves the swarm until each of `listeners` listens (or failed), at most
    /// [`LISTEN_WAIT`]: dials made before would leave from ephemeral ports rather than the
    /// listening ones, and peers would observe this node at ports that NATs mapped for them
    /// alone (addresses that hole punching cannot use, and that look like a NAT that maps a
    /// port per destination).
    async fn until_listening(&mut self, mut listeners: HashSet<ListenerId>) {
        let deadline = tokio::time::sleep(LISTEN_WAIT);
        tokio::pin!(deadline);
        while !listeners.is_empty() {
            tokio::select! {
                event = self.swarm.select_next_some() => {
                    match &event {
                        SwarmEvent::NewListenAddr { listener_id, .. }
                        | SwarmEvent::ListenerClosed { listener_id, .. }
                        | SwarmEvent::ListenerError { listener_id, .. } => {
                            listeners.remove(listener_id);
                        }
                        _ => {}
                    }
                    self.on_swarm_event(event);
                }
                () = &mut deadline => return,
            }
        }
    }

    /// Dials the configured bootstrap peers and the confirmed peers of the book (the addresses
    /// this node connected to before, or that its user gave): never addresses only heard of.
    fn dial_at_start(&mut self) {
        let local = *self.swarm.local_peer_id();
        let bootstrap = self.bootstrap.clone();
        for (peer, addrs) in &bootstrap {
            // Stored once a connection to one succeeds; the configuration gives them anyway.
            self.book.hear(*peer, addrs.clone());
        }
        let bootstrap = bootstrap.into_iter().map(|(peer, _)| peer);
        let known = self.book.peers().into_iter().map(|(peer, _)| peer);
        let mut dialled = HashSet::new();
        for peer in bootstrap.chain(known).take(MAX_STARTUP_DIALS) {
            if peer == local || !dialled.insert(peer) {
                continue;
            }
            let addrs = self.book.addresses(&peer);
            if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                for a in &addrs {
                    kad.add_address(&peer, a.clone());
                }
            }
            if let Err(e) = self.dial(peer, addrs) {
                debug!(%peer, "not redialling: {e}");
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Connect { peer, addrs, reply } => self.connect(peer, addrs, reply),
            Command::Ping { peer, reply } => self.ping(peer, reply),
            Command::FindPeer { peer, reply } => self.find_peer(peer, reply),
            Command::FindProviders {
                key,
                limit,
                wait,
                fresh,
                among,
                reply,
            } => self.find_providers(key, (limit, among), wait, fresh, reply),
            Command::ProviderFared { key, peer, fared } => self.provider_fared(&key, peer, fared),
            Command::Announce { keys, status } => self.announce(keys, status),
            Command::PutRecord { key, value, reply } => self.put_record(key, value, reply),
            Command::GetRecord { key, reply } => self.get_record(key, reply),
            Command::Sign {
                payload_type,
                payload,
                reply,
            } => {
                let _ = reply.send(p2pos_protocols::network::sign_with(
                    &self.keypair,
                    &payload_type,
                    payload,
                ));
            }
            Command::SignedRecordOf { peer, reply } => {
                let _ = reply.send(self.signed_record_of(peer));
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.peer_infos());
            }
            Command::PeerDetail { peer, reply } => {
                let _ = reply.send(self.peer_detail(peer));
            }
            Command::Remembered { limit, reply } => {
                let mut peers = self.book.peers();
                peers.truncate(limit);
                let _ = reply.send(peers);
            }
            Command::ConnectedAmong { peers, reply } => {
                let connected = peers
                    .into_iter()
                    // Announced connections only: a probe being closed does not count.
                    .filter(|peer| self.connections.contains_key(peer))
                    .collect();
                let _ = reply.send(connected);
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Ticket { reply } => self.ticket_request(reply),
            Command::Remember { peer, addrs } => self.book.add(peer, addrs),
            Command::Hear { peer, addrs } => self.book.hear(peer, addrs),
            Command::GossipScope { scope, members } => self.gossip_scope(scope, members),
            Command::GossipSubscribe { topic, sink, reply } => {
                self.gossip_subscribe(topic, sink, reply);
            }
            Command::GossipUnsubscribe { topic } => self.gossip_unsubscribe(topic),
            Command::GossipPublish {
                topic,
                payload_type,
                payload,
                reply,
            } => self.gossip_publish(topic, &payload_type, payload, reply),
            Command::GossipFollowers { topic, reply } => self.gossip_followers(topic, reply),
            Command::Path { peer, reply } => {
                let _ = reply.send(self.circuits.path(&peer, self.connections.get(&peer)));
            }
            // Handled by the loop itself.
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// Forgets what is kept of a peer only while it is connected.
    fn forget_connected(&mut self, peer: PeerId) {
        self.rtt.remove(&peer);
        self.identified.remove(&peer);
        self.signed_records.remove(&peer);
        self.direct.forget(&peer);
        self.relay_disconnected(peer);
        self.fail_pings(peer, "the connection closed");
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.record_swarm(&event, self.connections.len());
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let addr = match &endpoint {
                    // A peer that reached this node through a relay: its remote address is
                    // only `/p2p/<peer>`; the address kept is the relayed one it came through
                    // (`…/p2p/<relay>/p2p-circuit`), which says so and names the relay.
                    libp2p::core::ConnectedPoint::Listener { local_addr, .. }
                        if is_relayed(local_addr) =>
                    {
                        self.direct.accepted_through_relay.insert(peer_id);
                        local_addr.clone()
                    }
                    _ => endpoint.get_remote_address().clone(),
                };
                if endpoint.is_dialer() {
                    // A connection to it succeeded: the one kind of address that is stored.
                    self.book.add(peer_id, [addr.clone()]);
                    if is_relayed(&addr) {
                        self.direct.dialled_through_relay.insert(peer_id);
                    }
                }
                let probe = self.probes.remove(&connection_id);
                // Whether this node itself asked for the peer (a connect waits for it).
                let wanted = self.connects.contains_key(&peer_id);
                if probe && !wanted {
                    // It answered where it said it listens (the address is stored above). The
                    // dial was the peer's doing, not this node's: it is closed whether or not
                    // the peer's own connection is still there, so that peers cannot fill the
                    // room kept for this node's dials by making it dial them back. (A connect
                    // this node asked for meanwhile keeps it: then it is this node's dial.)
                    // Never announced: the peer does not seem to come and go.
                    debug!(peer = %peer_id, %addr, num_established, "closing a probe connection");
                    // Marked whatever close_connection answers: its closing is never
                    // announced either way.
                    self.swarm.close_connection(connection_id);
                    self.closing_probes.insert(connection_id);
                    return;
                }
                let list = self.connections.entry(peer_id).or_default();
                let first = list.is_empty();
                let before: Vec<Multiaddr> = list.iter().map(|(_, a)| a.clone()).collect();
                list.push((connection_id, addr.clone()));
                self.circuits.opened(peer_id, connection_id, &addr);
                self.on_connection_added(peer_id, &addr, &before);
                if first {
                    info!(peer = %peer_id, %addr, "peer connected");
                    self.events.publish(Kind::PeerConnected(PeerConnected {
                        peer_id: peer_id.to_string(),
                        address: addr.to_string(),
                    }));
                    let _ = self.net_events.send(NetEvent::Connected(peer_id));
                    // Which of its addresses it advertises depends on where its peers are.
                    self.publish_peer_record();
                }
                self.reach.connection(peer_id, true);
                self.on_connected(peer_id, addr);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                debug!(peer = %peer_id, %connection_id, ?cause, num_established, "connection closed");
                self.circuits.closed(connection_id);
                let announced = !self.closing_probes.remove(&connection_id);
                let left = self.connections.get_mut(&peer_id).map_or(0, |list| {
                    list.retain(|(id, _)| *id != connection_id);
                    list.len()
                });
                if left > 0 {
                    return;
                }
                self.connections.remove(&peer_id);
                if !announced {
                    // A probe closed, and the peer has no announced connection (it was never
                    // announced, or its gone was when its last announced one closed).
                    if num_established == 0 {
                        self.forget_connected(peer_id);
                        self.gossip_disconnected(peer_id);
                        // A connect asked for meanwhile found the probe in the way of its dial
                        // (still connected as far as the swarm knew): it may dial now.
                        self.advance(peer_id);
                    }
                    return;
                }
                info!(peer = %peer_id, "peer gone");
                let _ = self.net_events.send(NetEvent::Disconnected(peer_id));
                self.reach.connection(peer_id, false);
                self.forget_connected(peer_id);
                self.events.publish(Kind::PeerGone(PeerGone {
                    peer_id: peer_id.to_string(),
                }));
                self.gossip_disconnected(peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                connection_id,
                error,
            } => {
                if self.probes.remove(&connection_id) {
                    debug!(peer = ?peer_id, "a peer's claimed listen addresses did not answer: {error}");
                } else if let Some(peer) = peer_id {
                    self.direct_dial_failed(peer, connection_id, &error);
                    self.on_dial_failed(peer, connection_id, error.to_string());
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.save_listen_addrs();
                self.answer_tickets();
                self.publish_peer_record();
            }
            SwarmEvent::ExpiredListenAddr { .. } => self.save_listen_addrs(),
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                let reservation = self.relays.is_reservation(listener_id);
                self.relay_listener_closed(listener_id);
                match reason {
                    Err(e) if reservation => debug!("a relay reservation ended: {e}"),
                    Err(e) => warn!("a listener closed: {e}"),
                    Ok(()) => {}
                }
            }
            SwarmEvent::ListenerError { error, .. } => warn!("listener error: {error}"),
            SwarmEvent::ExternalAddrConfirmed { address } => {
                info!(%address, "external address confirmed");
                self.publish_peer_record();
            }
            SwarmEvent::ExternalAddrExpired { .. } => self.publish_peer_record(),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(event) => {
                self.metrics.record(&event);
                if let identify::Event::Received { peer_id, info, .. } = event {
                    self.on_identify(peer_id, info);
                }
            }
            BehaviourEvent::Ping(event) => {
                self.metrics.record(&event);
                self.on_ping(event);
            }
            BehaviourEvent::Kad(event) => {
                self.metrics.record(&event);
                self.on_kad(event);
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                        kad.add_address(&peer, addr.clone());
                    }
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.dial(peer, vec![addr]);
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. }) => {
                self.on_nat_status(new);
            }
            BehaviourEvent::Autonat(_) => {}
            BehaviourEvent::Relay(event) => {
                self.metrics.record(&event);
                debug!("relay: {event:?}");
            }
            BehaviourEvent::RelayClient(event) => {
                debug!("relay client: {event:?}");
                self.circuits.on_relay_client(&event);
                if let libp2p::relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal,
                    ..
                } = event
                {
                    self.relay_reserved(relay_peer_id, renewal);
                }
            }
            BehaviourEvent::Dcutr(event) => {
                self.metrics.record(&event);
                debug!("dcutr: {event:?}");
                self.on_dcutr(event);
            }
            BehaviourEvent::Limits(never) => match never {},
            BehaviourEvent::Memory(never) => match never {},
            BehaviourEvent::Stream(()) => {}
            BehaviourEvent::Gossip(event) => self.on_gossip(event),
        }
    }

    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        let identify::Info {
            listen_addrs,
            protocols,
            agent_version,
            observed_addr,
            signed_peer_record,
            ..
        } = info;
        self.identified.insert(
            peer,
            Identified {
                agent: agent_version,
                protocols: protocols
                    .iter()
                    .map(ToString::to_string)
                    .filter(|p| p.len() <= MAX_PROTOCOL_NAME)
                    .take(MAX_PROTOCOLS)
                    .collect(),
                listen: listen_addrs.iter().take(MAX_LISTEN).cloned().collect(),
            },
        );
        if let Some(record) = signed_peer_record {
            // Only while connected: `forget_connected` drops it.
            self.signed_records
                .insert(peer, record.into_protobuf_encoding().into());
        }
        self.observed_at(peer, observed_addr);
        // Only the addresses that can serve this node: a peer elsewhere gains nothing from its
        // loopback, link-local or private addresses (the same private address is another host
        // on this node's own network).
        let via = self.connection_addrs(&peer);
        let listen: Vec<Multiaddr> = listen_addrs
            .into_iter()
            .filter(|a| is_dialable(a) && !is_relayed(a) && usable(a, &via, self.trust_private))
            .collect();
        if protocols.contains(&kad::PROTOCOL_NAME)
            && let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
        {
            for addr in &listen {
                kad.add_address(&peer, addr.clone());
            }
        }
        // Claims: dialled when the peer is wanted, stored only once a connection succeeds.
        self.book.hear(peer, listen.clone());
        self.probe(peer, &listen);
        if protocols.iter().any(is_relay_hop) {
            self.relay_found(peer);
        }
    }

    fn on_nat_status(&mut self, status: autonat::NatStatus) {
        let (reachability, mode) = match status {
            autonat::NatStatus::Public(_) => ("public", kad::Mode::Server),
            autonat::NatStatus::Private => ("private", kad::Mode::Client),
            autonat::NatStatus::Unknown => ("unknown", kad::Mode::Server),
        };
        info!(reachability, "AutoNAT status changed");
        self.reachability = reachability;
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            kad.set_mode(Some(mode));
        }
        match reachability {
            "public" => self.drop_reservations(),
            _ => self.reserve_relays(),
        }
        self.publish_peer_record();
    }

    fn save_listen_addrs(&self) {
        let addrs: Vec<Multiaddr> = self
            .swarm
            .listeners()
            .filter(|a| !a.iter().any(|p| matches!(p, Protocol::P2pCircuit)))
            .cloned()
            .collect();
        peers::save_listen_addrs(&self.writer, &addrs);
    }

    /// A node left with no connection at all (its only peer, a relay say, dropped it) dials
    /// its bootstrap and known peers again, as at start: at once the first time, then after
    /// [`REDIAL_FIRST`] doubling to [`REDIAL_MAX`] while it stays alone. Without this a node
    /// whose bootstrap connection died would never meet anyone again.
    fn redial_when_alone(&mut self) {
        if !self.connections.is_empty() {
            self.alone = None;
            return;
        }
        let now = Instant::now();
        let (next, wait) = *self.alone.get_or_insert((now, REDIAL_FIRST));
        if now < next {
            return;
        }
        debug!("no peer connected: dialling the bootstrap and known peers again");
        self.dial_at_start();
        self.alone = Some((now + wait, (wait * 2).min(REDIAL_MAX)));
    }

    fn housekeeping(&mut self) {
        self.redial_when_alone();
        self.answer_tickets();
        self.connects.retain(|_, p| {
            p.waiters.retain(|w| !w.is_closed());
            !p.waiters.is_empty()
        });
        self.pings.retain(|_, w| {
            w.retain(|w| !w.is_closed());
            !w.is_empty()
        });
        self.finds.retain(|_, w| {
            w.retain(|w| !w.is_closed());
            !w.is_empty()
        });
        self.expire_provider_queries();
        self.expire_record_queries();
        self.retry_announcements();
        self.reserve_relays();
        self.republish_peer_record();
        self.punch_again();
    }
}

/// Waits until the keys of an announcer change: `None`, or its sender is gone: `Some(its
/// index)`. Never ready without announcers.
async fn wanted_changed(wanted: &mut [watch::Receiver<BTreeSet<String>>]) -> Option<usize> {
    if wanted.is_empty() {
        return std::future::pending().await;
    }
    let changes = wanted
        .iter_mut()
        .enumerate()
        .map(|(i, rx)| Box::pin(async move { (i, rx.changed().await.is_ok()) }));
    let ((i, open), _, _) = futures::future::select_all(changes).await;
    (!open).then_some(i)
}
