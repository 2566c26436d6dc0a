//! `p2p-chat --group GROUP`: a room every member of a group talks in, over group pubsub. Each
//! typed line is published (`Groups.Publish`) on the chat app's topic (`room`, or `--room`) in
//! the group; the room's subscription (`Groups.Subscribe`, replaying the last hour first) brings
//! every member's lines, printed `<short id>> text`.
//!
//! One loop feeds [`Event`]s to the [`Room`] state and carries out its [`Action`]s, as the 1:1
//! chat's does; the subscription runs in its own task and subscribes again (after a wait that
//! grows while it keeps failing) when the node ends it for a passing reason — the node
//! restarted, or the chat fell behind — and the room prints nothing twice.
//!
//! # Layout
//! - this file: the loop, the subscription task, the publishing task.
//! - [`state`]: the pure state (order, own lines, replays), unit-tested.

mod state;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use p2pos_client::{AuthChannel, Client, Target, TargetOptions, describe_status};
use p2pos_proto::group::v1::{
    GroupRef, PublishRequest, SubscribeRequest, TopicMessage, groups_client::GroupsClient,
};
use p2pos_proto::node::v1::GetInfoRequest;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Code;

use crate::machine::APP_ID;
use crate::run::{Ending, print};
use crate::{peer, tasks};
use state::{Action, PublishFailure, Room};

/// How far back the room starts: the node keeps a topic's messages for an hour.
const REPLAY: Duration = Duration::from_secs(60 * 60);
/// Capacity of the event channel: tasks wait (stdin included) while the loop is behind.
const EVENT_BUFFER: usize = 64;
/// The first wait before subscribing again; it doubles up to [`RESUBSCRIBE_MAX`].
const RESUBSCRIBE: Duration = Duration::from_millis(500);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(15);

/// Something that happened, for the loop.
#[derive(Debug)]
enum Event {
    /// A typed line, without its line ending.
    Line(String),
    /// Stdin ended.
    Eof,
    /// The subscription is open (`again`: after one ended).
    Subscribed { again: bool },
    /// A message came on the subscription.
    Message(TopicMessage),
    /// The subscription ended; another is tried after `retry_in`, if given.
    SubscriptionEnded {
        reason: String,
        retry_in: Option<Duration>,
    },
    /// The `Publish` in flight was answered.
    Published(Result<u64, PublishFailure>),
    /// A client with the node's new token (the node rewrites its token file at each start).
    Reconnected(GroupsClient<AuthChannel>),
}

type Events = mpsc::Sender<Event>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Refusals that another try would meet again.
fn lasting(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::PermissionDenied
            | Code::InvalidArgument
            | Code::NotFound
            | Code::Unauthenticated
            | Code::Unimplemented
    )
}

/// Runs the room of `group` named `room` on the node `options` name until stdin ends (after
/// every line is out), `/quit`, Ctrl-C, or an error.
pub(crate) async fn run(
    options: TargetOptions,
    group: String,
    room: String,
) -> anyhow::Result<Ending> {
    let target = Target::resolve(options.clone())?;
    let client = Client::connect(&target).await?;
    let own_id = match client.node().get_info(GetInfoRequest {}).await {
        Ok(info) => info.into_inner().peer_id,
        Err(status) => bail!("cannot reach the node: {}", describe_status(&status)),
    };
    let members = match client.groups().members(GroupRef { group }).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => bail!("cannot open the room: {}", describe_status(&status)),
    };
    let Some(info) = members.group else {
        bail!("cannot open the room: the node did not describe the group");
    };
    if !info.member {
        bail!(
            "cannot open the room: this node is no longer a member of group {}",
            info.name
        );
    }
    let started_ms = now_ms();
    let (events, mut inbox) = mpsc::channel(EVENT_BUFFER);
    let groups = client.groups();
    let node = Reconnect { options, target };
    tokio::spawn(subscribe(
        node,
        groups.clone(),
        info.id.clone(),
        room.clone(),
        events.clone(),
    ));
    tasks::spawn_lines(events.clone(), Event::Line, Event::Eof);
    print(&format!(
        "* room {room:?} of group {} ({} members), as {}; the last hour first",
        info.name,
        members.members.len(),
        peer::short(&own_id)
    ));

    let mut shell = Shell {
        groups,
        group: info.id,
        room,
        events,
        state: Room::new(own_id, started_ms),
        republish_at: None,
    };
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let actions = tokio::select! {
            event = inbox.recv() => match event {
                Some(event) => shell.handle(event),
                None => bail!("internal: event channel closed"),
            },
            () = sleep_until(shell.republish_at), if shell.republish_at.is_some() => {
                shell.republish_at = None;
                shell.state.republish()
            }
            signal = &mut interrupted => match signal {
                Ok(()) => return Ok(Ending::Interrupted),
                Err(err) => bail!("cannot listen for Ctrl-C: {err}"),
            },
        };
        if let Some(ending) = shell.execute(actions)? {
            return Ok(ending);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// What the loop owns besides the state.
struct Shell {
    groups: GroupsClient<AuthChannel>,
    /// The group's id.
    group: String,
    room: String,
    events: Events,
    state: Room,
    republish_at: Option<Instant>,
}

impl Shell {
    fn handle(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::Line(text) => self.state.line(text),
            Event::Eof => self.state.eof(),
            Event::Subscribed { again } => {
                let text = match again {
                    false => format!("* joined room {:?}", self.room),
                    true => format!("* back in room {:?}", self.room),
                };
                vec![Action::Print(text)]
            }
            Event::Message(message) => self.state.message(message, now_ms()),
            Event::SubscriptionEnded { reason, retry_in } => match retry_in {
                Some(wait) => vec![Action::Print(format!(
                    "* the room's subscription ended: {reason}; trying again in {:.1} s",
                    wait.as_secs_f64()
                ))],
                None => vec![Action::Fail(format!("left the room: {reason}"))],
            },
            Event::Published(result) => self.state.published(result, now_ms()),
            Event::Reconnected(groups) => {
                self.groups = groups;
                Vec::new()
            }
        }
    }

    fn execute(&mut self, actions: Vec<Action>) -> anyhow::Result<Option<Ending>> {
        for action in actions {
            match action {
                Action::Print(text) => print(&text),
                Action::Publish(text) => {
                    let request = PublishRequest {
                        group: self.group.clone(),
                        app: APP_ID.to_owned(),
                        topic: self.room.clone(),
                        data: text.into_bytes().into(),
                        report_ms: 0,
                    };
                    tokio::spawn(publish(self.groups.clone(), request, self.events.clone()));
                }
                Action::ArmRepublish(after) => self.republish_at = Some(Instant::now() + after),
                Action::Exit => return Ok(Some(Ending::Done)),
                Action::Fail(message) => bail!(message),
            }
        }
        Ok(None)
    }
}

