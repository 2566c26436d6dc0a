//! Exposures (a loopback TCP service published as a P2P OS service, kept in the store) and
//! forwards (a loopback listener whose connections are tunnelled, one channel each, to an
//! exposed service). [`Forwarding`] holds both; the forward service's actor owns it. Every
//! tunnel is a task that splices TCP bytes and channel frames: no byte passes through the
//! actor.
//!
//! # Layout
//! - `name`: service names (shared with the registry) and loopback addresses.
//! - `tunnel`: tunnel counts, the exposure's end of a tunnel and the forward's accept loop.
//! - `splice`: TCP bytes ⇄ length-delimited frames, half-close in each direction.
//! - `resets`: connections ended before their time, logged and counted.

mod name;
pub(crate) mod resets;
mod splice;
#[cfg(test)]
mod tests;
mod tunnel;

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};
use tokio_util::task::AbortOnDropHandle;

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use p2pos_kernel::{Store, store::StoreError};
use p2pos_proto::service::v1::{
    ExposeRequest, Exposure, Forward, ListExposuresReply, ListForwardsReply, OpenForwardRequest,
};
use p2pos_protocols::apps::{ChannelStream, Duplex};
use prost::Message;
use tokio::net::TcpSocket;
use tracing::{info, warn};

pub(crate) use name::parse_service_name;

use crate::Error;
use name::parse_loopback;
use p2pos_protocols::ids::PeerRef;
use resets::Resets;
use tunnel::{Listener, Tunnels};

/// Store tree of the exposures: service name → [`Exposure`] (protobuf; counters zero).
pub(crate) const EXPOSURES_TREE: &str = "exposures";
/// Most exposures on a node.
pub(crate) const MAX_EXPOSURES: usize = p2pos_protocols::forwarding::MAX_EXPOSURES;
/// Most forwards on a node.
pub(crate) const MAX_FORWARDS: usize = 32;
/// Most open tunnels through one forward, and into one exposure.
pub(crate) const MAX_TUNNELS: usize = 256;
/// Backlog of a forward's listener.
const BACKLOG: u32 = 128;

/// Opens a channel to `service` (first argument) on `peer` (second; empty: the best provider
/// found), for one connection of a forward.
pub(crate) type Opener =
    Arc<dyn Fn(String, String) -> BoxFuture<'static, Result<ChannelStream, Error>> + Send + Sync>;

/// The node's exposures and forwards. Dropping it stops every forward's listener (their open
/// tunnels run on until they end).
pub(crate) struct Forwarding {
    store: Arc<dyn Store>,
    /// The last store write asked for: each write waits for the one before it, so that the
    /// store sees exposures and withdrawals in the order they were made.
    last_write: Shared<BoxFuture<'static, ()>>,
    exposures: BTreeMap<String, Exposed>,
    forwards: BTreeMap<u64, Listening>,
    /// The node-wide counter of resets (set by the service once its metrics are registered).
    pub(crate) resets: Resets,
}

/// One exposure.
struct Exposed {
    target: SocketAddr,
    tunnels: Arc<Tunnels>,
}

/// One forward; dropping it aborts its accept loop.
struct Listening {
    service: String,
    peer: String,
    listen: SocketAddr,
    tunnels: Arc<Tunnels>,
    _accept: AbortOnDropHandle<()>,
}

impl Forwarding {
    /// Restores the exposures kept in `store`; a record that cannot be read is skipped (and
    /// kept) with a warning.
    pub(crate) fn load(store: Arc<dyn Store>) -> Result<Forwarding, Error> {
        let mut exposures = BTreeMap::new();
        for (key, value) in store.scan_prefix(EXPOSURES_TREE, b"", MAX_EXPOSURES)? {
            match decode(&key, &value) {
                Ok((service, target)) => {
                    exposures.insert(
                        service,
                        Exposed {
                            target,
                            tunnels: Tunnels::new(MAX_TUNNELS),
                        },
                    );
                }
                Err(why) => warn!(
                    key = %String::from_utf8_lossy(&key),
                    "skipping a stored exposure: {why}"
                ),
            }
        }
        Ok(Forwarding {
            store,
            last_write: futures::future::ready(()).boxed().shared(),
            exposures,
            forwards: BTreeMap::new(),
            resets: Resets::default(),
        })
    }

