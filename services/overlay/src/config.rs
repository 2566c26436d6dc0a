//! The overlay's configuration: the `[overlay]` table of `p2posd.toml`.

use serde::Deserialize;

/// Limits of the app layer. Every field has a default that just works.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Most channels open at once, in either direction, waiting ones included. Default: 1024.
    pub max_channels: u32,
    /// Most outbound channel opens in progress at once (each waits for its peer to be reached
    /// and to accept); past it an open is refused at once. Default: 32.
    pub max_opens: u32,
    /// Most messages an app's inbox holds unacknowledged; past it senders are told to retry
    /// later. Default: 10,000.
    pub max_inbox_messages: u64,
    /// How long, in seconds, a message waits in the outbox for a peer this node has never
    /// delivered a message to (a peer id nobody here has seen, say) before it is dropped and
    /// reported (`MessageFailed`). Messages to a peer reached once wait for as long as it
    /// takes. Default: 7 days.
    pub unreached_message_ttl_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_channels: 1024,
            max_opens: 32,
            max_inbox_messages: 10_000,
            unreached_message_ttl_secs: 7 * 24 * 3600,
        }
    }
}

impl Config {
    /// Checks what the types alone do not.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_inbox_messages == 0 {
            return Err("max_inbox_messages must be > 0".into());
        }
        if self.unreached_message_ttl_secs == 0 {
            return Err("unreached_message_ttl_secs must be > 0".into());
        }
        if self.max_opens == 0 || self.max_opens > 4096 {
            return Err("max_opens must be 1 to 4096".into());
        }
        Ok(())
    }
}
