//! The monitor's configuration: the `[monitor]` table of `p2posd.toml` (`--metrics`,
//! `--allow-diagnosis`, `--dashboard`), and what the daemon hands over beside it (the log ring,
//! the effective configuration), which no file holds.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::LogRing;

/// Where the monitor serves Prometheus metrics and the dashboard; who may diagnose the node;
/// what it answers `GetLogs` and `GetConfig` from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Serve Prometheus metrics over HTTP on this address (127.0.0.1 or [::1] only).
    /// Default: off.
    pub metrics: Option<SocketAddr>,
    /// Who may diagnose this node from elsewhere (`p2pctl doctor PEER` or `doctor GROUP` run on
    /// their node): peer ids, and `group:ID` (or `group:NAME`, while exactly one group this node
    /// holds has that name) for the current members of a group. They see this node's
    /// reachability, NAT mapping, addresses, relays and its connections to them and to the
    /// peers they name; anyone else gets only its clock.
    /// Default: nobody.
    pub allow_diagnosis: Vec<String>,
    /// The ring the daemon's tracing layer writes the node's recent log lines to (`GetLogs`,
    /// the doctor). Not in the file. Default: a ring nothing writes to.
    #[serde(skip)]
    pub logs: LogRing,
    /// The node's effective configuration as TOML, secrets left out, rendered by the daemon
    /// at start (`GetConfig`). Not in the file. Default: empty (`GetConfig` then fails with
    /// `UNAVAILABLE`).
    #[serde(skip)]
    pub effective_config: String,
    /// Serve the dashboard (a web page behind the admin credential) on this address
    /// (127.0.0.1 or [::1] only). Default: off.
    pub dashboard: Option<SocketAddr>,
}

impl Config {
    /// Checks that the metrics and dashboard addresses are loopback ones, and the diagnosis
    /// policy.
    pub fn validate(&self) -> Result<(), String> {
        crate::diag::Policy::parse(&self.allow_diagnosis)?;
        for (what, addr) in [("metrics", self.metrics), ("dashboard", self.dashboard)] {
            match addr {
                Some(addr) if !addr.ip().is_loopback() => {
                    return Err(format!(
                        "{what} must be a loopback address (127.0.0.1 or [::1]), not {addr}"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}
