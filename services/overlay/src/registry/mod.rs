//! `p2pos.service.v1` on the overlay actor: services that apps provide, found by name on this
//! node and through the DHT, used by unary calls and channels; and port forwarding, whose
//! exposures are services too. One exhaustive `match` dispatches the protocol.
//!
//! A registration belongs to an app with a live session: it lasts until `Unregister` or the
//! app's last session ends. While a service is registered or exposed here, the swarm task
//! provides its DHT key (the actor publishes the set on a `watch`). Registrations and
//! exposures never share a name.
//!
//! - `names`: service names, descriptions and payloads as the registry takes them.
//! - `find`: `FindService`, and the providers a call or channel tries, in order.
//! - `calls`: the calling side of `Call`: local delivery or `/p2pos/call/2`.
//! - `slots`: the calls in flight to each peer, bounded.
//! - `answers`: the providing side: calls announced to a session until answered with `Reply`
//!   or expired, and the server of `/p2pos/call/2`.
//! - `channels`: channels to services, opened and answered (app providers and exposures).

mod answers;
mod calls;
mod channels;
mod find;
mod names;
mod slots;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use actix::prelude::*;
use p2pos_kernel::Call;
use p2pos_proto::service::v1::{
    CloseForwardRequest, ExposeRequest, Exposure, ListServicesReply, ServiceInfo, WithdrawRequest,
};
use p2pos_protocols::{
    Services, answer,
    ids::{AppId, PeerRef, ServiceName},
    network::Announcer,
    services::Request,
};
use tracing::info;

pub(crate) use answers::{refuse_call, serve_call};
pub(crate) use calls::CALL_PROTOCOL;
pub(crate) use channels::OpenService;

use crate::{
    Error,
    apps::AppState,
    forward::{self, parse_service_name},
    service::OverlayService,
    task::{Fut, ready, spawn_answer},
};
use answers::PendingCall;
use calls::OutgoingCall;
use names::validate_description;
use slots::PeerSlots;

/// Most services registered by apps on one node.
pub(crate) const MAX_REGISTRATIONS: usize = 256;
/// Most services one app (with its helpers, each an app id of its own) registers on one node.
pub(crate) const MAX_REGISTRATIONS_PER_APP: usize = 32;
/// The app id port forwarding uses: the provider of exposures, the opener of forwards. A
/// node-wide helper's id (`p2pos_protocols::names`): no app gets a token for it, so no app can
/// pose as port forwarding.
pub(crate) const FORWARD_APP: &str = "_node:forward";

/// The DHT key under which the providers of `service` are announced:
/// `/p2pos/service/<service>`.
pub(crate) fn service_key(service: &str) -> String {
    format!("/p2pos/service/{service}")
}

/// The registry's state on the overlay actor.
pub(crate) struct State {
    /// Services registered by apps, by name.
    registrations: BTreeMap<String, Registration>,
    /// Calls announced to providers on this node and not answered yet.
    calls: HashMap<u64, PendingCall>,
    /// Announces the services provided here in the DHT.
    announcer: Announcer,
    /// Calls in flight from this node to each peer.
    slots: Arc<PeerSlots>,
}

/// Who provides a registered service.
struct Registration {
    app_id: String,
    description: String,
}

impl State {
    /// An empty registry that announces its services with `announcer`.
    pub(crate) fn new(announcer: Announcer) -> Self {
        Self {
            registrations: BTreeMap::new(),
            calls: HashMap::new(),
            announcer,
            slots: Arc::new(PeerSlots::default()),
        }
    }
}

impl Handler<Call<Services>> for OverlayService {
    type Result = ();

