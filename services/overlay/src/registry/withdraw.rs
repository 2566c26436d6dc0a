//! Telling callers that a service stopped here: the registry remembers which peers called each
//! service provided here recently, and when the service's registration ends (unregistered, or
//! its app's last session ended) it sends each of them a withdrawal notice over
//! `/p2pos/call/2` (a `CallFrame` with `withdrawn` set). A node that hears one skips this node
//! as a provider of the service for a while instead of finding its stale DHT record and trying
//! it. A notice is a courtesy: one that cannot be delivered in [`NOTICE_TIME`] is dropped.
//!
//! Bounds: [`MAX_CALLERS_PER_SERVICE`] callers per registered service (the oldest go first),
//! kept [`CALLER_MEMORY`]; at most [`MAX_NOTICE_TASKS`] notifying tasks at once (a withdrawal
//! past that tells nobody), each sending its notices one after the other.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use libp2p::PeerId;
use p2pos_proto::wire::v1::{CallAnswer, CallFrame};
use p2pos_protocols::{
    network::Network,
    wire::{read_message, write_message},
};
use tokio::{io::AsyncWriteExt, sync::Semaphore, time::Instant};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::debug;

use super::call::{CALL_PROTOCOL, CALL_TAKEN, MAX_CALL_FRAME};

/// How long a caller is remembered after its last call: as long as the DHT keeps a provider
/// record after its last publication.
pub(crate) const CALLER_MEMORY: Duration = Duration::from_secs(5 * 60);
/// Most callers remembered per service.
pub(crate) const MAX_CALLERS_PER_SERVICE: usize = 64;
/// Most tasks sending notices at once.
pub(crate) const MAX_NOTICE_TASKS: usize = 8;
/// How long delivering one notice (connecting included) may take.
pub(crate) const NOTICE_TIME: Duration = Duration::from_secs(2);

/// The peers that called each service provided here recently.
pub(crate) struct RecentCallers {
    by_service: BTreeMap<String, HashMap<PeerId, Instant>>,
    tasks: Arc<Semaphore>,
}

impl Default for RecentCallers {
    fn default() -> Self {
        Self {
            by_service: BTreeMap::new(),
            tasks: Arc::new(Semaphore::new(MAX_NOTICE_TASKS)),
        }
    }
}

impl RecentCallers {
    /// `peer` called `service` (a service registered here: the map has at most one entry per
    /// registration).
    pub(crate) fn called(&mut self, service: &str, peer: PeerId) {
        let now = Instant::now();
        let callers = self.by_service.entry(service.to_owned()).or_default();
        if !callers.contains_key(&peer) && callers.len() >= MAX_CALLERS_PER_SERVICE {
            callers.retain(|_, at| at.elapsed() < CALLER_MEMORY);
            if callers.len() >= MAX_CALLERS_PER_SERVICE
                && let Some(oldest) = callers.iter().min_by_key(|(_, at)| **at).map(|(p, _)| *p)
            {
                callers.remove(&oldest);
            }
        }
        callers.insert(peer, now);
    }

    /// `service` is no longer provided here: the peers that called it recently are told so,
    /// from a task of its own.
    pub(crate) fn withdrawn(&mut self, service: &str, net: &Network) {
        let Some(callers) = self.by_service.remove(service) else {
            return;
        };
        let peers: Vec<PeerId> = callers
            .into_iter()
            .filter(|(_, at)| at.elapsed() < CALLER_MEMORY)
            .map(|(peer, _)| peer)
            .collect();
        if peers.is_empty() {
            return;
        }
        let Ok(permit) = self.tasks.clone().try_acquire_owned() else {
            debug!(%service, "too many withdrawal notices under way; its callers are not told");
            return;
        };
        let (service, net) = (service.to_owned(), net.clone());
        tokio::spawn(async move {
            let _permit = permit;
            for peer in peers {
                match tokio::time::timeout(NOTICE_TIME, notify(&net, peer, &service)).await {
                    Ok(Ok(())) => debug!(%peer, %service, "told a caller the service stopped"),
                    Ok(Err(e)) => debug!(%peer, %service, "cannot tell a caller: {e}"),
                    Err(_) => debug!(%peer, %service, "telling a caller took too long"),
                }
            }
        });
    }
}

/// Sends `peer` the notice that `service` is no longer provided here, and reads its answer.
async fn notify(net: &Network, peer: PeerId, service: &str) -> Result<(), String> {
    net.connect(peer, Vec::new(), NOTICE_TIME)
        .await
        .map_err(|e| e.to_string())?;
    let stream = net
        .open_stream(peer, CALL_PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    let mut io = stream.compat();
    let notice = CallFrame {
        service: service.to_owned(),
        from_app: String::new(),
        payload: bytes::Bytes::new(),
        timeout_ms: 0,
        withdrawn: true,
        certificates: false,
        publisher_keys: Vec::new(),
    };
    write_message(&mut io, &notice, NOTICE_TIME)
        .await
        .map_err(|e| e.to_string())?;
    io.shutdown().await.map_err(|e| e.to_string())?;
    let mut taken = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut io, &mut taken)
        .await
        .map_err(|e| e.to_string())?;
    if taken[0] != CALL_TAKEN {
        return Err(format!("the stream began with {:#04x}", taken[0]));
    }
    let answer: CallAnswer = read_message(&mut io, MAX_CALL_FRAME, NOTICE_TIME)
        .await
        .map_err(|e| e.to_string())?;
    match answer.code {
        0 => Ok(()),
        code => Err(format!("answered code {code}: {}", answer.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_per_service_are_bounded() {
        let mut callers = RecentCallers::default();
        for _ in 0..(MAX_CALLERS_PER_SERVICE * 3) {
            callers.called("echo/1", PeerId::random());
        }
        let peer = PeerId::random();
        callers.called("echo/1", peer);
        let of_echo = &callers.by_service["echo/1"];
        assert_eq!(of_echo.len(), MAX_CALLERS_PER_SERVICE);
        assert!(of_echo.contains_key(&peer), "the newest stays");
    }
}
