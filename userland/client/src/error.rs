//! Errors of the client SDK, and readable one-line descriptions of gRPC statuses.

use tonic::Code;

use crate::target::Gateway;

/// What can go wrong before a call is made: resolving the target or reaching the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gateway address is neither `unix:/path` nor `http://HOST:PORT`.
    #[error(
        "invalid gateway address {0:?}: expected unix:/path/to/gateway.sock or http://127.0.0.1:PORT"
    )]
    InvalidGateway(String),
    /// A TCP gateway was named but no token was found.
    #[error(
        "the gateway at {gateway} needs a token: pass --token, set P2POS_TOKEN, or name the node's --data-dir"
    )]
    TokenRequired {
        /// The TCP gateway.
        gateway: Gateway,
    },
    /// The token cannot be sent as a gRPC header value.
    #[error("the token is not valid: it must be printable ASCII")]
    InvalidToken,
    /// Connecting to the gateway failed.
    #[error("cannot reach the node at {gateway}: {reason}{hint}")]
    Unreachable {
        /// The gateway that was dialed.
        gateway: Gateway,
        /// The underlying cause, e.g. "No such file or directory".
        reason: String,
        /// A parenthesised suggestion prefixed by a space, or empty.
        hint: String,
    },
}

/// A one-line, human-readable description of a failed call: the server's message followed by
/// what the status code means, e.g. `unknown peer (not found)`.
pub fn describe_status(status: &tonic::Status) -> String {
    let meaning = match status.code() {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "timed out",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "not supported by this node",
        Code::Internal => "internal error in the node",
        Code::Unavailable => "node unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "not authenticated: check --token or the node's gateway.token",
    };
    let message = status.message().trim();
    if message.is_empty() {
        meaning.to_owned()
    } else {
        format!("{message} ({meaning})")
    }
}

/// The innermost cause of an error chain, without the `(os error N)` suffix of I/O errors.
pub(crate) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let text = cause.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn describes_statuses() {
        assert_eq!(
            describe_status(&tonic::Status::not_found("unknown peer")),
            "unknown peer (not found)"
        );
        assert_eq!(
            describe_status(&tonic::Status::unavailable("")),
            "node unavailable"
        );
    }

    #[test]
    fn root_cause_strips_os_error() {
        let io = std::io::Error::from_raw_os_error(2);
        let cause = root_cause(&io);
        assert!(!cause.contains("os error"), "{cause}");
        assert!(!cause.is_empty());
    }

    #[test]
    fn unreachable_message_reads_well() {
        let err = Error::Unreachable {
            gateway: Gateway::Unix("/x/gateway.sock".into()),
            reason: "No such file or directory".into(),
            hint: " (is p2posd running with --data-dir /x?)".into(),
        };
        assert_eq!(
            err.to_string(),
            "cannot reach the node at unix:/x/gateway.sock: No such file or directory (is p2posd running with --data-dir /x?)"
        );
    }
}
