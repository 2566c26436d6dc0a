//! The task-control service's configuration: the `[tasks]` table of `p2posd.toml`
//! (`--plugin-dir`), and where the daemon's helper shim is.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where helper programs come from and how they are started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where helper programs (plug-ins) live; app-registered helpers may only run programs
    /// from here. Default: `<data_dir>/plugins`.
    pub plugin_dir: Option<PathBuf>,
    /// The executable that runs each helper under its shim (`p2posd` itself, set by the
    /// daemon; see [`crate::shim`]). None: helpers are started directly, and only they, not
    /// the processes they start, die with the node. Not a config file setting.
    #[serde(skip)]
    pub helper_shim: Option<PathBuf>,
}

impl Config {
    /// The plug-in directory: [`Config::plugin_dir`] or `<data_dir>/plugins`.
    pub fn plugin_dir(&self, data_dir: &Path) -> PathBuf {
        self.plugin_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("plugins"))
    }
}
