//! The kernel's part of the node's configuration: defaults that just work, and validation.
//! The `p2posd` binary reads it (the top level of `p2posd.toml`, flags and environment) with
//! each service's own table.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the supervisor restarts its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Restart only the child that exited.
    #[default]
    OneForOne,
    /// Restart the child that exited and every child started after it.
    RestForOne,
}

/// Restart intensity and strategy (Erlang/OTP `supervisor` semantics).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Restart strategy. Default: `one_for_one`.
    pub strategy: Strategy,
    /// More than this many restarts within `period_secs` shuts the node down with a non-zero
    /// exit. Default: 5.
    pub max_restarts: u32,
    /// The window of the intensity, in seconds. Default: 10.
    pub period_secs: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::OneForOne,
            max_restarts: 5,
            period_secs: 10,
        }
    }
}

/// File name of the gateway's unix socket in the data directory.
pub const GATEWAY_SOCKET_FILE: &str = "gateway.sock";

/// What the kernel itself needs to boot: where the node's data is, how it supervises, and the
/// fault points for testing. Each service has its own configuration (its own table in
/// `p2posd.toml`), which the daemon hands to its child spec; the kernel never sees it. Every
/// field has a default that just works.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the identity, store, gateway socket and tokens live. Default: the user's data
    /// directory (`~/.local/share/p2pos` on Linux), chosen by the binary.
    pub data_dir: PathBuf,
    /// Supervision policy.
    pub supervisor: SupervisorConfig,
    /// Allow the admin `InjectPanic` call (for testing supervision). Default: off.
    pub allow_fault_injection: bool,
    /// Fault points, `SERVICE=panic-on-start`: the service panics each time it starts (for
    /// testing crash loops). Default: none.
    pub failpoints: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::new(),
            supervisor: SupervisorConfig::default(),
            allow_fault_injection: false,
            failpoints: Vec::new(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Checks values that the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("data_dir is empty".into()));
        }
        if self.supervisor.period_secs == 0 {
            return Err(ConfigError::Invalid(
                "supervisor.period_secs must be > 0".into(),
            ));
        }
        for fp in &self.failpoints {
            match fp.split_once('=') {
                Some((_, "panic-on-start")) => {}
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "failpoint {fp:?}: expected SERVICE=panic-on-start"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The gateway's unix socket: `<data_dir>/gateway.sock`.
    pub fn gateway_socket(&self) -> PathBuf {
        self.data_dir.join(GATEWAY_SOCKET_FILE)
    }

    /// Whether `service` must panic each time it starts.
    pub fn panics_on_start(&self, service: &str) -> bool {
        self.failpoints
            .iter()
            .any(|fp| fp.split_once('=') == Some((service, "panic-on-start")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::default().validate().is_err(), "no data_dir");
        let ok = Config {
            data_dir: "/tmp/x".into(),
            ..Config::default()
        };
        assert!(ok.validate().is_ok());
        let bad = Config {
            failpoints: vec!["overlay".into()],
            ..ok.clone()
        };
        assert!(bad.validate().is_err());
    }
}
