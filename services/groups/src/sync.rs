//! `/p2pos/group/1`: one ask per stream. A sync ask carries the asker's heads of a group; a
//! member's node answers every operation the asker lacks (in frames of at most
//! [`OPS_PER_FRAME`]), and fetches in turn from the asker when the heads show it lacks some.
//! Only members are answered: a peer that is not a member in this node's log — never was, or
//! was removed — is refused. Asks are rate-limited per peer.

use std::{collections::HashSet, time::Duration};

use futures::future::join_all;
use libp2p::{PeerId, StreamProtocol};
use p2pos_proto::{
    group::v1::{PeerSync, SyncOutcome},
    wire::v1::{
        GroupAnswer, GroupAsk, GroupOps, GroupRefusal, GroupRefused, GroupSyncAsk, group_answer,
        group_ask,
    },
};
use p2pos_protocols::{
    network::InboundStream,
    wire::{read_message, write_message},
};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::debug;

use crate::{
    node::Node,
    op::{GroupId, Hash, Kind, Op},
};

/// `/p2pos/group/1`.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pos/group/1");
/// Largest frame either side sends.
pub const MAX_FRAME: usize = 256 * 1024;
/// Operations per answer frame.
pub const OPS_PER_FRAME: usize = 64;
/// How long one side may take to send a frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);
/// Most heads an ask names.
const MAX_HEADS: usize = 64;
/// Operations that removed an asker, told it with its refusal, at most.
const MAX_REMOVAL: usize = 8;
/// How long one exchange with a member may take.
const EXCHANGE_WAIT: Duration = Duration::from_secs(20);

/// A refusal answer.
pub(crate) fn refused(reason: GroupRefusal, message: impl Into<String>) -> GroupAnswer {
    GroupAnswer {
        kind: Some(group_answer::Kind::Refused(GroupRefused {
            reason: reason as i32,
            message: message.into(),
            removal: Vec::new(),
        })),
    }
}

/// Writes `ops` as answer frames (one empty frame when there are none).
pub(crate) async fn send_ops<W>(io: &mut W, ops: Vec<Vec<u8>>) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let chunks: Vec<&[Vec<u8>]> = ops.chunks(OPS_PER_FRAME).collect();
    if chunks.is_empty() {
        let answer = GroupAnswer {
            kind: Some(group_answer::Kind::Ops(GroupOps::default())),
        };
        return write_message(io, &answer, FRAME_WAIT).await;
    }
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let answer = GroupAnswer {
            kind: Some(group_answer::Kind::Ops(GroupOps {
                ops: chunk.iter().map(|b| b.clone().into()).collect(),
                more: i < last,
            })),
        };
        write_message(io, &answer, FRAME_WAIT).await?;
    }
    Ok(())
}

/// Reads answer frames until the last: the operations, or the refusal.
pub(crate) async fn read_ops<R>(io: &mut R) -> Result<Vec<Op>, (SyncOutcome, String)>
where
    R: tokio::io::AsyncRead + Unpin,
{
    read_answer(io)
        .await
        .map_err(|(outcome, why, _)| (outcome, why))
}

/// Reads answer frames until the last: the operations, or the refusal with the operations that
/// removed the asker, if it was told them.
async fn read_answer<R>(io: &mut R) -> Result<Vec<Op>, (SyncOutcome, String, Vec<Op>)>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut ops = Vec::new();
    loop {
        let answer: GroupAnswer = read_message(io, MAX_FRAME, FRAME_WAIT)
            .await
            .map_err(|e| (SyncOutcome::Unreached, e.to_string(), Vec::new()))?;
        match answer.kind {
            Some(group_answer::Kind::Ops(GroupOps { ops: frame, more })) => {
                for bytes in frame {
                    match Op::open(&bytes) {
                        Ok(op) => ops.push(op),
                        Err(e) => debug!("a bad operation in an answer: {e}"),
                    }
                }
                if !more {
                    return Ok(ops);
                }
                if ops.len() > crate::log::MAX_OPS {
                    return Err((
                        SyncOutcome::Refused,
                        "too many operations".into(),
                        Vec::new(),
                    ));
                }
            }
            Some(group_answer::Kind::Refused(GroupRefused {
                reason,
                message,
                removal,
            })) => {
                let reason = GroupRefusal::try_from(reason).unwrap_or_default();
                let removal = removal
                    .iter()
                    .take(MAX_REMOVAL)
                    .filter_map(|bytes| Op::open(bytes).ok())
                    .collect();
                return Err((
                    SyncOutcome::Refused,
                    format!("{reason:?}: {message}"),
                    removal,
                ));
            }
            None => return Err((SyncOutcome::Refused, "an empty answer".into(), Vec::new())),
        }
    }
}