    /// Checks an `Expose` request: its service name in canonical form and its target, and room
    /// for one more exposure.
    pub(crate) fn check_exposure(
        &self,
        req: &ExposeRequest,
    ) -> Result<(String, SocketAddr), Error> {
        let ExposeRequest { target, service } = req;
        let service = parse_service_name(service)?;
        let target_addr = parse_loopback("target", target)?;
        if target_addr.port() == 0 {
            return Err(Error::InvalidAddress {
                what: "target",
                input: target.chars().take(80).collect(),
                reason: "port 0 cannot be connected to; give the service's port".into(),
            });
        }
        if !self.exposures.contains_key(&service) && self.exposures.len() >= MAX_EXPOSURES {
            return Err(Error::Busy {
                what: "exposures",
                limit: MAX_EXPOSURES,
            });
        }
        Ok((service, target_addr))
    }

    /// `Services.Expose`: checks the request, keeps the exposure (replacing the target of an
    /// exposure of the same name) and answers once it is durable (written and flushed off the
    /// async threads).
    pub(crate) fn expose(
        &mut self,
        req: ExposeRequest,
    ) -> BoxFuture<'static, Result<Exposure, Error>> {
        match self.keep_exposure(req) {
            Ok((exposure, record)) => {
                info!(service = %exposure.service, target = %exposure.target, "exposed");
                let key = exposure.service.clone().into_bytes();
                let written =
                    self.persist(move |store| store.insert(EXPOSURES_TREE, &key, &record));
                async move {
                    written.await?;
                    Ok(exposure)
                }
                .boxed()
            }
            Err(e) => futures::future::ready(Err(e)).boxed(),
        }
    }

    /// Keeps the exposure in memory; answers it and its record for the store.
    fn keep_exposure(&mut self, req: ExposeRequest) -> Result<(Exposure, Vec<u8>), Error> {
        let (service, target_addr) = self.check_exposure(&req)?;
        let record = Exposure {
            service: service.clone(),
            target: target_addr.to_string(),
            connections: 0,
            open: 0,
            resets: 0,
            last_reset: String::new(),
        }
        .encode_to_vec();
        let exposed = self
            .exposures
            .entry(service.clone())
            .or_insert_with(|| Exposed {
                target: target_addr,
                tunnels: Tunnels::new(MAX_TUNNELS),
            });
        exposed.target = target_addr;
        Ok((exposed.info(service), record))
    }

    /// `Services.Withdraw`: forgets the exposure, durably; its open tunnels run on until they
    /// end. `NOT_FOUND` if it is not exposed.
    pub(crate) fn withdraw(&mut self, service: &str) -> BoxFuture<'static, Result<(), Error>> {
        let removed = parse_service_name(service).and_then(|service| {
            if !self.exposures.contains_key(&service) {
                return Err(Error::NotExposed(service));
            }
            self.exposures.remove(&service);
            Ok(service)
        });
        match removed {
            Ok(service) => {
                info!(%service, "withdrawn");
                let key = service.into_bytes();
                self.persist(move |store| store.remove(EXPOSURES_TREE, &key))
            }
            Err(e) => futures::future::ready(Err(e)).boxed(),
        }
    }

    /// Applies `write` to the store and makes it durable, off the async threads, after every
    /// write asked for before it. The future must be polled to the end (the next write waits
    /// for it).
    fn persist(
        &mut self,
        write: impl FnOnce(&dyn Store) -> Result<(), StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<(), Error>> {
        let (store, previous) = (self.store.clone(), self.last_write.clone());
        let (done, outcome) = tokio::sync::oneshot::channel();
        let this = async move {
            previous.await;
            let written = tokio::task::spawn_blocking(move || {
                write(store.as_ref())?;
                store.flush()
            })
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(format!("the store task failed: {e}"))));
            let _ = done.send(written);
        }
        .boxed()
        .shared();
        self.last_write = this.clone();
        async move {
            this.await;
            outcome
                .await
                .unwrap_or_else(|_| Err(StoreError::Io("the store write was lost".into())))?;
            Ok(())
        }
        .boxed()
    }

    /// `Services.ListExposures`, by service name.
    pub(crate) fn exposures(&self) -> ListExposuresReply {
        ListExposuresReply {
            exposures: self
                .exposures
                .iter()
                .map(|(service, exposed)| exposed.info(service.clone()))
                .collect(),
        }
    }

    /// Whether `service` (canonical) is exposed.
    pub(crate) fn is_exposed(&self, service: &str) -> bool {
        self.exposures.contains_key(service)
    }

    /// The names of the exposed services, in order.
    pub(crate) fn exposed_services(&self) -> Vec<String> {
        self.exposures.keys().cloned().collect()
    }

    /// Serves one channel to an exposed service: a task connects to the target and splices
    /// the channel's frames onto the connection (a bare name means version 1). `NOT_FOUND` if
    /// it is not exposed, `RESOURCE_EXHAUSTED` when [`MAX_TUNNELS`] tunnels into it are open.
    pub(crate) fn serve(&self, service: &str, io: Box<dyn Duplex>) -> Result<(), Error> {
        let service = parse_service_name(service)?;
        let Some(exposed) = self.exposures.get(&service) else {
            return Err(Error::NotExposed(service));
        };
        let exposed_target = exposed.target;
        let permit = exposed.tunnels.admit().ok_or(Error::Busy {
            what: "tunnels into one exposed service",
            limit: MAX_TUNNELS,
        })?;
        let tunnels = exposed.tunnels.clone();
        let resets = self.resets.clone();
        tokio::spawn(async move {
            tunnel::to_target(service, exposed_target, io, permit, &tunnels, &resets).await;
        });
        Ok(())
    }

    /// `Services.OpenForward`: checks the request, binds the listener (its errors are the
    /// answer's) and starts its accept loop, which tunnels each connection through a channel
    /// from `opener`.
    pub(crate) fn open_forward(
        &mut self,
        req: OpenForwardRequest,
        opener: Opener,
    ) -> Result<Forward, Error> {
        let OpenForwardRequest {
            service,
            peer,
            listen,
            // Checked by the caller and carried by `opener`.
            peers: _,
            publisher_keys: _,
            group: _,
        } = req;
        let service = parse_service_name(&service)?;
        let peer = peer.trim().to_owned();
        if !peer.is_empty() {
            PeerRef::parse(&peer).map_err(Error::InvalidPeer)?;
        }
        let listen = parse_loopback("listen", &listen)?;
        if self.forwards.len() >= MAX_FORWARDS {
            return Err(Error::Busy {
                what: "forwards",
                limit: MAX_FORWARDS,
            });
        }
        let listener = bind(listen).map_err(|e| Error::Listen {
            addr: listen.to_string(),
            reason: e.to_string(),
        })?;
        let listen = listener.local_addr().map_err(|e| Error::Listen {
            addr: listen.to_string(),
            reason: e.to_string(),
        })?;
        let forward_id = self.store.next_id()?;
        let tunnels = Tunnels::new(MAX_TUNNELS);
        let accept = AbortOnDropHandle::new(tokio::spawn(tunnel::accept_loop(Listener {
            listener,
            forward_id,
            service: service.clone(),
            peer: peer.clone(),
            opener,
            tunnels: tunnels.clone(),
            resets: self.resets.clone(),
        })));
        let listening = Listening {
            service,
            peer,
            listen,
            tunnels,
            _accept: accept,
        };
        let forward = listening.info(forward_id);
        info!(forward_id, service = %forward.service, listen = %forward.listen, "forward opened");
        self.forwards.insert(forward_id, listening);
        Ok(forward)
    }

    /// `Services.CloseForward`: stops the listener; its open tunnels run on until they end.
    /// `NOT_FOUND` for an unknown id.
    pub(crate) fn close_forward(&mut self, forward_id: u64) -> Result<(), Error> {
        let listening = self
            .forwards
            .remove(&forward_id)
            .ok_or(Error::ForwardNotFound(forward_id))?;
        info!(forward_id, service = %listening.service, "forward closed");
        Ok(())
    }

    /// `Services.ListForwards`, by id.
    pub(crate) fn forwards(&self) -> ListForwardsReply {
        ListForwardsReply {
            forwards: self
                .forwards
                .iter()
                .map(|(id, listening)| listening.info(*id))
                .collect(),
        }
    }
}

