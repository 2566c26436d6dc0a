//! Services provided on this node: registering and unregistering them (an app with a live
//! session, port forwarding among them), listing them, telling the network which to
//! announce, and ending an app's services with its last session.

use std::collections::BTreeSet;

use p2pos_kernel::events::now_ms;
use p2pos_proto::service::v1::{ListServicesReply, ServiceInfo};
use p2pos_protocols::{
    certs::Certificate,
    forwarding::FORWARD_APP,
    ids::{AppId, ServiceName},
    names::root_app,
    network::Announced,
};
use tracing::info;

use super::{
    names::validate_description,
    state::{
        MAX_REGISTRATIONS, MAX_REGISTRATIONS_OF_FORWARDING, MAX_REGISTRATIONS_PER_APP, Provided,
        Registration, service_key,
    },
};
use crate::{Error, registry::actor::ServiceRegistry};

impl ServiceRegistry {
    pub(super) fn register(
        &mut self,
        app_id: AppId,
        service: ServiceName,
        (description, certificates): (String, Vec<Certificate>),
    ) -> Result<ServiceInfo, Error> {
        let (app_id, service) = (app_id.into_string(), service.into_string());
        validate_description(&description)?;
        let (local, now) = (self.net.local_peer_id(), now_ms());
        for cert in &certificates {
            cert.check(&service, &local, now)
                .map_err(|e| Error::InvalidCertificate(format!("{e} (this node is {local})")))?;
            // Another app on this node cannot present it (certificates are public).
            cert.check_app(&app_id)
                .map_err(|e| Error::InvalidCertificate(format!("{e} (registering: '{app_id}')")))?;
        }
        // The session it is made under: an `AppGone` for an earlier one leaves it alone.
        let Some((session, _)) = self.sessions.newest(&app_id) else {
            return Err(Error::NoSession { app_id });
        };
        let registrations = &mut self.services.registrations;
        // Port forwarding has a limit of its own (one registration per exposure): apps filling
        // the node's registry never keep the admin from exposing a port.
        let (full, per_app) = if app_id == FORWARD_APP {
            (false, MAX_REGISTRATIONS_OF_FORWARDING)
        } else {
            let apps = registrations
                .values()
                .filter(|r| r.app_id != FORWARD_APP)
                .count();
            (apps >= MAX_REGISTRATIONS, MAX_REGISTRATIONS_PER_APP)
        };
        // An app and its helpers (`app:helper`) share one budget.
        let of_app = registrations
            .values()
            .filter(|r| root_app(&r.app_id) == root_app(&app_id))
            .count();
        match registrations.get_mut(&service) {
            // Another app's name (its helpers' included), or an exposure of port forwarding
            // (whose node-wide id shares `_node` with the admin's helpers): never taken over.
            Some(r)
                if root_app(&r.app_id) != root_app(&app_id)
                    || (r.app_id != app_id
                        && (r.app_id == FORWARD_APP || app_id == FORWARD_APP)) =>
            {
                let by = format!("app '{}'", r.app_id);
                return Err(Error::ServiceTaken { service, by });
            }
            // The same app, or one of its helpers (or the app after its helper): the newest
            // registration of the family provides it, with its session.
            Some(r) => {
                if r.app_id != app_id {
                    info!(%service, from = %r.app_id, to = %app_id, "service moved within its app");
                    r.app_id.clone_from(&app_id);
                    r.session = session;
                } else {
                    r.session = r.session.max(session);
                }
                r.description.clone_from(&description);
                r.certificates = certificates;
            }
            None if full => {
                return Err(Error::Busy {
                    what: "services registered on this node",
                    limit: MAX_REGISTRATIONS,
                });
            }
            None if of_app >= per_app => {
                return Err(Error::Busy {
                    what: "services registered by one app on this node",
                    limit: per_app,
                });
            }
            None => {
                registrations.insert(
                    service.clone(),
                    Registration {
                        app_id: app_id.clone(),
                        description: description.clone(),
                        session,
                        certificates,
                    },
                );
            }
        }
        info!(%service, %app_id, "service registered");
        self.publish_services();
        Ok(self.local_info(service))
    }

    pub(super) fn unregister(&mut self, app_id: AppId, service: ServiceName) -> Result<(), Error> {
        let (app_id, service) = (app_id.into_string(), service.into_string());
        match self.services.registrations.get(&service) {
            Some(r) if r.app_id == app_id => {
                self.services.registrations.remove(&service);
                info!(%service, %app_id, "service unregistered");
                self.publish_services();
                self.services.callers.withdrawn(&service, &self.net);
                Ok(())
            }
            _ => Err(Error::NotRegistered { app_id, service }),
        }
    }

    /// Services offered here (port forwarding's exposures among them, as its registrations),
    /// by name.
    pub(super) fn list_services(&self) -> ListServicesReply {
        let mut services: Vec<ServiceInfo> = self
            .services
            .registrations
            .keys()
            .map(|service| self.local_info(service.clone()))
            .collect();
        services.sort_by(|a, b| a.service.cmp(&b.service));
        ListServicesReply { services }
    }

