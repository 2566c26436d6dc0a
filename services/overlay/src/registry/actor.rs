//! The service registry as a part of its own: an actor that owns the services provided here,
//! the calls waiting for their providers, the announcer and the calls in flight to each peer.
//! It reads the sessions part's [`SessionDirectory`] (which app has a live session, where to
//! announce a call) and publishes who provides what here ([`Providers`]) for the channels the
//! sessions part opens to services; the sessions part tells it when a session or an app is
//! gone. It lives and dies with the overlay instance that started it: a panic here fails that
//! instance, and the instance stops it when it goes.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use actix::prelude::*;
use p2pos_kernel::Store;
use p2pos_protocols::network::Network;
use tokio::sync::watch;

use super::state::{Providers, State};
use crate::sessions::SessionDirectory;

/// The service registry's actor.
pub(crate) struct ServiceRegistry {
    /// Services provided here, calls waiting for their providers, the announcer.
    pub(crate) services: State,
    pub(crate) net: Network,
    /// For call ids.
    pub(crate) store: Arc<dyn Store>,
    /// The sessions part's live sessions, read only.
    pub(crate) sessions: SessionDirectory,
    /// Who provides each service here, for the sessions part.
    pub(crate) providers: watch::Sender<Providers>,
    /// Set when the overlay instance has gone: requests still queued are dropped (their
    /// callers hear `UNAVAILABLE`), none is taken.
    stopped: Arc<AtomicBool>,
    /// Tells the overlay instance if this actor goes by a panic.
    _link: Link,
}

impl ServiceRegistry {
    /// A registry over `services`, reading `sessions`; `failed` hears of a panic.
    pub(crate) fn new(
        services: State,
        net: Network,
        store: Arc<dyn Store>,
        sessions: SessionDirectory,
        failed: Recipient<PartFailed>,
    ) -> (Self, watch::Receiver<Providers>, Arc<AtomicBool>) {
        let (providers, snapshot) = watch::channel(Providers::default());
        let stopped = Arc::new(AtomicBool::new(false));
        let registry = Self {
            services,
            net,
            store,
            sessions,
            providers,
            stopped: stopped.clone(),
            _link: Link(failed),
        };
        (registry, snapshot, stopped)
    }

    /// Whether the overlay instance has gone; if so the actor stops, taking nothing more.
    pub(crate) fn gone(&self, ctx: &mut Context<Self>) -> bool {
        let gone = self.stopped.load(Ordering::Acquire);
        if gone {
            ctx.stop();
        }
        gone
    }
}

impl Actor for ServiceRegistry {
    type Context = Context<Self>;
}

/// A part of the overlay went by a panic: the instance fails (and the kernel restarts it).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct PartFailed(pub(crate) &'static str);

/// Reports a panic of the actor that holds it.
struct Link(Recipient<PartFailed>);

impl Drop for Link {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.do_send(PartFailed("the service registry panicked"));
        }
    }
}

/// Stops the registry when dropped (with the overlay instance that holds it, however it goes):
/// at once for the requests still queued, which it drops.
pub(crate) struct StopOnDrop(pub(crate) Addr<ServiceRegistry>, pub(crate) Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.1.store(true, Ordering::Release);
        self.0.do_send(Stop);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Stop;

impl Handler<Stop> for ServiceRegistry {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// A session ended: the calls announced on it can no longer be answered.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SessionEnded(pub(crate) u64);

impl Handler<SessionEnded> for ServiceRegistry {
    type Result = ();

    fn handle(&mut self, SessionEnded(session): SessionEnded, _: &mut Self::Context) {
        self.session_ended(session);
    }
}

/// An app's last session (the second field) ended: its services end with it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct AppGone(pub(crate) String, pub(crate) u64);

impl Handler<AppGone> for ServiceRegistry {
    type Result = ();

    fn handle(&mut self, AppGone(app_id, last): AppGone, _: &mut Self::Context) {
        self.app_gone(&app_id, last);
    }
}
