//! `p2pos.overlay.v1`: one exhaustive `match` over the requests, each arm asking the swarm
//! task and answering on the request's own typed reply.

use std::time::Duration;

use p2pos_proto::overlay::v1::{DialReply, DialRequest, FindPeerReply, ListPeersReply, PingReply};
use p2pos_protocols::{
    answer,
    ids::PeerRef,
    network::{Error, Network, ticket::parse_target},
    overlay::Request,
};

/// How long `Dial` waits when the request says 0.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `Dial` timeout honoured.
pub const MAX_DIAL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `Ping` may take, connection included.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one overlay request on its own reply channel.
pub(crate) async fn handle(net: Network, request: Request) {
    match request {
        Request::GetTicket { reply } => answer(reply, net.ticket().await),
        Request::Dial { request, reply } => answer(reply, dial(&net, request).await),
        Request::ListPeers { reply } => answer(
            reply,
            net.peers().await.map(|peers| ListPeersReply { peers }),
        ),
        Request::Ping { peer, reply } => {
            let PeerRef { peer, addrs } = peer;
            let rtt = net.ping(peer, addrs, PING_TIMEOUT).await;
            answer(
                reply,
                rtt.map(|rtt| PingReply {
                    rtt_us: u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1),
                }),
            );
        }
        Request::FindPeer { peer, reply } => {
            let found = net.find_peer(peer.peer).await;
            answer(
                reply,
                found.map(|addresses| FindPeerReply {
                    addresses: addresses.iter().map(ToString::to_string).collect(),
                }),
            );
        }
        Request::Status { reply } => answer(reply, net.status().await),
    }
}

/// `Dial`: connects within the request's time (10 s when it says 0, at most 120 s).
async fn dial(net: &Network, request: DialRequest) -> Result<DialReply, Error> {
    let DialRequest { target, timeout_ms } = request;
    let (peer, addrs) = parse_target(&target)?;
    let limit = match timeout_ms {
        0 => DEFAULT_DIAL_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)).min(MAX_DIAL_TIMEOUT),
    };
    let address = net.connect(peer, addrs, limit).await?;
    Ok(DialReply {
        peer_id: peer.to_string(),
        address: address.to_string(),
    })
}
