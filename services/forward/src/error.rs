//! Port forwarding's one error type and its single, exhaustive mapping to [`ServiceError`].

use p2pos_kernel::{ErrorCode, ServiceError, store::StoreError};
use p2pos_protocols::network;

/// Everything that can go wrong in port forwarding, as the user should hear it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A service name that is not `<name>[/<version>]`.
    #[error("{0}")]
    InvalidServiceName(String),
    /// An address that is not a loopback `HOST:PORT`.
    #[error("invalid {what} {input:?}: {reason}")]
    InvalidAddress {
        /// Which address (`target`, `listen`).
        what: &'static str,
        /// What was given (shortened).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A peer that is neither a ticket, a `/p2p/` multiaddr nor a peer id.
    #[error(transparent)]
    InvalidPeer(network::Error),
    /// Malformed `peers` or `publisher_keys` of a forward.
    #[error("{0}")]
    InvalidFilter(String),
    /// A forward names a provider (`peer`) that its own `peers` leave out.
    #[error("peer {0} is not among the `peers` named")]
    PeerNotAmong(String),
    /// A limit is reached.
    #[error("too many {what} (the limit is {limit}); try again later")]
    Busy {
        /// What is limited.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// `Withdraw` (or a channel) names a service that is not exposed on this node.
    #[error("service '{0}' is not exposed on this node (see ListExposures)")]
    NotExposed(String),
    /// `CloseForward` names an unknown forward.
    #[error("no forward {0} on this node (see ListForwards)")]
    ForwardNotFound(u64),
    /// A forward's listener could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// The OS error.
        reason: String,
    },
    /// The service registry (the overlay) answered with an error: passed on as it is.
    #[error("{0}")]
    Registry(ServiceError),
    /// Port forwarding has no session with the service registry right now (the overlay is
    /// restarting).
    #[error("port forwarding cannot reach the service registry now ({0}); try again in a moment")]
    NoSession(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Error> for ServiceError {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::InvalidServiceName(_)
            | Error::InvalidAddress { .. }
            | Error::InvalidPeer(_)
            | Error::InvalidFilter(_) => ErrorCode::InvalidArgument,
            Error::Busy { .. } => ErrorCode::ResourceExhausted,
            Error::NotExposed(_) | Error::ForwardNotFound(_) => ErrorCode::NotFound,
            Error::Listen { .. } | Error::PeerNotAmong(_) => ErrorCode::FailedPrecondition,
            Error::Registry(e) => e.code,
            Error::NoSession(_) => ErrorCode::Unavailable,
            Error::Store(_) => ErrorCode::Internal,
        };
        ServiceError::new(code, err.to_string())
    }
}

impl From<ServiceError> for Error {
    fn from(e: ServiceError) -> Self {
        Error::Registry(e)
    }
}
