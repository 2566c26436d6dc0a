//! `p2pos.overlay.v1`: one exhaustive `match` over the request envelope, each arm validating
//! its input, asking the swarm task and answering the matching response variant.

use std::time::Duration;

use p2pos_proto::overlay::v1::{
    DialReply, DialRequest, FindPeerReply, FindPeerRequest, GetTicketRequest, ListPeersReply,
    ListPeersRequest, OverlayRequest, OverlayResponse, OverlayStatusRequest, PingReply,
    PingRequest, overlay_request, overlay_response,
};

use p2pos_protocols::network::{Error, Network, ticket::parse_target};

/// How long `Dial` waits when the request says 0.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `Dial` timeout honoured.
pub const MAX_DIAL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `Ping` may take, connection included.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one overlay request.
pub(crate) async fn handle(
    net: Network,
    request: OverlayRequest,
) -> Result<OverlayResponse, Error> {
    use overlay_request::Kind as Req;
    use overlay_response::Kind as Resp;
    let OverlayRequest { kind } = request;
    let reply = match kind.ok_or(Error::MissingKind)? {
        Req::GetTicket(GetTicketRequest {}) => Resp::Ticket(net.ticket().await?),
        Req::Dial(DialRequest { target, timeout_ms }) => {
            let (peer, addrs) = parse_target(&target)?;
            let limit = match timeout_ms {
                0 => DEFAULT_DIAL_TIMEOUT,
                ms => Duration::from_millis(u64::from(ms)).min(MAX_DIAL_TIMEOUT),
            };
            let address = net.connect(peer, addrs, limit).await?;
            Resp::Dial(DialReply {
                peer_id: peer.to_string(),
                address: address.to_string(),
            })
        }
        Req::ListPeers(ListPeersRequest {}) => Resp::ListPeers(ListPeersReply {
            peers: net.peers().await?,
        }),
        Req::Ping(PingRequest { peer_id }) => {
            let (peer, addrs) = parse_target(&peer_id)?;
            let rtt = net.ping(peer, addrs, PING_TIMEOUT).await?;
            Resp::Ping(PingReply {
                rtt_us: u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1),
            })
        }
        Req::FindPeer(FindPeerRequest { peer_id }) => {
            let (peer, _) = parse_target(&peer_id)?;
            let addresses = net.find_peer(peer).await?;
            Resp::FindPeer(FindPeerReply {
                addresses: addresses.iter().map(ToString::to_string).collect(),
            })
        }
        Req::Status(OverlayStatusRequest {}) => Resp::Status(net.status().await?),
    };
    Ok(OverlayResponse { kind: Some(reply) })
}
