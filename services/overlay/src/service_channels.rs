//! Channels to services, on the sessions part (the registry says who provides what here). The
//! opener's side (`Services.Channel`, and port forwarding's opener):
//! the same providers, in the same order, as a call — one on this node through an in-memory
//! pipe, remote ones over `/p2pos/channel/1` with `ChannelHello.service` set — moving on when
//! one does not provide the service (any more), is busy, cannot be reached, or its app's
//! session ends before it accepts. The responder's side: a hello naming a service provided
//! here is announced to the provider app's session (and accepted with `Apps.Channel` as any
//! channel; port forwarding's exposures are provided so too, by its own session).

use actix::prelude::*;
use libp2p::PeerId;
use p2pos_kernel::Call;
use p2pos_proto::wire::v1::channel_welcome;
use p2pos_protocols::{Services, services::Request};
use p2pos_protocols::{
    apps::ChannelStream,
    certs::{MAX_PINNED_KEYS, PublisherKey},
    ids::{PeerRef, ServiceName},
    services::ProviderFilter,
};
use tokio::time::Instant;
use tracing::warn;

use crate::{
    Error,
    announced::{ServiceOrigin, Unannounced},
    channel,
    counted::count,
    error::validate_app_id,
    inbound::{Io, Refusal},
    registry::{
        find::Here,
        names::validate_service,
        tries::{Attempt, try_providers},
        trust::vouching,
    },
    state::OverlayService,
    task::{Fut, ready, spawn_answer},
};

impl OverlayService {
    /// Who provides `service` on this node, as the registry last published it.
    fn provider_here(&self, service: &str) -> Option<Here> {
        self.providers
            .borrow()
            .get(service)
            .map(|provided| Here::App(provided.app_id.clone()))
    }

