//! The gateway's configuration: the `[gateway]` table of `p2posd.toml` (`--gateway-tcp`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Where the gateway listens besides its unix socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Also serve the gateway on this TCP address (127.0.0.1 or [::1] only); every call then
    /// needs a token. Default: off.
    pub tcp: Option<SocketAddr>,
}

impl Config {
    /// Checks that the TCP address is a loopback one.
    pub fn validate(&self) -> Result<(), String> {
        match self.tcp {
            Some(addr) if !addr.ip().is_loopback() => Err(format!(
                "gateway tcp must be a loopback address (127.0.0.1 or [::1]), not {addr}"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_gateway_is_refused() {
        let config = Config {
            tcp: Some("0.0.0.0:1234".parse().expect("addr")),
        };
        assert!(config.validate().is_err());
        let config = Config {
            tcp: Some("127.0.0.1:1234".parse().expect("addr")),
        };
        assert!(config.validate().is_ok());
    }
}
