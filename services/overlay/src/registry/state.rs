//! The registry's state on the overlay actor: services registered by apps, calls waiting for
//! their providers here, the announcer of what is provided here, and the calls in flight to
//! each peer; with the names and limits the registry's parts share.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use actix::SpawnHandle;
use p2pos_proto::wire::v1::CallAnswer;
use p2pos_protocols::network::Announcer;
use tokio::sync::oneshot;

use p2pos_protocols::{certs::Certificate, network::Network};

use super::{
    slots::PeerSlots,
    trust::{Checker, VerifiedCerts},
    withdraw::RecentCallers,
};

/// Most services registered by apps on one node (port forwarding's exposures not counted).
pub(crate) const MAX_REGISTRATIONS: usize = 256;
/// Most services one app (with its helpers, each an app id of its own) registers on one node.
pub(crate) const MAX_REGISTRATIONS_PER_APP: usize = 32;
/// Most services port forwarding (`_node:forward`) registers: one per exposure.
pub(crate) const MAX_REGISTRATIONS_OF_FORWARDING: usize =
    p2pos_protocols::forwarding::MAX_EXPOSURES;

/// Who provides each service on this node, as the registry last published it.
pub(crate) type Providers = Arc<BTreeMap<String, Provided>>;

/// Who provides a service on this node, and the certificates it presents.
#[derive(Clone, Debug)]
pub(crate) struct Provided {
    pub(crate) app_id: String,
    pub(crate) certificates: Vec<Certificate>,
}

/// The DHT key under which the providers of `service` are announced:
/// `/p2pos/service/<service>`.
pub(crate) fn service_key(service: &str) -> String {
    format!("/p2pos/service/{service}")
}

/// The registry's state on the overlay actor.
pub(crate) struct State {
    /// Services registered by apps, by name.
    pub(crate) registrations: BTreeMap<String, Registration>,
    /// Calls announced to providers on this node and not answered yet.
    pub(crate) calls: HashMap<u64, PendingCall>,
    /// Announces the services provided here in the DHT.
    pub(crate) announcer: Announcer,
    /// Calls in flight from this node to each peer.
    pub(crate) slots: Arc<PeerSlots>,
    /// Peers that called each service provided here recently: told when it stops.
    pub(crate) callers: RecentCallers,
    /// Providers' certificates verified lately (shared with the channels the sessions part
    /// opens to services).
    pub(crate) verified: Arc<VerifiedCerts>,
}

/// Who provides a registered service.
pub(crate) struct Registration {
    pub(crate) app_id: String,
    pub(crate) description: String,
    /// The newest session of the app when it registered (or registered again).
    pub(crate) session: u64,
    /// Publishers' certificates it presents to callers.
    pub(crate) certificates: Vec<Certificate>,
}

impl State {
    /// An empty registry that announces its services with `announcer`.
    pub(crate) fn new(announcer: Announcer) -> Self {
        Self {
            registrations: BTreeMap::new(),
            calls: HashMap::new(),
            announcer,
            slots: Arc::new(PeerSlots::default()),
            callers: RecentCallers::default(),
            verified: Arc::new(VerifiedCerts::default()),
        }
    }

    /// What checking providers' certificates takes, over `net`.
    pub(crate) fn checker(&self, net: &Network) -> Checker {
        Checker {
            net: net.clone(),
            slots: self.slots.clone(),
            verified: self.verified.clone(),
        }
    }
}

/// A call announced to a provider on this node.
pub(crate) struct PendingCall {
    /// The providing app.
    pub(crate) app_id: String,
    pub(crate) service: String,
    /// The session it was announced on.
    pub(crate) session: u64,
    pub(crate) answer: oneshot::Sender<CallAnswer>,
    pub(crate) expiry: SpawnHandle,
    /// When its time is up, whether or not `expiry` has run yet (a busy node runs it late).
    pub(crate) deadline: std::time::Instant,
}
