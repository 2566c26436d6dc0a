//! `p2p-chat`: a terminal messenger on P2P OS that uses only the node's gRPC API (through
//! `p2pos-client`), as any third-party app would. App id `chat`.
//!
//! With a PEER it opens a channel to that peer, falling back to store-and-forward messages
//! (`Apps.Send`) while the peer is offline; without one it waits for a peer to open a channel.
//! Stored messages received for the app are printed as they arrive, once per run, and
//! acknowledged (`Apps.Ack`) once printed; those not acknowledged come again next run.
//!
//! Output, one line each, flushed: `* ...` status lines, and `<last 8 chars of peer id>> text`
//! for received lines. Exit status 0 after stdin ends and every line is sent, 130 on Ctrl-C,
//! 1 with `error: ...` on stderr otherwise.
//!
//! # Layout
//! - [`machine`]: the pure state machine (modes, queue, exactly-once hand-off), unit-tested.
//! - [`tasks`]: one task per gRPC stream (session, receive, channel, send) and the stdin reader.
//! - [`run`]: the loop that feeds events to the machine and carries out its actions.
//! - [`peer`]: peer ids from PEER arguments (tickets, multiaddrs) and their short form.

mod machine;
mod peer;
mod run;
mod tasks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use p2pos_client::{Client, Target, TargetOptions};

/// Chat with another P2P OS node, live or by store-and-forward.
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
    /// Peer to chat with: peer id, ticket, or multiaddr with /p2p/<peer id>.
    /// Without it, wait for someone to open a chat.
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
        peer,
    } = args;
    let target = Target::resolve(TargetOptions {
        gateway,
        token,
        data_dir,
    })?;
    let client = Client::connect(&target).await?;
    run::run(client, peer.filter(|p| !p.trim().is_empty())).await
}

fn fail(err: &anyhow::Error) -> ExitCode {
    let text = format!("{err:#}").replace('\n', " ");
    eprintln!("error: {text}");
    ExitCode::FAILURE
}
