//! The resource manager's configuration: the `[resources]` table of `p2posd.toml`, with the
//! owner's first sharing policy in `[resources.share]` (one set with `p2pctl resources share`
//! is kept in the store and wins).

use p2pos_proto::resources::v1::{Amounts, Sharing, When};
use serde::{Deserialize, Serialize};

/// How the inventory is kept, and what is lent. Every field has a default that just works.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Seconds between two samples of the machine (1 to 3600). Default: 5.
    pub refresh_secs: u64,
    /// What the owner lends until a policy is set through the API. Default: nothing.
    pub share: Option<ShareConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            refresh_secs: 5,
            share: None,
        }
    }
}

/// `[resources.share]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShareConfig {
    /// Cores lent (0.5: half a core).
    pub cpu: f64,
    /// Memory lent, bytes.
    pub memory_bytes: u64,
    /// Disk lent, bytes.
    pub disk_bytes: u64,
    /// The peer ids it is lent to.
    pub peers: Vec<String>,
    /// The ids of the groups whose members it is lent to.
    pub groups: Vec<String>,
    /// `"always"` (the default) or `"idle"`.
    pub when: Option<String>,
    /// With `when = "idle"`: the owner counts as idle while the CPU busy share not due to the
    /// node is below this, in percent. Default: 25.
    pub idle_below_percent: f64,
}

impl ShareConfig {
    /// As the API's policy.
    pub fn sharing(&self) -> Result<Sharing, String> {
        let when = match self.when.as_deref() {
            None | Some("always") => When::Always,
            Some("idle") => When::Idle,
            Some(other) => {
                return Err(format!(
                    "[resources.share] when must be \"always\" or \"idle\", not {other:?}"
                ));
            }
        };
        Ok(Sharing {
            amounts: Some(Amounts {
                cpu: self.cpu,
                memory_bytes: self.memory_bytes,
                disk_bytes: self.disk_bytes,
            }),
            peers: self.peers.clone(),
            groups: self.groups.clone(),
            when: when as i32,
            idle_below_percent: self.idle_below_percent,
        })
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
        if let Some(share) = &self.share {
            let sharing = share.sharing()?;
            crate::policy::check(sharing, f64::INFINITY, 0)
                .map_err(|e| format!("[resources.share]: {}", e.message))?;
        }
        Ok(())
    }
}