impl Node {
    /// Serves one inbound stream.
    pub async fn serve(self, peer: PeerId, stream: InboundStream) {
        let max = stream.max_frame();
        let mut io = stream.compat();
        let ask: GroupAsk = match read_message(&mut io, max, FRAME_WAIT).await {
            Ok(ask) => ask,
            Err(e) => {
                debug!(%peer, "a bad group ask: {e}");
                return;
            }
        };
        let written = if !self.rate.allow(peer) {
            let why = refused(GroupRefusal::RateLimited, "too many asks; try again later");
            write_message(&mut io, &why, FRAME_WAIT).await
        } else {
            match ask.kind {
                Some(group_ask::Kind::Sync(ask)) => self.serve_sync(peer, ask, &mut io).await,
                Some(group_ask::Kind::Join(ask)) => self.serve_join(peer, ask, &mut io).await,
                None => {
                    let why = refused(GroupRefusal::BadAsk, "an empty ask");
                    write_message(&mut io, &why, FRAME_WAIT).await
                }
            }
        };
        if let Err(e) = written {
            debug!(%peer, "cannot answer a group ask: {e}");
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
    }

    async fn serve_sync<W>(
        &self,
        peer: PeerId,
        ask: GroupSyncAsk,
        io: &mut W,
    ) -> std::io::Result<()>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        let GroupSyncAsk { group, heads } = ask;
        let Some(group) = GroupId::from_bytes(&group) else {
            return write_message(
                io,
                &refused(GroupRefusal::BadAsk, "a bad group id"),
                FRAME_WAIT,
            )
            .await;
        };
        let heads: Vec<Hash> = heads
            .iter()
            .take(MAX_HEADS)
            .filter_map(|h| Hash::try_from(&h[..]).ok())
            .collect();
        let answer = self.book.with(group, |log| {
            if !log.state().members.contains(&peer) {
                // The asker may hold operations this node lacks: a former member, ones made
                // concurrently with its removal (an admin removed while it removed others); a
                // new member, its own joining while the admin that added it is away. Fetch
                // them (each is checked: only admins' signatures count), give nothing.
                let concurrent = heads.iter().any(|h| !log.contains(h));
                let mut why = refused(
                    GroupRefusal::NotMember,
                    format!("{peer} is not a member of group {group} here"),
                );
                // A former member is told what removed it, so that its node knows it is out.
                if let Some(group_answer::Kind::Refused(refusal)) = &mut why.kind {
                    refusal.removal = log
                        .ops()
                        .into_iter()
                        .filter(|op| op.kind == Kind::RemoveMember(peer))
                        .take(MAX_REMOVAL)
                        .map(|op| op.bytes.clone().into())
                        .collect();
                }
                return Err((why, concurrent));
            }
            let missing: Vec<Vec<u8>> = log
                .missing_for(&heads)
                .into_iter()
                .map(|op| op.bytes.clone())
                .collect();
            let behind = heads.iter().any(|h| !log.contains(h));
            Ok((missing, behind))
        });
        match answer {
            None => {
                let why = refused(GroupRefusal::UnknownGroup, format!("no group {group} here"));
                write_message(io, &why, FRAME_WAIT).await
            }
            Some(Err((why, concurrent))) => {
                if concurrent {
                    let node = self.clone();
                    tokio::spawn(async move {
                        let _ = node.pull(peer, group).await;
                    });
                }
                write_message(io, &why, FRAME_WAIT).await
            }
            Some(Ok((missing, behind))) => {
                if behind {
                    // The asker has operations this node lacks: fetch them.
                    let node = self.clone();
                    tokio::spawn(async move {
                        let _ = node.pull(peer, group).await;
                    });
                }
                send_ops(io, missing).await
            }
        }
    }

