//! `p2pos.node.v1.Node`: node info, shutdown, app tokens, fault injection.

use p2pos_kernel::ServiceContext;
use p2pos_proto::node::v1::{
    CreateAppTokenReply, CreateAppTokenRequest, GetInfoRequest, InjectPanicReply,
    InjectPanicRequest, NodeInfo, ShutdownReply, ShutdownRequest, node_server::Node,
};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::auth::{TOKENS_TREE, caller};

/// The adapter.
pub struct NodeApi {
    ctx: ServiceContext,
}

impl NodeApi {
    /// For this node.
    pub fn new(ctx: ServiceContext) -> Self {
        Self { ctx }
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
        let CreateAppTokenRequest { app_id } = req.into_inner();
        p2pos_protocols::names::check_plain_app_id(&app_id).map_err(Status::invalid_argument)?;
        let bytes: [u8; 32] = rand::random();
        let token = format!("app-{}", data_encoding::HEXLOWER.encode(&bytes));
        let store = self.ctx.store.clone();
        let key = token.clone();
        tokio::task::spawn_blocking(move || {
            store.insert(TOKENS_TREE, key.as_bytes(), app_id.as_bytes())?;
            store.flush()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(CreateAppTokenReply { token }))
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
