//! Finding providers: `FindService` (this node's provider first, then remote ones from the
//! DHT, connected ones by round-trip time, then the others), and the same order for the
//! providers a call or a channel tries.

use std::time::Duration;

use libp2p::PeerId;
use p2pos_kernel::protocols::services::Response;
use p2pos_proto::service::v1::{FindServiceReply, FindServiceRequest, ServiceInfo};
use tracing::debug;

use super::{Reply, names::validate_service, ready};
use crate::{Error, network::NetHandle, service::OverlayService};

/// How long `FindService` waits for the DHT.
const FIND_WAIT: Duration = Duration::from_secs(10);
/// How long a call or a channel waits for the DHT to name providers, at most.
pub(crate) const CANDIDATES_WAIT: Duration = Duration::from_secs(5);
/// Most remote providers one call or channel tries.
pub(crate) const MAX_TRIES: usize = 8;
/// Providers `FindService` answers when the request says 0.
const DEFAULT_LIMIT: usize = 20;
/// Most providers `FindService` answers.
const MAX_LIMIT: usize = 100;

/// Who provides a service on this node.
pub(crate) enum Here {
    /// An app with a live session.
    App(String),
    /// Port forwarding.
    Exposure,
}

impl OverlayService {
    /// Who provides `service` on this node, if anyone.
    pub(crate) fn provider_here(&self, service: &str) -> Option<Here> {
        if let Some(r) = self.services.registrations.get(service) {
            return Some(Here::App(r.app_id.clone()));
        }
        self.forwarding.exposed(service).then_some(Here::Exposure)
    }

    /// `Services.FindService`.
    pub(super) fn find(&mut self, request: FindServiceRequest) -> Reply {
        let FindServiceRequest { service, limit } = request;
        if let Err(e) = validate_service(&service) {
            return ready(Err(e));
        }
        let limit = match usize::try_from(limit).unwrap_or(MAX_LIMIT) {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let here = match self.provider_here(&service) {
            Some(Here::App(app_id)) => {
                let description = self
                    .services
                    .registrations
                    .get(&service)
                    .map_or_else(String::new, |r| r.description.clone());
                Some(self.local_info(service.clone(), app_id, description))
            }
            Some(Here::Exposure) => Some(self.exposure_info(service.clone())),
            None => None,
        };
        let net = self.net.clone();
        Box::pin(async move {
            let mut providers: Vec<ServiceInfo> = here.into_iter().collect();
            let mut scope = "(not on this node, and no provider was found in the DHT)";
            let want = limit - providers.len();
            if want > 0 {
                match net.find_providers(service.clone(), want, FIND_WAIT).await {
                    Ok(remote) => providers.extend(remote.into_iter().map(|p| ServiceInfo {
                        service: service.clone(),
                        // The DHT names the node only.
                        app_id: String::new(),
                        description: String::new(),
                        peer_id: p.peer.to_string(),
                        local: false,
                        rtt_us: p.rtt.map_or(0, |rtt| {
                            u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX).max(1)
                        }),
                    })),
                    Err(Error::DhtDisabled) => {
                        scope = "on this node (the DHT is off here, so no other node was asked)";
                    }
                    Err(e) if providers.is_empty() => return Err(e),
                    Err(e) => debug!(%service, "no remote providers: {e}"),
                }
            }
            if providers.is_empty() {
                return Err(Error::ServiceNotFound { service, scope });
            }
            Ok(Response::Providers(FindServiceReply { providers }))
        })
    }
}

/// The remote providers of `service` a call or a channel tries, best first: none when the DHT
/// is off.
pub(crate) async fn remote_providers(
    net: &NetHandle,
    service: &str,
    wait: Duration,
) -> Result<Vec<PeerId>, Error> {
    match net
        .find_providers(service.to_owned(), MAX_TRIES, wait)
        .await
    {
        Ok(found) => Ok(found.into_iter().map(|p| p.peer).collect()),
        Err(Error::DhtDisabled) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The error when no provider worked: `NOT_FOUND` when none was known, else `UNAVAILABLE`
/// naming what happened with each.
pub(crate) fn none_worked(service: String, failures: Vec<(String, Error)>) -> Error {
    if failures.is_empty() {
        return Error::ServiceNotFound {
            service,
            scope: "(not on this node, and no provider was found in the DHT)",
        };
    }
    let known = failures.len();
    let mut reasons = failures
        .iter()
        .map(|(who, e)| format!("{who}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    if reasons.len() > 1024 {
        let mut end = 1024;
        while !reasons.is_char_boundary(end) {
            end -= 1;
        }
        reasons.truncate(end);
        reasons.push_str("...");
    }
    Error::ProvidersUnreachable {
        service,
        known,
        reasons,
    }
}
