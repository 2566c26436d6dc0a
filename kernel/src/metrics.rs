//! Per-service Prometheus registries, encoded together in the text exposition format.
//!
//! A service builds a fresh [`Registry`] each time it starts and hands it over with
//! [`Metrics::set`], so a restarted service never registers a metric twice.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{encoding::text::encode_registry, registry::Registry};

/// A cheap, cloneable handle to the node's metrics.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<BTreeMap<String, Registry>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Replaces the registry of `service`.
    pub fn set(&self, service: &str, registry: Registry) {
        if let Ok(mut map) = self.inner.lock() {
            map.insert(service.to_owned(), registry);
        }
    }

    /// All registries in the Prometheus text format, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(map) = self.inner.lock() {
            for registry in map.values() {
                // Writing to a String cannot fail.
                let _ = encode_registry(&mut out, registry);
            }
        }
        out.push_str("# EOF\n");
        out
    }
}
