//! `/p2pos/whois/1`: finding a peer through the peers connected to it. A node behind a NAT is
//! in no routing table, and its address record may not have reached the DHT yet (or the DHT is
//! small, or off); but its relay — and any peer connected to it — can reach it. A look-up of a
//! peer asks up to [`MAX_ASKED`] connected peers (relays first) side by side with the DHT.
//! An asked peer connected to the one asked about asks it in turn for its own record, which
//! that peer signs on the spot (so it is fresh: it has the relayed addresses of reservations
//! made since); failing that it answers with the record it holds (the one identify brought, or
//! the one it stores for the DHT). A node asked about itself answers with its own record; a
//! node never asks further than the peer asked about, so asks do not spread. The asker checks
//! the record (signature, the peer named) before dialling its addresses: an answering peer can
//! withhold a record, never make one up.
//!
//! The server side answers within the accept loop's limits (streams at once in all and per
//! peer, a frame of 4 KiB).

use std::time::Duration;

use bytes::Bytes;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol,
    core::{PeerRecord, SignedEnvelope},
    kad::store::RecordStore,
};
use libp2p_stream::Control;
use p2pos_proto::wire::v1::{WhoisAnswer, WhoisAsk};
use p2pos_protocols::{
    network::{Accepting, Error, InboundStream, Limits, Network},
    wire::{self, read_message, write_message},
};
use tokio::sync::mpsc;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::debug;

use crate::{
    event_loop::EventLoop,
    nat::Answer,
    peer_records::{fresh, key_of},
    peers::is_dialable,
    scope::{is_relayed, usable},
};

/// `/p2pos/whois/1`.
pub(crate) const WHOIS: StreamProtocol = StreamProtocol::new(wire::WHOIS_PROTOCOL);
/// Most connected peers asked about one peer.
const MAX_ASKED: usize = 4;
/// How long an asked peer may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the peer asked about may take to answer the peer connected to it (within the
/// asker's [`ASK_TIMEOUT`]).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Most asks in flight at once (each a task of its own).
const MAX_ASKS_IN_FLIGHT: usize = 64;
/// How long this node's own record, signed for a whois answer, is answered again.
const OWN_RECORD_REUSE: Duration = Duration::from_secs(5 * 60);
/// Most addresses taken from one record.
const MAX_ADDRS: usize = 8;

/// Serves `/p2pos/whois/1` until the guard is dropped; `control` opens the streams of asks
/// passed on.
pub(crate) fn serve(network: &Network, control: Control) -> Result<Accepting, Error> {
    let limits = Limits {
        total: 32,
        per_peer: 2,
        max_frame: wire::MAX_CONTROL_FRAME,
        idle: ASK_TIMEOUT,
    };
    let answering = network.clone();
    network.accept(
        WHOIS,
        limits,
        move |peer, stream| answer(answering.clone(), control.clone(), peer, stream),
        // Past the limits the stream is dropped: the asker sees a reset and asks elsewhere.
        |_, _, _| None::<std::future::Ready<()>>,
    )
}

