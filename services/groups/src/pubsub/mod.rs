//! Group pubsub: apps publish on a topic of their app in a group, and follow topics with a
//! stream. A post is a [`GroupPost`] in an envelope signed with the publishing node's key; it
//! travels by gossip confined to the group's members (the network refuses other followers and
//! rejects posts by non-members), and by catch-up over `/p2pos/pubsub/1`, where a node asks
//! members for the posts of a topic it lacks — when it starts following a topic, when a member
//! connects, and when a post shows it missed earlier ones. Each sender's posts reach the apps
//! in order; a publisher that asks gets a receipt from each member's node that has its post.
//!
//! # Layout
//! - [`hub`]: the [`Pubsub`](hub::Pubsub) handle: publishing, following, taking posts in.
//! - [`post`]: a post's limits and its signed envelope, opened and checked.
//! - [`topic`]: one topic's history and order (pure).
//! - [`wire`]: `/p2pos/pubsub/1`: receipts and catch-up, both sides.
//! - [`stored`]: posts and post numbers kept in the store tree `pubsub`.

pub mod hub;
pub mod post;
pub mod stored;
pub mod topic;
pub mod wire;
