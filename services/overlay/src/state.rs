//! The overlay actor's state: what it owns (sessions, channels waiting to be accepted, its
//! tasks and inbound protocols) and the handles it uses (the network, the mailbox, the
//! messages part, the service registry). Its behaviour lives in the parts that
//! extend it (`apps`, `pending`, `local`, `registry`), which import this module and nothing
//! that imports them back; the actor's life cycle is in `service`.

use std::{collections::HashMap, sync::Arc};
use tokio_util::task::AbortOnDropHandle;

use actix::Addr;
use p2pos_kernel::{DeathGuard, ServiceContext};
use p2pos_protocols::network::{Accepting, Network};
use tokio::sync::{Semaphore, oneshot, watch};

use crate::{
    Config,
    announced::PendingChannel,
    mailbox::Mailbox,
    messages::Messages,
    registry::{
        actor::{ServiceRegistry, StopOnDrop},
        state::Providers,
    },
    sessions::SessionDirectory,
};

/// The overlay actor (the sessions part): holds the overlay's tasks and the guards of its
/// inbound protocols, the app sessions and the pending inbound channels.
pub struct OverlayService {
    /// Aborted when the actor goes: the delivery task.
    pub(crate) tasks: Vec<AbortOnDropHandle<()>>,
    /// The inbound protocols served, until the actor goes.
    pub(crate) accepting: Vec<Accepting>,
    pub(crate) ctx: ServiceContext,
    pub(crate) config: Arc<Config>,
    /// Stops the registry when this instance goes; dropped before `guard`, so that the
    /// registry takes no request once the kernel has heard the instance is gone.
    pub(crate) _registry_stop: StopOnDrop,
    pub(crate) guard: DeathGuard,
    pub(crate) net: Network,
    pub(crate) mailbox: Arc<Mailbox>,
    /// `Send`, `Receive`, `Ack`: routed to it directly.
    pub(crate) messages: Messages,
    /// Ends the messages part's work when this instance goes (dropped with it, a panic
    /// included).
    pub(crate) _messages_guard: tokio_util::sync::DropGuard,
    /// Bounds concurrent outbound channel opens.
    pub(crate) opens: Arc<Semaphore>,
    /// One permit per channel open or waiting to be accepted, in either direction
    /// (`Config::max_channels`); a channel's byte stream holds its permit.
    pub(crate) channels: Arc<Semaphore>,
    /// Inbound channels per remote peer (`Config::max_channels_per_peer`).
    pub(crate) peer_channels: crate::counted::PeerChannels,
    /// Inbound channels refused at a peer's limits (for metrics).
    pub(crate) channels_refused: prometheus_client::metrics::counter::Counter,
    /// Who watches for each app's last session to end (`WatchSession`): dropped, they fire.
    pub(crate) watchers: HashMap<String, Vec<oneshot::Sender<()>>>,
    /// Inbound channels announced but not yet accepted.
    pub(crate) pending: HashMap<u64, PendingChannel>,
    pub(crate) next_session: u64,
    /// The live sessions of each app (the registry reads them too).
    pub(crate) directory: SessionDirectory,
    /// The service registry: told when a session or an app is gone.
    pub(crate) registry: Addr<ServiceRegistry>,
    /// Who provides what here, as the registry publishes it.
    pub(crate) providers: watch::Receiver<Providers>,
}
