//! The registry of what services provide each other: the actor that answers each protocol's
//! messages, and handles (the network handle, say) that a service hands to the services started
//! after it.
//!
//! A [`Protocol`] names a closed request type and its response type; a service registers a
//! [`Recipient`] for the protocols it answers each time it (re)starts, and callers look it up
//! per call, so a restart is transparent to them (they see `UNAVAILABLE` only while the
//! service is down). A handle is registered the same way under its name and taken once, when a
//! service starts.
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

use crate::ServiceError;

/// A set of messages one service answers.
pub trait Protocol: 'static {
    /// Fully qualified name, e.g. `p2pos.overlay.v1`.
    const NAME: &'static str;
    /// The closed request type (one variant per operation).
    type Request: Send + 'static;
    /// The response type.
    type Response: Send + 'static;
}

/// A request of protocol `P`, as delivered to the actor that answers it.
pub struct Call<P: Protocol>(pub P::Request);

impl<P: Protocol> Message for Call<P> {
    type Result = Result<P::Response, ServiceError>;
}

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

    /// Routes `P`'s messages to `recipient`, replacing any earlier route; an error unless the
    /// child spec declares it provides `P`.
    pub fn register<P: Protocol>(&self, recipient: Recipient<Call<P>>) -> Result<(), ServiceError>
    where
        P::Request: Send,
        P::Response: Send,
    {
        self.provide(P::NAME, recipient)
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

    /// The actor that answers `P`, if one is registered.
    pub fn recipient<P: Protocol>(&self) -> Result<Recipient<Call<P>>, ServiceError> {
        self.check(P::NAME, |v| v.calls.contains(&P::NAME), "calls")?;
        self.lookup(P::NAME)?.ok_or_else(|| {
            ServiceError::unavailable(format!("no service answers {} right now", P::NAME))
        })
    }

    /// Sends `request` to the actor that answers `P` and waits for its answer.
    pub async fn call<P: Protocol>(
        &self,
        request: P::Request,
    ) -> Result<P::Response, ServiceError> {
        let recipient = self.recipient::<P>()?;
        recipient.send(Call::<P>(request)).await?
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
