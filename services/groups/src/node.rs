//! What this node does with its groups: founding, inviting, signing changes, leaving, and
//! telling the others; every operation is signed through the network (which alone holds the
//! node key) and checked by the log like any other before it is kept.

use std::{sync::Arc, time::Duration};

use libp2p::PeerId;
use p2pos_kernel::{ErrorCode, ServiceError, events::now_ms};
use p2pos_proto::group::v1::{Group, InviteReply, InviteRequest, Member, MembersReply};
use p2pos_protocols::{groups::Change, network::Network};
use tokio::sync::Semaphore;

use crate::{
    book::Book,
    invite::{self, DEFAULT_EXPIRY_SECS, INVITE_TYPE, MAX_EXPIRY_SECS, MAX_USES},
    log::{Log, Rejected},
    op::{self, GroupId, Kind, OP_TYPE, Op},
    rate::RateLimit,
};

/// Exchanges with other members at once, in all.
const SYNCS_AT_ONCE: usize = 8;

/// The groups side of this node: cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub(crate) book: Book,
    pub(crate) net: Network,
    pub(crate) local: PeerId,
    pub(crate) syncs: Arc<Semaphore>,
    pub(crate) rate: RateLimit,
}

fn not_member(group: GroupId) -> ServiceError {
    ServiceError::new(
        ErrorCode::PermissionDenied,
        format!("this node is not a member of group {group}"),
    )
}

fn not_admin(group: GroupId) -> ServiceError {
    ServiceError::new(
        ErrorCode::PermissionDenied,
        format!("this node is not an admin of group {group}"),
    )
}

impl Node {
    /// Over `book`, signing and talking through `net`.
    pub fn new(book: Book, net: Network) -> Self {
        Self {
            local: net.local_peer_id(),
            book,
            net,
            syncs: Arc::new(Semaphore::new(SYNCS_AT_ONCE)),
            rate: RateLimit::default(),
        }
    }

    /// The book of groups.
    pub fn book(&self) -> &Book {
        &self.book
    }

    /// `group` as the API shows it.
    pub fn summary(&self, group: GroupId) -> Result<Group, ServiceError> {
        self.book
            .with(group, |log| {
                let state = log.state();
                Group {
                    id: group.to_string(),
                    name: state.name.clone(),
                    founder: log.founder().to_string(),
                    members: state.members.len() as u32,
                    admins: state.admins.len() as u32,
                    member: state.members.contains(&self.local),
                    admin: state.admins.contains(&self.local),
                    ops: log.len() as u32,
                }
            })
            .ok_or_else(|| ServiceError::not_found(format!("no group {group} here")))
    }

