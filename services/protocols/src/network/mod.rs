//! The network as a service others use: [`Network`] is the narrow, cheap, cloneable handle that
//! the network service (`p2pos-network`) provides under [`NETWORK`] and that any service declares
//! it needs. Through it a service opens streams to peers for a protocol id, accepts inbound
//! streams of its own protocols within limits, connects, pings and looks peers up, announces and
//! finds providers of DHT keys, puts and gets records signed by this node, and follows
//! connection events — without touching the swarm.
//!
//! One tokio task owns the libp2p swarm and takes [`Command`]s on a bounded channel, answering
//! each on its own oneshot (rust-libp2p's `file-sharing` example shape); streams are opened and
//! accepted through `libp2p-stream`'s `Control`, which needs no hop through that task.
//!
//! # Layout
//! - this file: the handle, the commands it sends, what the network tells.
//! - [`accept`]: accept loops with limits, in all and per peer.
//! - [`ticket`]: tickets, and the parser of every way to name a peer.
//! - `ping`: fresh pings, one per peer in flight, shared by its callers.
//! - [`path`]: how a peer is reached now: directly, or through relays and their limits.
//! - [`error`]: the network's [`Error`].

pub mod accept;
pub mod detail;
pub mod error;
pub mod gossip;
mod inbound;
pub mod path;
mod ping;
pub mod ticket;

use std::{collections::BTreeSet, future::Future, time::Duration};

use bytes::Bytes;
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use libp2p_stream::{Control, OpenStreamError};
use p2pos_proto::overlay::v1::{OverlayStatus, PeerInfo, Ticket};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::task::AbortOnDropHandle;

pub use accept::{Accepting, Limits, Overflow};
pub use detail::{HolePunch, PeerDetail};
pub use error::Error;
pub use gossip::GossipMessage;
pub use inbound::{Activity, InboundStream};
pub use path::{CIRCUIT_OVERHEAD, Circuit, Path};

pub use ping::MAX_PINGS;

/// The name the network handle is provided under (see `p2pos_kernel::Uses::needs`).
pub const NETWORK: &str = "p2pos.network";
/// Every DHT key a service announces, looks up or stores a record under starts with this.
pub const KEY_PREFIX: &str = "/p2pos/";
/// Longest DHT key, in bytes.
pub const MAX_KEY: usize = 256;
/// Largest value of a record put in the DHT (before it is signed).
pub const MAX_RECORD: usize = 8 * 1024;

/// The signing domain of [`Network::sign`]: differs from the DHT records' own, so neither
/// kind of signature verifies as the other.
pub const SIGN_DOMAIN: &str = "p2pos-signed";
/// Times a stream is asked for again when the connection picked for it closed meanwhile.
const OPEN_AGAIN: u32 = 3;
/// The pause before each of those, times its number.
const OPEN_AGAIN_PAUSE: Duration = Duration::from_millis(10);
/// Largest payload [`Network::sign`] signs.
pub const MAX_SIGNED: usize = 64 * 1024;

