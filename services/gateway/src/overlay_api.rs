//! `p2pos.overlay.v1.Overlay`: tickets, dialing, peers, ping, DHT look-ups.

use p2pos_kernel::{ServiceContext, ServiceError};
use p2pos_proto::overlay::v1::{
    DialReply, DialRequest, FindPeerReply, FindPeerRequest, GetTicketRequest, ListPeersReply,
    ListPeersRequest, OverlayRequest, PingReply, PingRequest, Ticket, overlay_request::Kind as Req,
    overlay_response::Kind as Resp, overlay_server::Overlay,
};
use p2pos_protocols::Overlay as OverlayProtocol;
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

    async fn call(&self, kind: Req) -> Result<Resp, Status> {
        let response = self
            .ctx
            .registry
            .call::<OverlayProtocol>(OverlayRequest { kind: Some(kind) })
            .await?;
        response
            .kind
            .ok_or_else(|| ServiceError::internal("the overlay gave an empty answer").into())
    }
}

fn mismatch() -> Status {
    Status::internal("the overlay answered a different request")
}

/// `Ping` and `FindPeer` take a bare peer id: dialing new addresses (tickets, multiaddrs) is
/// what the admin-only `Dial` is for.
fn require_peer(peer_id: &str) -> Result<(), Status> {
    let peer_id = peer_id.trim();
    if peer_id.is_empty() {
        return Err(Status::invalid_argument("peer_id is empty"));
    }
    if !peer_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(Status::invalid_argument(format!(
            "{peer_id:?} is not a peer id (a ticket or address is for Dial)"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Overlay for OverlayApi {
    async fn get_ticket(&self, req: Request<GetTicketRequest>) -> Result<Response<Ticket>, Status> {
        caller(&req)?;
        match self.call(Req::GetTicket(req.into_inner())).await? {
            Resp::Ticket(t) => Ok(Response::new(t)),
            _ => Err(mismatch()),
        }
    }

    async fn dial(&self, req: Request<DialRequest>) -> Result<Response<DialReply>, Status> {
        caller(&req)?.require_admin()?;
        let req = req.into_inner();
        if req.target.trim().is_empty() {
            return Err(Status::invalid_argument(
                "target is empty: give a ticket, a multiaddr ending in /p2p/<peer id>, or a peer id",
            ));
        }
        match self.call(Req::Dial(req)).await? {
            Resp::Dial(d) => Ok(Response::new(d)),
            _ => Err(mismatch()),
        }
    }

    async fn list_peers(
        &self,
        req: Request<ListPeersRequest>,
    ) -> Result<Response<ListPeersReply>, Status> {
        caller(&req)?;
        match self.call(Req::ListPeers(req.into_inner())).await? {
            Resp::ListPeers(p) => Ok(Response::new(p)),
            _ => Err(mismatch()),
        }
    }

    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        caller(&req)?;
        let req = req.into_inner();
        require_peer(&req.peer_id)?;
        match self.call(Req::Ping(req)).await? {
            Resp::Ping(p) => Ok(Response::new(p)),
            _ => Err(mismatch()),
        }
    }

    async fn find_peer(
        &self,
        req: Request<FindPeerRequest>,
    ) -> Result<Response<FindPeerReply>, Status> {
        caller(&req)?;
        let req = req.into_inner();
        require_peer(&req.peer_id)?;
        match self.call(Req::FindPeer(req)).await? {
            Resp::FindPeer(p) => Ok(Response::new(p)),
            _ => Err(mismatch()),
        }
    }
}
