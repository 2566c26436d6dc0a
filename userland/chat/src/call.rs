//! One call's task: registers and starts the voice plug-in (`Tasks.AddHelper`, `StartHelper`),
//! opens the local control channel to it (retrying while it starts), hands it `call` or
//! `answer`, passes its reports to the loop, tells it to hang up when asked, and stops the
//! helper at the end (`StopHelper` is idempotent). Its last event is always
//! [`Event::CallEnded`].

use bytes::Bytes;
use futures::StreamExt;
use p2pos_client::{AuthChannel, Client, describe_status};
use p2pos_proto::app::v1::apps_client::AppsClient;
use p2pos_proto::app::v1::{
    ChannelInput, ChannelOutput, OpenChannel, channel_input, channel_output,
};
use p2pos_proto::tasks::v1::{
    AddHelperRequest, HelperRef, HelperSpec, HelperState, LogsRequest, RestartPolicy,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::machine::APP_ID;
use crate::plugin::{Command, HELPER, PLUGIN_APP_ID, PROGRAM, Report};
use crate::tasks::{Event, Events};

/// How long the plug-in has to start and take the control channel.
const CONTROL_WITHIN: Duration = Duration::from_secs(10);
/// Wait between attempts to open the control channel.
const CONTROL_RETRY: Duration = Duration::from_millis(200);
/// After `hangup`, how long the plug-in has to end the call (it waits up to 5 s for the peer).
const ENDED_WITHIN: Duration = Duration::from_secs(8);
/// After `ended`, how long the plug-in has to close its side of the control channel.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);
/// How long `StopHelper` may take.
const STOP_WITHIN: Duration = Duration::from_secs(15);
/// The spec's stop timeout: SIGTERM, then SIGKILL after this long.
const STOP_TIMEOUT_MS: u32 = 10_000;
/// How long asking the node about the helper may take.
const ASK_WITHIN: Duration = Duration::from_secs(3);
/// Commands queued to the plug-in at most.
const CONTROL_QUEUE: usize = 4;

/// What the call task is asked to do.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The other peer's id.
    pub(crate) peer: String,
    /// This node's peer id (the control channel is a local channel to it).
    pub(crate) node: String,
    /// Answer the peer's call rather than place one.
    pub(crate) answer: bool,
    /// The plug-in's arguments (e.g. `--wav FILE`).
    pub(crate) args: Vec<String>,
}

/// Runs the call until it ends; `hangup` fires (or is dropped) to hang up.
pub(crate) async fn run(
    client: Client,
    plan: Plan,
    mut hangup: oneshot::Receiver<()>,
    events: Events,
) {
    let result = call(&client, &plan, &mut hangup, &events).await;
    let mut tasks = client.tasks();
    // Not running any more is fine: the answer is its state either way.
    let _ = tokio::time::timeout(STOP_WITHIN, tasks.stop_helper(helper_ref())).await;
    let _ = events.send(Event::CallEnded(result)).await;
}

fn helper_ref() -> HelperRef {
    HelperRef {
        app_id: APP_ID.to_owned(),
        name: HELPER.to_owned(),
    }
}

