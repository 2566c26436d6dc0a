//! Helper specs as the service keeps them: the protobuf `HelperSpec` checked and converted into
//! a [`Spec`] with its defaults filled in, and back. Names, app ids and the helper's own app
//! id are checked here too.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::signal::Signal;
use p2pos_proto::tasks::v1::{HelperSpec, RestartPolicy};
use p2pos_protocols::names;

use crate::{
    Error,
    limits::Limits,
    restart::{self, Restart},
    signal,
};

/// Longest helper name.
pub const MAX_NAME_LEN: usize = 32;
/// Longest app id (also of the app id a helper acts as).
pub const MAX_APP_ID_LEN: usize = 64;
/// Restarts allowed within the period when a spec says 0.
pub const DEFAULT_MAX_RESTARTS: u32 = 5;
/// Most restarts a spec may allow within its period.
pub const MAX_MAX_RESTARTS: u32 = 1000;
/// The restart period when a spec says 0.
pub const DEFAULT_RESTART_PERIOD_SECS: u32 = 60;
/// The stop timeout when a spec says 0.
pub const DEFAULT_STOP_TIMEOUT_MS: u32 = 5000;
/// The longest stop timeout a spec may ask for.
pub const MAX_STOP_TIMEOUT_MS: u32 = 60_000;
/// Most arguments, and most environment variables, of one spec.
pub const MAX_ARGS: usize = 256;
/// Most `read_paths` of one spec.
pub(crate) const MAX_READ_PATHS: usize = 64;
/// Most bytes of program, arguments, environment and read paths together in one spec.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// Prefix of the variables the node sets; a spec may not set them.
pub(crate) const RESERVED_ENV_PREFIX: &str = "P2POS_";

/// A checked helper spec, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spec {
    pub(crate) name: String,
    /// "" for a helper of the node (installed by the admin).
    pub(crate) app_id: String,
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) working_dir: Option<PathBuf>,
    pub(crate) restart: Restart,
    pub(crate) max_restarts: u32,
    pub(crate) restart_period: Duration,
    pub(crate) stop_signal: Signal,
    pub(crate) stop_timeout: Duration,
    pub(crate) outlive_session: bool,
    /// Its own limits (what is not set comes from its app's quota).
    pub(crate) limits: Limits,
    /// Paths it may read besides what every helper may (absolute).
    pub(crate) read_paths: Vec<PathBuf>,
}

fn invalid(why: impl Into<String>) -> Error {
    Error::InvalidSpec(why.into())
}

/// Checks a helper name: 1 to 32 characters of `[A-Za-z0-9_-]`.
pub(crate) fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.chars().take(40).collect()))
    }
}

/// The node-wide helper name whose app id (`_node:forward`) port forwarding uses.
const RESERVED_NODE_HELPER: &str = "forward";

/// Prefix of the environment variables an app may give its helpers: `APP_` then upper-case
/// letters, digits and underscores ([`is_app_variable`]). An allow-list: everything else an
/// app might pass (`PATH`, `LD_PRELOAD`, `BASH_ENV`, `ENV`, `PYTHONPATH`, `PYTHONSTARTUP`,
/// `NODE_OPTIONS`, `PERL5OPT`, `RUBYOPT`, `JAVA_TOOL_OPTIONS`, ...) can make an interpreter,
/// the loader or libc run or read what the app chose; only helpers installed by the admin may
/// set those.
pub const APP_ENV_PREFIX: &str = "APP_";

