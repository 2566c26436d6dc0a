//! Groups: overlay networks whose member list is a log of membership operations, each signed
//! by the node key of an admin of its moment and naming the heads its signer saw (a DAG),
//! replicated between members over `/p2pos/group/1` and checked by every member with no
//! server, and pubsub confined to each group's members. Answers `p2pos.group.v1`; other services ask whether a peer is a member with
//! `groups::Request::IsMember`.
//!
//! # Layout
//! - [`config`]: the `[groups]` table of the node's configuration.
//! - [`op`]: one signed operation, opened and checked; group ids.
//! - [`log`]: a group's DAG of operations and the pure rule that makes its member list.
//! - [`invite`]: invites, signed by an admin, as copy-pasteable strings.
//! - [`book`]: the groups this node holds, kept in the store tree `groups`, and invite uses.
//! - [`node`]: what this node does: found, invite, sign changes, leave.
//! - [`rate`]: asks per peer, limited.
//! - [`sync`]: `/p2pos/group/1`: exchanging heads and operations with members.
//! - [`pubsub`]: topics per group and app: publishing, following, catch-up, receipts.
//! - `join`: joining with an invite, both sides.
//! - [`service`]: the actor answering `p2pos.group.v1`, and its child spec.

pub mod book;
pub mod config;
pub mod invite;
mod join;
pub mod log;
pub mod node;
pub mod op;
pub mod pubsub;
pub mod rate;
pub mod service;
pub mod sync;

pub use config::Config;
pub use service::{STORE_CONTENTS, child_spec};
