//! `p2pos.tasks.v1.Tasks`: helper applications (plug-ins) the node starts and supervises. The
//! caller's scope becomes the request's `caller_app` (empty: admin); an app id the caller names
//! must be one it covers (its own, or its helpers' `app:helper`). Which specs an app then sees,
//! and what an empty app id means for it, is the task-control service's to decide.

use futures::StreamExt;
use p2pos_kernel::ServiceContext;
use p2pos_proto::tasks::v1::{
    AddHelperRequest, HelperRef, HelperSpec, HelperStatus, ListHelpersReply, ListHelpersRequest,
    LogLine, LogsRequest, RemoveHelperReply, SignalHelperRequest, tasks_server::Tasks,
};
use p2pos_protocols::{
    Reply, Tasks as TasksProtocol,
    tasks::{HelperOp, Request as TasksCall},
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    BoxStream,
    auth::{Scope, caller},
    cut_on_stop,
};

/// The adapter.
pub struct TasksApi {
    ctx: ServiceContext,
    stop: CancellationToken,
}

impl TasksApi {
    /// For this node.
    pub fn new(ctx: ServiceContext, stop: CancellationToken) -> Self {
        Self { ctx, stop }
    }

    /// Asks the task-control service and waits for its answer.
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> TasksCall) -> Result<T, Status> {
        Ok(self.ctx.registry.ask::<TasksProtocol, T>(make).await?)
    }

    /// An operation on one helper (`HelperRef`) answered with its status: the caller must
    /// cover it.
    async fn on_helper(
        &self,
        req: Request<HelperRef>,
        op: HelperOp,
    ) -> Result<Response<HelperStatus>, Status> {
        let scope = caller(&req)?;
        let helper = req.into_inner();
        require_ref(&scope, Some(&helper))?;
        let status = self
            .ask(|reply| TasksCall::Helper {
                caller_app: caller_app(&scope),
                helper,
                op,
                reply,
            })
            .await?;
        Ok(Response::new(status))
    }
}

/// The request's `caller_app`: empty for the admin, the app id for an app.
fn caller_app(scope: &Scope) -> String {
    match scope {
        Scope::Admin => String::new(),
        Scope::App(app) => app.clone(),
    }
}

/// An app id named in a request: empty (the caller's own app, or the admin's node-wide
/// helpers), or a well-formed one the caller covers.
fn require_app(scope: &Scope, app_id: &str) -> Result<(), Status> {
    if app_id.is_empty() {
        Ok(())
    } else {
        scope.require_app(app_id)
    }
}

/// A helper reference: present, and naming an app the caller covers.
fn require_ref<'a>(scope: &Scope, helper: Option<&'a HelperRef>) -> Result<&'a HelperRef, Status> {
    let helper = helper.ok_or_else(|| Status::invalid_argument("helper is missing"))?;
    let HelperRef { app_id, name: _ } = helper;
    require_app(scope, app_id)?;
    Ok(helper)
}

#[tonic::async_trait]
impl Tasks for TasksApi {
    async fn add_helper(
        &self,
        req: Request<AddHelperRequest>,
    ) -> Result<Response<HelperStatus>, Status> {
        let scope = caller(&req)?;
        let AddHelperRequest { spec } = req.into_inner();
        let spec = spec.ok_or_else(|| Status::invalid_argument("spec is missing"))?;
        let HelperSpec { app_id, .. } = &spec;
        require_app(&scope, app_id)?;
        let status = self
            .ask(|reply| TasksCall::Add {
                caller_app: caller_app(&scope),
                spec,
                reply,
            })
            .await?;
        Ok(Response::new(status))
    }

    async fn remove_helper(
        &self,
        req: Request<HelperRef>,
    ) -> Result<Response<RemoveHelperReply>, Status> {
        let scope = caller(&req)?;
        let helper = req.into_inner();
        require_ref(&scope, Some(&helper))?;
        let removed = self
            .ask(|reply| TasksCall::Remove {
                caller_app: caller_app(&scope),
                helper,
                reply,
            })
            .await?;
        Ok(Response::new(removed))
    }

    async fn list_helpers(
        &self,
        req: Request<ListHelpersRequest>,
    ) -> Result<Response<ListHelpersReply>, Status> {
        let scope = caller(&req)?;
        let ListHelpersRequest { app_id } = req.into_inner();
        require_app(&scope, &app_id)?;
        let list = self
            .ask(|reply| TasksCall::List {
                caller_app: caller_app(&scope),
                app_id,
                reply,
            })
            .await?;
        Ok(Response::new(list))
    }

    async fn get_helper(&self, req: Request<HelperRef>) -> Result<Response<HelperStatus>, Status> {
        self.on_helper(req, HelperOp::Get).await
    }

    async fn start_helper(
        &self,
        req: Request<HelperRef>,
    ) -> Result<Response<HelperStatus>, Status> {
        self.on_helper(req, HelperOp::Start).await
    }

    async fn stop_helper(&self, req: Request<HelperRef>) -> Result<Response<HelperStatus>, Status> {
        self.on_helper(req, HelperOp::Stop).await
    }

    async fn restart_helper(
        &self,
        req: Request<HelperRef>,
    ) -> Result<Response<HelperStatus>, Status> {
        self.on_helper(req, HelperOp::Restart).await
    }

    async fn signal_helper(
        &self,
        req: Request<SignalHelperRequest>,
    ) -> Result<Response<HelperStatus>, Status> {
        let scope = caller(&req)?;
        let SignalHelperRequest { helper, signal } = req.into_inner();
        let helper = require_ref(&scope, helper.as_ref())?.clone();
        if signal.trim().is_empty() {
            return Err(Status::invalid_argument("signal is empty"));
        }
        let status = self
            .ask(|reply| TasksCall::Helper {
                caller_app: caller_app(&scope),
                helper,
                op: HelperOp::Signal(signal),
                reply,
            })
            .await?;
        Ok(Response::new(status))
    }

    type LogsStream = BoxStream<LogLine>;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let scope = caller(&req)?;
        let LogsRequest {
            helper,
            follow,
            tail,
        } = req.into_inner();
        require_ref(&scope, helper.as_ref())?;
        let request = LogsRequest {
            helper,
            follow,
            tail,
        };
        let lines = self
            .ask(|reply| TasksCall::Logs {
                caller_app: caller_app(&scope),
                request,
                reply,
            })
            .await?;
        let lines: BoxStream<LogLine> = Box::pin(ReceiverStream::new(lines).map(Ok));
        Ok(Response::new(cut_on_stop(lines, self.stop.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_calls_with_an_empty_caller_app() {
        assert_eq!(caller_app(&Scope::Admin), "");
        assert_eq!(caller_app(&Scope::App("chat".into())), "chat");
    }

    #[test]
    fn an_app_names_only_apps_it_covers() {
        let chat = Scope::App("chat".into());
        assert!(require_app(&chat, "").is_ok(), "empty: its own app");
        assert!(require_app(&chat, "chat").is_ok());
        assert!(require_app(&chat, "chat:voice").is_ok());
        let denied = require_app(&chat, "mail").expect_err("another app");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(require_app(&Scope::Admin, "").is_ok(), "node-wide helpers");
        assert!(require_app(&Scope::Admin, "mail").is_ok());
        let bad = require_app(&Scope::Admin, "a/b").expect_err("malformed");
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        let missing = require_ref(&chat, None).expect_err("no helper");
        assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    }
}