/// Where the swarm task answers a fallible request.
pub type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// A request to the swarm task; each carries its reply channel.
#[derive(Debug)]
pub enum Command {
    /// The signed address record this node knows of `peer` — its own, freshly signed, if
    /// `peer` is this node; else the one `peer` sent through identify while connected, or the
    /// one stored for the DHT — and whether `peer` is connected.
    SignedRecordOf {
        /// The peer.
        peer: PeerId,
        /// The record (a signed envelope's protobuf encoding) and whether connected.
        reply: oneshot::Sender<(Option<Bytes>, bool)>,
    },
    /// Connect to `peer` (using `addrs`, known addresses, then the DHT); answers the address.
    Connect {
        /// The peer.
        peer: PeerId,
        /// Addresses to try first.
        addrs: Vec<Multiaddr>,
        /// The address of the connection.
        reply: Reply<Multiaddr>,
    },
    /// The round-trip time to a connected peer.
    Ping {
        /// The peer.
        peer: PeerId,
        /// Its last measured round-trip time.
        reply: Reply<Duration>,
    },
    /// A DHT look-up of `peer`'s addresses.
    FindPeer {
        /// The peer.
        peer: PeerId,
        /// Its addresses.
        reply: Reply<Vec<Multiaddr>>,
    },
    /// The providers of `key` in the DHT, other than this node: at most `limit`, from a
    /// look-up less than 30 s old unless `fresh`, else answered when the look-up (shared with
    /// other callers) ends, `limit` are found or `wait` has passed.
    FindProviders {
        /// The DHT key.
        key: String,
        /// Most providers answered.
        limit: usize,
        /// Longest wait.
        wait: Duration,
        /// Whether a recent look-up may answer.
        fresh: bool,
        /// Only these peers count and are answered (before the answer is ranked and cut to
        /// `limit`); `None`: any.
        among: Option<Vec<PeerId>>,
        /// The providers.
        reply: Reply<Providers>,
    },
    /// How a call or channel to `peer`, a provider of `key`, fared: one that failed is no
    /// longer offered by recent look-ups, and ranked (or left out) as [`ProviderReach`] says.
    ProviderFared {
        /// The DHT key.
        key: String,
        /// The provider.
        peer: PeerId,
        /// How it fared.
        fared: Fared,
    },
    /// Provide exactly the keys `keys` holds (with every other announcer's), for as long as its
    /// sender lives.
    Announce {
        /// The keys, as they change.
        keys: watch::Receiver<BTreeSet<String>>,
        /// Where the swarm task says how the announcements of every key it provides went.
        status: watch::Sender<Announcements>,
    },
    /// Put a record signed by this node under `key` in the DHT.
    PutRecord {
        /// The DHT key.
        key: String,
        /// The value, at most [`MAX_RECORD`] bytes.
        value: Bytes,
        /// Answered once enough peers stored it (or it is stored locally only).
        reply: Reply<()>,
    },
    /// Get the records under `key` in the DHT whose signatures verify.
    GetRecord {
        /// The DHT key.
        key: String,
        /// The records found.
        reply: Reply<Vec<SignedRecord>>,
    },
    /// Sign `payload` with this node's key as a libp2p signed envelope of domain
    /// [`SIGN_DOMAIN`] and type `payload_type`; answers the envelope's encoding.
    Sign {
        /// What the payload is (under `/p2pos/`): a signature never verifies as another type.
        payload_type: String,
        /// The bytes signed.
        payload: Vec<u8>,
        /// The envelope.
        reply: Reply<Vec<u8>>,
    },
    /// Connected peers.
    Peers {
        /// The peers.
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    /// What the network knows of one peer (for diagnosis).
    PeerDetail {
        /// The peer.
        peer: PeerId,
        /// What is known.
        reply: oneshot::Sender<PeerDetail>,
    },
    /// Peers in the stored peer book (those redialled at start), most recently seen first: at
    /// most `limit`.
    Remembered {
        /// Most peers answered.
        limit: usize,
        /// The peers and their confirmed addresses.
        reply: oneshot::Sender<Vec<(PeerId, Vec<Multiaddr>)>>,
    },
    /// Which of `peers` are connected now.
    ConnectedAmong {
        /// The peers asked about.
        peers: Vec<PeerId>,
        /// Those of them connected.
        reply: oneshot::Sender<std::collections::HashSet<PeerId>>,
    },
    /// The overlay status.
    Status {
        /// The status.
        reply: oneshot::Sender<OverlayStatus>,
    },
    /// This node's ticket.
    Ticket {
        /// The ticket.
        reply: oneshot::Sender<Ticket>,
    },
    /// Remember addresses a user gave for `peer` (from a ticket): stored, and redialled at
    /// every start.
    Remember {
        /// The peer.
        peer: PeerId,
        /// Its addresses.
        addrs: Vec<Multiaddr>,
    },
    /// Keep addresses a remote peer claimed for `peer` (e.g. in a group join) for dialing during
    /// this run: stored only once a connection to one of them succeeds.
    Hear {
        /// The peer.
        peer: PeerId,
        /// Its addresses.
        addrs: Vec<Multiaddr>,
    },
    /// Only `members` may follow and publish on the gossip topics of `scope` from now on (an
    /// empty set forgets the scope); peers no longer in it that follow one of its topics are
    /// disconnected, so that gossip forgets them.
    GossipScope {
        /// The scope (a group id).
        scope: String,
        /// Its members, this node aside.
        members: std::collections::HashSet<PeerId>,
    },
    /// Follow a gossip topic: its messages by members of its scope go to `sink`; answers
    /// whether this node was not following it yet.
    GossipSubscribe {
        /// The topic's full name ([`gossip::topic_name`]).
        topic: String,
        /// Where its messages go (dropped when full: catch-up fills the gap).
        sink: mpsc::Sender<GossipMessage>,
        /// Answered once subscribed.
        reply: Reply<()>,
    },
    /// Stop following a gossip topic.
    GossipUnsubscribe {
        /// The topic's full name.
        topic: String,
    },
    /// Publish on a gossip topic (followed or not); answers the peers known to follow it.
    /// Sign `payload` as [`Command::Sign`] does and publish the envelope on a gossip topic
    /// (followed or not), in one turn of the swarm task; answers the envelope and the peers
    /// known to follow the topic.
    GossipPublish {
        /// The topic's full name.
        topic: String,
        /// What the payload is (under `/p2pos/`).
        payload_type: String,
        /// The bytes signed.
        payload: Vec<u8>,
        /// The envelope, and the followers it went to, as far as gossip knows.
        reply: Reply<(Bytes, Vec<PeerId>)>,
    },
    /// How `peer` is reached now: directly, through relays (and their circuits' limits), or
    /// not at all.
    Path {
        /// The peer.
        peer: PeerId,
        /// The path.
        reply: oneshot::Sender<Path>,
    },
    /// The peers known to follow a gossip topic.
    GossipFollowers {
        /// The topic's full name.
        topic: String,
        /// The peers.
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    /// Close the swarm; answered once it is dropped.
    Shutdown {
        /// Answered once the swarm is gone.
        reply: oneshot::Sender<()>,
    },
}

/// A record found in the DHT, signed by the node that put it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRecord {
    /// The node whose key signed it.
    pub publisher: PeerId,
    /// The value it signed.
    pub value: Bytes,
}

/// Providers of a key found in the DHT, best first.
#[derive(Debug, Clone)]
pub struct Providers {
    /// The providers.
    pub providers: Vec<RemoteProvider>,
    /// Whether they come from an earlier look-up (a fresh one may find others).
    pub cached: bool,
}

/// A provider of a key found in the DHT.
#[derive(Debug, Clone)]
pub struct RemoteProvider {
    /// The provider's node.
    pub peer: PeerId,
    /// The addresses the DHT gave for it (also remembered in the address book).
    pub addrs: Vec<Multiaddr>,
    /// Whether this node is connected to it now.
    pub connected: bool,
    /// The last ping round-trip time, when connected and measured.
    pub rtt: Option<Duration>,
    /// How it stands, as this node knows from its own calls, channels and connections.
    pub reach: ProviderReach,
    /// When this node was last connected to it, in ms since the Unix epoch (now when
    /// connected); 0 if not in the last 5 minutes.
    pub last_connected_ms: u64,
}

/// How a provider found in the DHT stands, best first (providers are ranked in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProviderReach {
    /// Connected now.
    Connected,
    /// Not connected now; connected within the last 5 minutes.
    Recently,
    /// Not connected in the last 5 minutes (or never): its record may be stale.
    NotRecently,
    /// It refused a call or channel recently (busy: `RESOURCE_EXHAUSTED`, or its app failing,
    /// or a call broken off after taking it: for 60 s), or broke the protocol (junk, or calls
    /// broken off twice within 10 minutes: for 10 minutes): tried after the providers above.
    Refused,
    /// It said less than 30 s ago that it does not provide the key (its record is stale, or
    /// it stopped): tried only after every other provider.
    NotProviding,
    /// Reaching it failed less than 30 s ago, and no connection to it opened since: calls and
    /// channels do not try it again until then.
    Unreached,
}

