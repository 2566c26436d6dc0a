//! `p2p-chat`: a terminal messenger on P2P OS that uses only the node's gRPC API (through
//! `p2pos-client`), as any third-party app would. App id `chat`.
//!
//! With a PEER (or a group member's `NAME@GROUP`, resolved by the node; the chat then takes
//! channels only from that group's members) it opens a channel to that peer, falling back to store-and-forward messages
//! (`Apps.Send`) while the peer is offline; without one it waits for a peer to open a channel.
//! Stored messages received for the app are printed as they arrive, once per run, and
//! acknowledged (`Apps.Ack`) once printed; those not acknowledged come again next run.
//!
//! Every line reaches the peer once and in order, however the path breaks. The peer's chat
//! confirms the lines it showed; when a channel breaks (a relay's circuit ended, say) those it
//! did not confirm go again, first, by `Apps.Send`, and the peer's chat drops a copy of a line it
//! showed already (see `machine::confirm`): `* the channel to <peer> broke before 2 lines reached
//! it for sure; sending them again`. A line the node keeps in its outbox (the peer is offline,
//! or the line is too large for the relay the peer is reached through) holds the later lines
//! behind it, and when the node says why: `* your line waits in your node: <why>`.
//!
//! Output, one line each, flushed: `* ...` status lines, and `<last 8 chars of peer id>> text`
//! for received lines. Exit status 0 after stdin ends and every line is sent, 130 on Ctrl-C,
//! 1 with `error: ...` on stderr otherwise.
//!
//! With `--group GROUP` it talks in the group's room instead (see [`room`]): each typed line is
//! published on the chat app's topic `room` (or `--room NAME`) in the group (`Groups.Publish`),
//! and every member's lines are printed as they come (`Groups.Subscribe`), the last hour's
//! first, marked `[earlier, 5m ago]`. The chat's own lines are not printed back. `/quit` or the
//! end of stdin leaves the room once every line is out.
//!
//! # Commands
//! A typed line that is exactly one of these (spaces around are ignored) is a command, not text:
//! - `/call`: a voice call with the peer of the live channel. The chat registers its plug-in
//!   `p2p-voice` with the node (`Tasks.AddHelper`: helper `voice`, program `p2p-voice` from the
//!   node's plug-in directory, `--wav FILE` with `--call-audio FILE`, never restarted), starts
//!   it (`StartHelper`), opens a local channel to it (app id `chat:voice`, this node's peer id)
//!   and sends it `call`; then it tells the peer's chat, which prints `* incoming call from
//!   <short id>` and starts its own plug-in to `answer`. The plug-ins stream audio to each
//!   other; both chats print their counters (`* voice: sent 250 frames, received 250 frames,
//!   lost 0, jitter 0.3 ms, recording <path>`) and `* call ended` at the end. Without a plug-in
//!   or a live peer: `* cannot call: <reason>`, and the chat goes on.
//! - `/hangup`: ends the call on both sides (the plug-in is told, then stopped; the peer's
//!   chat is told). Ending stdin hangs up too.
//! - `/help`: lists the commands.
//!
//! Call signals between the chats travel on the chat's channel as frames that start with a
//! newline, which no typed line contains (see `machine::signals`); text lines are unchanged.
//!
//! # Layout
//! - [`machine`]: the pure state machine (modes, queue, exactly-once hand-off, calls),
//!   unit-tested.
//! - [`tasks`]: one task per gRPC stream (session, receive, channel, send, the outbox's events)
//!   and the stdin reader.
//! - [`call`]: the task that runs one call's voice plug-in (helper, control channel).
//! - [`plugin`]: the plug-in's names and control protocol.
//! - [`run`]: the loop that feeds events to the machine and carries out its actions.
//! - [`peer`]: peer ids from PEER arguments (tickets, multiaddrs) and their short form.
//! - [`room`]: the group room (`--group`): its loop, tasks and state.

mod call;
mod machine;
mod peer;
mod plugin;
mod room;
mod run;
mod tasks;

/// The room of `--group` without `--room`.
const DEFAULT_ROOM: &str = "room";

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use p2pos_client::{Client, Target, TargetOptions};

/// Chat with another P2P OS node, live or by store-and-forward.
///
/// Type lines to send them. Commands: /call (voice call with the peer, through the node's
/// p2p-voice plug-in), /hangup (end the call), /help; in a group room: /quit, /help.
#[derive(Debug, Parser)]
#[command(name = "p2p-chat", version)]
struct Args {
    /// The node's data directory (holds gateway.sock and gateway.token)
    /// [default: ~/.local/share/p2pos]
    #[arg(long, value_name = "DIR", env = "P2POS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The gateway: unix:/path/to/gateway.sock or http://127.0.0.1:PORT
    #[arg(long, value_name = "ADDR", env = "P2POS_GATEWAY")]
    gateway: Option<String>,
    /// The token to present (required on a TCP gateway)
    #[arg(
        long,
        value_name = "TOKEN",
        env = "P2POS_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// In calls, send this WAV file (48 kHz mono 16-bit PCM) once instead of a tone
    #[arg(long, value_name = "FILE")]
    call_audio: Option<PathBuf>,
    /// Talk in a group's room instead of with one peer (the group's id or name; this node
    /// must be a member): every line goes to every member, and theirs come here
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// The room (a topic of the chat app in the group) [default: room]
    #[arg(long, value_name = "NAME")]
    room: Option<String>,
    /// Peer to chat with: peer id, ticket, multiaddr with /p2p/<peer id>, or a group member's
    /// NAME@GROUP (then only that group's members' chats reach this one).
    /// Without it (and without --group), wait for someone to open a chat.
    peer: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&err.into()),
    };
    let code = match runtime.block_on(chat(args)) {
        Ok(run::Ending::Done) => ExitCode::SUCCESS,
        Ok(run::Ending::Interrupted) => ExitCode::from(130),
        Err(err) => fail(&err),
    };
    // Do not wait for the stdin thread or for tasks still holding streams.
    runtime.shutdown_background();
    code
}

async fn chat(args: Args) -> anyhow::Result<run::Ending> {
    let Args {
        data_dir,
        gateway,
        token,
        call_audio,
        group,
        room,
        peer,
    } = args;
    let peer = peer.filter(|p| !p.trim().is_empty());
    let room = match (&group, room) {
        (None, Some(_)) => anyhow::bail!("--room names a room of a group: give --group too"),
        (_, Some(room)) if room.trim().is_empty() => anyhow::bail!("--room is empty"),
        (_, room) => room.unwrap_or_else(|| DEFAULT_ROOM.to_owned()),
    };
    if let Some(group) = group {
        if peer.is_some() || call_audio.is_some() {
            anyhow::bail!(
                "--group chats in a group's room: give no PEER and no --call-audio with it"
            );
        }
        let options = TargetOptions {
            gateway,
            token,
            data_dir,
        };
        return room::run(options, group, room).await;
    }
    // The plug-in runs in its own directory: give it an absolute path.
    let call_args = match call_audio {
        Some(path) => {
            let path = std::fs::canonicalize(&path)
                .with_context(|| format!("--call-audio {}", path.display()))?;
            vec!["--wav".to_owned(), path.display().to_string()]
        }
        None => Vec::new(),
    };
    let target = Target::resolve(TargetOptions {
        gateway,
        token,
        data_dir,
    })?;
    let client = Client::connect(&target).await?;
    run::run(client, peer, call_args).await
}

fn fail(err: &anyhow::Error) -> ExitCode {
    let text = format!("{err:#}").replace('\n', " ");
    eprintln!("error: {text}");
    ExitCode::FAILURE
}
