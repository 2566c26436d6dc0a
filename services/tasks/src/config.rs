//! The task-control service's configuration: the `[tasks]` table of `p2posd.toml`
//! (`--plugin-dir`, the per-app quotas of helpers, whether cgroups are used), and where the
//! daemon's helper shim is.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::limits::{self, Limits};

/// The default memory quota of one app's helpers together: 1 GiB.
pub const DEFAULT_APP_MEMORY_BYTES: u64 = 1 << 30;
/// The default CPU quota of one app's helpers together: one core.
pub const DEFAULT_APP_CPU: f64 = 1.0;
/// The default process quota of one app's helpers together: 256 processes and threads.
pub const DEFAULT_APP_PIDS: u32 = 256;

/// Where helper programs come from, how they are started and what they may use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where helper programs (plug-ins) live; app-registered helpers may only run programs
    /// from here. Default: `<data_dir>/plugins`.
    pub plugin_dir: Option<PathBuf>,
    /// Memory (RAM and swap) all helpers of one app may use together, in bytes; also the limit
    /// of each helper whose spec sets none. Default [`DEFAULT_APP_MEMORY_BYTES`] (1 GiB); 0: no
    /// quota.
    pub app_memory_bytes: u64,
    /// CPU all helpers of one app may use together, in cores (0.5: half a core). Default
    /// [`DEFAULT_APP_CPU`] (1 core); 0: no quota.
    pub app_cpu: Cores,
    /// Processes and threads all helpers of one app may run at once. Default
    /// [`DEFAULT_APP_PIDS`] (256); 0: no quota.
    pub app_pids: u32,
    /// Enforce limits with cgroups where they are writable (default true); false: rlimits only.
    pub cgroups: bool,
    /// The executable that runs each helper under its shim (`p2posd` itself, set by the
    /// daemon; see [`crate::shim`]). None: helpers are started directly, and only they, not
    /// the processes they start, die with the node. Not a config file setting.
    #[serde(skip)]
    pub helper_shim: Option<PathBuf>,
}

/// A share of CPU time in cores, as the config file writes it (`app_cpu = 0.5`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Cores(pub f64);

// `Config::validate` refuses NaN, the one value that is not equal to itself.
impl Eq for Cores {}

impl Default for Config {
    fn default() -> Self {
        Config {
            plugin_dir: None,
            app_memory_bytes: DEFAULT_APP_MEMORY_BYTES,
            app_cpu: Cores(DEFAULT_APP_CPU),
            app_pids: DEFAULT_APP_PIDS,
            cgroups: true,
            helper_shim: None,
        }
    }
}

impl Config {
    /// The plug-in directory: [`Config::plugin_dir`] or `<data_dir>/plugins`.
    pub fn plugin_dir(&self, data_dir: &Path) -> PathBuf {
        self.plugin_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("plugins"))
    }

    /// Checks the quotas (each 0, or in the range a spec's limit may take).
    pub fn validate(&self) -> Result<(), String> {
        self.app_quota().map(|_| ())
    }

    /// The quota of each app's helpers.
    pub(crate) fn app_quota(&self) -> Result<Limits, String> {
        let memory = match self.app_memory_bytes {
            0 => None,
            b if b < limits::MIN_MEMORY_BYTES => {
                return Err(format!(
                    "app_memory_bytes {b} is under {} (0: no quota)",
                    limits::MIN_MEMORY_BYTES
                ));
            }
            b => Some(b),
        };
        let cpu_millis = limits::cpu_millis(self.app_cpu.0, "app_cpu")?;
        let pids = match self.app_pids {
            0 => None,
            p if p > limits::MAX_PIDS => {
                return Err(format!("app_pids {p} is over {}", limits::MAX_PIDS));
            }
            p => Some(p),
        };
        Ok(Limits {
            memory,
            cpu_millis,
            pids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_have_defaults_and_are_checked() {
        let quota = Config::default().app_quota().unwrap();
        assert_eq!(quota.memory, Some(1 << 30));
        assert_eq!(quota.cpu_millis, Some(1000));
        assert_eq!(quota.pids, Some(256));
        let none = Config {
            app_memory_bytes: 0,
            app_cpu: Cores(0.0),
            app_pids: 0,
            ..Config::default()
        };
        assert!(none.app_quota().unwrap().is_empty());
        for bad in [
            Config {
                app_memory_bytes: 100,
                ..Config::default()
            },
            Config {
                app_cpu: Cores(f64::NAN),
                ..Config::default()
            },
            Config {
                app_cpu: Cores(-1.0),
                ..Config::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
