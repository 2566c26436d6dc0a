//! The call loop: one task owns the whole call (phases, the audio source, the recording and
//! the counters) and reacts to [`Event`]s from the channel tasks, the 20 ms pacing tick, the
//! once-a-second report tick, its one deadline, and SIGTERM / SIGINT.
//!
//! Phases: waiting for the app's control channel → waiting for `call` / `answer` →
//! connecting the voice channel → live (sending and recording) → ending (hung up: no longer
//! sending, the voice channel half-closed, waiting for the peer to close) → finished (WAV
//! completed, final stats and `ended` sent to the app, exit). The media side (frames in and
//! out, the recording, stats) is in [`media`].

use std::collections::VecDeque;
use std::path::PathBuf;

use bytes::Bytes;
use p2pos_client::{AuthChannel, Client, describe_status};
use p2pos_proto::app::v1::SessionRequest;
use p2pos_proto::app::v1::apps_client::AppsClient;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant, Interval, MissedTickBehavior};

use crate::control::{Command, Report};
use crate::link::{self, Event, Events, Which};
use crate::recorder::{Reception, Recording};
use crate::source::Source;

mod media;

/// Capacity of the event channel (back-pressure on the channel tasks).
const EVENT_BUFFER: usize = 64;
/// Reports queued to the app at most; a periodic report is dropped when full.
const CONTROL_QUEUE: usize = 16;
/// Audio frames queued to the voice channel at most (2 s); later frames are dropped, as a
/// real-time sender must, and show up as lost on the other side.
const VOICE_QUEUE: usize = 100;
/// Incoming channels from peers kept while waiting for `answer`.
const MAX_PENDING: usize = 8;
/// How long the app has to open the control channel after the start.
const CONTROL_WITHIN: Duration = Duration::from_secs(30);
/// How long `call` keeps trying to reach the peer's plug-in.
const CALL_WITHIN: Duration = Duration::from_secs(15);
/// How long `answer` waits for the peer's voice channel.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// After hanging up, how long to wait for the peer to close its side.
const HANGUP_WITHIN: Duration = Duration::from_secs(5);
/// Stats go to the app this often (and the WAV header is brought up to date).
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// At the end, how long the last reports may take and the app may take to close.
const GOODBYE_WITHIN: Duration = Duration::from_secs(2);

/// What the call needs to know.
#[derive(Debug)]
pub(crate) struct Config {
    /// The app id the plug-in acts as (`P2POS_APP_ID`, e.g. `chat:voice`).
    pub(crate) app_id: String,
    /// What to send.
    pub(crate) source: Source,
    /// Where to record (`--out`), or `None` for a file in `dir`.
    pub(crate) out: Option<PathBuf>,
    /// Directory of the default recording (`P2POS_HELPER_DIR`).
    pub(crate) dir: PathBuf,
}

/// How the call ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Hung up by either side (or stopped by the node).
    Ended,
    /// It could not go on.
    Failed(String),
}

#[derive(Debug)]
enum Phase {
    Control,
    Command,
    Connecting,
    Live,
    Ending { reason: String },
}