/// How a call or channel to a provider fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fared {
    /// It was served there: for 10 minutes it is tried before the providers of the key
    /// not served recently (of the same standing otherwise), and its marks are cleared.
    Served,
    /// The provider's node said it does not provide the key (or said it stopped providing it).
    NotProviding,
    /// The provider could not be reached (no connection, no stream, no answer in time).
    Unreached,
    /// It was busy, or its app refused the call with `RESOURCE_EXHAUSTED`: ranked
    /// [`ProviderReach::Refused`] for a minute.
    Refused,
    /// It broke the protocol (an answer that is not one, a call broken off after it took it):
    /// ranked [`ProviderReach::Refused`] for 10 minutes.
    Misbehaved,
    /// Its app answered an error that says nothing about the request (`UNAVAILABLE`,
    /// `INTERNAL`, `UNKNOWN`): ranked [`ProviderReach::Refused`] for a minute, so that the next
    /// call tries another provider first (no Sybil answering so stays first).
    Failing,
    /// It took the request, then broke the stream or said nothing till the request's end:
    /// ranked [`ProviderReach::Refused`] for a minute, and for 10 minutes when it did so
    /// already in the last 10 minutes.
    BrokeOff,
    /// Anything else that kept it from serving (it is only no longer offered from the cache).
    Failed,
}