/// Whether an app may set variable `key` for its helper: `APP_[A-Z0-9_]+`.
pub(crate) fn is_app_variable(key: &str) -> bool {
    key.strip_prefix(APP_ENV_PREFIX).is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// Checks a (non-empty) app id ([`p2pos_protocols::names`]).
pub(crate) fn validate_app_id(app_id: &str) -> Result<(), Error> {
    // `_node` names the node's own helpers (their directory, their app ids).
    names::check_app_id(app_id)
        .ok()
        .filter(|()| app_id != names::NODE_HELPER_OWNER)
        .ok_or_else(|| Error::InvalidAppId(app_id.chars().take(80).collect()))
}

/// The app id a helper acts as: `<app>:<name>`, or `_node:<name>` for a helper of the node.
pub(crate) fn helper_app_id(app_id: &str, name: &str) -> String {
    names::helper_app_id(app_id, name)
}

/// [`helper_app_id`], refused when longer than [`MAX_APP_ID_LEN`].
pub(crate) fn checked_helper_app_id(app_id: &str, name: &str) -> Result<String, Error> {
    let id = helper_app_id(app_id, name);
    if id.len() > MAX_APP_ID_LEN {
        return Err(Error::HelperAppIdTooLong(id));
    }
    Ok(id)
}

impl TryFrom<HelperSpec> for Spec {
    type Error = Error;

    /// Checks everything but the file system (see [`crate::program`] and
    /// [`Spec::check_working_dir`]).
    fn try_from(spec: HelperSpec) -> Result<Self, Error> {
        let HelperSpec {
            name,
            app_id,
            program,
            args,
            env,
            working_dir,
            restart,
            max_restarts,
            restart_period_secs,
            stop_signal,
            stop_timeout_ms,
            outlive_session,
            limits,
            read_paths,
        } = spec;
        validate_name(&name)?;
        // `_node:forward` is the app id port forwarding provides its services as.
        if app_id.is_empty() && name == RESERVED_NODE_HELPER {
            return Err(Error::InvalidSpec(format!(
                "the node-wide helper name {RESERVED_NODE_HELPER:?} is reserved for port forwarding"
            )));
        }
        if !app_id.is_empty() {
            validate_app_id(&app_id)?;
        }
        if program.is_empty() {
            return Err(invalid("program is empty"));
        }
        if read_paths.len() > MAX_READ_PATHS {
            return Err(invalid(format!("at most {MAX_READ_PATHS} read_paths")));
        }
        if let Some(bad) = read_paths
            .iter()
            .find(|p| !Path::new(p).is_absolute() || p.contains('\0'))
        {
            return Err(invalid(format!(
                "read_paths: {bad:?} is not an absolute path"
            )));
        }
        if args.len() > MAX_ARGS || env.len() > MAX_ARGS {
            return Err(invalid(format!(
                "at most {MAX_ARGS} arguments and {MAX_ARGS} environment variables"
            )));
        }
        let bytes = program.len()
            + working_dir.len()
            + args.iter().map(String::len).sum::<usize>()
            + env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + read_paths.iter().map(String::len).sum::<usize>();
        if bytes > MAX_SPEC_BYTES {
            return Err(invalid(format!(
                "program, arguments, environment and read paths take {bytes} bytes; at most {MAX_SPEC_BYTES}"
            )));
        }
        let has_nul = |s: &String| s.contains('\0');
        if has_nul(&program) || has_nul(&working_dir) || args.iter().any(has_nul) {
            return Err(invalid(
                "program, arguments and working_dir may not contain NUL",
            ));
        }
        for (key, value) in &env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(invalid(format!(
                    "environment variable {key:?}: names must be non-empty without '=' or NUL, \
                     values without NUL"
                )));
            }
            if key.starts_with(RESERVED_ENV_PREFIX) {
                return Err(invalid(format!(
                    "environment variable {key:?}: names starting with {RESERVED_ENV_PREFIX} \
                     are set by the node"
                )));
            }
            // An app may only run programs from the plug-in directory: what its helper reads
            // from the environment is the app's data, never settings of the loader, libc, a
            // shell or an interpreter (those are the admin's alone).
            if !app_id.is_empty() && !is_app_variable(key) {
                return Err(invalid(format!(
                    "environment variable {key:?}: an app may set only variables named \
                     {APP_ENV_PREFIX}<NAME> (upper-case letters, digits, '_'); others, such as \
                     PATH, LD_PRELOAD or PYTHONPATH, can change what the program runs and only \
                     helpers installed by the admin may set them"
                )));
            }
        }
        let working_dir = if working_dir.is_empty() {
            None
        } else {
            let dir = PathBuf::from(&working_dir);
            if !dir.is_absolute() {
                return Err(invalid(format!(
                    "working_dir {working_dir:?} is not an absolute path"
                )));
            }
            Some(dir)
        };
        let restart = match RestartPolicy::try_from(restart) {
            Ok(RestartPolicy::Never) => Restart::Never,
            Ok(RestartPolicy::Unspecified | RestartPolicy::OnFailure) => Restart::OnFailure,
            Ok(RestartPolicy::Always) => Restart::Always,
            Err(_) => return Err(invalid(format!("unknown restart policy {restart}"))),
        };
        if max_restarts > MAX_MAX_RESTARTS {
            return Err(invalid(format!(
                "max_restarts {max_restarts} is over {MAX_MAX_RESTARTS}"
            )));
        }
        if stop_timeout_ms > MAX_STOP_TIMEOUT_MS {
            return Err(invalid(format!(
                "stop_timeout_ms {stop_timeout_ms} is over {MAX_STOP_TIMEOUT_MS}"
            )));
        }
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        let max_restarts = or(max_restarts, DEFAULT_MAX_RESTARTS);
        // A period too short to hold `max_restarts` quick crashes and their back-offs would
        // let a crash loop go on for ever: it is raised to what holds them.
        let restart_period = Duration::from_secs(u64::from(or(
            restart_period_secs,
            DEFAULT_RESTART_PERIOD_SECS,
        )))
        .max(restart::period_floor(max_restarts));
        Ok(Spec {
            limits: Limits::try_from(limits)?,
            stop_signal: signal::parse_stop_signal(&stop_signal)?,
            name,
            app_id,
            program,
            args,
            env: env.into_iter().collect(),
            working_dir,
            restart,
            max_restarts,
            restart_period,
            stop_timeout: Duration::from_millis(u64::from(or(
                stop_timeout_ms,
                DEFAULT_STOP_TIMEOUT_MS,
            ))),
            outlive_session,
            read_paths: read_paths.into_iter().map(PathBuf::from).collect(),
        })
    }
}

