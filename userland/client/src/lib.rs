//! Client SDK for P2P OS: how any app, tool or script reaches its local node, over gRPC only.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use p2pos_client::{Client, Target, TargetOptions};
//! use p2pos_proto::node::v1::GetInfoRequest;
//!
//! let target = Target::resolve(TargetOptions::default())?; // flags > env > data dir
//! let client = Client::connect(&target).await?;
//! let info = client.node().get_info(GetInfoRequest {}).await?.into_inner();
//! println!("{}", info.peer_id);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`target`]: where the gateway is and which token to present ([`Target`], [`Gateway`],
//!   [`default_data_dir`]), from flags, environment variables and the node's data directory.
//! - [`client`]: the connected [`Client`] and its per-service gRPC clients, with the token
//!   added to every call by [`Auth`].
//! - [`channel`]: channels as a sink and a stream of frames ([`Channel`]), over a data socket
//!   by default, or over the call.
//! - `data_socket`: a channel's frames over its data socket.
//! - [`error`]: [`Error`] and [`describe_status`], readable one-line messages.
//! - [`messages`]: messages sent exactly once with an idempotency key ([`KeyedMessage`],
//!   [`Client::send_until_answered`]).
//! - [`session`]: an app's session read as [`SessionUpdate`]s.
//! - `token_file`: the node's admin token file, read again when the node rewrote it.

pub mod channel;
pub mod client;
mod data_socket;
pub mod error;
pub mod messages;
pub mod session;
pub mod target;
mod token_file;

pub use channel::{Channel, ChannelReceiver, ChannelSender};
pub use client::{Auth, AuthChannel, Client, MAX_MESSAGE_SIZE};
pub use error::{Error, describe_status};
pub use messages::{KeyedMessage, MAX_IDEMPOTENCY_KEY};
pub use session::{SessionUpdate, next_update};
pub use target::{
    DATA_DIR_ENV, GATEWAY_ENV, Gateway, SOCKET_FILE, TOKEN_ENV, TOKEN_FILE, Target, TargetOptions,
    default_data_dir,
};
