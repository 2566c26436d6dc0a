//! Joining with an invite, both sides. The joiner connects to the admin who signed the invite
//! (who must be online) and presents it; that admin checks the signature is its own, the
//! expiry, the uses it counted and that it is still an admin, signs the joiner in, and answers
//! the whole log, which the joiner checks from the create operation on.

use std::time::Duration;

use libp2p::PeerId;
use p2pos_kernel::{ErrorCode, ServiceError, events::now_ms};
use p2pos_proto::{
    group::v1::{Group, SyncOutcome},
    wire::v1::{GroupAsk, GroupJoinAsk, GroupRefusal, group_ask},
};
use p2pos_protocols::wire::write_message;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::info;

use crate::{
    invite::{self, MAX_ADDRS},
    log::Log,
    node::Node,
    op::{self, GroupId, Kind, OP_TYPE, Op},
    sync::{FRAME_WAIT, PROTOCOL, read_ops, refused, send_ops},
};

/// How long joining may take.
const JOIN_WAIT: Duration = Duration::from_secs(20);

impl Node {
    pub(crate) async fn serve_join<W>(
        &self,
        peer: PeerId,
        ask: GroupJoinAsk,
        io: &mut W,
    ) -> std::io::Result<()>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        match self.admit(peer, ask).await {
            Ok((group, ops)) => {
                send_ops(io, ops).await?;
                self.tell_members(group, Some(peer));
                Ok(())
            }
            Err((reason, why)) => write_message(io, &refused(reason, why), FRAME_WAIT).await,
        }
    }

    /// Checks `ask` and signs `peer` in; answers the whole log.
    async fn admit(
        &self,
        peer: PeerId,
        ask: GroupJoinAsk,
    ) -> Result<(GroupId, Vec<Vec<u8>>), (GroupRefusal, String)> {
        let GroupJoinAsk { invite, addrs } = ask;
        let invite = invite::open(&invite).map_err(|why| (GroupRefusal::InviteInvalid, why))?;
        if invite.signer != self.local {
            return Err((
                GroupRefusal::InviteInvalid,
                format!("the invite was signed by {}, not this node", invite.signer),
            ));
        }
        if invite.expires_ms <= now_ms() {
            return Err((GroupRefusal::InviteExpired, "the invite has expired".into()));
        }
        let group = invite.group;
        let state = self
            .book
            .with(group, Log::state)
            .ok_or((GroupRefusal::UnknownGroup, format!("no group {group} here")))?;
        if !state.admins.contains(&self.local) {
            return Err((
                GroupRefusal::NotAdmin,
                format!("this node is no longer an admin of group {group}"),
            ));
        }
        let already = if invite.admin {
            state.admins.contains(&peer)
        } else {
            state.members.contains(&peer)
        };
        if !already {
            self.book
                .use_invite(invite.id, invite.max_uses, invite.expires_ms)
                .map_err(|why| (GroupRefusal::InviteUsedUp, why))?;
            let kind = if invite.admin {
                Kind::AddAdmin(peer)
            } else {
                Kind::AddMember(peer)
            };
            let heads = self.book.with(group, Log::heads).unwrap_or_default();
            let body = op::body(Some(group), &heads, now_ms(), &kind);
            let signed = self
                .net
                .sign(OP_TYPE, body)
                .await
                .map_err(|e| (GroupRefusal::Full, e.to_string()))?;
            let op = Op::open(&signed).map_err(|e| (GroupRefusal::Full, e))?;
            let (_, rejected) = self
                .book
                .insert(group, vec![op])
                .map_err(|e| (GroupRefusal::Full, e.message))?;
            if let Some(why) = rejected.first() {
                return Err((
                    GroupRefusal::Full,
                    format!("cannot add the member: {why:?}"),
                ));
            }
            info!(%peer, %group, "a peer joined with an invite");
        }
        let addrs = addrs
            .iter()
            .take(MAX_ADDRS)
            .filter_map(|a| a.parse().ok())
            .collect();
        // The joiner's own claim: dialled this run, stored once a connection to it succeeds.
        self.net.hear(peer, addrs);
        let ops = self
            .book
            .with(group, |log| {
                log.ops().into_iter().map(|op| op.bytes.clone()).collect()
            })
            .unwrap_or_default();
        Ok((group, ops))
    }

    /// Joins with the invite `text`.
    pub async fn join(&self, text: &str) -> Result<Group, ServiceError> {
        let invite = invite::parse(text).map_err(ServiceError::invalid)?;
        if invite.signer == self.local {
            return Err(ServiceError::invalid("this node signed the invite"));
        }
        if invite.expires_ms <= now_ms() {
            return Err(ServiceError::new(
                ErrorCode::FailedPrecondition,
                "the invite has expired",
            ));
        }
        let group = invite.group;
        if self.book.is_member(group, &self.local) {
            return self.summary(group);
        }
        let addrs = self
            .net
            .ticket()
            .await
            .map(|t| t.addresses)
            .unwrap_or_default();
        let exchange = async {
            let unreached = |why: String| {
                ServiceError::unavailable(format!(
                    "cannot reach {}, the admin who signed the invite: {why}",
                    invite.signer
                ))
            };
            self.net
                .connect(invite.signer, invite.addrs.clone(), JOIN_WAIT / 2)
                .await
                .map_err(|e| unreached(e.to_string()))?;
            let stream = self
                .net
                .open_stream(invite.signer, PROTOCOL)
                .await
                .map_err(|e| unreached(e.to_string()))?;
            let mut io = stream.compat();
            let ask = GroupAsk {
                kind: Some(group_ask::Kind::Join(GroupJoinAsk {
                    invite: invite.signed.clone().into(),
                    addrs,
                })),
            };
            write_message(&mut io, &ask, FRAME_WAIT)
                .await
                .map_err(|e| unreached(e.to_string()))?;
            read_ops(&mut io)
                .await
                .map_err(|(outcome, why)| match outcome {
                    SyncOutcome::Refused => refusal(&why),
                    _ => unreached(why),
                })
        };
        let ops = tokio::time::timeout(JOIN_WAIT, exchange)
            .await
            .unwrap_or_else(|_| Err(ServiceError::unavailable("no answer in time")))?;
        let mut ops = ops.into_iter();
        let genesis = ops
            .next()
            .filter(|op| op.group.is_none() && GroupId::of(&op.hash) == group)
            .ok_or_else(|| ServiceError::unavailable("the admin answered another group"))?;
        let mut log = Log::new(genesis).map_err(|e| ServiceError::unavailable(format!("{e:?}")))?;
        log.insert_all(ops.collect());
        if !log.state().members.contains(&self.local) {
            return Err(ServiceError::unavailable(
                "the admin answered a log in which this node is not a member",
            ));
        }
        self.book.add(log)?;
        self.tell_members(group, Some(invite.signer));
        self.summary(group)
    }
}

/// The error for a refusal `why` (`Reason: message`).
fn refusal(why: &str) -> ServiceError {
    let code = if why.starts_with("InviteExpired") || why.starts_with("InviteUsedUp") {
        ErrorCode::FailedPrecondition
    } else if why.starts_with("NotAdmin") || why.starts_with("NotMember") {
        ErrorCode::PermissionDenied
    } else if why.starts_with("RateLimited") {
        ErrorCode::ResourceExhausted
    } else if why.starts_with("UnknownGroup") {
        ErrorCode::NotFound
    } else {
        ErrorCode::InvalidArgument
    };
    ServiceError::new(code, format!("the admin refused: {why}"))
}