/// What the network tells those who follow it.
#[derive(Debug, Clone)]
pub enum NetEvent {
    /// A first connection to the peer is open.
    Connected(PeerId),
    /// The last connection to the peer closed.
    Disconnected(PeerId),
    /// A direct connection to a peer reached only through relays until now opened: new streams
    /// take it, free of the relays' limits.
    Direct(PeerId),
}

/// How the announcement of a key in the DHT went, as the swarm task last heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announced {
    /// On its way (or not heard of yet).
    Pending,
    /// At least one other node took it; republished every minute.
    Done,
    /// It reached no other node, or failed: why. Tried again (2 s, doubling to 60 s; and at
    /// once when a first peer enters the routing table).
    Failed(String),
}

/// How the announcements of the keys provided went, by key.
pub type Announcements = std::sync::Arc<std::collections::BTreeMap<String, Announced>>;

/// Keys this service announces in the DHT while it holds this; dropping it withdraws them.
#[derive(Debug)]
pub struct Announcer(
    watch::Sender<BTreeSet<String>>,
    watch::Receiver<Announcements>,
);

impl Announcer {
    /// How the announcement of `key` went; [`Announced::Pending`] for a key not heard of.
    pub fn status(&self, key: &str) -> Announced {
        self.1
            .borrow()
            .get(key)
            .cloned()
            .unwrap_or(Announced::Pending)
    }

    /// Announces exactly `keys` from now on (checked as [`check_key`] says; others are
    /// ignored). Nothing queues up: the latest set always wins.
    pub fn set(&self, keys: BTreeSet<String>) {
        self.0.send_if_modified(|current| {
            let changed = *current != keys;
            *current = keys;
            changed
        });
    }
}

/// A cheap, cloneable handle to the network.
#[derive(Clone)]
pub struct Network {
    commands: mpsc::Sender<Command>,
    control: Control,
    local: PeerId,
    events: broadcast::Sender<NetEvent>,
    /// Inbound streams refused past an accept loop's limits, by protocol and limit.
    streams_refused: StreamsRefused,
    /// Fresh pings in flight.
    pings: ping::Pings,
}

/// Inbound streams refused past an accept loop's limits, labelled `protocol` and `limit`
/// (`total` or `per_peer`): the network service registers it with its metrics.
pub type StreamsRefused = prometheus_client::metrics::family::Family<
    Vec<(String, String)>,
    prometheus_client::metrics::counter::Counter,
>;

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// Whether `key` may be used in the DHT: under [`KEY_PREFIX`], at most [`MAX_KEY`] bytes.
pub fn check_key(key: &str) -> Result<(), Error> {
    let invalid = |reason| Error::InvalidKey {
        key: key.chars().take(80).collect(),
        reason,
    };
    if !key.starts_with(KEY_PREFIX) {
        return Err(invalid("it does not start with /p2pos/"));
    }
    if key.len() > MAX_KEY {
        return Err(invalid("it is longer than 256 bytes"));
    }
    Ok(())
}

impl Network {
    /// A handle to the swarm task behind `commands`, opening streams with `control`; the
    /// network service makes it.
    pub fn new(
        commands: mpsc::Sender<Command>,
        control: Control,
        local: PeerId,
        events: broadcast::Sender<NetEvent>,
    ) -> Self {
        Self {
            commands,
            control,
            local,
            events,
            streams_refused: StreamsRefused::default(),
            pings: ping::Pings::default(),
        }
    }

    /// The count of inbound streams refused past the accept loops' limits, for metrics.
    pub fn streams_refused(&self) -> StreamsRefused {
        self.streams_refused.clone()
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Follows connection events.
    pub fn subscribe(&self) -> broadcast::Receiver<NetEvent> {
        self.events.subscribe()
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::NetworkStopped)?;
        rx.await.map_err(|_| Error::NetworkStopped)
    }

    /// Connects to `peer` within `limit`; answers the address of the connection.
    pub async fn connect(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        limit: Duration,
    ) -> Result<Multiaddr, Error> {
        if peer == self.local {
            return Err(Error::SelfTarget(peer));
        }
        let fut = self.request(|reply| Command::Connect { peer, addrs, reply });
        match tokio::time::timeout(limit, fut).await {
            Ok(result) => result?,
            Err(_) => Err(Error::Timeout {
                what: format!("a connection to {peer}"),
                after: limit,
            }),
        }
    }

