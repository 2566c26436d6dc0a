//! The P2P OS overlay service: this node's place in the peer-to-peer network (rust-libp2p:
//! TCP and QUIC, noise, yamux, identify, ping, Kademlia, mDNS, AutoNAT, circuit relay v2,
//! DCUtR, connection limits), tickets, app channels and store-and-forward messages.
//!
//! One actor, [`OverlayService`], answers `p2pos.overlay.v1`, the apps protocol and
//! `p2pos.service.v1` (services that apps provide, and port forwarding). It
//! holds a handle to one tokio task that owns the libp2p swarm (commands in on a bounded
//! channel, answers out on oneshots) and aborts that task, and every other overlay task, when
//! it goes. Channel and message bytes flow in tasks, never through the actor's mailbox.
//!
//! # Layout
//! - [`service`]: the actor, its [`child_spec`], life cycle and the overlay protocol.
//! - [`overlay_api`]: `p2pos.overlay.v1` requests, one exhaustive `match`.
//! - `apps`: the apps protocol (sessions, channels, `Send`, `Receive`, `Ack`, `ListApps`).
//! - `registry`: `p2pos.service.v1`: services registered by apps, announced in and found
//!   through the DHT, unary calls over `/p2pos/call/2`, channels to services.
//! - `forward`: port forwarding: exposures (a loopback TCP service published as a service) and
//!   forwards (a loopback listener tunnelled through service channels).
//! - `network`: the swarm task, its behaviour, connects and DHT look-ups, and what it
//!   remembers (known peers, listen ports).
//! - `channel`: opening and accepting `/p2pos/channel/1` channels.
//! - `pending`: inbound channels announced to a session, until accepted or expired.
//! - `local`: channels between two sessions on this node, through an in-memory pipe.
//! - `counted`: open channels counted against `max_channels` for as long as their bytes live.
//! - `inbound`: accept loops and the receiving side of channels and messages.
//! - `delivery`: the sending side of `/p2pos/msg/1`, one task per peer with mail.
//! - `mailbox`: the store layout of apps, outbox and inbox: exactly once between nodes, at
//!   least once (until acknowledged) to the app.
//! - [`ticket`]: tickets and the parser of every way to name a peer.
//! - `frame`: length-bounded frames; `task`: tasks that end with their owner.
//! - [`error`]: the overlay's [`Error`] and its one mapping to `ServiceError`.

mod apps;
mod channel;
mod counted;
mod delivery;
pub mod error;
mod forward;
mod frame;
mod inbound;
mod local;
mod mailbox;
mod network;
pub mod overlay_api;
mod pending;
mod registry;
pub mod service;
mod task;
pub mod ticket;

pub use error::Error;
pub use service::{NAME, OverlayService, child_spec};