/// Publishes one line and reports the outcome.
async fn publish(mut groups: GroupsClient<AuthChannel>, request: PublishRequest, events: Events) {
    let outcome = match groups.publish(request).await {
        Ok(reply) => Ok(reply.into_inner().seq),
        Err(status) => {
            let reason = describe_status(&status);
            Err(match status.code() {
                Code::InvalidArgument | Code::ResourceExhausted => PublishFailure::Refused(reason),
                // The node restarted with a new token: the subscription task reconnects.
                Code::Unauthenticated => PublishFailure::Retry(reason),
                _ if lasting(&status) => PublishFailure::Fatal(reason),
                _ => PublishFailure::Retry(reason),
            })
        }
    };
    let _ = events.send(Event::Published(outcome)).await;
}

/// How to reach the node again after it restarted.
struct Reconnect {
    options: TargetOptions,
    target: Target,
}

impl Reconnect {
    /// A client with the token the node has now, if it is not the one used so far (a node
    /// rewrites its token file at each start; a token given by the user stays as it is).
    async fn refreshed(&mut self) -> Option<Client> {
        let fresh = Target::resolve(self.options.clone()).ok()?;
        if fresh.token() == self.target.token() {
            return None;
        }
        let client = Client::connect(&fresh).await.ok()?;
        self.target = fresh;
        Some(client)
    }
}

/// Follows the room for as long as the chat runs: each subscription replays the last hour (the
/// state drops what it printed already), and one the node ended for a passing reason is opened
/// again after a wait that grows while it keeps failing (with the node's new token, after it
/// restarted).
async fn subscribe(
    mut node: Reconnect,
    mut groups: GroupsClient<AuthChannel>,
    group: String,
    room: String,
    events: Events,
) {
    let mut wait = RESUBSCRIBE;
    let mut again = false;
    loop {
        let request = SubscribeRequest {
            group: group.clone(),
            app: APP_ID.to_owned(),
            topic: room.clone(),
            since_ms: now_ms().saturating_sub(REPLAY.as_millis() as u64),
        };
        let ended = match groups.subscribe(request).await {
            Err(status) => Err(status),
            Ok(response) => {
                if events.send(Event::Subscribed { again }).await.is_err() {
                    return;
                }
                again = true;
                wait = RESUBSCRIBE;
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            if events.send(Event::Message(message)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break Ok("the node ended it".to_owned()),
                        Err(status) => break Err(status),
                    }
                }
            }
        };
        let (reason, retry) = match ended {
            Ok(reason) => (reason, true),
            Err(status) if status.code() == Code::Unauthenticated => match node.refreshed().await {
                Some(client) => {
                    groups = client.groups();
                    if events
                        .send(Event::Reconnected(client.groups()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    (describe_status(&status), true)
                }
                None => (describe_status(&status), false),
            },
            Err(status) => (describe_status(&status), !lasting(&status)),
        };
        let retry_in = retry.then_some(wait);
        let ended = Event::SubscriptionEnded { reason, retry_in };
        if events.send(ended).await.is_err() || !retry {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RESUBSCRIBE_MAX);
    }
}
