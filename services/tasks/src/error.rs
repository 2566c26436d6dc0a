//! The task-control service's one error type and its single, exhaustive mapping to
//! [`ServiceError`].

use p2pos_kernel::{ErrorCode, ServiceError, store::StoreError};

/// Everything that can go wrong in the task-control service, as the user should hear it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request envelope names no operation.
    #[error("the request names no operation (its `kind` is not set)")]
    MissingKind,
    /// A request lacks a required message.
    #[error("the request has no {0}")]
    Missing(&'static str),
    /// A helper name outside `[A-Za-z0-9_-]{1,32}`.
    #[error("invalid helper name {0:?}: use 1 to 32 letters, digits, '_' or '-'")]
    InvalidName(String),
    /// An app id outside the grammar of `p2pos_protocols::names`.
    #[error(
        "invalid app id {0:?}: use 1 to 64 letters, digits, '.', '_' or '-' (and ':' between an app and its helper)"
    )]
    InvalidAppId(String),
    /// A field of a helper spec is out of range.
    #[error("invalid helper spec: {0}")]
    InvalidSpec(String),
    /// A signal name the call does not accept.
    #[error("unknown signal {given:?}; use one of {allowed}")]
    InvalidSignal {
        /// What was given (shortened).
        given: String,
        /// The accepted names.
        allowed: &'static str,
    },
    /// The app id the helper would act as is too long.
    #[error(
        "the helper's app id {0:?} is longer than 64 characters; use a shorter app id or helper name"
    )]
    HelperAppIdTooLong(String),
    /// The program leaves the plug-in directory (`..`, a symlink out, or an absolute path in an
    /// app's spec).
    #[error("program {program:?} is outside the plug-in directory {dir}")]
    ProgramOutside {
        /// The program as given.
        program: String,
        /// The plug-in directory.
        dir: String,
    },
    /// The program does not exist.
    #[error("program {program:?} not found in the plug-in directory {dir} (install it there)")]
    ProgramNotFound {
        /// The program as given.
        program: String,
        /// The plug-in directory (or the absolute path's directory).
        dir: String,
    },
    /// The program exists but cannot be run.
    #[error("program {program:?} ({path}) {why}")]
    ProgramNotRunnable {
        /// The program as given.
        program: String,
        /// Where it resolved.
        path: String,
        /// "is not a regular file", "is not executable (chmod +x it)", ...
        why: String,
    },
    /// The spec's working directory is not an existing directory.
    #[error("working_dir {0} is not an existing directory")]
    WorkingDir(String),
    /// The caller's scope does not cover the helper's app.
    #[error("app {caller:?} may not act on helpers of app {app_id:?}")]
    PermissionDenied {
        /// The calling app.
        caller: String,
        /// The app it named.
        app_id: String,
    },
    /// An app named the app id of one of its helpers that does not exist.
    #[error(
        "app {caller:?} may act as {app_id:?} only while that helper exists (add its spec first)"
    )]
    NoSuchHelper {
        /// The calling app.
        caller: String,
        /// The helper's app id it named.
        app_id: String,
    },
    /// No such helper.
    #[error("no helper {name:?} of {}", owner(app_id))]
    NotFound {
        /// Its app ("" for the node's).
        app_id: String,
        /// Its name.
        name: String,
    },
    /// RemoveHelper of a helper that still runs.
    #[error("helper {name:?} of {} is {state}; stop it first", owner(app_id))]
    StillRunning {
        /// Its app.
        app_id: String,
        /// Its name.
        name: String,
        /// Its state.
        state: &'static str,
    },
    /// SignalHelper of a helper that does not run.
    #[error("helper {name:?} of {} is not running (it is {state})", owner(app_id))]
    NotRunning {
        /// Its app.
        app_id: String,
        /// Its name.
        name: String,
        /// Its state.
        state: &'static str,
    },
    /// A limit on specs, helpers or log followers is reached.
    #[error("too many {what} (the limit is {limit})")]
    Limit {
        /// What is limited.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A start would take an app's helpers over its quota.
    #[error("{message}")]
    Quota {
        /// The app.
        app: String,
        /// Which quota, and the numbers.
        message: String,
    },
    /// The process could not be started (exec failed).
    #[error("cannot start helper {name:?}: {source}")]
    Spawn {
        /// The helper.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The helper's directory could not be created.
    #[error("cannot create the helper directory {path}: {source}")]
    HelperDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The app's session could not be watched (usually: it has none).
    #[error("{0}")]
    Session(ServiceError),
    /// The service is stopping.
    #[error("the task-control service is stopping; try again in a moment")]
    ShuttingDown,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A job spec is out of bounds.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// No job of that id that the caller may see.
    #[error("no job {0:?} (jobs are kept here until the node stops; an app sees only its own)")]
    NoSuchJob(String),
    /// A background task failed unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}

fn owner(app_id: &str) -> String {
    if app_id.is_empty() {
        "the node".to_owned()
    } else {
        format!("app {app_id:?}")
    }
}

impl From<Error> for ServiceError {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::MissingKind
            | Error::Missing(_)
            | Error::InvalidName(_)
            | Error::InvalidAppId(_)
            | Error::InvalidSpec(_)
            | Error::InvalidSignal { .. }
            | Error::HelperAppIdTooLong(_)
            | Error::ProgramOutside { .. }
            | Error::InvalidJob(_) => ErrorCode::InvalidArgument,
            Error::ProgramNotFound { .. } | Error::NotFound { .. } | Error::NoSuchJob(_) => {
                ErrorCode::NotFound
            }
            Error::ProgramNotRunnable { .. }
            | Error::StillRunning { .. }
            | Error::NotRunning { .. }
            | Error::WorkingDir(_)
            | Error::Spawn { .. } => ErrorCode::FailedPrecondition,
            Error::PermissionDenied { .. } | Error::NoSuchHelper { .. } => {
                ErrorCode::PermissionDenied
            }
            Error::Limit { .. } | Error::Quota { .. } => ErrorCode::ResourceExhausted,
            Error::Session(e) => e.code,
            Error::ShuttingDown => ErrorCode::Unavailable,
            Error::Store(_) | Error::HelperDir { .. } | Error::Internal(_) => ErrorCode::Internal,
        };
        ServiceError::new(code, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        let code = |e: Error| ServiceError::from(e).code;
        assert_eq!(
            code(Error::ProgramOutside {
                program: "../x".into(),
                dir: "/p".into()
            }),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(Error::Limit {
                what: "running helpers",
                limit: 128
            }),
            ErrorCode::ResourceExhausted
        );
        let no_session = ServiceError::new(ErrorCode::FailedPrecondition, "no open session");
        let err = ServiceError::from(Error::Session(no_session.clone()));
        assert_eq!(err, no_session);
        let err = ServiceError::from(Error::NotFound {
            app_id: String::new(),
            name: "voice".into(),
        });
        assert_eq!(err.code, ErrorCode::NotFound);
        assert_eq!(err.message, "no helper \"voice\" of the node");
    }

    #[test]
    fn program_messages_say_what_to_do() {
        let err = Error::ProgramNotFound {
            program: "p2p-voice".into(),
            dir: "/p".into(),
        };
        assert_eq!(
            err.to_string(),
            "program \"p2p-voice\" not found in the plug-in directory /p (install it there)"
        );
        let err = Error::ProgramOutside {
            program: "../x".into(),
            dir: "/p".into(),
        };
        assert_eq!(
            err.to_string(),
            "program \"../x\" is outside the plug-in directory /p"
        );
    }
}