async fn call(
    client: &Client,
    plan: &Plan,
    hangup: &mut oneshot::Receiver<()>,
    events: &Events,
) -> Result<(), String> {
    let control = tokio::select! {
        control = start(client, plan) => control?,
        // Hung up before the plug-in had the call.
        _ = &mut *hangup => return Ok(()),
    };
    let Control { input, mut output } = control;
    let first = if plan.answer {
        Command::Answer {
            peer: plan.peer.clone(),
        }
    } else {
        Command::Call {
            peer: plan.peer.clone(),
        }
    };
    if input.send(Bytes::from(first.encode())).await.is_err() {
        return Err(stopped(client).await);
    }
    if events.send(Event::CallStarted).await.is_err() {
        return Ok(());
    }
    let mut input = Some(input);
    let mut deadline = None;
    loop {
        tokio::select! {
            message = output.message() => match message {
                Ok(Some(ChannelOutput { kind: Some(channel_output::Kind::Data(data)) })) => {
                    let Some(report) = Report::decode(&data) else { continue };
                    let ended = matches!(report, Report::Ended { .. });
                    let _ = events.send(Event::CallReport(report)).await;
                    if ended {
                        // Close our side; the plug-in exits once it sees that.
                        drop(input.take());
                        let drained = async { while let Ok(Some(_)) = output.message().await {} };
                        let _ = tokio::time::timeout(CLOSE_WITHIN, drained).await;
                        return Ok(());
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Err(stopped(client).await),
            },
            _ = &mut *hangup, if deadline.is_none() => {
                deadline = Some(Instant::now() + ENDED_WITHIN);
                if let Some(input) = &input {
                    let _ = input.try_send(Bytes::from(Command::Hangup.encode()));
                }
            }
            () = sleep_until(deadline), if deadline.is_some() => {
                return Err(format!(
                    "the voice plug-in did not end the call within {ENDED_WITHIN:?}"
                ));
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The open control channel.
struct Control {
    input: mpsc::Sender<Bytes>,
    output: tonic::Streaming<ChannelOutput>,
}

/// The files the plug-in reads, the `--wav FILE` it is given: where the node confines helpers
/// to their own files (Landlock), its spec must name them.
fn read_paths(args: &[String]) -> Vec<String> {
    args.windows(2)
        .filter(|pair| pair[0] == "--wav")
        .map(|pair| pair[1].clone())
        .collect()
}

/// Registers and starts the helper, then opens the control channel.
async fn start(client: &Client, plan: &Plan) -> Result<Control, String> {
    let mut tasks = client.tasks();
    let spec = HelperSpec {
        name: HELPER.to_owned(),
        app_id: APP_ID.to_owned(),
        program: PROGRAM.to_owned(),
        args: plan.args.clone(),
        read_paths: read_paths(&plan.args),
        restart: RestartPolicy::Never as i32,
        stop_timeout_ms: STOP_TIMEOUT_MS,
        ..HelperSpec::default()
    };
    tasks
        .add_helper(AddHelperRequest { spec: Some(spec) })
        .await
        .map_err(|status| describe_status(&status))?;
    tasks
        .start_helper(helper_ref())
        .await
        .map_err(|status| describe_status(&status))?;
    let until = Instant::now() + CONTROL_WITHIN;
    let mut apps = client.apps();
    loop {
        let status = match open_control(&mut apps, &plan.node).await {
            Ok(control) => return Ok(control),
            Err(status) => status,
        };
        // FAILED_PRECONDITION: the plug-in has no session yet.
        if status.code() != Code::FailedPrecondition {
            return Err(format!(
                "cannot reach the voice plug-in: {}",
                describe_status(&status)
            ));
        }
        if let Some(reason) = not_running(client).await {
            return Err(reason);
        }
        if Instant::now() + CONTROL_RETRY >= until {
            return Err(format!(
                "the voice plug-in did not answer within {CONTROL_WITHIN:?}"
            ));
        }
        tokio::time::sleep(CONTROL_RETRY).await;
    }
}

/// One attempt to open the local channel to the plug-in, up to its `opened` output.
async fn open_control(
    apps: &mut AppsClient<AuthChannel>,
    node: &str,
) -> Result<Control, tonic::Status> {
    let (input, frames) = mpsc::channel::<Bytes>(CONTROL_QUEUE);
    let first = ChannelInput {
        kind: Some(channel_input::Kind::Open(OpenChannel {
            app_id: PLUGIN_APP_ID.to_owned(),
            peer: node.to_owned(),
            batch: false,
            half_close: false,
            group: String::new(),
            transport: 0,
        })),
    };
    let stream = futures::stream::once(async move { first }).chain(
        ReceiverStream::new(frames).map(|data| ChannelInput {
            kind: Some(channel_input::Kind::Data(data)),
        }),
    );
    let mut output = apps.channel(stream).await?.into_inner();
    match output.message().await? {
        Some(ChannelOutput {
            kind: Some(channel_output::Kind::Opened(_)),
        }) => Ok(Control { input, output }),
        Some(_) => Err(tonic::Status::internal("the node sent data before opening")),
        None => Err(tonic::Status::unavailable(
            "the channel closed before opening",
        )),
    }
}

/// Why the plug-in is not running, if it is not: its state's reason and its last output line
/// (e.g. `exited with code 2: error: x.wav is 44100 Hz, ...`).
async fn not_running(client: &Client) -> Option<String> {
    tokio::time::timeout(ASK_WITHIN, ask_state(client))
        .await
        .ok()
        .flatten()
}

async fn ask_state(client: &Client) -> Option<String> {
    let status = client
        .tasks()
        .get_helper(helper_ref())
        .await
        .ok()?
        .into_inner();
    if status.state == HelperState::Running as i32 {
        return None;
    }
    let reason = if status.reason.is_empty() {
        "is not running".to_owned()
    } else {
        status.reason
    };
    Some(match last_log_line(client).await {
        Some(line) => format!("the voice plug-in {reason}: {line}"),
        None => format!("the voice plug-in {reason}"),
    })
}

/// The control channel ended without `ended`.
async fn stopped(client: &Client) -> String {
    not_running(client)
        .await
        .unwrap_or_else(|| "the voice plug-in closed the control channel".to_owned())
}

async fn last_log_line(client: &Client) -> Option<String> {
    let request = LogsRequest {
        helper: Some(helper_ref()),
        follow: false,
        tail: 1,
    };
    let mut lines = client.tasks().logs(request).await.ok()?.into_inner();
    let mut last = None;
    while let Ok(Some(line)) = lines.message().await {
        last = Some(line.text);
    }
    last.filter(|line| !line.trim().is_empty())
}