impl Spec {
    /// The spec with its defaults spelled out, as clients see it.
    pub(crate) fn to_proto(&self) -> HelperSpec {
        HelperSpec {
            name: self.name.clone(),
            app_id: self.app_id.clone(),
            program: self.program.clone(),
            args: self.args.clone(),
            env: self
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            working_dir: self
                .working_dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            restart: match self.restart {
                Restart::Never => RestartPolicy::Never,
                Restart::OnFailure => RestartPolicy::OnFailure,
                Restart::Always => RestartPolicy::Always,
            } as i32,
            max_restarts: self.max_restarts,
            restart_period_secs: u32::try_from(self.restart_period.as_secs()).unwrap_or(u32::MAX),
            stop_signal: self.stop_signal.as_str().to_owned(),
            stop_timeout_ms: u32::try_from(self.stop_timeout.as_millis()).unwrap_or(u32::MAX),
            outlive_session: self.outlive_session,
            limits: (!self.limits.is_empty()).then(|| self.limits.to_proto()),
            read_paths: self
                .read_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        }
    }

    /// A copy for app `app_id` (an app's instance of an admin-installed spec).
    pub(crate) fn for_app(&self, app_id: &str) -> Spec {
        Spec {
            app_id: app_id.to_owned(),
            ..self.clone()
        }
    }

    /// The app id this helper acts as.
    pub(crate) fn helper_app_id(&self) -> String {
        helper_app_id(&self.app_id, &self.name)
    }

