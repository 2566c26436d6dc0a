//! `p2pos.resources.v1.Resources`: the inventory, narrowed to what the caller may see.

use p2pos_kernel::ServiceContext;
use p2pos_proto::resources::v1::{
    GetInventoryRequest, Inventory, resources_server::Resources as ResourcesRpc,
};
use p2pos_protocols::{Resources, resources};
use tonic::{Request, Response, Status};

use crate::auth::caller;

/// The adapter.
pub struct ResourcesApi {
    ctx: ServiceContext,
}

impl ResourcesApi {
    /// For this node.
    pub fn new(ctx: ServiceContext) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl ResourcesRpc for ResourcesApi {
    async fn get_inventory(
        &self,
        req: Request<GetInventoryRequest>,
    ) -> Result<Response<Inventory>, Status> {
        let scope = caller(&req)?;
        let GetInventoryRequest {} = req.into_inner();
        let mut inventory = self
            .ctx
            .registry
            .ask::<Resources, _>(|reply| resources::Request::GetInventory { reply })
            .await?;
        // An app sees its own helpers (and its helpers' own), nobody else's.
        inventory.helpers.retain(|h| scope.covers(&h.app_id));
        Ok(Response::new(inventory))
    }
}
