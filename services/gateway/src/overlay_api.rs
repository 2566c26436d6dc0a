//! `p2pos.overlay.v1.Overlay`: tickets, dialing, peers, ping, DHT look-ups.

use p2pos_kernel::{ServiceContext, ServiceError};
use p2pos_proto::overlay::v1::{
    DialReply, DialRequest, FindPeerReply, FindPeerRequest, GetTicketRequest, ListPeersReply,
    ListPeersRequest, PingReply, PingRequest, Ticket, overlay_server::Overlay,
};
use p2pos_protocols::{
    Overlay as OverlayProtocol, Reply, ids::PeerRef, overlay::Request as OverlayCall,
};
use tonic::{Request, Response, Status};

use crate::auth::caller;

/// The adapter.
pub struct OverlayApi {
    ctx: ServiceContext,
}

impl OverlayApi {
    /// For this node.
    pub fn new(ctx: ServiceContext) -> Self {
        Self { ctx }
    }

    /// Asks the network service and waits for its answer.
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> OverlayCall) -> Result<T, Status> {
        Ok(self.ctx.registry.ask::<OverlayProtocol, T>(make).await?)
    }
}

/// `Ping` and `FindPeer` take a bare peer id, in every scope: dialing new addresses (tickets,
/// multiaddrs) is what the admin-only `Dial` is for, so no app makes the node dial (or keep)
/// an address of its choosing.
pub(crate) fn bare_peer(peer_id: &str) -> Result<PeerRef, Status> {
    let peer_id = peer_id.trim();
    if peer_id.is_empty() {
        return Err(Status::invalid_argument("peer_id is empty"));
    }
    let not_bare = || {
        Status::invalid_argument(format!(
            "{peer_id:?} is not a peer id (a ticket or address is for Dial)"
        ))
    };
    if !peer_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(not_bare());
    }
    // A ticket is alphanumeric too: it carries addresses.
    let peer = PeerRef::parse(peer_id).map_err(|e| Status::from(ServiceError::from(e)))?;
    if !peer.addrs.is_empty() {
        return Err(not_bare());
    }
    Ok(peer)
}

#[tonic::async_trait]
impl Overlay for OverlayApi {
    async fn get_ticket(&self, req: Request<GetTicketRequest>) -> Result<Response<Ticket>, Status> {
        caller(&req)?;
        let GetTicketRequest {} = req.into_inner();
        let ticket = self.ask(|reply| OverlayCall::GetTicket { reply }).await?;
        Ok(Response::new(ticket))
    }

    async fn dial(&self, req: Request<DialRequest>) -> Result<Response<DialReply>, Status> {
        caller(&req)?.require_admin()?;
        let req = req.into_inner();
        if req.target.trim().is_empty() {
            return Err(Status::invalid_argument(
                "target is empty: give a ticket, a multiaddr ending in /p2p/<peer id>, or a peer id",
            ));
        }
        let dialed = self
            .ask(|reply| OverlayCall::Dial {
                request: req,
                reply,
            })
            .await?;
        Ok(Response::new(dialed))
    }

    async fn list_peers(
        &self,
        req: Request<ListPeersRequest>,
    ) -> Result<Response<ListPeersReply>, Status> {
        caller(&req)?;
        let ListPeersRequest {} = req.into_inner();
        let peers = self.ask(|reply| OverlayCall::ListPeers { reply }).await?;
        Ok(Response::new(peers))
    }

    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        caller(&req)?;
        let PingRequest { peer_id } = req.into_inner();
        let peer = bare_peer(&peer_id)?;
        let pinged = self.ask(|reply| OverlayCall::Ping { peer, reply }).await?;
        Ok(Response::new(pinged))
    }

    async fn find_peer(
        &self,
        req: Request<FindPeerRequest>,
    ) -> Result<Response<FindPeerReply>, Status> {
        caller(&req)?;
        let FindPeerRequest { peer_id } = req.into_inner();
        let peer = bare_peer(&peer_id)?;
        let found = self
            .ask(|reply| OverlayCall::FindPeer { peer, reply })
            .await?;
        Ok(Response::new(found))
    }
}