    /// The working directory, if the spec sets one, must be an existing directory.
    pub(crate) fn check_working_dir(&self) -> Result<(), Error> {
        match &self.working_dir {
            Some(dir) if !dir.is_dir() => Err(Error::WorkingDir(dir.display().to_string())),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> HelperSpec {
        HelperSpec {
            name: name.into(),
            program: "/bin/true".into(),
            ..HelperSpec::default()
        }
    }

    #[test]
    fn defaults_are_filled_in_and_shown() {
        let s = Spec::try_from(spec("voice")).unwrap();
        assert_eq!(s.restart, Restart::OnFailure);
        assert_eq!(s.max_restarts, 5);
        assert_eq!(s.restart_period, Duration::from_secs(60));
        assert_eq!(s.stop_timeout, Duration::from_millis(5000));
        assert_eq!(s.stop_signal, Signal::SIGTERM);
        let p = s.to_proto();
        assert_eq!(p.stop_signal, "SIGTERM");
        assert_eq!(p.restart, RestartPolicy::OnFailure as i32);
        assert_eq!(
            Spec::try_from(p).unwrap(),
            s,
            "a shown spec reads back the same"
        );
    }

    #[test]
    fn names_and_app_ids_are_checked() {
        assert!(validate_name("voice_2-x").is_ok());
        assert!(validate_name(&"a".repeat(32)).is_ok());
        for bad in ["", "a.b", "a/b", "a b", "é", &"a".repeat(33)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_app_id("org.chat_2-x").is_ok());
        assert!(
            Spec::try_from(spec("forward")).is_err(),
            "reserved for the node"
        );
        for bad in ["", ".", "..", "a/b", "a::b", &"a".repeat(65)] {
            assert!(validate_app_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            checked_helper_app_id("chat", "voice").unwrap(),
            "chat:voice"
        );
        assert_eq!(checked_helper_app_id("", "voice").unwrap(), "_node:voice");
        assert!(
            validate_app_id("_node").is_err(),
            "the node's own helpers' owner"
        );
        let long = "a".repeat(60);
        let err = checked_helper_app_id(&long, "voice").unwrap_err();
        assert!(matches!(err, Error::HelperAppIdTooLong(_)));
    }

    #[test]
    fn bad_fields_are_refused() {
        let with = |f: fn(&mut HelperSpec)| {
            let mut s = spec("x");
            f(&mut s);
            Spec::try_from(s)
        };
        assert!(with(|s| s.program.clear()).is_err());
        assert!(with(|s| s.stop_timeout_ms = 60_000).is_ok());
        assert!(with(|s| s.stop_timeout_ms = 60_001).is_err());
        assert!(with(|s| s.stop_signal = "SIGSEGV".into()).is_err());
        assert!(with(|s| s.stop_signal = "INT".into()).is_ok());
        assert!(with(|s| s.restart = 9).is_err());
        assert!(with(|s| s.working_dir = "relative/dir".into()).is_err());
        assert!(with(|s| s.working_dir = "/tmp".into()).is_ok());
        assert!(with(|s| s.args = vec!["a\0b".into()]).is_err());
        assert!(with(|s| s.max_restarts = 1001).is_err());
        assert!(
            with(|s| s.limits = Some(p2pos_proto::tasks::v1::Limits {
                cpu: f64::NAN,
                ..Default::default()
            }))
            .is_err()
        );
        for key in ["", "A=B", "P2POS_TOKEN", "N\0UL"] {
            let mut s = spec("x");
            s.env.insert(key.into(), "v".into());
            assert!(Spec::try_from(s).is_err(), "{key:?}");
        }
        let mut s = spec("x");
        s.env.insert("PATH".into(), "/bin".into());
        assert!(Spec::try_from(s).is_ok(), "the admin may set PATH");
        assert!(with(|s| s.args = vec!["x".repeat(MAX_SPEC_BYTES)]).is_err());
    }

    #[test]
    fn an_app_sets_only_its_own_app_variables() {
        let app_env = |key: &str| {
            let mut s = spec("x");
            s.app_id = "chat".into();
            s.env.insert(key.into(), "v".into());
            Spec::try_from(s)
        };
        for good in ["APP_MODE", "APP_X1", "APP_A_B_"] {
            assert!(app_env(good).is_ok(), "{good}");
        }
        // (tests/tests/isolation.rs tries the interpreters' and the loader's variables.)
        for bad in [
            "PATH",
            "BASH_ENV",
            "TMPDIR",
            "APP_",
            "APP_lower",
            "APP_A-B",
            "app_x",
            "XAPP_Y",
        ] {
            let err = app_env(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
            let status = p2pos_kernel::ServiceError::from(err);
            assert_eq!(
                status.code,
                p2pos_kernel::ErrorCode::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn a_restart_period_holds_its_restarts() {
        let with = |max_restarts: u32, restart_period_secs: u32| {
            Spec::try_from(HelperSpec {
                max_restarts,
                restart_period_secs,
                ..spec("x")
            })
            .unwrap()
            .restart_period
        };
        assert_eq!(with(0, 0), Duration::from_secs(60));
        assert_eq!(
            with(5, 1),
            Duration::from_secs(9),
            "5 back-offs (3.1 s) and 5 s of runs"
        );
        assert_eq!(with(5, 30), Duration::from_secs(30));
        assert!(with(1000, 60) > Duration::from_secs(10_000));
    }

    #[test]
    fn working_dir_must_exist() {
        let mut s = Spec::try_from(spec("x")).unwrap();
        assert!(s.check_working_dir().is_ok());
        s.working_dir = Some("/no/such/dir/here".into());
        assert!(s.check_working_dir().is_err());
    }
}
