//! `resources`: what the machine has and what the node and its helpers use
//! (`p2pos.resources.v1.Resources`).

use bytesize::ByteSize;
use p2pos_client::Client;
use p2pos_proto::resources::v1::{GetInventoryRequest, Inventory, ProcessUsage};
use serde_json::{Value, json};

use super::RpcResult;
use crate::output;

/// Prints the inventory for people (the machine, then a table of the node and its helpers);
/// with `--json` one object (see [`inventory_json`]).
pub(crate) async fn inventory(client: &Client, json: bool) -> anyhow::Result<()> {
    let inventory = client
        .resources()
        .get_inventory(GetInventoryRequest {})
        .await
        .or_fail("cannot get the node's resources")?;
    if json {
        output::json_line(&inventory_json(&inventory))?;
    } else {
        output::line(inventory_text(&inventory))?;
    }
    Ok(())
}

fn size(bytes: u64) -> String {
    ByteSize::b(bytes).display().iec().to_string()
}

/// The machine as key/values, then one row per consumer.
fn inventory_text(inventory: &Inventory) -> String {
    let cpu = inventory.cpu.clone().unwrap_or_default();
    let memory = inventory.memory.unwrap_or_default();
    let disk = inventory.disk.clone().unwrap_or_default();
    let cores = match cpu.physical_cores {
        0 => format!("{} logical", cpu.logical_cores),
        physical => format!("{} logical, {physical} physical", cpu.logical_cores),
    };
    let summary = output::key_values(vec![
        (
            "cpu",
            format!("{cores}; {}", output::dash_if_empty(&cpu.model)),
        ),
        (
            "load",
            format!(
                "{:.2} {:.2} {:.2} (1, 5, 15 min); {:.0}% busy",
                cpu.load_1, cpu.load_5, cpu.load_15, cpu.usage_percent
            ),
        ),
        (
            "memory",
            format!(
                "{} available of {} (swap: {} used of {})",
                size(memory.available_bytes),
                size(memory.total_bytes),
                size(memory.swap_used_bytes),
                size(memory.swap_total_bytes)
            ),
        ),
        (
            "disk",
            format!(
                "{} available of {} on {} ({})",
                size(disk.available_bytes),
                size(disk.total_bytes),
                output::dash_if_empty(&disk.mount_point),
                disk.path
            ),
        ),
        ("sampled", output::timestamp(inventory.sampled_at_ms)),
    ]);
    let mut table = output::table(["USED BY", "PID", "PROCESSES", "MEMORY", "CPU"]);
    let mut row = |who: String, usage: &ProcessUsage| {
        table.add_row([
            who,
            usage.pid.to_string(),
            usage.processes.to_string(),
            size(usage.memory_bytes),
            format!("{:.1}%", usage.cpu_percent),
        ]);
    };
    row("p2posd".to_owned(), &inventory.node.unwrap_or_default());
    for helper in &inventory.helpers {
        let who = match helper.app_id.as_str() {
            "" => format!("helper {} (node-wide)", helper.name),
            app => format!("helper {app}:{}", helper.name),
        };
        row(who, &helper.usage.unwrap_or_default());
    }
    format!("{}\n\n{}", summary.trim_fmt(), table.trim_fmt())
}

fn usage_json(usage: &ProcessUsage) -> Value {
    let ProcessUsage {
        pid,
        processes,
        memory_bytes,
        cpu_percent,
    } = usage;
    json!({
        "pid": pid,
        "processes": processes,
        "memory_bytes": memory_bytes,
        "cpu_percent": cpu_percent,
    })
}

/// The inventory as JSON: `{cpu: {logical_cores, physical_cores, model, load_1, load_5,
/// load_15, usage_percent}, memory: {total_bytes, available_bytes, used_bytes,
/// swap_total_bytes, swap_used_bytes}, disk: {path, mount_point, total_bytes,
/// available_bytes}, node: usage, helpers: [{app_id, name, usage}], sampled_at_ms,
/// interval_ms}` where usage is `{pid, processes, memory_bytes, cpu_percent}`.
fn inventory_json(inventory: &Inventory) -> Value {
    let cpu = inventory.cpu.clone().unwrap_or_default();
    let memory = inventory.memory.unwrap_or_default();
    let disk = inventory.disk.clone().unwrap_or_default();
    json!({
        "cpu": {
            "logical_cores": cpu.logical_cores,
            "physical_cores": cpu.physical_cores,
            "model": cpu.model,
            "load_1": cpu.load_1,
            "load_5": cpu.load_5,
            "load_15": cpu.load_15,
            "usage_percent": cpu.usage_percent,
        },
        "memory": {
            "total_bytes": memory.total_bytes,
            "available_bytes": memory.available_bytes,
            "used_bytes": memory.used_bytes,
            "swap_total_bytes": memory.swap_total_bytes,
            "swap_used_bytes": memory.swap_used_bytes,
        },
        "disk": {
            "path": disk.path,
            "mount_point": disk.mount_point,
            "total_bytes": disk.total_bytes,
            "available_bytes": disk.available_bytes,
        },
        "node": usage_json(&inventory.node.unwrap_or_default()),
        "helpers": inventory.helpers.iter().map(|h| json!({
            "app_id": h.app_id,
            "name": h.name,
            "usage": usage_json(&h.usage.unwrap_or_default()),
        })).collect::<Vec<_>>(),
        "sampled_at_ms": inventory.sampled_at_ms,
        "interval_ms": inventory.interval_ms,
    })
}
