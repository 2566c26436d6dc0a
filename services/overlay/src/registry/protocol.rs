//! `p2pos.service.v1` on the overlay actor: one exhaustive `match` over the protocol's
//! requests, each answered on its own typed reply (at once, or from a task), and how port
//! forwarding opens its channels.

use actix::prelude::*;
use p2pos_kernel::Call;
use p2pos_protocols::{Services, answer, services::Request};

use super::calls::OutgoingCall;
use crate::{Error, state::OverlayService, task::spawn_answer};

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
        }
    }
}
