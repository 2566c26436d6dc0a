//! What the network can answer instead of a result, and its single, exhaustive mapping to
//! [`ServiceError`]. Services that use the network convert it into their own error type.

use std::time::Duration;

use libp2p::PeerId;
use p2pos_kernel::{ErrorCode, ServiceError};

/// Everything that can go wrong in the network, as the user should hear it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request envelope names no operation.
    #[error("the request names no operation (its `kind` is not set)")]
    MissingKind,
    /// A peer given as text is neither a ticket, a `/p2p/` multiaddr nor a peer id.
    #[error(
        "invalid peer {input:?}: {reason}; expected a ticket (p2pos...), a multiaddr ending in \
         /p2p/<peer id>, a peer id (12D3KooW...), or (for app channels and messages) a group \
         member's NAME@GROUP"
    )]
    InvalidTarget {
        /// What was given (shortened).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The target is this node itself.
    #[error("{0} is this node's own peer id; name another peer")]
    SelfTarget(PeerId),
    /// No address for the peer, here or in the DHT.
    #[error(
        "peer {0} is unknown here: no address of it is known and the DHT does not have it (a \
         ticket from the peer tells this node where it is)"
    )]
    PeerNotFound(PeerId),
    /// The peer's addresses are known but no connection could be made.
    #[error("peer {peer} is not reachable: {reason}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// libp2p's reason.
        reason: String,
    },
    /// A limit of the network is reached.
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
    /// A DHT key outside the node's namespace, or too long.
    #[error("invalid DHT key {key:?}: {reason}")]
    InvalidKey {
        /// The key (shortened).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A DHT record whose value is too large.
    #[error("a DHT record of {size} bytes exceeds the {limit}-byte limit")]
    RecordTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// No valid record under the key was found in the DHT.
    #[error("no record {key:?} was found in the DHT")]
    RecordNotFound {
        /// The key.
        key: String,
    },
    /// Another service already accepts inbound streams of the protocol.
    #[error("inbound {0} streams are already accepted by another service")]
    AlreadyAccepted(String),
    /// The swarm task is gone (the service is stopping or restarting).
    #[error("the overlay's network task has stopped; try again in a moment")]
    NetworkStopped,
    /// The swarm could not be built or started.
    #[error("cannot start the network: {0}")]
    Setup(String),
    /// The store failed.
    #[error("store error: {0}")]
    Store(String),
    /// A gossip scope or topic that is not well formed.
    #[error("invalid gossip topic {0:?}: a scope and a topic of 1 to 128 characters, no '/'")]
    InvalidTopic(String),
    /// Gossip refused a publication.
    #[error("gossip refused the message: {0}")]
    Gossip(String),
}

impl From<Error> for ServiceError {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::MissingKind
            | Error::InvalidTarget { .. }
            | Error::SelfTarget(_)
            | Error::InvalidKey { .. }
            | Error::InvalidTopic(_) => ErrorCode::InvalidArgument,
            Error::PeerNotFound(_) | Error::RecordNotFound { .. } => ErrorCode::NotFound,
            Error::Unreachable { .. } | Error::NetworkStopped => ErrorCode::Unavailable,
            Error::Busy { .. } | Error::RecordTooLarge { .. } => ErrorCode::ResourceExhausted,
            Error::DhtDisabled => ErrorCode::FailedPrecondition,
            Error::Timeout { .. } => ErrorCode::DeadlineExceeded,
            Error::AlreadyAccepted(_) | Error::Setup(_) | Error::Store(_) | Error::Gossip(_) => {
                ErrorCode::Internal
            }
        };
        ServiceError::new(code, err.to_string())
    }
}

impl From<p2pos_kernel::store::StoreError> for Error {
    fn from(e: p2pos_kernel::store::StoreError) -> Self {
        Error::Store(e.to_string())
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
        assert_eq!(code(Error::SelfTarget(peer)), ErrorCode::InvalidArgument);
        assert_eq!(code(Error::PeerNotFound(peer)), ErrorCode::NotFound);
        assert_eq!(code(Error::DhtDisabled), ErrorCode::FailedPrecondition);
        assert_eq!(code(Error::NetworkStopped), ErrorCode::Unavailable);
        let err = ServiceError::from(Error::Unreachable {
            peer,
            reason: "refused".into(),
        });
        assert_eq!(err.code, ErrorCode::Unavailable);
        assert_eq!(
            err.message,
            format!("peer {peer} is not reachable: refused")
        );
    }
}