    /// Connects if needed, then measures one round trip now, all within `limit`: a
    /// `/ipfs/ping/1.0.0` stream (which every libp2p node's ping handler answers) carrying 32
    /// random bytes, timed from their write to their echo. Callers that ping one peer at once
    /// share one such round trip (a second stream would end the first: libp2p's ping handler
    /// keeps one inbound stream per connection). The last periodic round trip (at most 10 s
    /// old, else the next one) answers instead when the peer does not answer that protocol,
    /// when the fresh ping fails, or when [`MAX_PINGS`] are in flight on the node already.
    pub async fn ping(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        limit: Duration,
    ) -> Result<Duration, Error> {
        let started = tokio::time::Instant::now();
        self.connect(peer, addrs, limit).await?;
        let left = limit.saturating_sub(started.elapsed());
        let timed_out = || Error::Timeout {
            what: format!("a ping of {peer}"),
            after: limit,
        };
        let mut failed = None;
        if let Some(fresh) = self.pings.start(peer, &self.control) {
            match tokio::time::timeout(left, fresh).await {
                Ok(Ok(Some(rtt))) => return Ok(rtt),
                Ok(Ok(None)) => {}
                Ok(Err(reason)) => failed = Some(reason),
                Err(_) => return Err(timed_out()),
            }
        }
        let left = limit.saturating_sub(started.elapsed());
        let fut = self.request(|reply| Command::Ping { peer, reply });
        match tokio::time::timeout(left, fut).await {
            Ok(Ok(Ok(rtt))) => Ok(rtt),
            Ok(Ok(Err(Error::Unreachable { reason, .. }))) if failed.is_some() => {
                Err(Error::Unreachable {
                    peer,
                    reason: format!("{reason} ({})", failed.unwrap_or_default()),
                })
            }
            Ok(result) => result?,
            Err(_) => Err(timed_out()),
        }
    }

    /// Looks `peer` up in the DHT.
    pub async fn find_peer(&self, peer: PeerId) -> Result<Vec<Multiaddr>, Error> {
        self.request(|reply| Command::FindPeer { peer, reply })
            .await?
    }