    /// `group`'s members.
    pub fn members(&self, group: GroupId) -> Result<MembersReply, ServiceError> {
        let summary = self.summary(group)?;
        let members = self
            .book
            .with(group, |log| {
                let state = log.state();
                state
                    .members
                    .iter()
                    .map(|p| Member {
                        peer_id: p.to_string(),
                        admin: state.admins.contains(p),
                        local: *p == self.local,
                        name: state.names.get(p).cloned().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(MembersReply {
            group: Some(summary),
            members,
        })
    }

    async fn sign(&self, payload_type: &str, body: Vec<u8>) -> Result<Vec<u8>, ServiceError> {
        self.net
            .sign(payload_type, body)
            .await
            .map_err(|e| ServiceError::unavailable(e.to_string()))
    }

    /// Signs `kind` on top of `group`'s heads and keeps it.
    async fn act(&self, group: GroupId, kind: Kind) -> Result<Group, ServiceError> {
        let heads = self
            .book
            .with(group, Log::heads)
            .ok_or_else(|| ServiceError::not_found(format!("no group {group} here")))?;
        let body = op::body(Some(group), &heads, now_ms(), &kind);
        let signed = self.sign(OP_TYPE, body).await?;
        let op = Op::open(&signed).map_err(ServiceError::internal)?;
        let (_, rejected) = self.book.insert(group, vec![op])?;
        match rejected.into_iter().next() {
            None => {}
            Some(Rejected::NotAuthorized(_)) if matches!(kind, Kind::SetName(_)) => {
                return Err(not_member(group));
            }
            Some(Rejected::NotAuthorized(_)) => return Err(not_admin(group)),
            Some(Rejected::Full) => {
                return Err(ServiceError::new(
                    ErrorCode::ResourceExhausted,
                    format!("group {group}'s log holds the most operations it may"),
                ));
            }
            Some(why) => return Err(ServiceError::internal(format!("{why:?}"))),
        }
        self.tell_members(group, None);
        self.summary(group)
    }

    /// Founds a group named `name`.
    pub async fn create(&self, name: &str) -> Result<Group, ServiceError> {
        let name = op::check_name(name).map_err(ServiceError::invalid)?;
        let kind = Kind::Create {
            name,
            nonce: rand::random::<[u8; 16]>().to_vec(),
        };
        let signed = self
            .sign(OP_TYPE, op::body(None, &[], now_ms(), &kind))
            .await?;
        let op = Op::open(&signed).map_err(ServiceError::internal)?;
        let log = Log::new(op).map_err(|e| ServiceError::internal(format!("{e:?}")))?;
        let id = log.id();
        self.book.add(log)?;
        self.summary(id)
    }

    /// An invite to `group`, signed here.
    pub async fn invite(&self, request: InviteRequest) -> Result<InviteReply, ServiceError> {
        let InviteRequest {
            group,
            max_uses,
            expires_secs,
            admin,
        } = request;
        let group = self.book.resolve(&group)?;
        let summary = self.summary(group)?;
        if !summary.admin {
            return Err(not_admin(group));
        }
        let max_uses = if max_uses == 0 { 1 } else { max_uses };
        if max_uses > MAX_USES {
            return Err(ServiceError::invalid(format!(
                "an invite allows at most {MAX_USES} joins"
            )));
        }
        let secs = if expires_secs == 0 {
            DEFAULT_EXPIRY_SECS
        } else {
            expires_secs
        };
        if secs > MAX_EXPIRY_SECS {
            return Err(ServiceError::invalid(format!(
                "an invite lasts at most {MAX_EXPIRY_SECS} s"
            )));
        }
        let ticket = self
            .net
            .ticket()
            .await
            .map_err(|e| ServiceError::unavailable(e.to_string()))?;
        let expires_ms = now_ms() + secs * 1000;
        let body = invite::body(
            group,
            &summary.name,
            &ticket.addresses,
            expires_ms,
            max_uses,
            admin,
        );
        let signed = self.sign(INVITE_TYPE, body).await?;
        Ok(InviteReply {
            invite: invite::encode(&signed),
            expires_ms,
            max_uses,
        })
    }

    /// Removes `peer`, or makes it an admin or a plain member.
    pub async fn change(
        &self,
        change: Change,
        group: &str,
        peer: &str,
    ) -> Result<Group, ServiceError> {
        let group = self.book.resolve(group)?;
        let peer: PeerId = peer.trim().parse().map_err(|_| {
            ServiceError::invalid(format!(
                "{:?} is not a peer id",
                peer.chars().take(80).collect::<String>()
            ))
        })?;
        let state = self
            .book
            .with(group, Log::state)
            .ok_or_else(|| ServiceError::not_found(format!("no group {group} here")))?;
        if !state.admins.contains(&self.local) {
            return Err(not_admin(group));
        }
        let kind = match change {
            Change::Remove => Kind::RemoveMember(peer),
            Change::AddAdmin => Kind::AddAdmin(peer),
            Change::RemoveAdmin => Kind::RemoveAdmin(peer),
        };
        let needs_member = !matches!(change, Change::RemoveAdmin);
        if needs_member && !state.members.contains(&peer) {
            return Err(ServiceError::not_found(format!(
                "{peer} is not a member of group {group}"
            )));
        }
        if change == Change::RemoveAdmin && !state.admins.contains(&peer) {
            return Err(ServiceError::not_found(format!(
                "{peer} is not an admin of group {group}"
            )));
        }
        let changed = self.act(group, kind).await?;
        if change == Change::Remove {
            // Its node learns it is out when it next asks a member: it is asked to, now (our
            // heads, unknown to it, make it ask; the refusal carries the removal).
            let node = self.clone();
            tokio::spawn(async move {
                let _ = node.pull(peer, group).await;
            });
        }
        Ok(changed)
    }

    /// Renames `group`.
    pub async fn rename(&self, group: &str, name: &str) -> Result<Group, ServiceError> {
        let group = self.book.resolve(group)?;
        let name = op::check_name(name).map_err(ServiceError::invalid)?;
        self.act(group, Kind::Rename(name)).await
    }

    /// Joins with `invite` and, with a `name` (not empty), names this node in the group right
    /// after (the name is checked before joining).
    pub async fn join_named(&self, invite: &str, name: &str) -> Result<Group, ServiceError> {
        if name.is_empty() {
            return self.join(invite).await;
        }
        let name = op::check_member_name(name).map_err(ServiceError::invalid)?;
        let group = self.join(invite).await?;
        self.set_name(&group.id, &name).await.map_err(|e| {
            ServiceError::new(
                e.code,
                format!(
                    "joined group {}, but could not name this node {name:?}: {}",
                    group.id, e.message
                ),
            )
        })
    }

    /// Names this node `name` within `group` (any member may).
    pub async fn set_name(&self, group: &str, name: &str) -> Result<Group, ServiceError> {
        let name = op::check_member_name(name).map_err(ServiceError::invalid)?;
        let group = self.book.resolve(group)?;
        if !self.book.is_member(group, &self.local) {
            return Err(not_member(group));
        }
        self.act(group, Kind::SetName(name)).await
    }

    /// The group `group` names (its id or its name here) and, with `name`, the member that
    /// holds that short name in it. A group id this node does not hold is taken as it is
    /// when no member is named (the peer's node judges a channel in it).
    pub fn resolve(
        &self,
        group: &str,
        name: Option<&str>,
    ) -> Result<(GroupId, Option<PeerId>), ServiceError> {
        let Some(name) = name else {
            return match self.book.resolve(group) {
                Ok(id) => Ok((id, None)),
                Err(e) => group
                    .parse::<GroupId>()
                    .map(|id| (id, None))
                    .map_err(|()| e),
            };
        };
        let name = op::check_member_name(name).map_err(ServiceError::invalid)?;
        let id = self.book.resolve(group)?;
        let state = self
            .book
            .with(id, Log::state)
            .ok_or_else(|| ServiceError::not_found(format!("no group {id} here")))?;
        match state.named(&name).as_slice() {
            [one] => Ok((id, Some(*one))),
            [] => Err(ServiceError::not_found(format!(
                "no member of group {:?} ({id}) is named {name:?} here",
                state.name
            ))),
            many => Err(ServiceError::invalid(format!(
                "the name {name:?} is ambiguous in group {:?} ({id}): members {} all hold it; \
                 name the peer by its id",
                state.name,
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ))),
        }
    }

    /// Whether a channel in `group` (an id) from `peer` may be taken: `peer` and this node
    /// are both members of it now, as this node knows. The refusal says why.
    pub fn admit_channel(&self, group: &str, peer: &PeerId) -> Result<(), ServiceError> {
        let denied = |why: String| ServiceError::new(ErrorCode::PermissionDenied, why);
        let local = self.local;
        let id: GroupId = group.parse().map_err(|()| {
            denied(format!(
                "{:?} is not a group id",
                group.chars().take(40).collect::<String>()
            ))
        })?;
        let state = self
            .book
            .with(id, Log::state)
            .ok_or_else(|| denied(format!("peer {local} is not in group {id}")))?;
        if !state.members.contains(&local) {
            return Err(denied(format!(
                "peer {local} is no longer a member of group {id}"
            )));
        }
        if !state.members.contains(peer) {
            return Err(denied(format!(
                "peer {peer} is not a member of group {id} (as peer {local} knows it)"
            )));
        }
        Ok(())
    }

    /// Leaves `group`: a signed removal of this node goes to the members (within a few
    /// seconds), then the group is forgotten here.
    pub async fn leave(&self, group: &str) -> Result<(), ServiceError> {
        let group = self.book.resolve(group)?;
        if self.book.is_member(group, &self.local) {
            self.act(group, Kind::RemoveMember(self.local)).await?;
            let told = self.sync_all(group);
            let _ = tokio::time::timeout(Duration::from_secs(5), told).await;
        }
        self.book.forget(group)
    }
}
