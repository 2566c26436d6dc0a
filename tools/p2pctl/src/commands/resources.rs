//! `resources`: what the machine has and what the node and its helpers use, what the owner
//! lends, and finding and leasing what peers lend (`p2pos.resources.v1.Resources`).

use bytesize::ByteSize;
use p2pos_client::Client;
use p2pos_proto::resources::v1::{
    Amounts, FindReply, FindRequest, GetInventoryRequest, GetSharingRequest, Inventory, Lease,
    LeaseReply, LeaseRequest, ListLeasesRequest, Offer, ProcessUsage, Refusal, Refused,
    ReleaseRequest, RenewRequest, Sharing, UnshareRequest, When,
};
use serde_json::{Value, json};

use super::RpcResult;
use crate::{
    cli::{AmountsArgs, ResourcesCommand},
    output,
};

/// Runs `resources` (the inventory) or one of its subcommands.
pub(crate) async fn run(
    client: &Client,
    json: bool,
    command: Option<ResourcesCommand>,
) -> anyhow::Result<()> {
    let mut resources = client.resources();
    match command {
        None => inventory(client, json).await,
        Some(ResourcesCommand::Share {
            amounts,
            peers,
            groups,
            when,
            idle_below,
        }) => {
            let when = match when.as_str() {
                "always" => When::Always,
                "idle" => When::Idle,
                other => anyhow::bail!("--when is `always` or `idle`, not {other:?}"),
            };
            let sharing = Sharing {
                amounts: Some(amounts_of(&amounts)),
                peers,
                groups,
                when: when as i32,
                idle_below_percent: idle_below,
            };
            let kept = resources
                .share(sharing)
                .await
                .or_fail("cannot set the sharing policy")?;
            output::line(sharing_text(&kept))?;
            Ok(())
        }
        Some(ResourcesCommand::Unshare) => {
            resources
                .unshare(UnshareRequest {})
                .await
                .or_fail("cannot stop sharing")?;
            output::line("this node lends nothing now")?;
            Ok(())
        }
        Some(ResourcesCommand::Sharing(flag)) => {
            let sharing = resources
                .get_sharing(GetSharingRequest {})
                .await
                .or_fail("cannot get the sharing policy")?;
            if flag.json {
                output::json_line(&sharing_json(&sharing))?;
            } else {
                output::line(sharing_text(&sharing))?;
            }
            Ok(())
        }
        Some(ResourcesCommand::Find {
            amounts,
            peers,
            group,
            explain,
            json,
        }) => {
            let finding = resources.find(FindRequest {
                needs: Some(amounts_of(&amounts)),
                peers,
                explain,
                limit: 0,
                group: group.unwrap_or_default(),
            });
            let found = crate::progress::during("asking peers for their offers", json, finding)
                .await
                .or_fail("cannot look for resources")?;
            if json {
                output::json_line(&find_json(&found))?;
            } else {
                output::line(find_text(&found, explain))?;
            }
            Ok(())
        }
        Some(ResourcesCommand::Lease {
            peer,
            amounts,
            ttl,
            json,
        }) => {
            let reply = resources
                .lease(LeaseRequest {
                    peer,
                    amounts: Some(amounts_of(&amounts)),
                    ttl_secs: ttl,
                    app_id: String::new(),
                })
                .await
                .or_fail("cannot ask for a lease")?;
            print_lease(reply, json)
        }
        Some(ResourcesCommand::Renew { lease_id, ttl }) => {
            let reply = resources
                .renew(RenewRequest {
                    lease_id,
                    ttl_secs: ttl,
                })
                .await
                .or_fail("cannot renew the lease")?;
            print_lease(reply, false)
        }
        Some(ResourcesCommand::Release { lease_id }) => {
            resources
                .release(ReleaseRequest {
                    lease_id: lease_id.clone(),
                })
                .await
                .or_fail("cannot release the lease")?;
            output::line(format!("released {lease_id}"))?;
            Ok(())
        }
        Some(ResourcesCommand::Leases(flag)) => {
            let leases = resources
                .list_leases(ListLeasesRequest {})
                .await
                .or_fail("cannot list leases")?;
            if flag.json {
                output::json_line(&json!({
                    "granted": leases.granted.iter().map(lease_json).collect::<Vec<_>>(),
                    "held": leases.held.iter().map(lease_json).collect::<Vec<_>>(),
                }))?;
            } else {
                let mut table = output::table([
                    "LEASE", "SIDE", "PEER", "APP", "CPU", "MEMORY", "DISK", "ENDS",
                ]);
                for (side, list) in [("granted", &leases.granted), ("held", &leases.held)] {
                    for lease in list.iter() {
                        let amounts = lease.amounts.unwrap_or_default();
                        let peer = if side == "granted" {
                            &lease.holder
                        } else {
                            &lease.lender
                        };
                        table.add_row([
                            lease.lease_id.clone(),
                            side.to_owned(),
                            peer.clone(),
                            output::dash_if_empty(&lease.app_id),
                            format!("{}", amounts.cpu),
                            size(amounts.memory_bytes),
                            size(amounts.disk_bytes),
                            output::timestamp(lease.expires_at_ms),
                        ]);
                    }
                }
                if leases.granted.is_empty() && leases.held.is_empty() {
                    output::line("no leases")?;
                } else {
                    output::print_table(&table)?;
                }
            }
            Ok(())
        }
    }
}

fn amounts_of(args: &AmountsArgs) -> Amounts {
    Amounts {
        cpu: args.cpu,
        memory_bytes: args.memory,
        disk_bytes: args.disk,
    }
}

