//! The inventory as Prometheus gauges (`p2pos_resources_*`), set from each sample.

use std::sync::atomic::AtomicU64;

use p2pos_proto::resources::v1::Inventory;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

type Float = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HelperLabel {
    app_id: String,
    helper: String,
}

/// The gauges; cheap to clone (they share their values).
#[derive(Clone, Default)]
pub(crate) struct Metrics {
    cpu_cores: Gauge,
    cpu_load1: Float,
    cpu_usage: Float,
    memory_total: Gauge,
    memory_available: Gauge,
    disk_total: Gauge,
    disk_available: Gauge,
    node_memory: Gauge,
    node_cpu: Float,
    helper_memory: Family<HelperLabel, Gauge>,
    helper_cpu: Family<HelperLabel, Float>,
    helper_processes: Family<HelperLabel, Gauge>,
}

impl Metrics {
    /// The gauges, registered in a registry of their own (prefix `p2pos_resources`).
    pub(crate) fn registered() -> (Self, Registry) {
        let metrics = Self::default();
        let mut registry = Registry::with_prefix("p2pos_resources");
        let m = metrics.clone();
        registry.register("cpu_cores", "Logical cores of the machine", m.cpu_cores);
        registry.register("cpu_load1", "Load average over 1 minute", m.cpu_load1);
        registry.register(
            "cpu_usage_percent",
            "Busy share of all cores since the previous sample",
            m.cpu_usage,
        );
        registry.register(
            "memory_total_bytes",
            "Memory of the machine",
            m.memory_total,
        );
        registry.register(
            "memory_available_bytes",
            "Memory new programs can get without swapping",
            m.memory_available,
        );
        registry.register(
            "disk_total_bytes",
            "Size of the data directory's file system",
            m.disk_total,
        );
        registry.register(
            "disk_available_bytes",
            "Space left on the data directory's file system",
            m.disk_available,
        );
        registry.register(
            "node_memory_bytes",
            "Resident memory of p2posd",
            m.node_memory,
        );
        registry.register(
            "node_cpu_percent",
            "CPU of p2posd since the previous sample (100: one core)",
            m.node_cpu,
        );
        registry.register(
            "helper_memory_bytes",
            "Resident memory of each running helper's processes",
            m.helper_memory,
        );
        registry.register(
            "helper_cpu_percent",
            "CPU of each running helper's processes since the previous sample (100: one core)",
            m.helper_cpu,
        );
        registry.register(
            "helper_processes",
            "Processes of each running helper",
            m.helper_processes,
        );
        (metrics, registry)
    }

    /// Sets every gauge from `inventory`; helpers that no longer run lose their series.
    pub(crate) fn set(&self, inventory: &Inventory) {
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        if let Some(cpu) = &inventory.cpu {
            self.cpu_cores.set(i64::from(cpu.logical_cores));
            self.cpu_load1.set(cpu.load_1);
            self.cpu_usage.set(cpu.usage_percent);
        }
        if let Some(memory) = &inventory.memory {
            self.memory_total.set(int(memory.total_bytes));
            self.memory_available.set(int(memory.available_bytes));
        }
        if let Some(disk) = &inventory.disk {
            self.disk_total.set(int(disk.total_bytes));
            self.disk_available.set(int(disk.available_bytes));
        }
        if let Some(node) = &inventory.node {
            self.node_memory.set(int(node.memory_bytes));
            self.node_cpu.set(node.cpu_percent);
        }
        self.helper_memory.clear();
        self.helper_cpu.clear();
        self.helper_processes.clear();
        for helper in &inventory.helpers {
            let label = HelperLabel {
                app_id: helper.app_id.clone(),
                helper: helper.name.clone(),
            };
            let usage = helper.usage.unwrap_or_default();
            self.helper_memory
                .get_or_create(&label)
                .set(int(usage.memory_bytes));
            self.helper_cpu.get_or_create(&label).set(usage.cpu_percent);
            self.helper_processes
                .get_or_create(&label)
                .set(i64::from(usage.processes));
        }
    }
}
