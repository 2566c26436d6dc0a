//! Driving helpers through `p2pos.tasks.v1` in tests: the calls every helper test makes, by
//! app id (empty: a node-wide helper) and name.

use std::time::Duration;

use futures::StreamExt;
use p2pos_client::Client;
use p2pos_proto::tasks::v1::{
    AddHelperRequest, HelperRef, HelperSpec, HelperState, HelperStatus, LogsRequest,
};

use crate::wait_for;

/// How long a helper may take to reach a state.
const T: Duration = Duration::from_secs(30);

/// The helper `name` of `app`.
pub fn helper_ref(app: &str, name: &str) -> HelperRef {
    HelperRef {
        app_id: app.into(),
        name: name.into(),
    }
}

/// `AddHelper`.
pub async fn add(client: &Client, spec: HelperSpec) -> Result<HelperStatus, tonic::Status> {
    client
        .tasks()
        .add_helper(AddHelperRequest { spec: Some(spec) })
        .await
        .map(tonic::Response::into_inner)
}

/// `StartHelper`.
pub async fn start(client: &Client, app: &str, name: &str) -> Result<HelperStatus, tonic::Status> {
    client
        .tasks()
        .start_helper(helper_ref(app, name))
        .await
        .map(tonic::Response::into_inner)
}

/// `StopHelper`, which must succeed.
pub async fn stop(client: &Client, app: &str, name: &str) -> HelperStatus {
    client
        .tasks()
        .stop_helper(helper_ref(app, name))
        .await
        .expect("stop helper")
        .into_inner()
}

/// `GetHelper`, which must succeed.
pub async fn get(client: &Client, app: &str, name: &str) -> HelperStatus {
    client
        .tasks()
        .get_helper(helper_ref(app, name))
        .await
        .expect("get helper")
        .into_inner()
}

/// Waits until the helper is in `state`; its status then.
pub async fn in_state(client: &Client, app: &str, name: &str, state: HelperState) -> HelperStatus {
    wait_for(&format!("{app}/{name} {state:?}"), T, || async move {
        let status = get(client, app, name).await;
        (status.state == state as i32).then_some(status)
    })
    .await
}

/// The helper's kept output, as text lines.
pub async fn logs(client: &Client, app: &str, name: &str) -> Vec<String> {
    let mut stream = client
        .tasks()
        .logs(LogsRequest {
            helper: Some(helper_ref(app, name)),
            follow: false,
            tail: 0,
        })
        .await
        .expect("logs")
        .into_inner();
    let mut lines = Vec::new();
    while let Some(line) = stream.next().await {
        lines.push(line.expect("log line").text);
    }
    lines
}

/// Whether `pid` is a live process: it exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}