fn amounts_text(amounts: &Amounts) -> String {
    format!(
        "{} cores, {} memory, {} disk",
        amounts.cpu,
        size(amounts.memory_bytes),
        size(amounts.disk_bytes)
    )
}

fn amounts_json(amounts: &Amounts) -> Value {
    json!({
        "cpu": amounts.cpu,
        "memory_bytes": amounts.memory_bytes,
        "disk_bytes": amounts.disk_bytes,
    })
}

fn when_name(when: i32) -> &'static str {
    match When::try_from(when) {
        Ok(When::Idle) => "idle",
        _ => "always",
    }
}

/// A refusal's reason as its machine-readable name (`INSUFFICIENT_MEMORY`), with its line.
fn refusal_text(refused: &Refused) -> String {
    let reason = Refusal::try_from(refused.reason)
        .map(|r| r.as_str_name())
        .unwrap_or("UNKNOWN");
    format!("{reason}: {}", refused.message)
}

fn sharing_text(sharing: &Sharing) -> String {
    let amounts = sharing.amounts.unwrap_or_default();
    let lends = (!sharing.peers.is_empty() || !sharing.groups.is_empty())
        && (amounts.cpu > 0.0 || amounts.memory_bytes > 0 || amounts.disk_bytes > 0);
    if !lends {
        return "this node lends nothing".to_owned();
    }
    let when = match When::try_from(sharing.when) {
        Ok(When::Idle) => {
            let below = if sharing.idle_below_percent > 0.0 {
                sharing.idle_below_percent
            } else {
                25.0
            };
            format!("only while the owner is idle: busy below {below}%")
        }
        _ => "always".to_owned(),
    };
    let to: Vec<String> = sharing
        .peers
        .iter()
        .cloned()
        .chain(sharing.groups.iter().map(|g| format!("group {g}")))
        .collect();
    format!(
        "lends at most {} to {} ({when})",
        amounts_text(&amounts),
        to.join(", ")
    )
}

fn sharing_json(sharing: &Sharing) -> Value {
    json!({
        "amounts": amounts_json(&sharing.amounts.unwrap_or_default()),
        "peers": sharing.peers,
        "groups": sharing.groups,
        "when": when_name(sharing.when),
        "idle_below_percent": sharing.idle_below_percent,
    })
}

fn offer_json(offer: &Offer) -> Value {
    json!({
        "peer_id": offer.peer_id,
        "total": amounts_json(&offer.total.unwrap_or_default()),
        "free": amounts_json(&offer.free.unwrap_or_default()),
        "when": when_name(offer.when),
        "owner_busy": offer.owner_busy,
        "at_ms": offer.at_ms,
    })
}

fn find_text(found: &FindReply, explain: bool) -> String {
    let mut table = output::table([
        "PEER",
        "FREE CPU",
        "FREE MEMORY",
        "FREE DISK",
        "WHEN",
        "RTT",
    ]);
    for m in &found.matches {
        let offer = m.offer.clone().unwrap_or_default();
        let free = offer.free.unwrap_or_default();
        table.add_row([
            offer.peer_id.clone(),
            format!("{}", free.cpu),
            size(free.memory_bytes),
            size(free.disk_bytes),
            when_name(offer.when).to_owned(),
            output::rtt(m.rtt_us),
        ]);
    }
    let mut text = if found.matches.is_empty() {
        "no peer lends that now".to_owned()
    } else {
        table.trim_fmt()
    };
    if explain && !found.others.is_empty() {
        text.push_str("\n\nnot matching:");
        for other in &found.others {
            let why = other.refused.clone().unwrap_or_default();
            text.push_str(&format!("\n  {}: {}", other.peer_id, refusal_text(&why)));
        }
    }
    text
}

fn find_json(found: &FindReply) -> Value {
    json!({
        "matches": found.matches.iter().map(|m| json!({
            "offer": offer_json(&m.offer.clone().unwrap_or_default()),
            "rtt_us": m.rtt_us,
            "signed_offer": data_encoding::BASE64.encode(&m.signed_offer),
        })).collect::<Vec<_>>(),
        "others": found.others.iter().map(|o| {
            let why = o.refused.clone().unwrap_or_default();
            json!({
                "peer_id": o.peer_id,
                "reason": Refusal::try_from(why.reason).map(|r| r.as_str_name()).unwrap_or("UNKNOWN"),
                "message": why.message,
            })
        }).collect::<Vec<_>>(),
    })
}

fn lease_json(lease: &Lease) -> Value {
    json!({
        "lease_id": lease.lease_id,
        "lender": lease.lender,
        "holder": lease.holder,
        "amounts": amounts_json(&lease.amounts.unwrap_or_default()),
        "expires_at_ms": lease.expires_at_ms,
        "app_id": lease.app_id,
    })
}

/// A granted lease (its id alone, or JSON); a refusal is an error with its reason.
fn print_lease(reply: LeaseReply, json: bool) -> anyhow::Result<()> {
    match (reply.lease, reply.refused) {
        (Some(lease), _) if json => output::json_line(&lease_json(&lease))?,
        (Some(lease), _) => output::line(format!(
            "{} ({} from {} until {})",
            lease.lease_id,
            amounts_text(&lease.amounts.unwrap_or_default()),
            lease.lender,
            output::timestamp(lease.expires_at_ms)
        ))?,
        (None, Some(refused)) => anyhow::bail!("refused: {}", refusal_text(&refused)),
        (None, None) => anyhow::bail!("the node answered neither a lease nor a refusal"),
    }
    Ok(())
}

/// Prints the inventory for people (the machine, then a table of the node and its helpers);
/// with `--json` one object (see [`inventory_json`]).
async fn inventory(client: &Client, json: bool) -> anyhow::Result<()> {
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
