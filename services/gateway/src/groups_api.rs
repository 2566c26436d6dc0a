//! `p2pos.group.v1.Groups`: groups with a signed member list. Reading is open to any scope;
//! changing (create, invite, join, leave, remove, admins, rename, sync, set name) is the
//! admin's; an app publishes on and follows its own app's topics.

use p2pos_kernel::ServiceContext;
use p2pos_proto::group::v1::{
    CreateRequest, Group, GroupRef, InviteReply, InviteRequest, JoinRequest, LeaveReply, ListReply,
    ListRequest, MemberRequest, MembersReply, PublishReply, PublishRequest, RenameRequest,
    SetNameRequest, SubscribeRequest, SyncReply, TopicMessage, groups_server::Groups as GroupsRpc,
};
use p2pos_protocols::{
    Groups, Reply,
    groups::{self, Change},
};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    BoxStream,
    auth::{Scope, caller, require_helper_exists},
    cut_on_stop, unavailable_at_end,
};

/// The adapter.
pub struct GroupsApi {
    ctx: ServiceContext,
    stop: CancellationToken,
}

/// The app whose topic a call names: `app`, or the caller's own when empty.
fn topic_app(scope: &Scope, app: &str) -> Result<String, Status> {
    match (scope, app.is_empty()) {
        (Scope::App(own), true) => Ok(own.clone()),
        (Scope::Admin, true) => Err(Status::invalid_argument(
            "app is empty: the admin names the app whose topic it is",
        )),
        (_, false) => {
            scope.require_app(app)?;
            Ok(app.to_owned())
        }
    }
}

impl GroupsApi {
    /// For this node; streams end when `stop` is cancelled.
    pub fn new(ctx: ServiceContext, stop: CancellationToken) -> Self {
        Self { ctx, stop }
    }

    /// [`topic_app`], a helper's app id only while the helper exists.
    async fn topic_app(&self, scope: &Scope, app: &str) -> Result<String, Status> {
        let app = topic_app(scope, app)?;
        require_helper_exists(scope, &app, &self.ctx.registry).await?;
        Ok(app)
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> groups::Request) -> Result<T, Status> {
        Ok(self.ctx.registry.ask::<Groups, T>(make).await?)
    }

    async fn change(
        &self,
        change: Change,
        req: Request<MemberRequest>,
    ) -> Result<Response<Group>, Status> {
        caller(&req)?.require_admin()?;
        let request = req.into_inner();
        let group = self
            .ask(|reply| groups::Request::Change {
                change,
                request,
                reply,
            })
            .await?;
        Ok(Response::new(group))
    }
}

#[tonic::async_trait]
impl GroupsRpc for GroupsApi {
    type SubscribeStream = BoxStream<TopicMessage>;

    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishReply>, Status> {
        let app = self.topic_app(&caller(&req)?, &req.get_ref().app).await?;
        let request = req.into_inner();
        let published = self
            .ask(|reply| groups::Request::Publish {
                app,
                request,
                reply,
            })
            .await?;
        Ok(Response::new(published))
    }

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let app = self.topic_app(&caller(&req)?, &req.get_ref().app).await?;
        let request = req.into_inner();
        let messages = self
            .ask(|reply| groups::Request::Subscribe {
                app,
                request,
                reply,
            })
            .await?;
        let messages = unavailable_at_end(
            Box::pin(ReceiverStream::new(messages).map(|m| m.map_err(Status::from))),
            "the subscription ended: it fell too far behind, or the groups service restarted; \
             subscribe again with since_ms to get what was missed",
        );
        Ok(Response::new(cut_on_stop(messages, self.stop.clone())))
    }

    async fn create(&self, req: Request<CreateRequest>) -> Result<Response<Group>, Status> {
        caller(&req)?.require_admin()?;
        let request = req.into_inner();
        let group = self
            .ask(|reply| groups::Request::Create { request, reply })
            .await?;
        Ok(Response::new(group))
    }

    async fn invite(&self, req: Request<InviteRequest>) -> Result<Response<InviteReply>, Status> {
        caller(&req)?.require_admin()?;
        let request = req.into_inner();
        let invite = self
            .ask(|reply| groups::Request::Invite { request, reply })
            .await?;
        Ok(Response::new(invite))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<Group>, Status> {
        caller(&req)?.require_admin()?;
        let request = req.into_inner();
        let group = self
            .ask(|reply| groups::Request::Join { request, reply })
            .await?;
        Ok(Response::new(group))
    }

    async fn leave(&self, req: Request<GroupRef>) -> Result<Response<LeaveReply>, Status> {
        caller(&req)?.require_admin()?;
        let GroupRef { group } = req.into_inner();
        self.ask(|reply| groups::Request::Leave { group, reply })
            .await?;
        Ok(Response::new(LeaveReply {}))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        caller(&req)?;
        let ListRequest {} = req.into_inner();
        let list = self.ask(|reply| groups::Request::List { reply }).await?;
        Ok(Response::new(list))
    }

    async fn members(&self, req: Request<GroupRef>) -> Result<Response<MembersReply>, Status> {
        caller(&req)?;
        let GroupRef { group } = req.into_inner();
        let members = self
            .ask(|reply| groups::Request::Members { group, reply })
            .await?;
        Ok(Response::new(members))
    }

    async fn remove(&self, req: Request<MemberRequest>) -> Result<Response<Group>, Status> {
        self.change(Change::Remove, req).await
    }

    async fn add_admin(&self, req: Request<MemberRequest>) -> Result<Response<Group>, Status> {
        self.change(Change::AddAdmin, req).await
    }

    async fn remove_admin(&self, req: Request<MemberRequest>) -> Result<Response<Group>, Status> {
        self.change(Change::RemoveAdmin, req).await
    }

    async fn rename(&self, req: Request<RenameRequest>) -> Result<Response<Group>, Status> {
        caller(&req)?.require_admin()?;
        let request = req.into_inner();
        let group = self
            .ask(|reply| groups::Request::Rename { request, reply })
            .await?;
        Ok(Response::new(group))
    }

    async fn set_name(&self, req: Request<SetNameRequest>) -> Result<Response<Group>, Status> {
        caller(&req)?.require_admin()?;
        let request = req.into_inner();
        let group = self
            .ask(|reply| groups::Request::SetName { request, reply })
            .await?;
        Ok(Response::new(group))
    }

    async fn sync(&self, req: Request<GroupRef>) -> Result<Response<SyncReply>, Status> {
        caller(&req)?.require_admin()?;
        let GroupRef { group } = req.into_inner();
        let synced = self
            .ask(|reply| groups::Request::Sync { group, reply })
            .await?;
        Ok(Response::new(synced))
    }
}