    /// Sends this node's heads of `group` to `peer` and takes what it lacks; answers how many
    /// operations were new.
    pub async fn pull(&self, peer: PeerId, group: GroupId) -> Result<u32, (SyncOutcome, String)> {
        let Ok(_permit) = self.syncs.acquire().await else {
            return Err((SyncOutcome::Unreached, "the service is stopping".into()));
        };
        let heads = self
            .book
            .with(group, |log| log.heads())
            .ok_or((SyncOutcome::Refused, format!("no group {group} here")))?;
        let exchange = async {
            self.net
                .connect(peer, Vec::new(), EXCHANGE_WAIT / 2)
                .await
                .map_err(|e| (SyncOutcome::Unreached, e.to_string(), Vec::new()))?;
            let stream = self.net.open_stream(peer, PROTOCOL).await.map_err(|e| {
                (
                    SyncOutcome::Unreached,
                    format!("no groups service there ({e})"),
                    Vec::new(),
                )
            })?;
            let mut io = stream.compat();
            let ask = GroupAsk {
                kind: Some(group_ask::Kind::Sync(GroupSyncAsk {
                    group: group.0.to_vec().into(),
                    heads: heads.iter().map(|h| h.to_vec().into()).collect(),
                })),
            };
            write_message(&mut io, &ask, FRAME_WAIT)
                .await
                .map_err(|e| (SyncOutcome::Unreached, e.to_string(), Vec::new()))?;
            read_answer(&mut io).await
        };
        let answer = tokio::time::timeout(EXCHANGE_WAIT, exchange)
            .await
            .unwrap_or_else(|_| {
                Err((
                    SyncOutcome::Unreached,
                    "no answer in time".into(),
                    Vec::new(),
                ))
            });
        let ops = match answer {
            Ok(ops) => ops,
            Err((outcome, why, removal)) => {
                // Refused as a former member: the operations that removed this node are kept
                // like any others (checked by the log), so that it knows it is out.
                if !removal.is_empty() {
                    let _ = self.book.insert(group, removal);
                }
                return Err((outcome, why));
            }
        };
        let (added, _) = self
            .book
            .insert(group, ops)
            .map_err(|e| (SyncOutcome::Refused, e.message))?;
        if added > 0 {
            self.tell_members(group, Some(peer));
        }
        Ok(added as u32)
    }

    /// The other members of `group`, as this node knows.
    fn others(&self, group: GroupId) -> Vec<PeerId> {
        self.book.others(group, &self.local)
    }

    /// Tells every other member (but `except`) of `group` this node's heads, in the
    /// background: each fetches what it lacks.
    pub fn tell_members(&self, group: GroupId, except: Option<PeerId>) {
        for peer in self.others(group) {
            if Some(peer) == except {
                continue;
            }
            let node = self.clone();
            tokio::spawn(async move {
                if let Err((outcome, why)) = node.pull(peer, group).await {
                    debug!(%peer, %group, "telling a member: {outcome:?}: {why}");
                }
            });
        }
    }

    /// Exchanges heads of `group` with every other member now.
    pub async fn sync_all(&self, group: GroupId) -> Vec<PeerSync> {
        let exchanges = self.others(group).into_iter().map(|peer| async move {
            let (outcome, message, received) = match self.pull(peer, group).await {
                Ok(n) => (SyncOutcome::Synced, String::new(), n),
                Err((outcome, why)) => (outcome, why, 0),
            };
            PeerSync {
                peer_id: peer.to_string(),
                outcome: outcome as i32,
                message,
                received,
            }
        });
        join_all(exchanges).await
    }

    /// A peer connected: exchange heads of every group it is a member of.
    pub fn connected(&self, peer: PeerId) {
        let seen: HashSet<GroupId> = self
            .book
            .ids()
            .into_iter()
            .filter(|g| self.book.is_member(*g, &peer) && self.book.is_member(*g, &self.local))
            .collect();
        for group in seen {
            let node = self.clone();
            tokio::spawn(async move {
                let _ = node.pull(peer, group).await;
            });
        }
    }
}
