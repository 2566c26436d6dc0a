//! The chat's shell: opens the session, starts the tasks, and runs the one loop that feeds
//! [`Event`]s and timers to the [`Chat`] machine and carries out its [`Action`]s.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use anyhow::bail;
use p2pos_client::{Client, describe_status};
use p2pos_proto::app::v1::{AcceptChannel, OpenChannel, SessionRequest, channel_input};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};

use crate::call::{self, Plan};
use crate::machine::{APP_ID, Action, Chat, Link, Timer};
use crate::peer;
use crate::tasks::{self, Event, Events};

/// Capacity of the event channel: tasks wait (stdin included) while the loop is behind.
const EVENT_BUFFER: usize = 64;
/// At exit, how long the last acknowledgement of printed messages may take.
const LAST_ACK_WITHIN: Duration = Duration::from_secs(2);

/// How the chat ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Stdin ended and every line was sent.
    Done,
    /// Ctrl-C.
    Interrupted,
}

/// Runs the chat until stdin ends (after every line is out), Ctrl-C, or an error. `call_args`
/// are the voice plug-in's arguments for calls.
pub(crate) async fn run(
    client: Client,
    peer: Option<String>,
    call_args: Vec<String>,
) -> anyhow::Result<Ending> {
    let session = client
        .apps()
        .session(SessionRequest {
            app_id: APP_ID.to_owned(),
            // Chatting with NAME@GROUP: only that group's members' channels reach this chat.
            group: peer
                .as_deref()
                .and_then(peer::member_group)
                .unwrap_or_default()
                .to_owned(),
        })
        .await;
    let session = match session {
        Ok(response) => response.into_inner(),
        Err(status) => bail!("cannot register the chat app: {}", describe_status(&status)),
    };
    let (events, mut inbox) = mpsc::channel(EVENT_BUFFER);
    tokio::spawn(tasks::session(session, events.clone()));
    tokio::spawn(tasks::receive(client.apps(), events.clone()));
    tokio::spawn(tasks::outbox(
        client.monitor(),
        client.apps(),
        events.clone(),
    ));
    let (acks, upto) = watch::channel(0);
    let acker = tokio::spawn(tasks::ack(client.apps(), upto));
    tasks::spawn_stdin(events.clone());

    let mut shell = Shell {
        client,
        events,
        chat: Chat::new(peer),
        writers: HashMap::new(),
        timers: BTreeMap::new(),
        acks,
        call_args,
        hangup: None,
    };
    // One future for the whole run, so a Ctrl-C while actions are carried out is not missed.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let ending = loop {
        let next_timer = shell
            .timers
            .iter()
            .min_by_key(|(_, at)| **at)
            .map(|(t, at)| (*t, *at));
        let actions = tokio::select! {
            event = inbox.recv() => match event {
                Some(event) => shell.handle(event),
                None => bail!("internal: event channel closed"),
            },
            () = sleep_until(next_timer.map(|(_, at)| at)), if next_timer.is_some() => {
                match next_timer {
                    Some((timer, _)) => {
                        shell.timers.remove(&timer);
                        shell.chat.timer(timer)
                    }
                    None => Vec::new(),
                }
            }
            signal = &mut interrupted => match signal {
                Ok(()) => break Ending::Interrupted,
                Err(err) => bail!("cannot listen for Ctrl-C: {err}"),
            },
        };
        if let Some(ending) = shell.execute(actions)? {
            break ending;
        }
    };
    finish_acks(shell, acker).await;
    Ok(ending)
}

