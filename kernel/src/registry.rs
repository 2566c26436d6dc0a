//! The registry of which service actor answers which protocol's messages.
//!
//! A [`Protocol`] names a closed request type and its response type; a service registers a
//! [`Recipient`] for the protocols it exposes each time it (re)starts, and callers look it up
//! per call, so a restart is transparent to them (they see `UNAVAILABLE` only while the
//! service is down).

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
    recipient: Box<dyn Any + Send + Sync>,
}

/// A cheap, cloneable handle to the registry.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<HashMap<&'static str, Entry>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.routes()).finish()
    }
}

impl Registry {
    /// Routes `P`'s messages to `recipient`, owned by `service`, replacing any earlier route.
    pub fn register<P: Protocol>(&self, service: &'static str, recipient: Recipient<Call<P>>)
    where
        P::Request: Send,
        P::Response: Send,
    {
        if let Ok(mut map) = self.inner.write() {
            map.insert(
                P::NAME,
                Entry {
                    service,
                    recipient: Box::new(recipient),
                },
            );
        }
    }

    /// The actor that answers `P`, if one is registered.
    pub fn recipient<P: Protocol>(&self) -> Result<Recipient<Call<P>>, ServiceError> {
        let map = self
            .inner
            .read()
            .map_err(|_| ServiceError::internal("registry lock poisoned"))?;
        map.get(P::NAME)
            .and_then(|e| e.recipient.downcast_ref::<Recipient<Call<P>>>())
            .cloned()
            .ok_or_else(|| {
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

    /// `(protocol, service)` pairs, sorted.
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