    /// Whether the provider of `service` here is certified by one of `pinned` (always, when
    /// none is pinned); if not, why.
    /// Only certificates for the app registered now count.
    fn certified_here(&self, service: &str, pinned: &[PublisherKey]) -> Result<(), String> {
        if pinned.is_empty() {
            return Ok(());
        }
        let certs: Vec<_> = self
            .providers
            .borrow()
            .get(service)
            .map(|p| {
                p.certificates
                    .iter()
                    .filter(|c| c.check_app(&p.app_id).is_ok())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        vouching(&certs, service, &self.net.local_peer_id(), pinned).map(|_| ())
    }

    /// Opens a channel from `app_id` to a provider of `service` (on `peer`, if not empty).
    pub(crate) fn open_service(
        &mut self,
        app_id: String,
        service: ServiceName,
        (peer, filter): (Option<PeerRef>, ProviderFilter),
        ctx: &mut Context<Self>,
    ) -> Fut<ChannelStream> {
        let fail = |e| ready(Err(e));
        let service = service.into_string();
        let target = peer.map(|PeerRef { peer, addrs }| (peer, addrs));
        if let Some((peer, _)) = &target
            && !filter.allows(peer)
        {
            return fail(Error::PeerNotAllowed(*peer));
        }
        let Ok(channel_permit) = self.channels.clone().try_acquire_owned() else {
            return fail(Error::TooManyChannels {
                limit: usize::try_from(self.config.max_channels).unwrap_or(usize::MAX),
            });
        };
        let Ok(open_permit) = self.opens.clone().try_acquire_owned() else {
            return fail(Error::Busy {
                what: "channel opens in progress",
                limit: self.config.max_opens as usize,
            });
        };
        let local = self.net.local_peer_id();
        let store = self.ctx.store.clone();
        let mut failures: Vec<(String, Error)> = Vec::new();
        // A provider on this node first, now, while the actor is at hand (certified, when
        // publisher keys are pinned).
        let here = match &target {
            Some((peer, _)) if *peer != local => None,
            None if !filter.allows(&local) => None,
            // Not provided here: nothing to say of certificates.
            _ => self.provider_here(&service).and_then(|here| {
                match self.certified_here(&service, &filter.publisher_keys) {
                    Ok(()) => Some(here),
                    Err(reason) => {
                        let e = Error::not_certified(local, &service, reason);
                        failures.push(("this node".to_owned(), e));
                        None
                    }
                }
            }),
        };
        let mut local_opening = None;
        match here {
            Some(Here::App(provider)) => {
                let origin = ServiceOrigin {
                    service: service.clone(),
                    from_app: app_id.clone(),
                };
                match self.announce_local(provider.clone(), (Some(origin), None), ctx) {
                    Ok(opening) => local_opening = Some((provider, opening)),
                    Err(e) => failures.push((format!("app '{provider}' on this node"), e)),
                }
            }
            None => {}
        }
        let (net, checker) = (self.net.clone(), self.checker.clone());
        let pinned = filter.publisher_keys.clone();
        Box::pin(async move {
            let _open = open_permit;
            if let Some((provider, opening)) = local_opening {
                match opening.opened(store.clone()).await {
                    Ok(stream) => return Ok(count(stream, channel_permit)),
                    // Its session ended before it accepted: the service may be elsewhere.
                    Err(Error::NotRunningHere { .. }) => {
                        let gone = Error::NotProvidedThere {
                            service: service.clone(),
                            peer: local,
                        };
                        failures.push((format!("app '{provider}' on this node"), gone));
                    }
                    Err(e) => return Err(e),
                }
            }
            let until = Instant::now() + channel::REACH_TIME;
            let opening = |peer, addrs, reach_by| {
                let (net, store, checker) = (net.clone(), store.clone(), checker.clone());
                let (app_id, service) = (app_id.clone(), Some(service.clone()));
                let pinned = pinned.clone();
                // Other providers may follow: a silent one is skipped quickly.
                let reach = (reach_by, reach_by < until);
                async move {
                    let to = (service.clone(), None, &pinned[..]);
                    let opening = channel::open(net, store, app_id, to, peer, addrs, reach);
                    match opening.await {
                        Ok(stream) => Attempt::Done(Ok(stream)),
                        // Its node refused: what it presented is out of date.
                        Err(e @ Error::NotCertified { .. }) => {
                            if let Some(service) = &service {
                                checker.forget(peer, service);
                            }
                            Attempt::Next(e)
                        }
                        Err(e) if worth_another(&e) => Attempt::Next(e),
                        Err(e) => Attempt::Done(Err(e)),
                    }
                }
            };
            let stream = match target {
                Some((peer, _)) if peer == local => Err(failures.pop().map_or(
                    Error::NotProvidedThere {
                        service,
                        peer: local,
                    },
                    |(_, e)| e,
                )),
                // The one peer named: its own answer (certified first, if keys are pinned).
                Some((peer, addrs)) => {
                    if !filter.publisher_keys.is_empty() {
                        let pinned = &filter.publisher_keys;
                        checker
                            .certified((peer, addrs.clone()), &service, pinned, until)
                            .await?;
                    }
                    match opening(peer, addrs, until).await {
                        Attempt::Done(result) => result,
                        Attempt::Next(e) => Err(e),
                    }
                }
                None => {
                    let timed_out = || Error::Timeout {
                        what: format!("reaching a provider of '{service}'"),
                        after: channel::REACH_TIME,
                    };
                    try_providers(
                        &checker,
                        (&service, &filter),
                        until,
                        failures,
                        timed_out,
                        opening,
                    )
                    .await
                }
            }?;
            Ok(count(stream, channel_permit))
        })
    }

    /// A remote peer's hello names `service`, opened by its app `from_app`: announced to the
    /// provider, or the refusal to write back.
    pub(crate) fn inbound_service_channel(
        &mut self,
        peer: PeerId,
        (from_app, service, publisher_keys): (String, String, Vec<bytes::Bytes>),
        io: Io,
        ctx: &mut Context<Self>,
    ) -> Option<Refusal> {
        let local = self.net.local_peer_id();
        let refuse = |io, result, message: String| {
            Some(Refusal {
                io,
                welcome: channel::welcome(result, message),
            })
        };
        let not_provided = channel_welcome::Result::NotProvided;
        if let Err(e) = validate_service(&service).and_then(|()| validate_app_id(&from_app)) {
            return refuse(io, not_provided, e.to_string());
        }
        let not_certified = channel_welcome::Result::NotCertified;
        let pinned = match pinned_keys(&publisher_keys) {
            Ok(pinned) => pinned,
            Err(why) => return refuse(io, not_certified, why),
        };
        let provider = self.provider_here(&service);
        // Keys pinned: only an app whose registration now holds a valid certificate of one of
        // them is told of the channel.
        if provider.is_some()
            && let Err(why) = self.certified_here(&service, &pinned)
        {
            let e = Error::not_certified(local, &service, why);
            return refuse(io, not_certified, e.to_string());
        }
        match provider {
            Some(Here::App(provider)) => {
                let origin = ServiceOrigin {
                    service: service.clone(),
                    from_app,
                };
                match self.announce(peer, provider.clone(), (Some(origin), None), io, ctx) {
                    Ok(()) => None,
                    Err((io, Unannounced::NotListening)) => {
                        let gone = Error::NotProvidedThere {
                            service,
                            peer: local,
                        };
                        refuse(io, not_provided, gone.to_string())
                    }
                    Err((io, why)) => Some(Refusal {
                        io,
                        welcome: self.unannounced_welcome(&provider, why),
                    }),
                }
            }
            None => {
                let why = Error::NotProvidedThere {
                    service,
                    peer: local,
                };
                refuse(io, not_provided, why.to_string())
            }
        }
    }
}

impl Handler<Call<Services>> for OverlayService {
    type Result = ();

    /// `Services.OpenChannel`, the one request of the services protocol routed here.
    fn handle(&mut self, Call(request): Call<Services>, ctx: &mut Self::Context) {
        match request {
            Request::OpenChannel {
                app_id,
                service,
                peer,
                filter,
                reply,
            } => spawn_answer(
                reply,
                self.open_service(app_id.into_string(), service, (peer, filter), ctx),
            ),
            // The registry's: dropped, and its caller hears so.
            other => warn!("the sessions part was handed {other:?}"),
        }
    }
}

/// The publisher keys a channel hello pinned, or why they are refused.
fn pinned_keys(keys: &[bytes::Bytes]) -> Result<Vec<PublisherKey>, String> {
    if keys.len() > MAX_PINNED_KEYS {
        return Err(format!(
            "a hello pins at most {MAX_PINNED_KEYS} publisher keys"
        ));
    }
    keys.iter()
        .map(|key| PublisherKey::from_bytes(key))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("a pinned publisher key: {e}"))
}

/// Whether another provider may be tried after `e`: yes unless this node itself is the
/// trouble (its store, its network task, its own limits).
fn worth_another(e: &Error) -> bool {
    !matches!(
        e,
        Error::Store(_) | Error::NetworkStopped | Error::TooManyChannels { .. }
    )
}
