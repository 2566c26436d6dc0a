//! The resource manager's configuration: the `[resources]` table of `p2posd.toml`.

use serde::Deserialize;

/// How the inventory is kept. Every field has a default that just works.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Seconds between two samples of the machine (1 to 3600). Default: 5.
    pub refresh_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { refresh_secs: 5 }
    }
}

impl Config {
    /// Checks what the types alone do not.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=3600).contains(&self.refresh_secs) {
            return Err(format!(
                "[resources] refresh_secs must be 1 to 3600, not {}",
                self.refresh_secs
            ));
        }
        Ok(())
    }
}
