//! The monitor's configuration: the `[monitor]` table of `p2posd.toml` (`--metrics`).

use std::net::SocketAddr;

use serde::Deserialize;

/// Where the monitor serves Prometheus metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Serve Prometheus metrics over HTTP on this address (127.0.0.1 or [::1] only).
    /// Default: off.
    pub metrics: Option<SocketAddr>,
}

impl Config {
    /// Checks that the metrics address is a loopback one.
    pub fn validate(&self) -> Result<(), String> {
        match self.metrics {
            Some(addr) if !addr.ip().is_loopback() => Err(format!(
                "metrics must be a loopback address (127.0.0.1 or [::1]), not {addr}"
            )),
            _ => Ok(()),
        }
    }
}