impl Exposed {
    fn info(&self, service: String) -> Exposure {
        let (resets, last_reset) = self.tunnels.resets.get();
        Exposure {
            service,
            target: self.target.to_string(),
            connections: self.tunnels.total(),
            open: self.tunnels.open(),
            resets,
            last_reset,
        }
    }
}

impl Listening {
    fn info(&self, forward_id: u64) -> Forward {
        let (resets, last_reset) = self.tunnels.resets.get();
        Forward {
            forward_id,
            service: self.service.clone(),
            peer: self.peer.clone(),
            listen: self.listen.to_string(),
            connections: self.tunnels.total(),
            open: self.tunnels.open(),
            resets,
            last_reset,
            warning: String::new(),
        }
    }
}

/// Binds a listener on `addr` (address reuse on, as a restarted forward wants its port back).
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// A stored exposure: its service name and target, checked again.
fn decode(key: &[u8], value: &[u8]) -> Result<(String, SocketAddr), String> {
    let Exposure {
        service,
        target,
        connections: _,
        open: _,
        resets: _,
        last_reset: _,
    } = Exposure::decode(value).map_err(|e| e.to_string())?;
    let service = parse_service_name(&service).map_err(|e| e.to_string())?;
    if service.as_bytes() != key {
        return Err(format!("it is kept under another name ({service})"));
    }
    let target = parse_loopback("target", &target).map_err(|e| e.to_string())?;
    Ok((service, target))
}
