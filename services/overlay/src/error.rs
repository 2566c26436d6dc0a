//! The overlay's one error type and its single, exhaustive mapping to [`ServiceError`].

use std::time::Duration;

use libp2p::PeerId;
use p2pos_kernel::{ErrorCode, ServiceError, store::StoreError};

/// Everything that can go wrong in the overlay, as the user should hear it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request envelope names no operation.
    #[error("the request names no operation (its `kind` is not set)")]
    MissingKind,
    /// A peer given as text is neither a ticket, a `/p2p/` multiaddr nor a peer id.
    #[error(
        "invalid peer {input:?}: {reason}; expected a ticket (p2pos...), a multiaddr ending in \
         /p2p/<peer id>, or a peer id (12D3KooW...)"
    )]
    InvalidTarget {
        /// What was given (shortened).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An app id outside `[A-Za-z0-9._-]{1,64}`.
    #[error("invalid app id {0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    InvalidAppId(String),
    /// The target is this node itself.
    #[error("{0} is this node's own peer id; name another peer")]
    SelfTarget(PeerId),
    /// No address for the peer, here or in the DHT.
    #[error("peer {0} not found in the DHT")]
    PeerNotFound(PeerId),
    /// The peer's addresses are known but no connection could be made.
    #[error("peer {peer} is not reachable: {reason}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// libp2p's reason.
        reason: String,
    },
    /// No session of the app lives on the peer.
    #[error("app '{app_id}' is not running on peer {peer}")]
    AppNotListening {
        /// The app.
        app_id: String,
        /// The peer.
        peer: PeerId,
    },
    /// The app has no live session on this node.
    #[error("app '{app_id}' has no open session on this node (open one with Apps.Session first)")]
    NoSession {
        /// The app.
        app_id: String,
    },
    /// A local channel names an app with no live session on this node.
    #[error("app '{app_id}' is not running on this node (it has no live session)")]
    NotRunningHere {
        /// The app.
        app_id: String,
    },
    /// The opener of a local channel gave up before the app accepted it.
    #[error(
        "the opener of channel {channel_id} to app '{app_id}' went away before it was accepted"
    )]
    OpenerGone {
        /// The app.
        app_id: String,
        /// The channel.
        channel_id: u64,
    },
    /// The peer never registered the app, so it dropped the message for good.
    #[error("app '{app_id}' is not registered on peer {peer}")]
    AppNotRegistered {
        /// The app.
        app_id: String,
        /// The peer.
        peer: PeerId,
    },
    /// The remote app did not accept the channel in time.
    #[error("app '{app_id}' on peer {peer} did not accept the channel within 30 s")]
    ChannelNotAccepted {
        /// The app.
        app_id: String,
        /// The peer.
        peer: PeerId,
    },
    /// The peer is at its channel limit (it answered `BUSY`).
    #[error("peer {peer} refused the channel: {message}")]
    ChannelRefused {
        /// The peer.
        peer: PeerId,
        /// The peer's words.
        message: String,
    },
    /// `AcceptChannel` named a channel that is not pending for that app.
    #[error(
        "no incoming channel {channel_id} for app '{app_id}' (channels must be accepted within \
         30 s of their announcement)"
    )]
    ChannelNotFound {
        /// The app.
        app_id: String,
        /// The channel.
        channel_id: u64,
    },
    /// A message payload over [`p2pos_kernel::wire::MAX_PAYLOAD`].
    #[error("message of {size} bytes exceeds the 1 MiB limit")]
    MessageTooLarge {
        /// The payload's size.
        size: usize,
    },
    /// This node has `Config::max_channels` channels open or waiting to be accepted.
    #[error("too many open channels (limit {limit}); close one and try again")]
    TooManyChannels {
        /// The limit.
        limit: usize,
    },
    /// A local limit is reached.
    #[error("too many {what} (the limit is {limit}); try again later")]
    Busy {
        /// What is limited.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The DHT is off, so a peer cannot be looked up.
    #[error("the DHT is turned off on this node (--no-kademlia); give the peer as a ticket")]
    DhtDisabled,
    /// An operation took too long.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// A peer sent something the protocol does not allow, or a stream broke.
    #[error("{protocol} with peer {peer} failed: {reason}")]
    Protocol {
        /// The peer.
        peer: PeerId,
        /// The protocol id.
        protocol: &'static str,
        /// What happened.
        reason: String,
    },
    /// The swarm task is gone (the service is stopping or restarting).
    #[error("the overlay's network task has stopped; try again in a moment")]
    NetworkStopped,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The swarm could not be built or started.
    #[error("cannot start the network: {0}")]
    Setup(String),
}

