//! The registry of what services provide each other: the actor that answers each protocol's
//! messages, and handles (the network handle, say) that a service hands to the services started
//! after it.
//!
//! A [`Protocol`] names a closed request type whose every variant carries its own typed
//! [`Reply`] channel (rust-libp2p's `file-sharing` `Command` shape): a caller gets exactly the
//! type it asked for, with no "answered a different request" case. A service registers a route
//! for the protocols it answers each time it (re)starts — its actor's [`Recipient`], or any
//! function — and callers look it up per call, so a restart is transparent to them (they see
//! `UNAVAILABLE` only while the service is down: the kernel withdraws what a service registered
//! as soon as it exits). A handle is registered the same way under its name and taken once,
//! when a service starts.
//!
//! Each service sees the registry through its own view, limited to what its child spec
//! declares ([`Uses`](crate::child::Uses)): calling, taking or registering anything else is an
//! error that names the service and what it forgot to declare.

use std::{
    any::Any,
    collections::HashMap,
    sync::{Arc, RwLock},
};

use actix::{Message, Recipient};
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::ServiceError;

/// A set of requests one service answers.
pub trait Protocol: 'static {
    /// Fully qualified name, e.g. `p2pos.overlay.v1`.
    const NAME: &'static str;
    /// The closed request type: one variant per operation, each with its own [`Reply`].
    type Request: Send + 'static;
}

/// Where the answer to one request goes.
pub type Reply<T> = oneshot::Sender<Result<T, ServiceError>>;

/// A request of protocol `P`, as delivered to the actor that answers it. The actor answers on
/// the request's own [`Reply`], often from a task it spawns.
pub struct Call<P: Protocol>(pub P::Request);

impl<P: Protocol> Message for Call<P> {
    type Result = ();
}

/// How a request of protocol `P` reaches the service that answers it: accepted (into a
/// mailbox, or a task) or refused at once.
type Route<P> = Arc<
    dyn Fn(<P as Protocol>::Request) -> BoxFuture<'static, Result<(), ServiceError>> + Send + Sync,
>;

struct Entry {
    service: &'static str,
    value: Box<dyn Any + Send + Sync>,
}

/// What one service may do with the registry: the names it calls, takes and provides.
#[derive(Debug, Clone, Copy)]
struct View {
    service: &'static str,
    calls: &'static [&'static str],
    needs: &'static [&'static str],
    provides: &'static [&'static str],
}

/// A cheap, cloneable handle to the registry, as one service sees it.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<HashMap<&'static str, Entry>>>,
    /// `None`: the kernel's own, unlimited view.
    view: Option<View>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.routes()).finish()
    }
}

impl Registry {
    /// The view of service `service`, limited to what it declares.
    pub(crate) fn scoped(
        &self,
        service: &'static str,
        calls: &'static [&'static str],
        needs: &'static [&'static str],
        provides: &'static [&'static str],
    ) -> Registry {
        Registry {
            inner: self.inner.clone(),
            view: Some(View {
                service,
                calls,
                needs,
                provides,
            }),
        }
    }

    fn check(
        &self,
        name: &str,
        declared: impl Fn(&View) -> bool,
        how: &str,
    ) -> Result<(), ServiceError> {
        match &self.view {
            Some(view) if !declared(view) => Err(ServiceError::internal(format!(
                "service {} {how} {name} without declaring it in its child spec",
                view.service
            ))),
            _ => Ok(()),
        }
    }

    fn owner(&self) -> &'static str {
        self.view.map_or("kernel", |v| v.service)
    }

    /// Registers `value` under `name`, replacing any earlier entry; an error unless the child
    /// spec declares it provides `name`.
    pub fn provide<T: Send + Sync + 'static>(
        &self,
        name: &'static str,
        value: T,
    ) -> Result<(), ServiceError> {
        self.check(name, |v| v.provides.contains(&name), "provides")?;
        let mut map = self
            .inner
            .write()
            .map_err(|_| ServiceError::internal("registry lock poisoned"))?;
        map.insert(
            name,
            Entry {
                service: self.owner(),
                value: Box::new(value),
            },
        );
        Ok(())
    }

    /// Routes `P`'s requests to `recipient`, replacing any earlier route; an error unless the
    /// child spec declares it provides `P`.
    pub fn register<P: Protocol>(&self, recipient: Recipient<Call<P>>) -> Result<(), ServiceError> {
        self.route::<P>(move |request| {
            let recipient = recipient.clone();
            Box::pin(async move {
                recipient
                    .send(Call::<P>(request))
                    .await
                    .map_err(ServiceError::from)
            })
        })
    }

    /// Routes `P`'s requests to `route` (which hands each on, to an actor or a task), replacing
    /// any earlier route; an error unless the child spec declares it provides `P`.
    pub fn route<P: Protocol>(
        &self,
        route: impl Fn(P::Request) -> BoxFuture<'static, Result<(), ServiceError>>
        + Send
        + Sync
        + 'static,
    ) -> Result<(), ServiceError> {
        let route: Route<P> = Arc::new(route);
        self.provide(P::NAME, route)
    }

    fn lookup<T: Clone + 'static>(&self, name: &str) -> Result<Option<T>, ServiceError> {
        let map = self
            .inner
            .read()
            .map_err(|_| ServiceError::internal("registry lock poisoned"))?;
        Ok(map
            .get(name)
            .and_then(|e| e.value.downcast_ref::<T>())
            .cloned())
    }

    /// The handle registered under `name`; an error unless the child spec declares it needs
    /// `name`, or if no service provides it now.
    pub fn take<T: Clone + 'static>(&self, name: &'static str) -> Result<T, ServiceError> {
        self.check(name, |v| v.needs.contains(&name), "takes")?;
        self.lookup(name)?.ok_or_else(|| {
            ServiceError::unavailable(format!("no service provides {name} right now"))
        })
    }

    /// Sends the request `make` builds around its reply channel to the service that answers
    /// `P`, and waits for the answer: exactly the type the request asked for.
    pub async fn ask<P: Protocol, T>(
        &self,
        make: impl FnOnce(Reply<T>) -> P::Request,
    ) -> Result<T, ServiceError> {
        self.check(P::NAME, |v| v.calls.contains(&P::NAME), "calls")?;
        let route: Route<P> = self.lookup(P::NAME)?.ok_or_else(|| {
            ServiceError::unavailable(format!("no service answers {} right now", P::NAME))
        })?;
        let (reply, answer) = oneshot::channel();
        route(make(reply)).await?;
        answer.await.map_err(|_| {
            ServiceError::unavailable(format!(
                "the service answering {} went away before it answered (it is restarting?); try again",
                P::NAME
            ))
        })?
    }

    /// Removes everything `service` registered: it has exited, and callers should hear
    /// `UNAVAILABLE` until it registers again rather than reach an actor that is gone.
    pub(crate) fn withdraw(&self, service: &str) {
        if let Ok(mut map) = self.inner.write() {
            map.retain(|_, entry| entry.service != service);
        }
    }

    /// `(name, service)` pairs of everything registered, sorted.
    pub fn routes(&self) -> Vec<(&'static str, &'static str)> {
        let mut routes: Vec<_> = self
            .inner
            .read()
            .map(|m| m.iter().map(|(k, e)| (*k, e.service)).collect())
            .unwrap_or_default();
        routes.sort();
        routes
    }
}