    /// Opens a stream to `peer` (connected already, or reachable by known addresses) for
    /// `protocol`.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<Stream, OpenStreamError> {
        let mut control = self.control.clone();
        let mut again = 0;
        loop {
            match control.open_stream(peer, protocol.clone()).await {
                // libp2p-stream picks one of the peer's connections at random: one that closed
                // as the stream was asked for (a probe connection this node or the peer just
                // closed, say) answers ConnectionReset before any byte was sent on a stream,
                // so asking again, once that connection is gone, is safe.
                Err(OpenStreamError::Io(e))
                    if e.kind() == std::io::ErrorKind::ConnectionReset && again < OPEN_AGAIN =>
                {
                    again += 1;
                    tokio::time::sleep(OPEN_AGAIN_PAUSE * again).await;
                }
                other => return other,
            }
        }
    }

    /// Serves the inbound streams of `protocol` with `serve`, within `limits` (streams at once
    /// in all and per peer, frame size, idle time), until the returned guard is dropped or the
    /// network goes; a stream past the limits is given to `refuse` (see
    /// [`accept::accept_loop`]). A stream idle longer than `limits.idle` while `serve` runs
    /// is closed. One service accepts a protocol at a time.
    pub fn accept<F, Fut, R, RFut>(
        &self,
        protocol: StreamProtocol,
        limits: Limits,
        serve: F,
        refuse: R,
    ) -> Result<Accepting, Error>
    where
        F: Fn(PeerId, InboundStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        R: Fn(PeerId, InboundStream, Overflow) -> Option<RFut> + Send + 'static,
        RFut: Future<Output = ()> + Send + 'static,
    {
        let incoming = self
            .control
            .clone()
            .accept(protocol.clone())
            .map_err(|_| Error::AlreadyAccepted(protocol.to_string()))?;
        let what = protocol.to_string();
        let Limits {
            max_frame, idle, ..
        } = limits;
        let watched = move |peer, stream| {
            let activity = inbound::Activity::new();
            let serving = serve(
                peer,
                InboundStream::new(stream, activity.clone(), max_frame),
            );
            let what = what.clone();
            async move {
                tokio::select! {
                    () = serving => {}
                    () = activity.idle_for(idle) => {
                        tracing::debug!(%peer, "closing an inbound {what} stream idle for {idle:?}");
                    }
                }
            }
        };
        let refused = move |peer, stream, overflow| {
            refuse(
                peer,
                InboundStream::new(stream, inbound::Activity::new(), max_frame),
                overflow,
            )
        };
        let what = protocol.to_string();
        let counter = self.streams_refused.clone();
        let count = move |overflow: Overflow| {
            let labels = vec![
                ("protocol".to_owned(), protocol.to_string()),
                ("limit".to_owned(), overflow.label().to_owned()),
            ];
            counter.get_or_create(&labels).inc();
        };
        let task = tokio::spawn(accept::accept_loop(
            incoming,
            limits,
            what,
            (watched, refused, count),
        ));
        Ok(Accepting {
            _accept_loop: AbortOnDropHandle::new(task),
        })
    }

    /// Providers of `key` in the DHT (this node excluded): connected ones first, by
    /// round-trip time, then the others; at most `limit`, within `wait`. Unless `fresh`, a
    /// look-up less than 30 s old answers.
    pub async fn find_providers(
        &self,
        key: String,
        limit: usize,
        wait: Duration,
        fresh: bool,
    ) -> Result<Providers, Error> {
        self.find_providers_among(key, (limit, None), wait, fresh)
            .await
    }

    /// As [`Network::find_providers`], but only providers among `among` (when given) count
    /// towards `limit` and are answered: they are picked out before the answer is ranked and
    /// cut, so that other providers of the key (Sybils, say) cannot crowd them out.
    pub async fn find_providers_among(
        &self,
        key: String,
        (limit, among): (usize, Option<Vec<PeerId>>),
        wait: Duration,
        fresh: bool,
    ) -> Result<Providers, Error> {
        check_key(&key)?;
        let fut = self.request(|reply| Command::FindProviders {
            key,
            limit,
            wait,
            fresh,
            among,
            reply,
        });
        // The swarm task answers by `wait`; this only guards against a stalled task.
        match tokio::time::timeout(wait + Duration::from_secs(2), fut).await {
            Ok(result) => result?,
            Err(_) => Err(Error::Timeout {
                what: "a DHT look-up of providers".into(),
                after: wait,
            }),
        }
    }

    /// How a call or channel to `peer`, a provider of `key`, fared (see [`Fared`]). Dropped if
    /// the swarm task is busy (what it knew stays as it was).
    pub fn provider_fared(&self, key: &str, peer: PeerId, fared: Fared) {
        let _ = self.commands.try_send(Command::ProviderFared {
            key: key.to_owned(),
            peer,
            fared,
        });
    }

    /// An announcer: the keys it is set to are provided in the DHT while it lives, together
    /// with every other announcer's. An error only once the network has stopped.
    pub fn announcer(&self) -> Result<Announcer, Error> {
        let (tx, keys) = watch::channel(BTreeSet::new());
        let (status, heard) = watch::channel(Announcements::default());
        match self.commands.try_send(Command::Announce { keys, status }) {
            Ok(()) => {}
            // The swarm task is busy: it gets the announcer once there is room (the keys set
            // meanwhile wait in the announcer). A service starting under load must not fail
            // for it.
            Err(mpsc::error::TrySendError::Full(command)) => {
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    let _ = commands.send(command).await;
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Error::NetworkStopped),
        }
        Ok(Announcer(tx, heard))
    }

    /// Puts `value` under `key` in the DHT, signed by this node's key (which only the network
    /// holds): anyone who gets it can check that this node put it.
    pub async fn put_record(&self, key: String, value: Bytes) -> Result<(), Error> {
        check_key(&key)?;
        if value.len() > MAX_RECORD {
            return Err(Error::RecordTooLarge {
                size: value.len(),
                limit: MAX_RECORD,
            });
        }
        self.request(|reply| Command::PutRecord { key, value, reply })
            .await?
    }

    /// The records under `key` in the DHT whose signatures verify, with who signed each.
    pub async fn get_record(&self, key: String) -> Result<Vec<SignedRecord>, Error> {
        check_key(&key)?;
        self.request(|reply| Command::GetRecord { key, reply })
            .await?
    }

    /// Signs `payload` with this node's key (which only the network holds) as a libp2p signed
    /// envelope of domain [`SIGN_DOMAIN`] and type `payload_type` (under `/p2pos/`, at most
    /// [`MAX_KEY`] bytes); [`open_signed`] checks it anywhere, with no key.
    pub async fn sign(&self, payload_type: &str, payload: Vec<u8>) -> Result<Vec<u8>, Error> {
        check_key(payload_type)?;
        if payload.len() > MAX_SIGNED {
            return Err(Error::RecordTooLarge {
                size: payload.len(),
                limit: MAX_SIGNED,
            });
        }
        let payload_type = payload_type.to_owned();
        self.request(|reply| Command::Sign {
            payload_type,
            payload,
            reply,
        })
        .await?
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        self.request(|reply| Command::Peers { reply }).await
    }

    /// What the network knows of `peer` now: its connections, what its identify said, its
    /// known addresses, how hole punching went.
    pub async fn peer_detail(&self, peer: PeerId) -> Result<PeerDetail, Error> {
        self.request(|reply| Command::PeerDetail { peer, reply })
            .await
    }

    /// Peers in the stored peer book, most recently seen first (at most `limit`).
    pub async fn remembered(&self, limit: usize) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, Error> {
        self.request(|reply| Command::Remembered { limit, reply })
            .await
    }

    /// Which of `peers` are connected now (as the swarm task sees it when it takes the
    /// question: events about them sent before are older).
    pub async fn connected_among(
        &self,
        peers: Vec<PeerId>,
    ) -> Result<std::collections::HashSet<PeerId>, Error> {
        self.request(|reply| Command::ConnectedAmong { peers, reply })
            .await
    }

    /// The signed address record this node knows of `peer`, and whether `peer` is connected
    /// (`/p2pos/whois/1` answers with it).
    pub async fn signed_record_of(&self, peer: PeerId) -> Result<(Option<Bytes>, bool), Error> {
        self.request(|reply| Command::SignedRecordOf { peer, reply })
            .await
    }

    /// The overlay status.
    pub async fn status(&self) -> Result<OverlayStatus, Error> {
        self.request(|reply| Command::Status { reply }).await
    }

    /// This node's ticket.
    pub async fn ticket(&self) -> Result<Ticket, Error> {
        self.request(|reply| Command::Ticket { reply }).await
    }

    /// Remembers addresses a local user gave for `peer` (a ticket): stored, and redialled at
    /// every start. Dropped if the swarm task is busy.
    pub fn remember(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if !addrs.is_empty() {
            let _ = self.commands.try_send(Command::Remember { peer, addrs });
        }
    }

    /// Keeps addresses a remote peer claimed for `peer` for this run's dials, without storing
    /// them until a connection to one succeeds. Dropped if the swarm task is busy.
    pub fn hear(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if !addrs.is_empty() {
            let _ = self.commands.try_send(Command::Hear { peer, addrs });
        }
    }

    /// Lets only `members` follow and publish on `scope`'s gossip topics (an empty set forgets
    /// the scope); the latest set wins.
    pub async fn gossip_scope(
        &self,
        scope: &str,
        members: std::collections::HashSet<PeerId>,
    ) -> Result<(), Error> {
        gossip::check_part(scope)?;
        let scope = scope.to_owned();
        self.commands
            .send(Command::GossipScope { scope, members })
            .await
            .map_err(|_| Error::NetworkStopped)
    }

    /// Follows `topic` of `scope`: messages whose author is a member of the scope arrive on
    /// the subscription (at most `queue` waiting); dropping it stops following.
    pub async fn gossip_subscribe(
        &self,
        scope: &str,
        topic: &str,
        queue: usize,
    ) -> Result<GossipSubscription, Error> {
        let topic = gossip::topic_name(scope, topic)?;
        let (sink, messages) = mpsc::channel(queue.max(1));
        let name = topic.clone();
        self.request(|reply| Command::GossipSubscribe { topic, sink, reply })
            .await??;
        Ok(GossipSubscription::new(
            name,
            messages,
            self.commands.clone(),
        ))
    }

    /// Signs `payload` with this node's key as [`Network::sign`] does (type `payload_type`) and
    /// publishes the envelope on `topic` of `scope`, in one turn of the swarm task; answers the
    /// envelope and the followers it went to (none when no member follows it at the moment,
    /// which is not an error).
    pub async fn gossip_publish(
        &self,
        scope: &str,
        topic: &str,
        payload_type: &str,
        payload: Vec<u8>,
    ) -> Result<(Bytes, Vec<PeerId>), Error> {
        let topic = gossip::topic_name(scope, topic)?;
        check_key(payload_type)?;
        if payload.len() > gossip::MAX_MESSAGE.min(MAX_SIGNED) {
            return Err(Error::RecordTooLarge {
                size: payload.len(),
                limit: gossip::MAX_MESSAGE.min(MAX_SIGNED),
            });
        }
        let payload_type = payload_type.to_owned();
        self.request(|reply| Command::GossipPublish {
            topic,
            payload_type,
            payload,
            reply,
        })
        .await?
    }

    /// The peers known to follow `topic` of `scope`.
    pub async fn gossip_followers(&self, scope: &str, topic: &str) -> Result<Vec<PeerId>, Error> {
        let topic = gossip::topic_name(scope, topic)?;
        self.request(|reply| Command::GossipFollowers { topic, reply })
            .await
    }

    /// How `peer` is reached now: directly, only through relays (the tightest of their
    /// circuits' limits), or not at all.
    pub async fn path(&self, peer: PeerId) -> Result<Path, Error> {
        self.request(|reply| Command::Path { peer, reply }).await
    }

    /// Closes the swarm and waits until it is gone.
    pub async fn shutdown(&self) {
        let _ = self.request(|reply| Command::Shutdown { reply }).await;
    }
}

