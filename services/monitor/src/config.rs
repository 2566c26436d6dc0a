//! The monitor's configuration: the `[monitor]` table of `p2posd.toml` (`--metrics`,
//! `--dashboard`).

use std::net::SocketAddr;

use serde::Deserialize;

/// Where the monitor serves Prometheus metrics and the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Serve Prometheus metrics over HTTP on this address (127.0.0.1 or [::1] only).
    /// Default: off.
    pub metrics: Option<SocketAddr>,
    /// Serve the dashboard (a web page behind the admin credential) on this address
    /// (127.0.0.1 or [::1] only). Default: off.
    pub dashboard: Option<SocketAddr>,
}

impl Config {
    /// Checks that the metrics and dashboard addresses are loopback ones.
    pub fn validate(&self) -> Result<(), String> {
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
