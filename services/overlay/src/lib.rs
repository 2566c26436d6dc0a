//! The P2P OS overlay service: the app layer of the peer-to-peer network — app sessions,
//! channels between copies of an app, store-and-forward messages, services that apps provide
//! (found through the DHT, called, opened as channels) — on the network
//! handle that the network service provides (`p2pos_protocols::network::Network`).
//!
//! Three parts, each owning its state behind its own messages: the sessions part, the actor
//! [`OverlayService`] (app sessions, channels and those waiting to be accepted; it holds the
//! guards of the inbound protocols `/p2pos/channel/1`, `/p2pos/msg/1`, `/p2pos/call/2` and its
//! tasks, all dropped when it goes); the service registry, an actor of its own
//! (`p2pos.service.v1` but for channels to services); and messages (`Send`, `Receive`, `Ack`
//! with the mailbox and delivery), a handle reached straight from the kernel's route. Channel
//! and message bytes flow in tasks, never through an actor's mailbox.
//!
//! # Layout
//! - [`config`]: the `[overlay]` table of the node's configuration.
//! - [`service`]: the actor's [`child_spec`] and life cycle, and how requests reach it.
//! - [`state`]: what the actor owns; the parts below extend it, and none imports a part that
//!   imports it back.
//! - `sessions`: the live sessions of each app.
//! - `announced`: what an inbound channel holds until it is accepted.
//! - `apps`: the apps protocol (sessions, channels, `Send`, `Receive`, `Ack`, `ListApps`).
//! - `registry`: the service registry's actor, `p2pos.service.v1`: services registered by
//!   apps, announced in and found through the DHT, unary calls over `/p2pos/call/2`.
//! - `service_channels`: channels to services (the sessions part's, reading the registry's
//!   providers).
//! - `channel`: opening and accepting `/p2pos/channel/1` channels.
//! - `pending`: inbound channels announced to a session, until accepted or expired.
//! - `local`: channels between two sessions on this node, through an in-memory pipe.
//! - `counted`: open channels counted against `max_channels` for as long as their bytes live.
//! - `inbound`: the receiving side of channels and messages.
//! - `messages`: `Send`, `Receive`, `Ack`: a handle of their own, reached straight from the
//!   kernel's route, every store write off the async threads.
//! - `delivery`: the sending side of `/p2pos/msg/1`, one task per peer with mail.
//! - `mailbox`: the store layout of apps, outbox and inbox: exactly once between nodes, at
//!   least once (until acknowledged) to the app.
//! - `task`: tasks that answer one request.
//! - [`error`]: the overlay's [`Error`] and its one mapping to `ServiceError`.

mod announced;
mod apps;
mod channel;
pub mod config;
mod counted;
mod delivery;
pub mod error;
mod inbound;
mod local;
mod mailbox;
mod messages;
mod pending;
mod registry;
pub mod service;
mod service_channels;
mod sessions;
pub mod state;
mod task;

pub use config::Config;
pub use error::Error;
pub use service::{NAME, STORE_CONTENTS, child_spec};
pub use state::OverlayService;
