//! `p2pos.service.v1` on the registry's actor: one exhaustive `match` over the protocol's
//! requests, each answered on its own typed reply (at once, or from a task); channels to
//! services are the sessions part's.

use actix::prelude::*;
use p2pos_kernel::Call;
use p2pos_protocols::{Services, answer, services::Request};

use crate::{Error, registry::actor::ServiceRegistry, task::spawn_answer};

impl Handler<Call<Services>> for ServiceRegistry {
    type Result = ();

    /// Bookkeeping here; every answer that takes time comes from a task of its own.
    fn handle(&mut self, Call(request): Call<Services>, ctx: &mut Self::Context) {
        if self.gone(ctx) {
            return; // dropped: its caller hears the registry went away
        }
        match request {
            Request::Register {
                app_id,
                service,
                description,
                certificates,
                reply,
            } => answer(
                reply,
                self.register(app_id, service, (description, certificates)),
            ),
            Request::Unregister {
                app_id,
                service,
                reply,
            } => answer(reply, self.unregister(app_id, service)),
            Request::List { reply } => answer::<_, Error>(reply, Ok(self.list_services())),
            Request::Find {
                service,
                limit,
                filter,
                reply,
            } => spawn_answer(reply, self.find(service, limit, filter)),
            Request::Call { call, reply } => spawn_answer(reply, self.call(call, ctx)),
            Request::Reply { request, reply } => answer(reply, self.reply(request, ctx)),
            // The sessions part opens channels (see `route_services`): never routed here.
            Request::OpenChannel { reply, .. } => answer(
                reply,
                Err::<p2pos_protocols::apps::ChannelStream, _>(Error::Setup(
                    "a channel to a service was routed to the registry".into(),
                )),
            ),
        }
    }
}
