//! The overlay's one error type and its single, exhaustive mapping to [`ServiceError`].

use std::time::Duration;

use libp2p::PeerId;
use p2pos_kernel::{ErrorCode, ServiceError, store::StoreError};
use p2pos_protocols::network;

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
    /// An app id outside the grammar of `p2pos_protocols::names`.
    #[error(
        "invalid app id {0:?}: use 1 to 64 letters, digits, '.', '_' or '-' (and ':' between an app and its helper)"
    )]
    InvalidAppId(String),
    /// The target is this node itself.
    #[error("{0} is this node's own peer id; name another peer")]
    SelfTarget(PeerId),
    /// A request names a provider (`peer`) that its own `peers` (or group) leave out.
    #[error(
        "peer {0} is not among the providers the request allows (its `peers`, or its group's \
         members)"
    )]
    PeerNotAllowed(PeerId),
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
    /// The peer refused a channel in a group: its node or this one is not a member there (it
    /// answered `NOT_MEMBER`).
    #[error("peer {peer} refused the channel in a group: {message}")]
    NotMember {
        /// The peer.
        peer: PeerId,
        /// The peer's words (they name the group).
        message: String,
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
    /// A message payload over [`p2pos_protocols::wire::MAX_PAYLOAD`].
    #[error("message of {size} bytes exceeds the 1 MiB limit")]
    MessageTooLarge {
        /// The payload's size.
        size: usize,
    },
    /// A call or its answer that the only connection to `peer`, a relay's circuit, cannot
    /// carry (sent, it would end the circuit in its middle).
    #[error(
        "{what} cannot cross the relayed connection to peer {peer}: it needs a smaller \
         payload, or the peer reached directly"
    )]
    TooLargeForRelay {
        /// The peer.
        peer: PeerId,
        /// What, how large, and what the relay allows: "a call of 204900 bytes (relay …:
        /// 131072 bytes and 1800 s per circuit)".
        what: String,
    },
    /// An idempotency key of `Send` that is empty or too long.
    #[error(
        "an idempotency key of {len} bytes: it must be 1 to {max} bytes (or left empty for none)",
        max = p2pos_protocols::wire::MAX_IDEMPOTENCY_KEY
    )]
    InvalidSendKey {
        /// Its length.
        len: usize,
    },
    /// An idempotency key of `Send` that already names another message.
    #[error(
        "app '{app_id}' already used this idempotency key for message {message_id}, with another \
         {differs}: a retry must send the same message to the same peer; use a new key for a new \
         message"
    )]
    SendKeyReused {
        /// The app.
        app_id: String,
        /// The message the key names.
        message_id: u64,
        /// What differs: "peer", "payload" or both.
        differs: &'static str,
    },
    /// The message an idempotency key names was dropped without reaching its peer.
    #[error(
        "the message this idempotency key names ({message_id}) was dropped: peer {peer} was \
         never reached in time (a MessageFailed event said so); send it again with a new key"
    )]
    SendKeyDropped {
        /// The message.
        message_id: u64,
        /// Its peer.
        peer: PeerId,
    },
    /// As many idempotency keys are kept as allowed.
    #[error(
        "{whose} keep {limit} idempotency keys of the last {window} (the most allowed); send \
         without a key, or once the oldest are forgotten"
    )]
    SendKeysFull {
        /// Whose keys: the app's, or the node's.
        whose: &'static str,
        /// The bound.
        limit: u64,
        /// How long a key is kept.
        window: String,
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
    /// A stream broke after the far side took the request (a blip, a relay, or the peer went
    /// away): nothing it sent was wrong.
    #[error("{protocol} with peer {peer} broke off: {reason}")]
    Broken {
        /// The peer.
        peer: PeerId,
        /// The protocol id.
        protocol: &'static str,
        /// What happened.
        reason: String,
    },
    /// A peer took a stream and did not say in time whether it takes the request on it.
    #[error("peer {peer} took the stream and said nothing for {waited:?}")]
    Silent {
        /// The peer.
        peer: PeerId,
        /// How long it was waited for.
        waited: Duration,
        /// Whether an honest node of an older version could be this silent (a channel's
        /// responder that writes nothing until its app accepts): then it is worth the whole
        /// time left once no other provider is.
        older_may_answer: bool,
    },
    /// The swarm task is gone (the service is stopping or restarting).
    #[error("the overlay's network task has stopped; try again in a moment")]
    NetworkStopped,
    /// A service name that is not `<name>/<version>`.
    #[error(
        "invalid service name {input:?}: {reason}; a service name is 1 to 48 letters, digits, \
         '.', '_' or '-', a '/', and a version of 1 to 9 digits without leading zeros (e.g. \
         translate/1)"
    )]
    InvalidServiceName {
        /// What was given (shortened).
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A service description over 256 bytes.
    #[error("the description has {size} bytes; at most 256 are allowed")]
    DescriptionTooLong {
        /// Its size.
        size: usize,
    },
    /// A call or reply payload over [`p2pos_protocols::wire::MAX_PAYLOAD`].
    #[error("{what} of {size} bytes exceeds the 1 MiB limit")]
    PayloadTooLarge {
        /// What it is.
        what: &'static str,
        /// Its size.
        size: usize,
    },
    /// The service is provided on this node by another app, or exposed by port forwarding.
    #[error("service '{service}' is already provided on this node by {by}")]
    ServiceTaken {
        /// The service.
        service: String,
        /// Who provides it.
        by: String,
    },
    /// `Unregister` names a service the app does not provide here.
    #[error("app '{app_id}' does not provide service '{service}' on this node")]
    NotRegistered {
        /// The app.
        app_id: String,
        /// The service.
        service: String,
    },
    /// Nobody is known to provide the service.
    #[error("nobody provides service '{service}' {scope}")]
    ServiceNotFound {
        /// The service.
        service: String,
        /// Where it was looked for.
        scope: &'static str,
    },
    /// A node named (or found in the DHT) does not provide the service (any more).
    #[error("peer {peer} does not provide service '{service}'")]
    NotProvidedThere {
        /// The service.
        service: String,
        /// The peer.
        peer: PeerId,
    },
    /// Providers are known, but none could be reached or take the request.
    #[error("{known} provider(s) of '{service}' known, none reachable: {reasons}")]
    ProvidersUnreachable {
        /// The service.
        service: String,
        /// How many were tried.
        known: usize,
        /// What happened with each.
        reasons: String,
    },
    /// A provider holds no certificate of a publisher key the caller pinned.
    #[error("peer {peer} is not certified by a publisher key the caller pinned: {reason}")]
    NotCertified {
        /// The provider.
        peer: PeerId,
        /// Why not, naming the service.
        reason: String,
    },
    /// Providers are known, but none holds a certificate of a pinned publisher key.
    #[error(
        "no provider of '{service}' found is certified by a publisher key the caller pinned ({known} found): {reasons}"
    )]
    NoneCertified {
        /// The service.
        service: String,
        /// How many were found.
        known: usize,
        /// What each presented.
        reasons: String,
    },
    /// A certificate given to `Register` does not vouch for this node and service.
    #[error("certificate refused: {0}")]
    InvalidCertificate(String),
    /// Providers are known, and every one that was tried was busy.
    #[error("{known} provider(s) of '{service}' known, all busy: {reasons}; try again later")]
    ProvidersBusy {
        /// The service.
        service: String,
        /// How many were tried.
        known: usize,
        /// What each said.
        reasons: String,
    },
    /// `Reply` names a call that is not waiting for this app's answer.
    #[error(
        "no call {call_id} is waiting for an answer from app '{app_id}' (already answered, \
         past its deadline, or to another app)"
    )]
    CallNotFound {
        /// The app.
        app_id: String,
        /// The call.
        call_id: u64,
    },
    /// A `Reply` with neither a payload nor an error.
    #[error("the reply carries neither a payload nor an error")]
    ReplyWithoutResult,
    /// A provider (or its node) answered a call with an error: passed on as it is.
    #[error("{message}")]
    Provider {
        /// The gRPC status code it gave.
        code: u32,
        /// Its words.
        message: String,
    },
    /// The overlay is stopping (it restarts, or the node stops); the request was not finished.
    #[error("the overlay is restarting; try again in a moment")]
    Restarting,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The service could not be set up.
    #[error("cannot start the overlay: {0}")]
    Setup(String),
    /// The network failed otherwise.
    #[error(transparent)]
    Network(network::Error),
}

