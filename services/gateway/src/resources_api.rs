//! `p2pos.resources.v1.Resources`: the inventory narrowed to what the caller may see, the
//! owner's policy (the admin's to change), and finding and leasing what peers lend.

use p2pos_kernel::ServiceContext;
use p2pos_proto::resources::v1::{
    FindReply, FindRequest, GetInventoryRequest, GetSharingRequest, Inventory, LeaseReply,
    LeaseRequest, ListLeasesReply, ListLeasesRequest, ReleaseReply, ReleaseRequest, RenewRequest,
    Sharing, UnshareRequest, resources_server::Resources as ResourcesRpc,
};
use p2pos_protocols::{Reply, Resources, resources};
use tonic::{Request, Response, Status};

use crate::{
    auth::{Scope, caller, require_helper_exists},
    overlay_api::bare_peer,
};

/// The adapter.
pub struct ResourcesApi {
    ctx: ServiceContext,
}

impl ResourcesApi {
    /// For this node.
    pub fn new(ctx: ServiceContext) -> Self {
        Self { ctx }
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> resources::Request) -> Result<T, Status> {
        Ok(self.ctx.registry.ask::<Resources, T>(make).await?)
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
            .ask(|reply| resources::Request::GetInventory { reply })
            .await?;
        // An app sees its own helpers (and its helpers' own), nobody else's.
        inventory.helpers.retain(|h| scope.covers(&h.app_id));
        Ok(Response::new(inventory))
    }

    async fn get_sharing(
        &self,
        req: Request<GetSharingRequest>,
    ) -> Result<Response<Sharing>, Status> {
        caller(&req)?;
        let GetSharingRequest {} = req.into_inner();
        let sharing = self
            .ask(|reply| resources::Request::GetSharing { reply })
            .await?;
        Ok(Response::new(sharing))
    }

    async fn share(&self, req: Request<Sharing>) -> Result<Response<Sharing>, Status> {
        caller(&req)?.require_admin()?;
        let sharing = req.into_inner();
        let kept = self
            .ask(|reply| resources::Request::Share { sharing, reply })
            .await?;
        Ok(Response::new(kept))
    }

    async fn unshare(&self, req: Request<UnshareRequest>) -> Result<Response<Sharing>, Status> {
        caller(&req)?.require_admin()?;
        let UnshareRequest {} = req.into_inner();
        let kept = self
            .ask(|reply| resources::Request::Share {
                sharing: Sharing::default(),
                reply,
            })
            .await?;
        Ok(Response::new(kept))
    }

    async fn find(&self, req: Request<FindRequest>) -> Result<Response<FindReply>, Status> {
        caller(&req)?;
        let request = req.into_inner();
        let found = self
            .ask(|reply| resources::Request::Find { request, reply })
            .await?;
        Ok(Response::new(found))
    }

    async fn lease(&self, req: Request<LeaseRequest>) -> Result<Response<LeaseReply>, Status> {
        let scope = caller(&req)?;
        let LeaseRequest {
            peer,
            amounts,
            ttl_secs,
            app_id,
        } = req.into_inner();
        let peer = bare_peer(&peer)?.peer;
        let app_id = match (&scope, app_id.is_empty()) {
            (Scope::App(own), true) => own.clone(),
            (_, true) => String::new(),
            (_, false) => {
                scope.require_app(&app_id)?;
                require_helper_exists(&scope, &app_id, &self.ctx.registry).await?;
                app_id
            }
        };
        let leased = self
            .ask(|reply| resources::Request::Lease {
                peer,
                amounts: amounts.unwrap_or_default(),
                ttl_secs,
                app_id,
                reply,
            })
            .await?;
        Ok(Response::new(leased))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<LeaseReply>, Status> {
        let scope = caller(&req)?;
        let RenewRequest { lease_id, ttl_secs } = req.into_inner();
        let renewed = self
            .ask(|reply| resources::Request::Renew {
                caller_app: scope.app(),
                lease_id,
                ttl_secs,
                reply,
            })
            .await?;
        Ok(Response::new(renewed))
    }

    async fn release(
        &self,
        req: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseReply>, Status> {
        let scope = caller(&req)?;
        let ReleaseRequest { lease_id } = req.into_inner();
        self.ask(|reply| resources::Request::Release {
            caller_app: scope.app(),
            lease_id,
            reply,
        })
        .await?;
        Ok(Response::new(ReleaseReply {}))
    }

    async fn list_leases(
        &self,
        req: Request<ListLeasesRequest>,
    ) -> Result<Response<ListLeasesReply>, Status> {
        let scope = caller(&req)?;
        let ListLeasesRequest {} = req.into_inner();
        let listed = self
            .ask(|reply| resources::Request::ListLeases {
                caller_app: scope.app(),
                reply,
            })
            .await?;
        Ok(Response::new(listed))
    }
}
