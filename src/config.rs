//! The node's whole configuration as `p2posd.toml` holds it: the kernel's settings at the top
//! level, and one table per service (`[network]`, `[overlay]`, `[gateway]`, `[monitor]`,
//! `[tasks]`, `[resources]`), each that service's own `Config`. Flags and environment variables go on top
//! (`main.rs`); each part is then handed to its own crate.

use std::path::Path;

use p2pos_kernel::config::{ConfigError, SupervisorConfig};
use serde::{Deserialize, Serialize};

/// `p2posd.toml`. Every key is optional; what is absent keeps its default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct NodeConfig {
    /// The data directory (the kernel's).
    pub(crate) data_dir: std::path::PathBuf,
    /// Supervision (the kernel's).
    pub(crate) supervisor: SupervisorConfig,
    /// Allow the admin `InjectPanic` call (the kernel's).
    pub(crate) allow_fault_injection: bool,
    /// Fault points (the kernel's).
    pub(crate) failpoints: Vec<String>,
    /// `[network]`: listening, discovery, connection limits.
    pub(crate) network: p2pos_network::Config,
    /// `[overlay]`: channel and inbox limits.
    pub(crate) overlay: p2pos_overlay::Config,
    /// `[gateway]`: the loopback TCP gateway.
    pub(crate) gateway: p2pos_gateway::Config,
    /// `[monitor]`: the metrics endpoint and the dashboard.
    pub(crate) monitor: p2pos_monitor::Config,
    /// `[tasks]`: the plug-in directory, helpers' quotas, cgroups.
    pub(crate) tasks: p2pos_tasks::Config,
    /// `[groups]`: how often members exchange what they have.
    pub(crate) groups: p2pos_groups::Config,
    /// `[resources]`: how often the machine is sampled.
    pub(crate) resources: p2pos_resources::Config,
}

/// Keys that sat at the top level of `p2posd.toml` before each service had its own table, and
/// the table each belongs in now.
const MOVED: &[(&str, &str, &str)] = &[
    ("listen", "network", "listen"),
    ("bootstrap", "network", "bootstrap"),
    ("mdns", "network", "mdns"),
    ("kademlia", "network", "kademlia"),
    ("relay_server", "network", "relay_server"),
    (
        "max_connections_per_peer",
        "network",
        "max_connections_per_peer",
    ),
    ("max_connections", "network", "max_connections"),
    ("max_channels", "overlay", "max_channels"),
    ("max_inbox_messages", "overlay", "max_inbox_messages"),
    ("gateway_tcp", "gateway", "tcp"),
    ("metrics", "monitor", "metrics"),
    ("plugin_dir", "tasks", "plugin_dir"),
];

impl NodeConfig {
    /// Reads a TOML file on top of the defaults.
    pub(crate) fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| {
            let mut message = e.to_string().trim().replace('\n', " ");
            if let Some((old, table, key)) = MOVED
                .iter()
                .find(|(old, _, _)| message.contains(&format!("unknown field `{old}`")))
            {
                message.push_str(&format!(
                    " (each service has its own table now: `{old}` goes under [{table}] as `{key}`)"
                ));
            }
            ConfigError::Parse {
                path: path.to_owned(),
                message,
            }
        })
    }

    /// Checks every part.
    pub(crate) fn validate(&self) -> Result<(), String> {
        self.kernel().validate().map_err(|e| e.to_string())?;
        let parts = [
            ("network", self.network.validate()),
            ("overlay", self.overlay.validate()),
            ("gateway", self.gateway.validate()),
            ("monitor", self.monitor.validate()),
            ("tasks", self.tasks.validate()),
            ("resources", self.resources.validate()),
            ("groups", self.groups.validate()),
        ];
        for (table, result) in parts {
            result.map_err(|e| format!("invalid configuration [{table}]: {e}"))?;
        }
        Ok(())
    }

    /// The kernel's part.
    pub(crate) fn kernel(&self) -> p2pos_kernel::Config {
        p2pos_kernel::Config {
            data_dir: self.data_dir.clone(),
            supervisor: self.supervisor.clone(),
            allow_fault_injection: self.allow_fault_injection,
            failpoints: self.failpoints.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p2posd.toml");
        std::fs::write(
            &path,
            "[network]\nmdns = false\n[supervisor]\nmax_restarts = 2\n[gateway]\ntcp = \"127.0.0.1:5000\"\n",
        )
        .expect("write");
        let config = NodeConfig::from_file(&path).expect("parse");
        assert!(!config.network.mdns);
        assert!(config.network.kademlia);
        assert_eq!(config.supervisor.max_restarts, 2);
        assert_eq!(config.supervisor.period_secs, 10);
        assert_eq!(
            config.gateway.tcp,
            Some("127.0.0.1:5000".parse().expect("addr"))
        );
        assert_eq!(config.overlay, p2pos_overlay::Config::default());
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p2posd.toml");
        std::fs::write(&path, "mdns = \"maybe\"\nnonsense[").expect("write");
        let err = NodeConfig::from_file(&path).expect_err("must fail");
        assert!(err.to_string().starts_with("invalid config file"), "{err}");
        std::fs::write(&path, "no_such_key = 1\n").expect("write");
        let err = NodeConfig::from_file(&path).expect_err("must fail");
        assert!(err.to_string().contains("no_such_key"), "{err}");
    }

    #[test]
    fn a_key_that_moved_to_a_table_says_where() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p2posd.toml");
        std::fs::write(&path, "mdns = false\n").expect("write");
        let err = NodeConfig::from_file(&path).expect_err("must fail");
        assert!(
            err.to_string()
                .contains("`mdns` goes under [network] as `mdns`"),
            "{err}"
        );
        std::fs::write(&path, "gateway_tcp = \"127.0.0.1:1\"\n").expect("write");
        let err = NodeConfig::from_file(&path).expect_err("must fail");
        assert!(
            err.to_string().contains("goes under [gateway] as `tcp`"),
            "{err}"
        );
    }

    #[test]
    fn non_loopback_gateway_and_metrics_are_refused() {
        let mut config = NodeConfig {
            data_dir: "/tmp/x".into(),
            ..NodeConfig::default()
        };
        assert!(config.validate().is_ok());
        config.gateway.tcp = Some("0.0.0.0:1234".parse().expect("addr"));
        let err = config.validate().expect_err("refused");
        assert!(err.contains("[gateway]"), "{err}");
        config.gateway.tcp = None;
        config.monitor.metrics = Some("10.0.0.1:9".parse().expect("addr"));
        assert!(config.validate().is_err());
        config.monitor.metrics = None;
        config.monitor.dashboard = Some("0.0.0.0:7070".parse().expect("addr"));
        let err = config.validate().expect_err("refused");
        assert!(
            err.contains("[monitor]") && err.contains("dashboard"),
            "{err}"
        );
        config.monitor.dashboard = Some("127.0.0.1:7070".parse().expect("addr"));
        assert!(config.validate().is_ok());
    }
}