impl From<Error> for ServiceError {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::MissingKind
            | Error::InvalidTarget { .. }
            | Error::InvalidAppId(_)
            | Error::SelfTarget(_) => ErrorCode::InvalidArgument,
            Error::PeerNotFound(_) | Error::ChannelNotFound { .. } => ErrorCode::NotFound,
            Error::AppNotListening { .. }
            | Error::AppNotRegistered { .. }
            | Error::NoSession { .. }
            | Error::NotRunningHere { .. }
            | Error::DhtDisabled => ErrorCode::FailedPrecondition,
            Error::Unreachable { .. }
            | Error::Protocol { .. }
            | Error::OpenerGone { .. }
            | Error::NetworkStopped => ErrorCode::Unavailable,
            Error::ChannelNotAccepted { .. } | Error::Timeout { .. } => ErrorCode::DeadlineExceeded,
            Error::MessageTooLarge { .. }
            | Error::Busy { .. }
            | Error::TooManyChannels { .. }
            | Error::ChannelRefused { .. } => ErrorCode::ResourceExhausted,
            Error::Store(_) | Error::Setup(_) => ErrorCode::Internal,
        };
        ServiceError::new(code, err.to_string())
    }
}

/// Checks an app id: 1 to 64 characters of `[A-Za-z0-9._-]`.
pub(crate) fn validate_app_id(app_id: &str) -> Result<(), Error> {
    let ok = !app_id.is_empty()
        && app_id.len() <= 64
        && app_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidAppId(app_id.chars().take(80).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        let peer = PeerId::random();
        let code = |e: Error| ServiceError::from(e).code;
        assert_eq!(code(Error::MissingKind), ErrorCode::InvalidArgument);
        assert_eq!(code(Error::PeerNotFound(peer)), ErrorCode::NotFound);
        assert_eq!(
            code(Error::MessageTooLarge { size: 2 << 20 }),
            ErrorCode::ResourceExhausted
        );
        assert_eq!(
            code(Error::TooManyChannels { limit: 1 }),
            ErrorCode::ResourceExhausted
        );
        assert_eq!(
            code(Error::ChannelRefused {
                peer,
                message: "busy".into()
            }),
            ErrorCode::ResourceExhausted
        );
        let err = ServiceError::from(Error::AppNotListening {
            app_id: "chat".into(),
            peer,
        });
        assert_eq!(err.code, ErrorCode::FailedPrecondition);
        assert!(err.message.contains("'chat'"), "{}", err.message);
        let err = ServiceError::from(Error::NotRunningHere {
            app_id: "chat.voice".into(),
        });
        assert_eq!(err.code, ErrorCode::FailedPrecondition);
        assert_eq!(
            err.message,
            "app 'chat.voice' is not running on this node (it has no live session)"
        );
        assert_eq!(
            code(Error::OpenerGone {
                app_id: "chat".into(),
                channel_id: 1
            }),
            ErrorCode::Unavailable
        );
    }

    #[test]
    fn app_ids_are_checked() {
        assert!(validate_app_id("chat").is_ok());
        assert!(validate_app_id("org.example_app-2").is_ok());
        assert!(validate_app_id("").is_err());
        assert!(validate_app_id("bad/app").is_err());
        assert!(validate_app_id("nul\0").is_err());
        assert!(validate_app_id(&"x".repeat(65)).is_err());
    }
}