/// A followed topic: its messages, until dropped.
#[derive(Debug)]
pub struct GossipSubscription {
    topic: String,
    messages: mpsc::Receiver<GossipMessage>,
    commands: mpsc::Sender<Command>,
}

impl GossipSubscription {
    fn new(
        topic: String,
        messages: mpsc::Receiver<GossipMessage>,
        commands: mpsc::Sender<Command>,
    ) -> Self {
        Self {
            topic,
            messages,
            commands,
        }
    }

    /// The next message; `None` once the network has stopped.
    pub async fn recv(&mut self) -> Option<GossipMessage> {
        self.messages.recv().await
    }
}

impl Drop for GossipSubscription {
    fn drop(&mut self) {
        let topic = std::mem::take(&mut self.topic);
        // A busy swarm task finds the sink closed at the next message and forgets it then.
        let _ = self.commands.try_send(Command::GossipUnsubscribe { topic });
    }
}

/// The payload of `envelope` (made by [`Network::sign`] for `payload_type`) and the peer whose
/// key signed it, if its signature verifies.
pub fn open_signed(payload_type: &str, envelope: &[u8]) -> Option<(PeerId, Vec<u8>)> {
    let envelope = libp2p::core::SignedEnvelope::from_protobuf_encoding(envelope).ok()?;
    let (payload, key) = envelope
        .payload_and_signing_key(SIGN_DOMAIN.to_owned(), payload_type.as_bytes())
        .ok()?;
    Some((key.to_peer_id(), payload.to_vec()))
}