async fn answer(network: Network, control: Control, from: PeerId, stream: InboundStream) {
    let max = stream.max_frame();
    let mut stream = stream.compat();
    let ask: WhoisAsk = match read_message(&mut stream, max, ASK_TIMEOUT).await {
        Ok(ask) => ask,
        Err(e) => {
            debug!(%from, "a whois ask that does not read: {e}");
            return;
        }
    };
    let Ok(about) = PeerId::from_bytes(&ask.peer_id) else {
        debug!(%from, "a whois ask for no valid peer id");
        return;
    };
    let (held, connected) = network
        .signed_record_of(about)
        .await
        .unwrap_or((None, false));
    // Connected to the peer asked about (not this node itself, which signed its own): its own
    // record, fresh, or failing that the one held.
    let fresh = match connected && about != network.local_peer_id() && about != from {
        true => ask_peer(control, about, about).await,
        false => None,
    };
    let record = fresh
        .or(held)
        .filter(|r| r.len() <= wire::MAX_CONTROL_FRAME - 16)
        .unwrap_or_default();
    let answer = WhoisAnswer {
        signed_record: record,
    };
    if let Err(e) = write_message(&mut stream, &answer, ASK_TIMEOUT).await {
        debug!(%from, "cannot answer a whois ask: {e}");
        return;
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
}

/// Asks `from` for `about`'s record, within [`FORWARD_TIMEOUT`] when `from` is `about`
/// itself (asked on behalf of another) and [`ASK_TIMEOUT`] otherwise.
async fn ask_peer(mut control: Control, from: PeerId, about: PeerId) -> Option<Bytes> {
    let limit = match from == about {
        true => FORWARD_TIMEOUT,
        false => ASK_TIMEOUT,
    };
    let asked = async {
        let stream = control
            .open_stream(from, WHOIS)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut io = stream.compat();
        let ask = WhoisAsk {
            peer_id: about.to_bytes().into(),
        };
        write_message(&mut io, &ask, limit).await?;
        let answer: WhoisAnswer = read_message(&mut io, wire::MAX_CONTROL_FRAME, limit).await?;
        Ok::<_, std::io::Error>(answer.signed_record)
    };
    match tokio::time::timeout(limit, asked).await {
        Ok(Ok(record)) if !record.is_empty() => Some(record),
        Ok(Ok(_)) => None,
        Ok(Err(e)) => {
            debug!(%from, %about, "whois ask failed: {e}");
            None
        }
        Err(_) => None,
    }
}

/// Asks `from` for `about`'s record; the answer goes to `answers`.
async fn ask(control: Control, from: PeerId, about: PeerId, answers: mpsc::Sender<Answer>) {
    let record = ask_peer(control, from, about).await;
    let _ = answers
        .send(Answer {
            about,
            from,
            record,
        })
        .await;
}

/// The peer record in a signed envelope, in either payload type (the interop one, or the
/// legacy one of rust-libp2p's identify), if its signature verifies.
fn peer_record(bytes: &[u8]) -> Option<PeerRecord> {
    let envelope = SignedEnvelope::from_protobuf_encoding(bytes).ok()?;
    PeerRecord::from_signed_envelope_interop(envelope.clone())
        .or_else(|_| PeerRecord::from_signed_envelope(envelope))
        .ok()
}

impl EventLoop {
    /// The record this node holds for `peer` — its own, signed now, if `peer` is this node;
    /// else the one `peer` sent through identify while connected, else the one stored here
    /// for the DHT — and whether `peer` is connected.
    pub(crate) fn signed_record_of(&mut self, peer: PeerId) -> (Option<Bytes>, bool) {
        if peer == *self.swarm.local_peer_id() {
            return (self.own_record(), true);
        }
        let connected = self.connections.contains_key(&peer);
        if let Some(record) = self.signed_records.get(&peer) {
            return (Some(record.clone()), connected);
        }
        let stored = self
            .swarm
            .behaviour_mut()
            .kad
            .as_mut()
            .and_then(|kad| kad.store_mut().get(&key_of(&peer)).map(|r| r.value.clone()));
        (stored.map(Bytes::from), connected)
    }

    /// This node's own record, signed again only when its addresses changed or the last
    /// signature is [`OWN_RECORD_REUSE`] old: asks cannot make the swarm task sign at their
    /// pace.
    fn own_record(&mut self) -> Option<Bytes> {
        let addrs = self.advertised_addrs();
        if let Some((at, signed_for, record)) = &self.published.own
            && *signed_for == addrs
            && at.elapsed() < OWN_RECORD_REUSE
        {
            return Some(record.clone());
        }
        let record: Bytes = PeerRecord::new_interop(&self.keypair, addrs.clone())
            .ok()?
            .into_signed_envelope()
            .into_protobuf_encoding()
            .into();
        self.published.own = Some((tokio::time::Instant::now(), addrs, record.clone()));
        Some(record)
    }

    /// Asks up to [`MAX_ASKED`] connected peers — relays first — for `peer`'s record.
    pub(crate) fn ask_around(&mut self, peer: PeerId) {
        if self.whois_pending.contains_key(&peer) {
            return;
        }
        let in_flight: usize = self.whois_pending.values().sum();
        let room = MAX_ASKS_IN_FLIGHT.saturating_sub(in_flight).min(MAX_ASKED);
        let mut asked: Vec<PeerId> = self
            .connections
            .keys()
            .filter(|p| **p != peer)
            .copied()
            .collect();
        asked.sort_by_key(|p| !self.relays.is_known(p));
        asked.truncate(room);
        if asked.is_empty() {
            return;
        }
        self.whois_pending.insert(peer, asked.len());
        for from in asked {
            tokio::spawn(ask(
                self.stream_control.clone(),
                from,
                peer,
                self.whois_answers.clone(),
            ));
        }
    }

    /// An asked peer answered (or did not): dials what it found, or, once every asked peer
    /// answered nothing, lets the look-up end.
    pub(crate) fn on_whois_answer(&mut self, answer: Answer) {
        let Answer {
            about,
            from,
            record,
        } = answer;
        let Some(left) = self.whois_pending.get_mut(&about) else {
            return;
        };
        *left -= 1;
        if *left == 0 {
            self.whois_pending.remove(&about);
        }
        // What can serve this node: near addresses only if the answering peer is as near.
        let via = self.connection_addrs(&from);
        let found: Vec<Multiaddr> = record
            .as_deref()
            .and_then(peer_record)
            .filter(|r| r.peer_id() == about && fresh(r.seq()))
            .map(|r| {
                r.addresses()
                    .iter()
                    .filter(|a| is_dialable(a) && usable(a, &via, self.trust_private))
                    .take(MAX_ADDRS)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        debug!(%about, %from, found = found.len(), relayed = found.iter().filter(|a| is_relayed(a)).count(), "whois answered");
        if !found.is_empty() {
            self.book.hear(about, found.clone());
        }
        self.looked_up(about, found);
    }
}
