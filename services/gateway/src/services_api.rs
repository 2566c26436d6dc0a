//! `p2pos.service.v1.Services`: services apps provide to other apps (register, find, call,
//! reply, channels) and port forwarding. Each method checks the caller's scope, then hands the
//! request to the service behind `p2pos.service.v1` (the overlay), which checks the rest
//! (service names, descriptions, addresses). Payloads are bounded here, before they travel on,
//! as on `Apps.Send`; a call takes the caller's gRPC deadline along.
//!
//! Scopes: `Register`, `Unregister`, `Reply`, `Call` and `Channel`'s `open` act for an app id
//! the caller must cover; an app-scoped caller that leaves it empty acts for its own app, the
//! admin (which has no app of its own) must name one. `ListServices` and `FindService` are open
//! to every scope; port forwarding is the admin's alone.

use std::time::Duration;

use p2pos_kernel::{ServiceContext, ServiceError};
use p2pos_proto::{
    app::v1::ChannelOutput,
    service::v1::{
        CallReply, CallRequest, CloseForwardReply, CloseForwardRequest, ExposeRequest, Exposure,
        FindServiceReply, FindServiceRequest, Forward, ListExposuresReply, ListExposuresRequest,
        ListForwardsReply, ListForwardsRequest, ListServicesReply, ListServicesRequest,
        OpenForwardRequest, OpenServiceChannel, RegisterRequest, ReplyAck, ReplyRequest,
        ServiceChannelInput, ServiceInfo, UnregisterReply, UnregisterRequest, WithdrawReply,
        WithdrawRequest, reply_request, service_channel_input, services_server::Services,
    },
};
use p2pos_protocols::{
    Services as ServicesProtocol,
    services::{Request as ServicesCall, Response as ServicesAnswer},
    wire::MAX_PAYLOAD,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    BoxStream,
    auth::{Scope, caller},
    deadline,
    splice::{OutputOptions, splice},
};

/// How long a client may take to send the first frame of a channel (as on `Apps.Channel`).
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// The adapter.
pub struct ServicesApi {
    ctx: ServiceContext,
    stop: CancellationToken,
}

impl ServicesApi {
    /// For this node.
    pub fn new(ctx: ServiceContext, stop: CancellationToken) -> Self {
        Self { ctx, stop }
    }

    async fn ask(&self, request: ServicesCall) -> Result<ServicesAnswer, Status> {
        Ok(self.ctx.registry.call::<ServicesProtocol>(request).await?)
    }
}

fn mismatch() -> Status {
    ServiceError::internal("the service behind p2pos.service.v1 answered a different request")
        .into()
}

/// The app a call acts for: the one named, which the caller must cover; empty: the caller's
/// own app (the admin has none: `INVALID_ARGUMENT`).
fn acting_app(scope: &Scope, app_id: String) -> Result<String, Status> {
    if app_id.is_empty() {
        return match scope {
            Scope::App(own) => Ok(own.clone()),
            Scope::Admin => Err(Status::invalid_argument(
                "app_id is required: the admin scope has no app of its own; name the app to act for",
            )),
        };
    }
    scope.require_app(&app_id)?;
    Ok(app_id)
}

