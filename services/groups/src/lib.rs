//! Groups: overlay networks whose member list is a log of membership operations, each signed
//! by the node key of an admin of its moment and naming the heads its signer saw (a DAG),
//! replicated between members over `/p2pos/group/1` and checked by every member with no
//! server. Answers `p2pos.group.v1`.
//!
//! # Layout
//! - [`op`]: one signed operation, opened and checked; group ids.
//! - [`log`]: a group's DAG of operations and the pure rule that makes its member list.
//! - [`invite`]: invites, signed by an admin, as copy-pasteable strings.
//! - [`book`]: the groups this node holds, kept in the store tree `groups`, and invite uses.
//! - [`sync`]: `/p2pos/group/1`, both sides: joining, and exchanging heads and operations.
//! - [`service`]: the actor answering `p2pos.group.v1`, and its child spec.



pub mod log;
pub mod op;




