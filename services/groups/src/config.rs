//! The groups service's configuration: the `[groups]` table of `p2posd.toml`.

use serde::{Deserialize, Serialize};

/// How members stay in step. Every field has a default that just works.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Seconds between two exchanges of each group's heads with every other member, besides
    /// those on every change and connection: what a member missed (it was frozen, a push
    /// failed) reaches it by then (1 to 3600). Default: 60.
    pub resync_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { resync_secs: 60 }
    }
}

impl Config {
    /// Checks what the types alone do not.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=3600).contains(&self.resync_secs) {
            return Err(format!(
                "[groups] resync_secs must be 1 to 3600, not {}",
                self.resync_secs
            ));
        }
        Ok(())
    }
}
