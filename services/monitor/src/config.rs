//! The monitor's configuration: the `[monitor]` table of `p2posd.toml` (`--metrics`,
//! `--allow-diagnosis`).

use std::net::SocketAddr;

use serde::Deserialize;

/// Where the monitor serves Prometheus metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Serve Prometheus metrics over HTTP on this address (127.0.0.1 or [::1] only).
    /// Default: off.
    pub metrics: Option<SocketAddr>,
    /// Who may diagnose this node from elsewhere (`p2pctl doctor PEER` or `doctor GROUP` run on
    /// their node): peer ids, and `group:NAME` (or `group:ID`) for the members of a group this
    /// node holds. They see this node's reachability, NAT mapping, addresses, relays and its
    /// connections to them and to the peers they name; anyone else gets only its clock.
    /// Default: nobody.
    pub allow_diagnosis: Vec<String>,
}

impl Config {
    /// Checks that the metrics address is a loopback one, and the diagnosis policy.
    pub fn validate(&self) -> Result<(), String> {
        crate::diag::Policy::parse(&self.allow_diagnosis)?;
        match self.metrics {
            Some(addr) if !addr.ip().is_loopback() => Err(format!(
                "metrics must be a loopback address (127.0.0.1 or [::1]), not {addr}"
            )),
            _ => Ok(()),
        }
    }
}
