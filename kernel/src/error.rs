//! The error that crosses the actor boundary, and its single mapping to a gRPC status.
//!
//! Each service has its own `thiserror` enum and converts it into a [`ServiceError`] with an
//! exhaustive `match`; the gateway converts a [`ServiceError`] into a [`tonic::Status`] here.

use std::fmt;

/// The kind of failure, one per gRPC status code the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request itself is malformed.
    InvalidArgument,
    /// A named thing (peer, app, channel) does not exist.
    NotFound,
    /// The peer or service cannot be reached now; retrying later may work.
    Unavailable,
    /// The operation did not finish in time.
    DeadlineExceeded,
    /// A limit was hit (size, queue, count).
    ResourceExhausted,
    /// The caller's scope does not allow this.
    PermissionDenied,
    /// The caller gave no valid credentials.
    Unauthenticated,
    /// The node is not in a state that allows this.
    FailedPrecondition,
    /// Something already exists.
    AlreadyExists,
    /// A bug or an unexpected failure inside the node.
    Internal,
    /// A status another app gave (a service provider's answer to a call), passed on as is: a
    /// gRPC code, 1–16; anything else becomes `UNKNOWN`.
    Passed(u32),
}

/// An error answered by a service: a code and a message meant for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ServiceError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A sentence that says what went wrong and, where possible, what to do.
    pub message: String,
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl ServiceError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// `INVALID_ARGUMENT`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    /// `UNAVAILABLE`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    /// `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    /// `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(err: ServiceError) -> Self {
        let ServiceError { code, message } = err;
        let code = match code {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::Internal => tonic::Code::Internal,
            ErrorCode::Passed(code) => match i32::try_from(code) {
                Ok(code @ 1..=16) => tonic::Code::from_i32(code),
                _ => tonic::Code::Unknown,
            },
        };
        tonic::Status::new(code, message)
    }
}

impl From<actix::MailboxError> for ServiceError {
    fn from(err: actix::MailboxError) -> Self {
        match err {
            actix::MailboxError::Closed => {
                Self::unavailable("the service is restarting; try again in a moment")
            }
            actix::MailboxError::Timeout => Self::new(
                ErrorCode::DeadlineExceeded,
                "the service did not answer in time",
            ),
        }
    }
}
