//! `p2pos.service.v1` on the overlay actor: one exhaustive `match` over the protocol's
//! requests, each answered on its own typed reply (at once, or from a task), and how port
//! forwarding opens its channels.

use std::sync::Arc;

use actix::prelude::*;
use p2pos_kernel::Call;
use p2pos_proto::service::v1::{CloseForwardRequest, WithdrawRequest};
use p2pos_protocols::{
    Services, answer,
    ids::{PeerRef, ServiceName},
    services::Request,
};

use super::{calls::OutgoingCall, channels::OpenService, state::FORWARD_APP};
use crate::{Error, forward, state::OverlayService, task::spawn_answer};

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
