//! The dashboard's JSON endpoints: each asks the service that owns the data (as the monitor's
//! child spec declares) and answers its protobuf reply as canonical JSON ([`super::json`]).
//! A service that is down is a `503` saying so; the page shows the other parts meanwhile.

use hyper::StatusCode;
use p2pos_kernel::ServiceError;
use p2pos_protocols::{
    Forwarding, Groups, Monitor, Resources, Services, Tasks, forwarding, groups,
    monitor::{self, Diagnose},
    resources, services, tasks,
};
use serde_json::{Value, json};

use super::{State, json::to_json, samples};

/// The protobuf messages the endpoints answer with (checked against the spec by a test).
#[cfg(test)]
pub(crate) const MESSAGES: &[&str] = &[
    STATUS, EVENT, HELPERS, SERVICES, EXPOSURES, FORWARDS, MEMBERS, INVENTORY, DOCTOR,
];
const STATUS: &str = "p2pos.monitor.v1.NodeStatus";
/// An event of the bus, as `/api/events` sends it.
pub(crate) const EVENT: &str = "p2pos.monitor.v1.Event";
const HELPERS: &str = "p2pos.tasks.v1.ListHelpersReply";
const SERVICES: &str = "p2pos.service.v1.ListServicesReply";
const EXPOSURES: &str = "p2pos.service.v1.ListExposuresReply";
const FORWARDS: &str = "p2pos.service.v1.ListForwardsReply";
const MEMBERS: &str = "p2pos.group.v1.MembersReply";
const INVENTORY: &str = "p2pos.resources.v1.Inventory";
const DOCTOR: &str = "p2pos.monitor.v1.DoctorReport";

/// How long the doctor may take for the page: within the connection's own limit.
const DOCTOR_WAIT: std::time::Duration = std::time::Duration::from_secs(9);

/// Most groups whose members `/api/groups` lists.
const MAX_GROUPS: usize = 32;

/// Why an endpoint has no answer: the status code and what to tell the page.
pub(crate) type Failure = (StatusCode, String);

fn unavailable(what: &str, e: &ServiceError) -> Failure {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot get the {what}: {e}"),
    )
}

fn internal(e: String) -> Failure {
    (StatusCode::INTERNAL_SERVER_ERROR, e)
}

/// The JSON answer to `GET /api/<name>`; `None` for an unknown name.
pub(crate) async fn answer(state: &State, name: &str) -> Option<Result<Value, Failure>> {
    let registry = &state.ctx.registry;
    Some(match name {
        "status" => to_json(&(state.status)().await, STATUS).map_err(internal),
        "helpers" => match registry
            .ask::<Tasks, _>(|reply| tasks::Request::List {
                caller_app: String::new(),
                app_id: String::new(),
                reply,
            })
            .await
        {
            Ok(list) => to_json(&list, HELPERS).map_err(internal),
            Err(e) => Err(unavailable("helpers", &e)),
        },
        "services" => match registry
            .ask::<Services, _>(|reply| services::Request::List { reply })
            .await
        {
            Ok(list) => to_json(&list, SERVICES).map_err(internal),
            Err(e) => Err(unavailable("services", &e)),
        },
        "exposures" => match registry
            .ask::<Forwarding, _>(|reply| forwarding::Request::ListExposures { reply })
            .await
        {
            Ok(list) => to_json(&list, EXPOSURES).map_err(internal),
            Err(e) => Err(unavailable("exposures", &e)),
        },
        "forwards" => match registry
            .ask::<Forwarding, _>(|reply| forwarding::Request::ListForwards { reply })
            .await
        {
            Ok(list) => to_json(&list, FORWARDS).map_err(internal),
            Err(e) => Err(unavailable("forwards", &e)),
        },
        "groups" => groups_with_members(state).await,
        "doctor" => {
            let run = registry.ask::<Monitor, _>(|reply| monitor::Request::Doctor {
                target: Diagnose::Node,
                reply,
            });
            match tokio::time::timeout(DOCTOR_WAIT, run).await {
                Ok(Ok(report)) => to_json(&report, DOCTOR).map_err(internal),
                Ok(Err(e)) => Err(unavailable("doctor's report", &e)),
                Err(_) => Err((
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the doctor did not finish within {DOCTOR_WAIT:?}: run `p2pctl doctor`"
                    ),
                )),
            }
        }
        "resources" => match registry
            .ask::<Resources, _>(|reply| resources::Request::GetInventory { reply })
            .await
        {
            Ok(inventory) => to_json(&inventory, INVENTORY).map_err(internal),
            Err(e) => Err(unavailable("resources", &e)),
        },
        "recent-events" => state
            .samples
            .recent_events()
            .iter()
            .map(|event| to_json(event, EVENT))
            .collect::<Result<Vec<_>, _>>()
            .map(|events| json!({ "events": events }))
            .map_err(internal),
        "samples" => Ok(json!({
            "interval_ms": samples::INTERVAL.as_millis() as u64,
            "samples": state.samples.kept(),
        })),
        _ => return None,
    })
}

/// `{"groups": [MembersReply]}`: each group held here with its members (the first
/// [`MAX_GROUPS`]).
async fn groups_with_members(state: &State) -> Result<Value, Failure> {
    let registry = &state.ctx.registry;
    let list = registry
        .ask::<Groups, _>(|reply| groups::Request::List { reply })
        .await
        .map_err(|e| unavailable("groups", &e))?;
    let mut out = Vec::new();
    for group in list.groups.into_iter().take(MAX_GROUPS) {
        let members = registry
            .ask::<Groups, _>(|reply| groups::Request::Members {
                group: group.id.clone(),
                reply,
            })
            .await
            .map_err(|e| unavailable("group's members", &e))?;
        out.push(to_json(&members, MEMBERS).map_err(internal)?);
    }
    Ok(json!({ "groups": out }))
}