    /// Bookkeeping here; every answer that takes time comes from a task of its own.
    fn handle(&mut self, Call(request): Call<Services>, ctx: &mut Self::Context) {
        match request {
            Request::Register {
                app_id,
                service,
                description,
                reply,
            } => answer(reply, self.register(app_id, service, description)),
            Request::Unregister {
                app_id,
                service,
                reply,
            } => answer(reply, self.unregister(app_id, service)),
            Request::List { reply } => answer::<_, Error>(reply, Ok(self.list_services())),
            Request::Find {
                service,
                limit,
                reply,
            } => spawn_answer(reply, self.find(service, limit)),
            Request::Call {
                app_id,
                service,
                payload,
                peer,
                timeout_ms,
                deadline,
                reply,
            } => {
                let call = OutgoingCall {
                    app_id,
                    service,
                    payload,
                    peer,
                    timeout_ms,
                    deadline,
                };
                spawn_answer(reply, self.call(call, ctx));
            }
            Request::Reply { request, reply } => answer(reply, self.reply(request, ctx)),
            Request::OpenChannel {
                app_id,
                service,
                peer,
                reply,
            } => spawn_answer(
                reply,
                self.open_service(app_id.into_string(), service, peer, ctx),
            ),
            Request::Expose { request, reply } => spawn_answer(reply, self.expose(request)),
            Request::Withdraw {
                request: WithdrawRequest { service },
                reply,
            } => {
                // Forgotten at once; the future makes it durable.
                let withdrawing = self.forwarding.withdraw(&service);
                self.publish_services();
                spawn_answer(reply, withdrawing);
            }
            Request::ListExposures { reply } => {
                answer::<_, Error>(reply, Ok(self.forwarding.exposures()));
            }
            Request::OpenForward { request, reply } => {
                let opener = forward_opener(ctx.address());
                answer(reply, self.forwarding.open_forward(request, opener));
            }
            Request::CloseForward {
                request: CloseForwardRequest { forward_id },
                reply,
            } => answer(reply, self.forwarding.close_forward(forward_id)),
            Request::ListForwards { reply } => {
                answer::<_, Error>(reply, Ok(self.forwarding.forwards()));
            }
        }
    }
}

/// How port forwarding opens the channel of each connection: a service channel from app
/// [`FORWARD_APP`], through this actor.
fn forward_opener(addr: Addr<OverlayService>) -> forward::Opener {
    Arc::new(move |service, peer| {
        let addr = addr.clone();
        Box::pin(async move {
            let service = ServiceName::parse_or_first(&service).map_err(|reason| {
                Error::InvalidServiceName {
                    input: service.chars().take(80).collect(),
                    reason,
                }
            })?;
            let peer = match peer.trim() {
                "" => None,
                peer => Some(PeerRef::parse(peer)?),
            };
            let open = OpenService {
                app_id: FORWARD_APP.to_owned(),
                service,
                peer,
            };
            addr.send(open).await.map_err(|_| Error::NetworkStopped)?
        })
    })
}

impl OverlayService {
    fn register(
        &mut self,
        app_id: AppId,
        service: ServiceName,
        description: String,
    ) -> Result<ServiceInfo, Error> {
        let (app_id, service) = (app_id.into_string(), service.into_string());
        validate_description(&description)?;
        if self.apps.get(&app_id).and_then(AppState::newest).is_none() {
            return Err(Error::NoSession { app_id });
        }
        if self.forwarding.exposed(&service) {
            return Err(Error::ServiceTaken {
                service,
                by: "port forwarding (see ListExposures)".into(),
            });
        }
        let registrations = &mut self.services.registrations;
        let full = registrations.len() >= MAX_REGISTRATIONS;
        let of_app = registrations
            .values()
            .filter(|r| r.app_id == app_id)
            .count();
        match registrations.get_mut(&service) {
            Some(r) if r.app_id != app_id => {
                let by = format!("app '{}'", r.app_id);
                return Err(Error::ServiceTaken { service, by });
            }
            Some(r) => r.description.clone_from(&description),
            None if full => {
                return Err(Error::Busy {
                    what: "services registered on this node",
                    limit: MAX_REGISTRATIONS,
                });
            }
            None if of_app >= MAX_REGISTRATIONS_PER_APP => {
                return Err(Error::Busy {
                    what: "services registered by one app on this node",
                    limit: MAX_REGISTRATIONS_PER_APP,
                });
            }
            None => {
                registrations.insert(
                    service.clone(),
                    Registration {
                        app_id: app_id.clone(),
                        description: description.clone(),
                    },
                );
            }
        }
        info!(%service, %app_id, "service registered");
        self.publish_services();
        Ok(self.local_info(service, app_id, description))
    }

