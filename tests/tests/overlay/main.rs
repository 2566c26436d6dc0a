//! The network and overlay services in-process: real kernels (temporary data directories,
//! 127.0.0.1, mDNS off) that run the network, the overlay and a probe capturing the service
//! context, driven through the kernel's registry exactly as the gateway drives them.
//!
//! - `common`: the harness (nodes, sessions, channels, waiting with deadlines).
//! - `channels_and_messages`: tickets, dialing, channels, store-and-forward, restarts.
//! - `services`: registering, finding, calling and opening channels to services.
//! - `providers`: providers under load and going away.

mod channels_and_messages;
mod common;
mod network_handle;
mod providers;
mod services;