/// A payload of at most [`MAX_PAYLOAD`] bytes.
fn payload_size(what: &str, len: usize) -> Result<(), Status> {
    if len > MAX_PAYLOAD {
        return Err(Status::resource_exhausted(format!(
            "{what} of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Services for ServicesApi {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<ServiceInfo>, Status> {
        let scope = caller(&req)?;
        let RegisterRequest {
            app_id,
            service,
            description,
        } = req.into_inner();
        let request = RegisterRequest {
            app_id: acting_app(&scope, app_id)?,
            service,
            description,
        };
        match self.ask(ServicesCall::Register(request)).await? {
            ServicesAnswer::Registered(info) => Ok(Response::new(info)),
            _ => Err(mismatch()),
        }
    }

    async fn unregister(
        &self,
        req: Request<UnregisterRequest>,
    ) -> Result<Response<UnregisterReply>, Status> {
        let scope = caller(&req)?;
        let UnregisterRequest { app_id, service } = req.into_inner();
        let request = UnregisterRequest {
            app_id: acting_app(&scope, app_id)?,
            service,
        };
        match self.ask(ServicesCall::Unregister(request)).await? {
            ServicesAnswer::Unregistered => Ok(Response::new(UnregisterReply {})),
            _ => Err(mismatch()),
        }
    }

    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesReply>, Status> {
        caller(&req)?;
        let ListServicesRequest {} = req.into_inner();
        match self.ask(ServicesCall::List).await? {
            ServicesAnswer::Services(list) => Ok(Response::new(list)),
            _ => Err(mismatch()),
        }
    }

    async fn find_service(
        &self,
        req: Request<FindServiceRequest>,
    ) -> Result<Response<FindServiceReply>, Status> {
        caller(&req)?;
        let request = req.into_inner();
        match self.ask(ServicesCall::Find(request)).await? {
            ServicesAnswer::Providers(found) => Ok(Response::new(found)),
            _ => Err(mismatch()),
        }
    }

    async fn call(&self, req: Request<CallRequest>) -> Result<Response<CallReply>, Status> {
        let scope = caller(&req)?;
        let deadline = deadline::from_metadata(req.metadata())?;
        let CallRequest {
            app_id,
            service,
            payload,
            peer,
            timeout_ms,
        } = req.into_inner();
        let app_id = acting_app(&scope, app_id)?;
        payload_size("a call payload", payload.len())?;
        let request = CallRequest {
            app_id,
            service,
            payload,
            peer,
            timeout_ms,
        };
        match self.ask(ServicesCall::Call { request, deadline }).await? {
            ServicesAnswer::Called(reply) => Ok(Response::new(reply)),
            _ => Err(mismatch()),
        }
    }

    async fn reply(&self, req: Request<ReplyRequest>) -> Result<Response<ReplyAck>, Status> {
        let scope = caller(&req)?;
        let ReplyRequest {
            app_id,
            call_id,
            result,
        } = req.into_inner();
        let app_id = acting_app(&scope, app_id)?;
        if let Some(reply_request::Result::Payload(payload)) = &result {
            payload_size("a reply payload", payload.len())?;
        }
        let request = ReplyRequest {
            app_id,
            call_id,
            result,
        };
        match self.ask(ServicesCall::Reply(request)).await? {
            ServicesAnswer::Replied => Ok(Response::new(ReplyAck {})),
            _ => Err(mismatch()),
        }
    }

    type ChannelStream = BoxStream<ChannelOutput>;

    async fn channel(
        &self,
        req: Request<Streaming<ServiceChannelInput>>,
    ) -> Result<Response<Self::ChannelStream>, Status> {
        let scope = caller(&req)?;
        let mut input = req.into_inner();
        let first = tokio::time::timeout(FIRST_FRAME_TIMEOUT, input.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no open frame within 30 s"))??
            .ok_or_else(|| Status::invalid_argument("the channel ended before its first frame"))?;
        let Some(service_channel_input::Kind::Open(open)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first frame of a service channel must be `open`",
            ));
        };
        let OpenServiceChannel {
            app_id,
            service,
            peer,
            batch,
            half_close,
        } = open;
        let open = OpenServiceChannel {
            app_id: acting_app(&scope, app_id)?,
            service,
            peer,
            ..OpenServiceChannel::default()
        };
        let ServicesAnswer::Channel(channel) = self.ask(ServicesCall::OpenChannel(open)).await?
        else {
            return Err(mismatch());
        };
        Ok(Response::new(splice(
            channel,
            OutputOptions { batch, half_close },
            input,
            self.ctx.events.clone(),
            self.stop.clone(),
        )))
    }

    async fn expose(&self, req: Request<ExposeRequest>) -> Result<Response<Exposure>, Status> {
        caller(&req)?.require_admin()?;
        let request = req.into_inner();
        match self.ask(ServicesCall::Expose(request)).await? {
            ServicesAnswer::Exposed(exposure) => Ok(Response::new(exposure)),
            _ => Err(mismatch()),
        }
    }

    async fn withdraw(
        &self,
        req: Request<WithdrawRequest>,
    ) -> Result<Response<WithdrawReply>, Status> {
        caller(&req)?.require_admin()?;
        let request = req.into_inner();
        match self.ask(ServicesCall::Withdraw(request)).await? {
            ServicesAnswer::Withdrawn => Ok(Response::new(WithdrawReply {})),
            _ => Err(mismatch()),
        }
    }

    async fn list_exposures(
        &self,
        req: Request<ListExposuresRequest>,
    ) -> Result<Response<ListExposuresReply>, Status> {
        caller(&req)?.require_admin()?;
        let ListExposuresRequest {} = req.into_inner();
        match self.ask(ServicesCall::ListExposures).await? {
            ServicesAnswer::Exposures(list) => Ok(Response::new(list)),
            _ => Err(mismatch()),
        }
    }

    async fn open_forward(
        &self,
        req: Request<OpenForwardRequest>,
    ) -> Result<Response<Forward>, Status> {
        caller(&req)?.require_admin()?;
        let request = req.into_inner();
        match self.ask(ServicesCall::OpenForward(request)).await? {
            ServicesAnswer::Forwarding(forward) => Ok(Response::new(forward)),
            _ => Err(mismatch()),
        }
    }

    async fn close_forward(
        &self,
        req: Request<CloseForwardRequest>,
    ) -> Result<Response<CloseForwardReply>, Status> {
        caller(&req)?.require_admin()?;
        let request = req.into_inner();
        match self.ask(ServicesCall::CloseForward(request)).await? {
            ServicesAnswer::ForwardClosed => Ok(Response::new(CloseForwardReply {})),
            _ => Err(mismatch()),
        }
    }

    async fn list_forwards(
        &self,
        req: Request<ListForwardsRequest>,
    ) -> Result<Response<ListForwardsReply>, Status> {
        caller(&req)?.require_admin()?;
        let ListForwardsRequest {} = req.into_inner();
        match self.ask(ServicesCall::ListForwards).await? {
            ServicesAnswer::Forwards(list) => Ok(Response::new(list)),
            _ => Err(mismatch()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code<T: std::fmt::Debug>(result: Result<T, Status>) -> tonic::Code {
        result.expect_err("refused").code()
    }

    #[test]
    fn an_empty_app_id_is_the_callers_own_app() {
        let chat = Scope::App("chat".into());
        assert_eq!(acting_app(&chat, String::new()).expect("own"), "chat");
        assert_eq!(acting_app(&chat, "chat".into()).expect("own"), "chat");
        assert_eq!(
            acting_app(&chat, "chat:voice".into()).expect("its helper's"),
            "chat:voice"
        );
        assert_eq!(
            code(acting_app(&chat, "mail".into())),
            tonic::Code::PermissionDenied
        );
        let voice = Scope::App("chat:voice".into());
        assert_eq!(
            code(acting_app(&voice, "chat".into())),
            tonic::Code::PermissionDenied,
            "a helper does not act for its app"
        );
        assert_eq!(
            acting_app(&voice, String::new()).expect("own"),
            "chat:voice"
        );
    }

    #[test]
    fn the_admin_names_the_app_it_acts_for() {
        assert_eq!(
            acting_app(&Scope::Admin, "p2pctl".into()).expect("any app"),
            "p2pctl"
        );
        let err = acting_app(&Scope::Admin, String::new()).expect_err("no app");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("app_id is required"), "{err:?}");
        assert_eq!(
            code(acting_app(&Scope::Admin, "a/b".into())),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn payloads_are_bounded() {
        assert!(payload_size("a call payload", MAX_PAYLOAD).is_ok());
        let err = payload_size("a call payload", MAX_PAYLOAD + 1).expect_err("too big");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().starts_with("a call payload of"), "{err:?}");
    }
}