/// What [`Network::sign`] makes, with `key`: for the swarm task and for tests.
pub fn sign_with(
    key: &libp2p::identity::Keypair,
    payload_type: &str,
    payload: Vec<u8>,
) -> Result<Vec<u8>, Error> {
    libp2p::core::SignedEnvelope::new(
        key,
        SIGN_DOMAIN.to_owned(),
        payload_type.as_bytes().to_vec(),
        payload,
    )
    .map(|e| e.into_protobuf_encoding())
    .map_err(|e| Error::Setup(format!("cannot sign: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_payload_opens_only_as_its_own_type() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let signed = sign_with(&key, "/p2pos/test/a", b"hello".to_vec()).expect("signed");
        let (signer, payload) = open_signed("/p2pos/test/a", &signed).expect("opens");
        assert_eq!(signer, key.public().to_peer_id());
        assert_eq!(payload, b"hello");
        assert!(open_signed("/p2pos/test/b", &signed).is_none());
        let mut forged = signed.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(open_signed("/p2pos/test/a", &forged).is_none());
    }

    #[tokio::test]
    async fn an_announcer_reaches_a_busy_swarm_task_once_it_has_room() {
        let (commands, mut queue) = mpsc::channel(1);
        let control = libp2p_stream::Behaviour::new().new_control();
        let (events, _) = broadcast::channel(1);
        let net = Network::new(commands, control, PeerId::random(), events);
        // The queue is full.
        net.remember(
            PeerId::random(),
            vec!["/ip4/127.0.0.1/tcp/1".parse().expect("addr")],
        );
        let announcer = net.announcer().expect("not refused for a full queue");
        announcer.set(["/p2pos/test/key".to_owned()].into_iter().collect());
        assert!(matches!(queue.recv().await, Some(Command::Remember { .. })));
        let Some(Command::Announce { keys, .. }) = queue.recv().await else {
            panic!("the announcer never reached the swarm task");
        };
        assert!(
            keys.borrow().contains("/p2pos/test/key"),
            "the keys set meanwhile"
        );
    }
}
