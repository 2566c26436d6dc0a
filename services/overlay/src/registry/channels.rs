//! Channels to services. The opener's side (`Services.Channel`, and port forwarding's opener):
//! the same providers, in the same order, as a call — one on this node through an in-memory
//! pipe, remote ones over `/p2pos/channel/1` with `ChannelHello.service` set — moving on when
//! one does not provide the service (any more), is busy, cannot be reached, or its app's
//! session ends before it accepts. The responder's side: a hello naming a service provided
//! here is announced to the provider app's session (and accepted with `Apps.Channel` as any
//! channel); one naming an exposed service is welcomed at once and handed to port forwarding.

use std::sync::Arc;

use actix::prelude::*;
use libp2p::PeerId;
use p2pos_kernel::Store;
use p2pos_proto::wire::v1::channel_welcome;
use p2pos_protocols::{
    apps::ChannelStream,
    ids::{PeerRef, ServiceName},
};
use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tracing::{debug, warn};

use super::{
    find::{Attempt, Here, try_providers},
    names::validate_service,
    state::FORWARD_APP,
};
use crate::{
    Error,
    announced::PIPE_BUFFER,
    announced::{ServiceOrigin, Unannounced},
    channel,
    counted::count,
    error::validate_app_id,
    inbound::{Io, Refusal},
    state::OverlayService,
    task::{Fut, ready},
};

/// Opens a channel from `app_id` to a provider of `service`: on `peer` (a peer id, ticket or
/// multiaddr; empty: the best provider found).
#[derive(Message)]
#[rtype(result = "Result<ChannelStream, Error>")]
pub(crate) struct OpenService {
    pub(crate) app_id: String,
    pub(crate) service: ServiceName,
    pub(crate) peer: Option<PeerRef>,
}

impl Handler<OpenService> for OverlayService {
    type Result = ResponseFuture<Result<ChannelStream, Error>>;

    fn handle(&mut self, msg: OpenService, ctx: &mut Self::Context) -> Self::Result {
        let OpenService {
            app_id,
            service,
            peer,
        } = msg;
        self.open_service(app_id, service, peer, ctx)
    }
}

impl OverlayService {
    /// Opens a channel from `app_id` to a provider of `service` (on `peer`, if not empty).
    pub(crate) fn open_service(
        &mut self,
        app_id: String,
        service: ServiceName,
        peer: Option<PeerRef>,
        ctx: &mut Context<Self>,
    ) -> Fut<ChannelStream> {
        let fail = |e| ready(Err(e));
        let service = service.into_string();
        let target = peer.map(|PeerRef { peer, addrs }| (peer, addrs));
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
        // A provider on this node first, now, while the actor is at hand.
        let here = match &target {
            Some((peer, _)) if *peer != local => None,
            _ => self.provider_here(&service),
        };
        let mut local_opening = None;
        match here {
            Some(Here::Exposure) => {
                // An in-memory pipe whose far end port forwarding splices to the target.
                let (opener, far) = tokio::io::duplex(PIPE_BUFFER);
                let opened = store.next_id().map_err(Error::from).and_then(|channel_id| {
                    self.forwarding.serve(&service, Box::new(far))?;
                    Ok(ChannelStream {
                        channel_id,
                        peer_id: local.to_string(),
                        app_id: FORWARD_APP.to_owned(),
                        inbound: false,
                        io: Box::new(opener),
                    })
                });
                match opened {
                    Ok(stream) => {
                        return ready(Ok(count(stream, channel_permit)));
                    }
                    Err(e) => failures.push(("port forwarding on this node".to_owned(), e)),
                }
            }
            Some(Here::App(provider)) => {
                let origin = ServiceOrigin {
                    service: service.clone(),
                    from_app: app_id.clone(),
                };
                match self.announce_local(provider.clone(), Some(origin), ctx) {
                    Ok(opening) => local_opening = Some((provider, opening)),
                    Err(e) => failures.push((format!("app '{provider}' on this node"), e)),
                }
            }
            None => {}
        }
        let net = self.net.clone();
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
                let (net, store) = (net.clone(), store.clone());
                let (app_id, service) = (app_id.clone(), Some(service.clone()));
                async move {
                    let opening = channel::open(net, store, app_id, service, peer, addrs, reach_by);
                    match opening.await {
                        Ok(stream) => Attempt::Done(Ok(stream)),
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
                // The one peer named: its own answer.
                Some((peer, addrs)) => match opening(peer, addrs, until).await {
                    Attempt::Done(result) => result,
                    Attempt::Next(e) => Err(e),
                },
                None => {
                    let timed_out = || Error::Timeout {
                        what: format!("reaching a provider of '{service}'"),
                        after: channel::REACH_TIME,
                    };
                    try_providers(&net, &service, until, failures, timed_out, opening).await
                }
            }?;
            Ok(count(stream, channel_permit))
        })
    }

    /// A remote peer's hello names `service`, opened by its app `from_app`: announced to the
    /// provider, or handed to port forwarding, or the refusal to write back.
    pub(crate) fn inbound_service_channel(
        &mut self,
        peer: PeerId,
        from_app: String,
        service: String,
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
        match self.provider_here(&service) {
            Some(Here::App(provider)) => {
                let origin = ServiceOrigin {
                    service: service.clone(),
                    from_app,
                };
                match self.announce(peer, provider.clone(), Some(origin), io, ctx) {
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
            Some(Here::Exposure) => {
                let Ok(permit) = self.channels.clone().try_acquire_owned() else {
                    let max = self.config.max_channels;
                    let busy = format!("too many open channels (limit {max})");
                    return refuse(io, channel_welcome::Result::Busy, busy);
                };
                self.serve_exposed(peer, service, io, permit, ctx);
                None
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

    /// Welcomes a channel to an exposed service, then hands it to port forwarding.
    fn serve_exposed(
        &mut self,
        peer: PeerId,
        service: String,
        io: Io,
        permit: OwnedSemaphorePermit,
        ctx: &mut Context<Self>,
    ) {
        let store: Arc<dyn Store> = self.ctx.store.clone();
        // Bounded by the welcome's write timeout, and by the channel permits.
        let welcoming = async move {
            let channel_id = store.next_id()?;
            channel::accept(io, channel_id, peer, FORWARD_APP.to_owned(), true).await
        };
        ctx.spawn(
            welcoming
                .into_actor(self)
                .map(move |accepted, act, _| match accepted {
                    Ok(stream) => {
                        let stream = count(stream, permit);
                        if let Err(e) = act.forwarding.serve(&service, stream.io) {
                            warn!(%peer, %service, "cannot serve a forwarded channel: {e}");
                        }
                    }
                    Err(e) => debug!(%peer, %service, "a forwarded channel failed: {e}"),
                }),
        );
    }
}

/// Whether another provider may be tried after `e`: yes unless this node itself is the
/// trouble (its store, its network task, its own limits).
fn worth_another(e: &Error) -> bool {
    !matches!(
        e,
        Error::Store(_) | Error::NetworkStopped | Error::TooManyChannels { .. }
    )
}
