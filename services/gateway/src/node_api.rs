//! `p2pos.node.v1.Node`: node info, shutdown, app tokens, fault injection.

use std::time::Duration;

use p2pos_kernel::ServiceContext;
use p2pos_proto::node::v1::{
    CreateAppTokenReply, CreateAppTokenRequest, GetInfoRequest, InjectPanicReply,
    InjectPanicRequest, ListAppTokensReply, ListAppTokensRequest, NodeInfo, RevokeAppTokenReply,
    RevokeAppTokenRequest, ShutdownReply, ShutdownRequest, node_server::Node,
};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::{
    auth::{caller, validate_app_id},
    tokens::{AppTokens, Issued, Revoke},
};

/// The adapter.
pub struct NodeApi {
    ctx: ServiceContext,
    tokens: AppTokens,
}

impl NodeApi {
    /// For this node, with its app tokens.
    pub fn new(ctx: ServiceContext, tokens: AppTokens) -> Self {
        Self { ctx, tokens }
    }

    /// Runs `work` on the app tokens off the async threads (it reads and flushes the store).
    async fn with_tokens<T: Send + 'static>(
        &self,
        work: impl FnOnce(&AppTokens) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let tokens = self.tokens.clone();
        tokio::task::spawn_blocking(move || work(&tokens))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
    }
}

#[tonic::async_trait]
impl Node for NodeApi {
    async fn get_info(&self, req: Request<GetInfoRequest>) -> Result<Response<NodeInfo>, Status> {
        let scope = caller(&req)?;
        let GetInfoRequest {} = req.into_inner();
        Ok(Response::new(NodeInfo {
            peer_id: self.ctx.peer_id.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api_versions: p2pos_proto::API_VERSIONS
                .iter()
                .map(|v| (*v).to_owned())
                .collect(),
            caller_scope: scope.describe(),
            data_dir: self.ctx.config.data_dir.display().to_string(),
        }))
    }

    async fn shutdown(
        &self,
        req: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownReply>, Status> {
        caller(&req)?.require_admin()?;
        info!("shutdown requested through the gateway");
        // The kernel stops the gateway first, gracefully, so this answer still goes out.
        self.ctx.kernel.shutdown(0);
        Ok(Response::new(ShutdownReply {}))
    }

    async fn create_app_token(
        &self,
        req: Request<CreateAppTokenRequest>,
    ) -> Result<Response<CreateAppTokenReply>, Status> {
        caller(&req)?.require_admin()?;
        let CreateAppTokenRequest { app_id, ttl_secs } = req.into_inner();
        p2pos_protocols::names::check_plain_app_id(&app_id).map_err(Status::invalid_argument)?;
        let ttl = (ttl_secs != 0).then(|| Duration::from_secs(ttl_secs));
        let Issued { token, id, record } = self
            .with_tokens(move |tokens| tokens.create(&app_id, ttl))
            .await?;
        info!(%id, app = %record.app_id, "app token created");
        Ok(Response::new(CreateAppTokenReply {
            token,
            id,
            expires_ms: record.expires_ms,
        }))
    }

    async fn list_app_tokens(
        &self,
        req: Request<ListAppTokensRequest>,
    ) -> Result<Response<ListAppTokensReply>, Status> {
        caller(&req)?.require_admin()?;
        let ListAppTokensRequest { app_id } = req.into_inner();
        let only = match app_id.trim() {
            "" => None,
            app => {
                validate_app_id(app)?;
                Some(app.to_owned())
            }
        };
        let tokens = self
            .with_tokens(move |tokens| tokens.list(only.as_deref()))
            .await?;
        Ok(Response::new(ListAppTokensReply { tokens }))
    }

    async fn revoke_app_token(
        &self,
        req: Request<RevokeAppTokenRequest>,
    ) -> Result<Response<RevokeAppTokenReply>, Status> {
        caller(&req)?.require_admin()?;
        let RevokeAppTokenRequest { token, app_id } = req.into_inner();
        let (token, app_id) = (token.trim().to_owned(), app_id.trim().to_owned());
        let revoked = match (token.is_empty(), app_id.is_empty()) {
            (false, true) => {
                self.with_tokens(move |tokens| tokens.revoke(Revoke::Token(&token)))
                    .await?
            }
            (true, false) => {
                validate_app_id(&app_id)?;
                self.with_tokens(move |tokens| tokens.revoke(Revoke::App(&app_id)))
                    .await?
            }
            _ => {
                return Err(Status::invalid_argument(
                    "name exactly one of `token` (the token or its id) and `app_id`",
                ));
            }
        };
        Ok(Response::new(RevokeAppTokenReply { revoked }))
    }

    async fn inject_panic(
        &self,
        req: Request<InjectPanicRequest>,
    ) -> Result<Response<InjectPanicReply>, Status> {
        caller(&req)?.require_admin()?;
        let InjectPanicRequest { service } = req.into_inner();
        self.ctx.kernel.inject_panic(&service).await?;
        Ok(Response::new(InjectPanicReply {}))
    }
}