    /// A service provided on this node, as `ListServices` and `FindService` show it, with how
    /// its announcement in the DHT went.
    pub(crate) fn local_info(&self, service: String) -> ServiceInfo {
        let r = self.services.registrations.get(&service);
        let (announced, announce_error) =
            match self.services.announcer.status(&service_key(&service)) {
                Announced::Done => (true, String::new()),
                Announced::Pending => (false, String::new()),
                Announced::Failed(why) => (false, why),
            };
        ServiceInfo {
            app_id: r.map(|r| r.app_id.clone()).unwrap_or_default(),
            description: r.map(|r| r.description.clone()).unwrap_or_default(),
            certificates: r
                .map(|r| r.certificates.iter().map(Certificate::to_text).collect())
                .unwrap_or_default(),
            service,
            peer_id: self.net.local_peer_id().to_string(),
            local: true,
            rtt_us: 0,
            reachability: 0,
            last_reached_ms: 0,
            announced,
            announce_error,
            publisher_key: String::new(),
        }
    }

    /// Tells the network which services to announce (every registration), and the sessions
    /// part who provides what here.
    pub(crate) fn publish_services(&self) {
        let providers = self
            .services
            .registrations
            .iter()
            .map(|(service, r)| {
                let provided = Provided {
                    app_id: r.app_id.clone(),
                    certificates: r.certificates.clone(),
                };
                (service.clone(), provided)
            })
            .collect();
        self.providers.send_replace(std::sync::Arc::new(providers));
        let wanted: BTreeSet<String> = self
            .services
            .registrations
            .keys()
            .map(|service| service_key(service))
            .collect();
        self.services.announcer.set(wanted);
    }

    /// The last session of `app_id`, `last`, ended: its services end with it, those registered
    /// under `last` or before (not those made under a session opened since).
    pub(crate) fn app_gone(&mut self, app_id: &str, last: u64) {
        let mut ended = Vec::new();
        self.services.registrations.retain(|service, r| {
            let keep = r.app_id != app_id || r.session > last;
            if !keep {
                ended.push(service.clone());
            }
            keep
        });
        if !ended.is_empty() {
            info!(app_id, "the app's last session ended: its services end");
            self.publish_services();
            for service in ended {
                self.services.callers.withdrawn(&service, &self.net);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use actix::prelude::*;
    use libp2p::PeerId;
    use p2pos_kernel::store::SledStore;
    use p2pos_protocols::{
        ids::{AppId, ServiceName},
        network::Network,
    };
    use tokio::sync::{broadcast, mpsc};

    use crate::{
        registry::{
            actor::{PartFailed, ServiceRegistry},
            state::State,
        },
        sessions::{SessionDirectory, SessionSlot},
    };

    /// Hears of a panic of the registry (none here).
    struct Overlay;

    impl Actor for Overlay {
        type Context = Context<Self>;
    }

    impl Handler<PartFailed> for Overlay {
        type Result = ();
        fn handle(&mut self, _: PartFailed, _: &mut Self::Context) {}
    }

    #[test]
    fn an_apps_end_leaves_what_it_registered_under_a_newer_session() {
        System::new().block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = SledStore::open(dir.path()).expect("store");
            let (commands, _swarm) = mpsc::channel(16);
            let control = libp2p_stream::Behaviour::new().new_control();
            let net = Network::new(commands, control, PeerId::random(), broadcast::channel(1).0);
            let announcer = net.announcer().expect("announcer");
            let sessions = SessionDirectory::default();
            let (mut registry, _providers, _stopped) = ServiceRegistry::new(
                State::new(announcer),
                net,
                store,
                sessions.clone(),
                Overlay.start().recipient(),
            );
            let register = |registry: &mut ServiceRegistry, service: &str| {
                let app = AppId::parse("app").expect("app id");
                let service = ServiceName::parse(service).expect("service name");
                registry.register(app, service, (String::new(), Vec::new()))
            };
            let (tx, _incoming) = mpsc::channel(1);
            let first = SessionSlot {
                id: 1,
                tx: tx.clone(),
                group: None,
            };
            sessions.open("app", first);
            register(&mut registry, "old/1").expect("under session 1");

            // Session 1 ends, the app opens session 2 and registers under it; then the
            // registry hears that session 1 was the app's last.
            assert!(sessions.end("app", 1), "its last");
            sessions.open(
                "app",
                SessionSlot {
                    id: 2,
                    tx,
                    group: None,
                },
            );
            register(&mut registry, "new/1").expect("under session 2");
            registry.app_gone("app", 1);
            let left: Vec<String> = registry
                .list_services()
                .services
                .into_iter()
                .map(|s| s.service)
                .collect();
            assert_eq!(left, ["new/1"]);
        });
    }
}