/// Lets the acknowledging task tell the node about the last printed messages, briefly: those
/// not acknowledged are handed over again next time.
async fn finish_acks(shell: Shell, acker: JoinHandle<()>) {
    drop(shell);
    let _ = tokio::time::timeout(LAST_ACK_WITHIN, acker).await;
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Writes one line to stdout and flushes (tests read through a pipe). A closed stdout is
/// ignored: sending must go on.
pub(crate) fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// What the loop owns besides the machine: the node client, waiting channel inputs, timers.
struct Shell {
    client: Client,
    events: Events,
    chat: Chat,
    /// Channel inputs waiting for their next frame.
    writers: HashMap<Link, oneshot::Sender<String>>,
    /// Armed timers and when they fire.
    timers: BTreeMap<Timer, Instant>,
    /// The newest inbox id to acknowledge, for the acknowledging task.
    acks: watch::Sender<u64>,
    /// The voice plug-in's arguments.
    call_args: Vec<String>,
    /// Hangs up the running call task (dropping it does too).
    hangup: Option<oneshot::Sender<()>>,
}

impl Shell {
    /// Feeds one event to the machine.
    fn handle(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::Line(text) => self.chat.line(text),
            Event::Eof => self.chat.eof(),
            Event::Registered { peer_id } => self.chat.registered(peer_id),
            Event::Incoming {
                channel_id,
                peer_id,
            } => self.chat.incoming(channel_id, peer_id),
            Event::SessionEnded(reason) => {
                vec![Action::Fail(format!(
                    "lost the chat session with the node: {reason}"
                ))]
            }
            Event::Received(message) => self.chat.received(message),
            Event::ReceiveEnded { reason, retry_in } => {
                let next = match retry_in {
                    Some(wait) => format!("; trying again in {:.1} s", wait.as_secs_f64()),
                    None => String::new(),
                };
                vec![Action::Print(format!(
                    "* stopped receiving stored messages: {reason}{next}"
                ))]
            }
            Event::Opened { link, peer_id } => self.chat.opened(link, peer_id),
            Event::OpenFailed { link, failure } => {
                self.writers.remove(&link);
                self.chat.open_failed(link, failure)
            }
            Event::Frame { link, text } => self.chat.frame(link, &text),
            Event::Closed { link } => {
                self.writers.remove(&link);
                self.chat.closed(link)
            }
            Event::WriterReady { link, reply } => {
                if self.chat.takes_frames(link) {
                    self.writers.insert(link, reply);
                    self.chat.writer_ready(link)
                } else {
                    // Dropping the reply ends this channel's input.
                    Vec::new()
                }
            }
            Event::SendDone(outcome) => self.chat.send_done(outcome),
            Event::Delivered(message_id) => self.chat.message_delivered(message_id),
            Event::Waiting { message_id, reason } => self.chat.message_waiting(message_id, &reason),
            Event::OutboxEmpty => self.chat.outbox_empty(),
            Event::CallStarted => self.chat.call_started(),
            Event::CallReport(report) => self.chat.call_report(report),
            Event::CallEnded(result) => {
                self.hangup = None;
                self.chat.call_ended(result)
            }
        }
    }

    /// Carries out actions, including those that follow from a frame handed back.
    fn execute(&mut self, actions: Vec<Action>) -> anyhow::Result<Option<Ending>> {
        let mut pending = std::collections::VecDeque::from(actions);
        while let Some(action) = pending.pop_front() {
            match action {
                Action::Print(text) => print(&text),
                Action::Open { link, peer } => self.start_channel(
                    link,
                    channel_input::Kind::Open(OpenChannel {
                        app_id: APP_ID.to_owned(),
                        peer,
                        batch: false,
                        half_close: false,
                        group: String::new(),
                        transport: 0,
                    }),
                ),
                Action::Accept { link, channel_id } => self.start_channel(
                    link,
                    channel_input::Kind::Accept(AcceptChannel {
                        channel_id,
                        app_id: APP_ID.to_owned(),
                        batch: false,
                        half_close: false,
                        transport: 0,
                    }),
                ),
                Action::Write { link, text } => {
                    let handed = match self.writers.remove(&link) {
                        Some(writer) => writer.send(text),
                        None => Err(text),
                    };
                    if let Err(text) = handed {
                        pending.extend(self.chat.frame_rejected(link, text));
                    }
                }
                Action::Close { link } => {
                    self.writers.remove(&link);
                }
                Action::Send { peer, text } => {
                    let apps = self.client.apps();
                    tokio::spawn(tasks::send(apps, peer, text, self.events.clone()));
                }
                Action::Ack { inbox_id } => {
                    self.acks.send_if_modified(|upto| {
                        let newer = inbox_id > *upto;
                        *upto = (*upto).max(inbox_id);
                        newer
                    });
                }
                Action::StartCall { peer, node, answer } => {
                    let (hangup, hung_up) = oneshot::channel();
                    self.hangup = Some(hangup);
                    let plan = Plan {
                        peer,
                        node,
                        answer,
                        args: self.call_args.clone(),
                    };
                    let client = self.client.clone();
                    tokio::spawn(call::run(client, plan, hung_up, self.events.clone()));
                }
                Action::HangUp => {
                    if let Some(hangup) = self.hangup.take() {
                        // The task may have ended already; its `CallEnded` is on the way.
                        let _ = hangup.send(());
                    }
                }
                Action::Arm { timer, after } => {
                    self.timers.insert(timer, Instant::now() + after);
                }
                Action::Exit => return Ok(Some(Ending::Done)),
                Action::Fail(message) => bail!(message),
            }
        }
        Ok(None)
    }

    fn start_channel(&self, link: Link, first: channel_input::Kind) {
        let apps = self.client.apps();
        tokio::spawn(tasks::channel(apps, link, first, self.events.clone()));
    }
}
