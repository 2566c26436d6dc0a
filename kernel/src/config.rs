//! The node's configuration: defaults that just work, an optional TOML file, validation.
//!
//! Precedence (highest first): command-line flags, environment variables (both applied by the
//! `p2posd` binary), the TOML file, then [`Config::default`].

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// How the supervisor restarts its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Restart only the child that exited.
    #[default]
    OneForOne,
    /// Restart the child that exited and every child started after it.
    RestForOne,
}

/// Restart intensity and strategy (Erlang/OTP `supervisor` semantics).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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

/// Everything a node needs to boot. Every field has a default that just works.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the identity, store, gateway socket and tokens live. Default: the user's data
    /// directory (`~/.local/share/p2pos` on Linux), chosen by the binary.
    pub data_dir: PathBuf,
    /// Multiaddrs to listen on. Default: TCP and QUIC on all IPv4 interfaces, ports chosen by
    /// the OS the first time and remembered in the store after that.
    pub listen: Vec<String>,
    /// Peers to dial at start (tickets or multiaddrs with `/p2p/`), besides those remembered.
    pub bootstrap: Vec<String>,
    /// mDNS discovery on the LAN. Default: on.
    pub mdns: bool,
    /// Kademlia DHT. Default: on.
    pub kademlia: bool,
    /// Serve as a circuit relay (v2) for others once AutoNAT says this node is public.
    /// Default: on.
    pub relay_server: bool,
    /// Also serve the gateway on this TCP address (127.0.0.1 only); every call then needs the
    /// token in `gateway.token`. Default: off.
    pub gateway_tcp: Option<SocketAddr>,
    /// Serve Prometheus metrics over HTTP on this address (127.0.0.1 only). Default: off.
    pub metrics: Option<SocketAddr>,
    /// Most connections to one peer. Default: 4.
    pub max_connections_per_peer: u32,
    /// Most established connections in all. Default: 256.
    pub max_connections: u32,
    /// Most channels open at once. Default: 1024.
    pub max_channels: u32,
    /// Most messages an app's inbox holds unacknowledged; past it senders are told to retry
    /// later. Default: 10,000.
    pub max_inbox_messages: u64,
    /// Supervision policy.
    pub supervisor: SupervisorConfig,
    /// Allow the admin `InjectPanic` call (for testing supervision). Default: off.
    pub allow_fault_injection: bool,
    /// Fault points, `SERVICE=panic-on-start`: the service panics each time it starts (for
    /// testing crash loops). Default: none.
    pub failpoints: Vec<String>,
    /// Where helper programs (plug-ins) live; app-registered helpers may only run programs
    /// from here. Default: `<data_dir>/plugins`.
    pub plugin_dir: Option<PathBuf>,
    /// The executable that runs each helper under its shim (`p2posd` itself, set by the
    /// daemon; see `p2pos_tasks::shim`). None: helpers are started directly, and only they,
    /// not the processes they start, die with the node. Not a config file setting.
    #[serde(skip)]
    pub helper_shim: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::new(),
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".to_owned(),
                "/ip4/0.0.0.0/udp/0/quic-v1".to_owned(),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            kademlia: true,
            relay_server: true,
            gateway_tcp: None,
            metrics: None,
            max_connections_per_peer: 4,
            max_connections: 256,
            max_channels: 1024,
            max_inbox_messages: 10_000,
            supervisor: SupervisorConfig::default(),
            allow_fault_injection: false,
            failpoints: Vec::new(),
            plugin_dir: None,
            helper_shim: None,
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
    /// Reads a TOML file on top of the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })
    }

    /// Checks values that the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("data_dir is empty".into()));
        }
        for (what, addr) in [("gateway_tcp", self.gateway_tcp), ("metrics", self.metrics)] {
            if let Some(addr) = addr
                && !addr.ip().is_loopback()
            {
                return Err(ConfigError::Invalid(format!(
                    "{what} must be a loopback address (127.0.0.1 or [::1]), not {addr}"
                )));
            }
        }
        for addr in &self.listen {
            addr.parse::<libp2p::Multiaddr>()
                .map_err(|e| ConfigError::Invalid(format!("listen address {addr:?}: {e}")))?;
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
        if self.max_inbox_messages == 0 {
            return Err(ConfigError::Invalid(
                "max_inbox_messages must be > 0".into(),
            ));
        }
        if self.max_connections_per_peer == 0 || self.max_connections == 0 {
            return Err(ConfigError::Invalid("connection limits must be > 0".into()));
        }
        Ok(())
    }

    /// The gateway's unix socket: `<data_dir>/gateway.sock`.
    pub fn gateway_socket(&self) -> PathBuf {
        self.data_dir.join(GATEWAY_SOCKET_FILE)
    }

    /// The plug-in directory: [`Config::plugin_dir`] or `<data_dir>/plugins`.
    pub fn plugin_dir(&self) -> PathBuf {
        self.plugin_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("plugins"))
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
    fn a_file_overrides_only_what_it_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p2posd.toml");
        std::fs::write(&path, "mdns = false\n[supervisor]\nmax_restarts = 2\n").expect("write");
        let config = Config::from_file(&path).expect("parse");
        assert!(!config.mdns);
        assert!(config.kademlia);
        assert_eq!(config.supervisor.max_restarts, 2);
        assert_eq!(config.supervisor.period_secs, 10);
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p2posd.toml");
        std::fs::write(&path, "mdns = \"maybe\"\nnonsense[").expect("write");
        let err = Config::from_file(&path).expect_err("must fail");
        assert!(err.to_string().starts_with("invalid config file"), "{err}");
        std::fs::write(&path, "no_such_key = 1\n").expect("write");
        let err = Config::from_file(&path).expect_err("must fail");
        assert!(err.to_string().contains("no_such_key"), "{err}");
    }

    #[test]
    fn non_loopback_gateway_is_refused() {
        let config = Config {
            data_dir: "/tmp/x".into(),
            gateway_tcp: Some("0.0.0.0:1234".parse().expect("addr")),
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }
}
