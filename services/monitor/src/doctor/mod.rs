//! The doctor: named checks of this node, of a pair (this node and a peer) or of a group's
//! members, each with a verdict (ok / warn / fail), the evidence it saw and a remedy a person
//! can act on (`Monitor.Doctor`, `p2pctl doctor`).
//!
//! # Layout
//! - [`check`]: building a check.
//! - [`machine`]: services, gateway, store, disk, helpers, the computer's load.
//! - [`network`]: listeners, reachability, relays, DHT, peers, clock.
//! - [`pair`]: `doctor PEER`, with [`explain`] telling why a pair is relayed.
//! - [`log`]: errors in the node's recent log.
//! - [`group`]: `doctor GROUP`, the member × member matrix.

pub(crate) mod check;
pub(crate) mod explain;
pub(crate) mod group;
pub(crate) mod log;
pub(crate) mod machine;
pub(crate) mod network;
pub(crate) mod pair;

use p2pos_kernel::{ServiceContext, ServiceError};
use p2pos_proto::monitor::v1::{Check, DoctorReport};
use p2pos_protocols::{monitor::Diagnose, network::Network};

use check::fail;

use crate::LogRing;

/// Runs the doctor on `target`.
pub(crate) async fn run(
    ctx: &ServiceContext,
    net: &Network,
    logs: &LogRing,
    target: Diagnose,
) -> Result<DoctorReport, ServiceError> {
    match target {
        Diagnose::Node => Ok(DoctorReport {
            checks: node(ctx, net, logs).await,
            ..DoctorReport::default()
        }),
        Diagnose::Peer(peer) => Ok(DoctorReport {
            checks: pair::checks(net, &peer).await?,
            ..DoctorReport::default()
        }),
        Diagnose::Group(group) => {
            let (members, matrix, check) = group::matrix(net, &ctx.registry, group).await?;
            Ok(DoctorReport {
                checks: vec![check],
                members,
                matrix,
            })
        }
    }
}

/// Every check of this node, in a stable order; the slow ones run side by side.
async fn node(ctx: &ServiceContext, net: &Network, logs: &LogRing) -> Vec<Check> {
    let status = net.status().await;
    let network_checks = async {
        match &status {
            Ok(status) => {
                let (dht, peers, clock) = tokio::join!(
                    network::dht(net, status),
                    network::peers(net, status),
                    network::clock(net, status),
                );
                vec![
                    network::listeners(status),
                    network::reachability(status),
                    network::relays(status),
                    dht,
                    peers,
                    clock,
                ]
            }
            Err(e) => vec![network_down(e)],
        }
    };
    let (gateway, store, disk, helpers, resources, network_checks) = tokio::join!(
        machine::gateway(ctx),
        machine::store(ctx),
        machine::disk(ctx),
        machine::helpers(ctx),
        machine::resources(ctx),
        network_checks,
    );
    let mut checks = vec![machine::services(ctx), gateway, store];
    checks.extend(network_checks);
    checks.extend([disk, helpers, resources, log::recent(logs)]);
    checks
}

fn network_down(e: &p2pos_protocols::network::Error) -> Check {
    fail(
        "network",
        format!("the network service does not answer: {e}"),
        "it may be restarting: run the doctor again in a moment; see `p2pctl logs --level warn`",
    )
}