/// What woke the loop.
enum Wake {
    Event(Option<Event>),
    Pace,
    Report,
    Deadline,
    Signal(&'static str),
}

/// Go on, or end the call.
enum Flow {
    Go,
    End { reason: String, failed: bool },
}

struct Plugin {
    apps: AppsClient<AuthChannel>,
    events: Events,
    app_id: String,
    source: Source,
    out: Option<PathBuf>,
    dir: PathBuf,
    own_id: Option<String>,
    phase: Phase,
    /// When the current phase gives up (control, answer, ending).
    deadline: Option<Instant>,
    control: Option<mpsc::Sender<Bytes>>,
    control_accepting: bool,
    /// Incoming voice channels announced before `answer`: (channel id, peer).
    pending: VecDeque<(u64, String)>,
    /// The other peer, from `call` / `answer`.
    peer: Option<String>,
    voice_task: Option<JoinHandle<()>>,
    /// The voice channel's input, until we hang up.
    voice: Option<mpsc::Sender<Bytes>>,
    /// The 20 ms tick, while there is audio to send.
    pace: Option<Interval>,
    /// The call's clock: arrival times are measured from here.
    clock: Instant,
    seq: u64,
    sent: u64,
    reception: Reception,
    recording: Option<Recording>,
    /// The recording's size limit was reported.
    recording_full: bool,
    bad_frames: u64,
}

/// Runs one call, from registering the session to the end.
pub(crate) async fn run(client: Client, config: Config) -> Result<Outcome, String> {
    let Config {
        app_id,
        source,
        out,
        dir,
    } = config;
    // First, so that a stop request at any time ends the call cleanly.
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    let mut apps = client.apps();
    let session = apps
        .session(SessionRequest {
            app_id: app_id.clone(),
            group: String::new(),
        })
        .await
        .map_err(|status| format!("cannot register {app_id}: {}", describe_status(&status)))?
        .into_inner();
    let (events, mut inbox) = mpsc::channel(EVENT_BUFFER);
    tokio::spawn(link::session(session, events.clone()));
    let mut report = tokio::time::interval_at(Instant::now() + REPORT_EVERY, REPORT_EVERY);
    report.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let mut plugin = Plugin {
        apps,
        events,
        app_id,
        source,
        out,
        dir,
        own_id: None,
        phase: Phase::Control,
        deadline: Some(Instant::now() + CONTROL_WITHIN),
        control: None,
        control_accepting: false,
        pending: VecDeque::new(),
        peer: None,
        voice_task: None,
        voice: None,
        pace: None,
        clock: Instant::now(),
        seq: 0,
        sent: 0,
        reception: Reception::default(),
        recording: None,
        recording_full: false,
        bad_frames: 0,
    };
    loop {
        let deadline = plugin.deadline;
        let wake = tokio::select! {
            event = inbox.recv() => Wake::Event(event),
            () = tick(&mut plugin.pace), if plugin.pace.is_some() => Wake::Pace,
            _ = report.tick() => Wake::Report,
            () = sleep_until(deadline), if deadline.is_some() => Wake::Deadline,
            _ = term.recv() => Wake::Signal("stopped by the node"),
            _ = int.recv() => Wake::Signal("interrupted"),
        };
        let flow = match wake {
            Wake::Event(Some(event)) => plugin.handle(event),
            Wake::Event(None) => Flow::End {
                reason: "internal: event channel closed".into(),
                failed: true,
            },
            Wake::Pace => plugin.send_frame(),
            Wake::Report => plugin.report_stats(),
            Wake::Deadline => plugin.timeout(),
            Wake::Signal(reason) => plugin.hang_up(reason),
        };
        if let Flow::End { reason, failed } = flow {
            return Ok(plugin.finish(reason, failed, &mut inbox).await);
        }
    }
}

async fn tick(pace: &mut Option<Interval>) {
    match pace {
        Some(pace) => {
            pace.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Plugin {
    fn handle(&mut self, event: Event) -> Flow {
        match event {
            Event::Registered { peer_id } => {
                println!("registered as {} on {peer_id}", self.app_id);
                self.own_id = Some(peer_id);
                Flow::Go
            }
            Event::Incoming {
                channel_id,
                peer_id,
            } => {
                self.incoming(channel_id, peer_id);
                Flow::Go
            }
            Event::SessionEnded(reason) => Flow::End {
                reason: format!("lost the session with the node: {reason}"),
                failed: true,
            },
            Event::Opened {
                which: Which::Control,
                input,
                ..
            } => {
                self.control_accepting = false;
                if matches!(self.phase, Phase::Control) {
                    self.control = Some(input);
                    self.phase = Phase::Command;
                    self.deadline = None;
                }
                Flow::Go
            }
            Event::OpenFailed {
                which: Which::Control,
                reason,
            } => {
                eprintln!("could not accept the control channel: {reason}");
                self.control_accepting = false;
                Flow::Go
            }
            Event::Frame {
                which: Which::Control,
                data,
            } => self.command(&data),
            Event::Closed {
                which: Which::Control,
                ..
            } => {
                self.control = None;
                self.hang_up("the app closed the control channel")
            }
            Event::Opened {
                which: Which::Voice,
                peer_id,
                input,
            } => self.voice_opened(&peer_id, input),
            Event::OpenFailed {
                which: Which::Voice,
                reason,
            } => Flow::End {
                reason: format!(
                    "cannot reach the voice plug-in of {}: {reason}",
                    self.peer_name()
                ),
                failed: true,
            },
            Event::Frame {
                which: Which::Voice,
                data,
            } => self.audio(&data),
            Event::Closed {
                which: Which::Voice,
                error,
            } => self.voice_closed(error),
        }
    }

    fn incoming(&mut self, channel_id: u64, peer_id: String) {
        if self.own_id.as_deref() == Some(peer_id.as_str()) {
            // A local channel: the app's control channel (only the first is taken).
            if matches!(self.phase, Phase::Control) && !self.control_accepting {
                self.control_accepting = true;
                let task = link::accept(
                    self.apps.clone(),
                    self.app_id.clone(),
                    channel_id,
                    Which::Control,
                    CONTROL_QUEUE,
                    self.events.clone(),
                );
                tokio::spawn(task);
            }
            return;
        }
        let answering = matches!(self.phase, Phase::Connecting)
            && self.voice_task.is_none()
            && self.peer.as_deref() == Some(peer_id.as_str());
        if answering {
            self.accept_voice(channel_id);
        } else if self.peer.is_none() {
            if self.pending.len() == MAX_PENDING {
                self.pending.pop_front();
            }
            self.pending.push_back((channel_id, peer_id));
        } else {
            eprintln!("ignored a voice channel from {peer_id}");
        }
    }

    fn command(&mut self, data: &[u8]) -> Flow {
        let command = match Command::decode(data) {
            Ok(command) => command,
            Err(message) => {
                self.report(Report::Error { message });
                return Flow::Go;
            }
        };
        match command {
            Command::Call { peer } | Command::Answer { peer } if self.peer.is_some() => {
                let message = format!(
                    "already in a call with {}; not calling {peer}",
                    self.peer_name()
                );
                self.report(Report::Error { message });
                Flow::Go
            }
            Command::Call { peer } => {
                println!("calling {peer}");
                self.peer = Some(peer.clone());
                self.phase = Phase::Connecting;
                let task = link::open(
                    self.apps.clone(),
                    self.app_id.clone(),
                    peer,
                    Instant::now() + CALL_WITHIN,
                    Which::Voice,
                    VOICE_QUEUE,
                    self.events.clone(),
                );
                self.voice_task = Some(tokio::spawn(task));
                Flow::Go
            }
            Command::Answer { peer } => {
                println!("answering {peer}");
                self.phase = Phase::Connecting;
                self.deadline = Some(Instant::now() + ANSWER_WITHIN);
                let waiting = self.pending.iter().position(|(_, p)| *p == peer);
                self.peer = Some(peer);
                if let Some(at) = waiting {
                    let channel_id = self.pending[at].0;
                    self.accept_voice(channel_id);
                }
                self.pending.clear();
                Flow::Go
            }
            Command::Hangup => self.hang_up("hung up"),
        }
    }

    fn accept_voice(&mut self, channel_id: u64) {
        let task = link::accept(
            self.apps.clone(),
            self.app_id.clone(),
            channel_id,
            Which::Voice,
            VOICE_QUEUE,
            self.events.clone(),
        );
        self.voice_task = Some(tokio::spawn(task));
    }

    fn voice_closed(&mut self, error: Option<String>) -> Flow {
        match &self.phase {
            Phase::Live => match error {
                None => Flow::End {
                    reason: "the peer hung up".into(),
                    failed: false,
                },
                Some(error) => Flow::End {
                    reason: format!("the voice channel broke: {error}"),
                    failed: true,
                },
            },
            Phase::Ending { reason } => Flow::End {
                reason: reason.clone(),
                failed: false,
            },
            Phase::Control | Phase::Command | Phase::Connecting => Flow::Go,
        }
    }

    /// Ends the call from this side: at once before it is live, else stop sending, half-close
    /// and give the peer [`HANGUP_WITHIN`] to close its side.
    fn hang_up(&mut self, reason: &str) -> Flow {
        match self.phase {
            Phase::Control | Phase::Command | Phase::Connecting => Flow::End {
                reason: reason.to_owned(),
                failed: false,
            },
            Phase::Live => {
                println!("{reason}");
                self.pace = None;
                self.voice = None;
                self.phase = Phase::Ending {
                    reason: reason.to_owned(),
                };
                self.deadline = Some(Instant::now() + HANGUP_WITHIN);
                Flow::Go
            }
            Phase::Ending { .. } => Flow::Go,
        }
    }

    fn timeout(&mut self) -> Flow {
        self.deadline = None;
        match &self.phase {
            Phase::Control => Flow::End {
                reason: format!("no control channel from the app within {CONTROL_WITHIN:?}"),
                failed: true,
            },
            Phase::Connecting => Flow::End {
                reason: format!("no call from {} within {ANSWER_WITHIN:?}", self.peer_name()),
                failed: true,
            },
            Phase::Ending { reason } => Flow::End {
                reason: format!("{reason} (the peer did not close within {HANGUP_WITHIN:?})"),
                failed: false,
            },
            Phase::Command | Phase::Live => Flow::Go,
        }
    }

    fn peer_name(&self) -> String {
        self.peer.clone().unwrap_or_else(|| "the peer".into())
    }

    /// Stops sending, completes the WAV file, sends the final stats and `ended`, then lets the
    /// app close the control channel (briefly).
    async fn finish(
        mut self,
        reason: String,
        failed: bool,
        inbox: &mut mpsc::Receiver<Event>,
    ) -> Outcome {
        println!("call ended: {reason}");
        self.pace = None;
        self.voice = None;
        if let Some(task) = self.voice_task.take() {
            task.abort();
        }
        let mut reports = Vec::new();
        let mut stats = self.stats(true);
        if let Some(recording) = self.recording.take() {
            match recording.finish() {
                Ok(path) => stats.wav = Some(path.display().to_string()),
                Err(message) => reports.push(Report::Error { message }),
            }
        }
        if failed {
            reports.push(Report::Error {
                message: reason.clone(),
            });
        }
        if matches!(self.phase, Phase::Live | Phase::Ending { .. }) {
            reports.push(Report::Stats(stats));
        }
        reports.push(Report::Ended {
            reason: reason.clone(),
        });
        if let Some(control) = self.control.take() {
            let until = Instant::now() + GOODBYE_WITHIN;
            for report in reports {
                let sent =
                    tokio::time::timeout_at(until, control.send(Bytes::from(report.encode())));
                if !matches!(sent.await, Ok(Ok(()))) {
                    break;
                }
            }
            drop(control);
            // The app closes its side once it has read `ended`.
            let closed = async {
                while let Some(event) = inbox.recv().await {
                    if let Event::Closed {
                        which: Which::Control,
                        ..
                    } = event
                    {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout_at(until, closed).await;
        }
        if failed {
            Outcome::Failed(reason)
        } else {
            Outcome::Ended
        }
    }
}
