//! Tunnels: their count per exposure or forward, the exposure's end (connect to the target,
//! then splice) and the forward's accept loop (open a channel per connection, then splice).
//! Each tunnel is its own task; none of its bytes pass through an actor.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use p2pos_protocols::apps::Duplex;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tracing::{debug, warn};

use super::{
    Opener,
    resets::{Counted, Reason, Resets},
    splice::{TUNNEL_IDLE, is_idle, splice},
};
use crate::Error;

/// How long connecting to an exposed target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing a channel whose target could not be reached may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after a failed `accept` (out of file descriptors, say), so that the loop does not
/// spin while the cause lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The tunnels of one exposure or forward: how many so far, and a permit per open one.
#[derive(Debug)]
pub(super) struct Tunnels {
    total: AtomicU64,
    /// Connections reset.
    pub(super) resets: Counted,
    open: Arc<Semaphore>,
    limit: usize,
}

impl Tunnels {
    /// Counts at most `limit` open tunnels.
    pub(super) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            total: AtomicU64::new(0),
            resets: Counted::default(),
            open: Arc::new(Semaphore::new(limit)),
            limit,
        })
    }

    /// Counts a new tunnel, open until the permit is dropped; `None` at the limit.
    pub(super) fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.open.clone().try_acquire_owned().ok()?;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(permit)
    }

    /// Tunnels admitted so far.
    pub(super) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Tunnels open now.
    pub(super) fn open(&self) -> u32 {
        let open = self.limit.saturating_sub(self.open.available_permits());
        u32::try_from(open).unwrap_or(u32::MAX)
    }

    /// The most open at once.
    pub(super) fn limit(&self) -> usize {
        self.limit
    }
}

/// The exposure's end of one tunnel: connects to `target` and splices the channel `io` onto
/// the connection. A target that cannot be reached closes the channel. A tunnel that does not
/// end cleanly is a reset of `tunnels`, logged and counted in `resets`.
pub(super) async fn to_target(
    service: String,
    target: SocketAddr,
    mut io: Box<dyn Duplex>,
    permit: OwnedSemaphorePermit,
    tunnels: &Tunnels,
    resets: &Resets,
) {
    let _open = permit;
    let reset = |reason: Reason, why: String| {
        warn!(%service, %target, reason = reason.label(), "forwarded connection reset: {why}");
        tunnels.resets.reset(resets, reason, why);
    };
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            reset(
                Reason::TargetUnreachable,
                format!("cannot connect to the exposed target {target}: {e}"),
            );
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, io.shutdown()).await;
            return;
        }
        Err(_) => {
            reset(
                Reason::TargetUnreachable,
                format!("no connection to the exposed target {target} within {CONNECT_TIMEOUT:?}"),
            );
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, io.shutdown()).await;
            return;
        }
    };
    match splice(tcp, io, TUNNEL_IDLE).await {
        Ok(()) => debug!(%service, %target, "tunnel closed"),
        Err(e) if is_idle(&e) => reset(Reason::Idle, format!("the tunnel was idle: {e}")),
        Err(e) => reset(Reason::Broke, format!("the tunnel broke: {e}")),
    }
}

/// Channels a forward opens at once; more connections wait their turn.
const OPENS_AT_ONCE: usize = 4;
/// Times a connection's channel is opened again after its stream broke before the handshake.
const OPEN_RETRIES: u32 = 3;
/// The pause before the first such retry (then twice, three times as long).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What a forward's accept loop needs.
pub(super) struct Listener {
    /// The bound listener.
    pub(super) listener: TcpListener,
    /// The forward's id, for logs.
    pub(super) forward_id: u64,
    /// The service each connection is tunnelled to.
    pub(super) service: String,
    /// Its provider; empty: the best one found, at each connection.
    pub(super) peer: String,
    /// Opens the channels.
    pub(super) opener: Opener,
    /// The forward's tunnels.
    pub(super) tunnels: Arc<Tunnels>,
    /// The node-wide counter of resets.
    pub(super) resets: Resets,
}

/// A forward's accept loop: each connection (while fewer than the limit are open; beyond, it
/// is closed at once) gets its own task that opens a channel to the service and splices the
/// two. Runs until aborted; tunnels already open then run on until they end.
pub(super) async fn accept_loop(listener: Listener) {
    let Listener {
        listener,
        forward_id,
        service,
        peer,
        opener,
        tunnels,
        resets,
    } = listener;
    // Connections that arrive together wait for their turn to open a channel rather than
    // fail: the node opens a few channels at a time, and a peer answers a few handshakes of
    // one peer at a time.
    let opening = Arc::new(Semaphore::new(OPENS_AT_ONCE));
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(forward_id, "accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(permit) = tunnels.admit() else {
            let why = format!(
                "{} tunnels are open (the limit); the connection is closed",
                tunnels.limit()
            );
            warn!(forward_id, %from, %service, "forwarded connection reset: {why}");
            tunnels.resets.reset(&resets, Reason::TooMany, why);
            drop(tcp);
            continue;
        };
        let (opener, opening) = (opener.clone(), opening.clone());
        let (tunnels, resets) = (tunnels.clone(), resets.clone());
        let (service, peer) = (service.clone(), peer.clone());
        tokio::spawn(async move {
            let _open = permit;
            let Ok(turn) = opening.acquire_owned().await else {
                return;
            };
            let mut attempt = 0;
            let opened = loop {
                match opener(service.clone(), peer.clone()).await {
                    // A stream refused before its handshake (the peer's node was busy with
                    // others) carried nothing yet: opening again is safe.
                    Err(e) if attempt < OPEN_RETRIES && broke_before_handshake(&e) => {
                        attempt += 1;
                        tokio::time::sleep(RETRY_PAUSE * attempt).await;
                    }
                    other => break other,
                }
            };
            drop(turn);
            let channel = match opened {
                Ok(channel) => channel,
                Err(e) => {
                    let why = format!("no channel to '{service}' could be opened: {e}");
                    warn!(forward_id, %from, "forwarded connection reset: {why}");
                    tunnels.resets.reset(&resets, Reason::NoChannel, why);
                    return;
                }
            };
            let peer_id = channel.peer_id.clone();
            match splice(tcp, channel.io, TUNNEL_IDLE).await {
                Ok(()) => debug!(forward_id, %from, %service, %peer_id, "tunnel closed"),
                Err(e) if is_idle(&e) => {
                    let why = format!("the tunnel to peer {peer_id} was idle: {e}");
                    warn!(forward_id, %from, %service, "forwarded connection reset: {why}");
                    tunnels.resets.reset(&resets, Reason::Idle, why);
                }
                Err(e) => {
                    let why = format!("the tunnel to peer {peer_id} broke: {e}");
                    warn!(forward_id, %from, %service, "forwarded connection reset: {why}");
                    tunnels.resets.reset(&resets, Reason::Broke, why);
                }
            }
        });
    }
}

/// Whether opening a channel failed because the stream broke before its handshake: the peer's
/// node was busy with others and dropped it unread, so opening again is safe.
fn broke_before_handshake(e: &Error) -> bool {
    matches!(e, Error::Registry(e) if e.code == p2pos_kernel::ErrorCode::Unavailable
        && e.message.starts_with("/p2pos/channel/1 with peer"))
}