impl From<network::Error> for Error {
    fn from(e: network::Error) -> Self {
        match e {
            network::Error::MissingKind => Error::MissingKind,
            network::Error::InvalidTarget { input, reason } => {
                Error::InvalidTarget { input, reason }
            }
            network::Error::SelfTarget(peer) => Error::SelfTarget(peer),
            network::Error::PeerNotFound(peer) => Error::PeerNotFound(peer),
            network::Error::Unreachable { peer, reason } => Error::Unreachable { peer, reason },
            network::Error::Busy { what, limit } => Error::Busy { what, limit },
            network::Error::DhtDisabled => Error::DhtDisabled,
            network::Error::Timeout { what, after } => Error::Timeout { what, after },
            network::Error::NetworkStopped => Error::NetworkStopped,
            other @ (network::Error::InvalidKey { .. }
            | network::Error::RecordTooLarge { .. }
            | network::Error::RecordNotFound { .. }
            | network::Error::AlreadyAccepted(_)
            | network::Error::Setup(_)
            | network::Error::Store(_)
            | network::Error::InvalidTopic(_)
            | network::Error::Gossip(_)) => Error::Network(other),
        }
    }
}

impl From<Error> for ServiceError {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::DescriptionTooLong { .. } | Error::ReplyWithoutResult => {
                ErrorCode::InvalidArgument
            }
            Error::PayloadTooLarge { .. } | Error::ProvidersBusy { .. } => {
                ErrorCode::ResourceExhausted
            }
            Error::ServiceTaken { .. } => ErrorCode::AlreadyExists,
            Error::NotRegistered { .. }
            | Error::ServiceNotFound { .. }
            | Error::NotProvidedThere { .. }
            | Error::CallNotFound { .. } => ErrorCode::NotFound,
            Error::ProvidersUnreachable { .. } => ErrorCode::Unavailable,
            Error::NotCertified { .. } => ErrorCode::PermissionDenied,
            Error::NoneCertified { .. } => ErrorCode::NotFound,
            Error::InvalidCertificate(_) => ErrorCode::InvalidArgument,
            Error::Provider { code, .. } => ErrorCode::Passed(*code),
            Error::InvalidSendKey { .. } => ErrorCode::InvalidArgument,
            Error::SendKeyReused { .. } | Error::SendKeyDropped { .. } => {
                ErrorCode::FailedPrecondition
            }
            Error::SendKeysFull { .. } => ErrorCode::ResourceExhausted,
            Error::MissingKind
            | Error::InvalidTarget { .. }
            | Error::InvalidAppId(_)
            | Error::SelfTarget(_)
            | Error::InvalidServiceName { .. } => ErrorCode::InvalidArgument,
            Error::PeerNotFound(_) | Error::ChannelNotFound { .. } => ErrorCode::NotFound,
            Error::AppNotListening { .. }
            | Error::AppNotRegistered { .. }
            | Error::NoSession { .. }
            | Error::NotRunningHere { .. }
            | Error::PeerNotAllowed(_)
            | Error::DhtDisabled => ErrorCode::FailedPrecondition,
            Error::Unreachable { .. }
            | Error::Protocol { .. }
            | Error::Broken { .. }
            | Error::Silent { .. }
            | Error::OpenerGone { .. }
            | Error::NetworkStopped
            | Error::Restarting => ErrorCode::Unavailable,
            Error::ChannelNotAccepted { .. } | Error::Timeout { .. } => ErrorCode::DeadlineExceeded,
            Error::MessageTooLarge { .. }
            | Error::TooLargeForRelay { .. }
            | Error::Busy { .. }
            | Error::TooManyChannels { .. }
            | Error::ChannelRefused { .. } => ErrorCode::ResourceExhausted,
            Error::NotMember { .. } => ErrorCode::PermissionDenied,
            Error::Store(_) | Error::Setup(_) => ErrorCode::Internal,
            Error::Network(e) => ServiceError::from(e.clone()).code,
        };
        ServiceError::new(code, err.to_string())
    }
}

/// Checks an app id: 1 to 64 characters of `[A-Za-z0-9._-]`.
impl Error {
    /// `peer` holds no certificate of a pinned publisher key for `service`: `why`.
    pub(crate) fn not_certified(peer: PeerId, service: &str, why: impl std::fmt::Display) -> Self {
        Error::NotCertified {
            peer,
            reason: format!("for '{service}': {why}"),
        }
    }
}

pub(crate) fn validate_app_id(app_id: &str) -> Result<(), Error> {
    p2pos_protocols::names::check_app_id(app_id)
        .map_err(|_| Error::InvalidAppId(app_id.chars().take(80).collect()))
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
            app_id: "chat:voice".into(),
        });
        assert_eq!(err.code, ErrorCode::FailedPrecondition);
        assert_eq!(
            err.message,
            "app 'chat:voice' is not running on this node (it has no live session)"
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