    fn unregister(&mut self, app_id: AppId, service: ServiceName) -> Result<(), Error> {
        let (app_id, service) = (app_id.into_string(), service.into_string());
        match self.services.registrations.get(&service) {
            Some(r) if r.app_id == app_id => {
                self.services.registrations.remove(&service);
                info!(%service, %app_id, "service unregistered");
                self.publish_services();
                Ok(())
            }
            _ => Err(Error::NotRegistered { app_id, service }),
        }
    }

    /// Services offered here: registrations, and exposures (provided by [`FORWARD_APP`]), by
    /// name.
    fn list_services(&self) -> ListServicesReply {
        let mut services: Vec<ServiceInfo> = self
            .services
            .registrations
            .iter()
            .map(|(service, r)| {
                self.local_info(service.clone(), r.app_id.clone(), r.description.clone())
            })
            .chain(
                self.forwarding
                    .exposed_services()
                    .into_iter()
                    .map(|service| self.exposure_info(service)),
            )
            .collect();
        services.sort_by(|a, b| a.service.cmp(&b.service));
        ListServicesReply { services }
    }

    /// A service provided on this node, as `ListServices` and `FindService` show it.
    fn local_info(&self, service: String, app_id: String, description: String) -> ServiceInfo {
        ServiceInfo {
            service,
            app_id,
            description,
            peer_id: self.net.local_peer_id().to_string(),
            local: true,
            rtt_us: 0,
        }
    }

    fn exposure_info(&self, service: String) -> ServiceInfo {
        let description = "a TCP service exposed by port forwarding".to_owned();
        self.local_info(service, FORWARD_APP.to_owned(), description)
    }

    /// `Services.Expose`, after checking that no app provides the name.
    fn expose(&mut self, request: ExposeRequest) -> Fut<Exposure> {
        if let Ok(service) = parse_service_name(&request.service)
            && let Some(r) = self.services.registrations.get(&service)
        {
            let by = format!("app '{}'", r.app_id);
            return ready(Err(Error::ServiceTaken { service, by }));
        }
        // Kept at once; the future makes it durable.
        let exposing = self.forwarding.expose(request);
        self.publish_services();
        exposing
    }

    /// Tells the network which services to announce: every registration and exposure.
    pub(crate) fn publish_services(&self) {
        let wanted: BTreeSet<String> = self
            .services
            .registrations
            .keys()
            .cloned()
            .chain(self.forwarding.exposed_services())
            .map(|service| service_key(&service))
            .collect();
        self.services.announcer.set(wanted);
    }

    /// The last session of `app_id` ended: its services end with it.
    pub(crate) fn app_gone(&mut self, app_id: &str) {
        let before = self.services.registrations.len();
        self.services
            .registrations
            .retain(|_, r| r.app_id != app_id);
        if self.services.registrations.len() != before {
            info!(app_id, "the app's last session ended: its services end");
            self.publish_services();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_keys_are_namespaced() {
        assert_eq!(service_key("translate/1"), "/p2pos/service/translate/1");
        assert!(p2pos_protocols::network::check_key(&service_key("translate/1")).is_ok());
    }

    #[test]
    fn port_forwarding_acts_as_a_node_helper_id() {
        assert_eq!(
            FORWARD_APP,
            p2pos_protocols::names::helper_app_id("", "forward")
        );
        assert!(crate::error::validate_app_id(FORWARD_APP).is_ok());
        assert!(p2pos_protocols::names::check_plain_app_id(FORWARD_APP).is_err());
    }
}
