//! `p2p-voice`: the voice plug-in of `p2p-chat`. A helper program that the node starts for the
//! chat (`Tasks.StartHelper`), which streams live 48 kHz audio to the same plug-in on the
//! peer's node and records what it receives. One process is one call; it exits when the call
//! ends. It uses only the node's gRPC API, like any app.
//!
//! # Environment
//! Set by the node: `P2POS_GATEWAY`, `P2POS_TOKEN` (scoped to the plug-in's app id),
//! `P2POS_APP_ID` (e.g. `chat:voice`), `P2POS_HELPER_DIR` (its own directory, the default place
//! of recordings). Without `P2POS_APP_ID` or `P2POS_GATEWAY`, or with a bad `--wav` file, it
//! prints one `error: ...` line and exits with status 2.
//!
//! # Control protocol (app ↔ plug-in)
//! The plug-in opens an `Apps.Session` as `$P2POS_APP_ID`. The app opens a *local* channel to
//! it (`open{app_id: "chat:voice", peer: <own peer id>}`, retrying while the plug-in starts);
//! the plug-in accepts the first channel announced with its own node's peer id. Every data
//! frame on it is one JSON object tagged by `"type"` (unknown fields are ignored):
//!
//! app → plug-in:
//! - `{"type":"call","peer":ID}`: open the voice channel to the plug-in on peer ID
//!   (`open{app_id: "chat:voice", peer: ID}`, retried for 15 s while it is not running there)
//!   and stream.
//! - `{"type":"answer","peer":ID}`: accept the voice channel that ID's plug-in opens (within
//!   30 s) and stream back.
//! - `{"type":"hangup"}`: end the call.
//!
//! plug-in → app:
//! - `{"type":"stats","peer":ID,"sent":N,"received":N,"lost":N,"jitter_ms":F,"wav":PATH|null,
//!   "final":BOOL}` about once a second while the voice channel is open, and once with
//!   `"final":true` when a call that connected ends (`wav`: the completed recording).
//! - `{"type":"error","message":TEXT}`: something went wrong (a bad command, a bad frame, the
//!   reason a call failed).
//! - `{"type":"ended","reason":TEXT}`: the last report; the plug-in closes its side of the
//!   control channel, waits briefly for the app to close its side, and exits (0 when hung up
//!   by either side, 1 when the call failed).
//!
//! # Voice channel (plug-in ↔ plug-in)
//! Both plug-ins send and record. Each data frame is one 20 ms audio frame (see [`frame`]),
//! paced in real time: a sine tone (`--tone-hz`), or a WAV file sent once (`--wav`, padded with
//! silence to whole frames; the call then goes on without sending). Received samples are
//! appended to the recording (`--out`, default `$P2POS_HELPER_DIR/call-<last 8 characters of
//! the peer id>-<unix time>.wav`; at most 2 hours), whose header is updated every second.
//! Hanging up (a `hangup` command, SIGTERM or SIGINT, or the app closing the control channel)
//! stops sending and half-closes the voice channel; the peer sees the end of the stream,
//! completes its recording, closes its side, reports to its app and exits; this side then does
//! the same (or after 5 s without the peer's close).
//!
//! # Layout
//! - [`call`]: the call loop (phases, pacing, reports, hang-up and the end).
//! - [`link`]: the gRPC tasks: the session and the channels.
//! - [`control`]: the JSON control messages.
//! - [`frame`]: the audio frame format.
//! - [`source`]: the tone and the WAV file sent.
//! - [`recorder`]: reception counters (loss, RFC 3550 jitter) and the WAV recording.

mod call;
mod control;
mod frame;
mod link;
mod recorder;
mod source;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use p2pos_client::{Client, Target, TargetOptions};

use crate::call::{Config, Outcome};
use crate::source::Source;

/// Exit status for a bad command line, environment or input file.
const USAGE: u8 = 2;

/// Voice plug-in of p2p-chat: streams a tone or a WAV file to the peer's plug-in and records
/// what it receives. Started by the node as a helper of the chat, which drives it over a local
/// control channel.
#[derive(Debug, Parser)]
#[command(name = "p2p-voice", version)]
struct Args {
    /// Send this WAV file (48 kHz mono 16-bit PCM) once instead of a tone
    #[arg(long, value_name = "FILE")]
    wav: Option<PathBuf>,
    /// Frequency of the tone sent without --wav, in Hz (0 to 20000)
    #[arg(long, value_name = "HZ", default_value_t = 440.0)]
    tone_hz: f64,
    /// Where to record the received audio
    /// [default: $P2POS_HELPER_DIR/call-PEER-UNIXTIME.wav, PEER: the last 8 characters of its id]
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (config, target) = match prepare(args) {
        Ok(ready) => ready,
        Err(message) => return fail(&message, USAGE),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&err.to_string(), 1),
    };
    let code = match runtime.block_on(voice(target, config)) {
        Ok(Outcome::Ended) => ExitCode::SUCCESS,
        Ok(Outcome::Failed(reason)) | Err(reason) => fail(&reason, 1),
    };
    // Do not wait for tasks still holding streams.
    runtime.shutdown_background();
    code
}

async fn voice(target: Target, config: Config) -> Result<Outcome, String> {
    let client = Client::connect(&target)
        .await
        .map_err(|err| err.to_string())?;
    call::run(client, config).await
}

/// Checks the environment and the arguments, and reads the WAV file, before any connection.
fn prepare(args: Args) -> Result<(Config, Target), String> {
    let Args { wav, tone_hz, out } = args;
    let app_id = required_env("P2POS_APP_ID")?;
    required_env(p2pos_client::GATEWAY_ENV)?;
    let dir = match std::env::var_os("P2POS_HELPER_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ if out.as_ref().is_some_and(|o| o.is_absolute()) => PathBuf::from("/"),
        _ => return Err("P2POS_HELPER_DIR is not set (or pass an absolute --out)".into()),
    };
    if !(0.0..=20_000.0).contains(&tone_hz) {
        return Err(format!("--tone-hz {tone_hz}: expected 0 to 20000"));
    }
    let source = match wav {
        Some(path) => Source::clip(source::load_wav(&path)?),
        None => Source::tone(tone_hz),
    };
    let target = Target::resolve(TargetOptions::default()).map_err(|err| err.to_string())?;
    let config = Config {
        app_id,
        source,
        out,
        dir,
    };
    Ok((config, target))
}

fn required_env(name: &str) -> Result<String, String> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => Ok(value),
        _ => Err(format!(
            "{name} is not set: p2p-voice runs as a helper started by the node for an app"
        )),
    }
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("error: {}", message.replace('\n', " "));
    ExitCode::from(code)
}
