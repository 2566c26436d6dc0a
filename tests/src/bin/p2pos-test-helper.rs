//! `p2pos-test-helper`: a small helper program for the task-control tests, started by a node
//! from its plug-in directory.
//!
//! - `run [--ignore-term | --fork]`: prints `helper running pid=<pid> app=<P2POS_APP_ID>` and
//!   one `env <NAME>` line per environment variable, then runs until SIGTERM (`got SIGTERM` and
//!   exit 0), or, with `--ignore-term`, until killed. With `--fork` it first starts a copy of
//!   itself (`run`) as its own child and prints `child pid=<pid>`.
//! - `exit CODE`: writes `exiting with CODE` to stderr and exits with CODE.
//! - `echo`: opens an app session as `$P2POS_APP_ID` with `$P2POS_TOKEN` on `$P2POS_GATEWAY`,
//!   prints `echo ready`, and echoes every frame of every channel opened to it.

use std::process::ExitCode;

use futures::{SinkExt, StreamExt};
use p2pos_client::{Client, Target, TargetOptions};
use p2pos_proto::app::v1::{AcceptChannel, SessionRequest, session_event};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match args.as_slice() {
        ["run"] => runtime.block_on(run(false)),
        ["run", "--ignore-term"] => runtime.block_on(run(true)),
        ["run", "--fork"] => {
            let child = std::env::current_exe()
                .and_then(|exe| std::process::Command::new(exe).arg("run").spawn());
            match child {
                Ok(child) => println!("child pid={}", child.id()),
                Err(e) => eprintln!("cannot fork: {e}"),
            }
            runtime.block_on(run(false))
        }
        ["exit", code] => {
            eprintln!("exiting with {code}");
            ExitCode::from(code.parse::<u8>().unwrap_or(1))
        }
        ["echo"] => match runtime.block_on(echo()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        _ => {
            eprintln!("usage: p2pos-test-helper run [--ignore-term | --fork] | exit CODE | echo");
            ExitCode::from(2)
        }
    }
}

async fn run(ignore_term: bool) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    // Ready for SIGTERM before saying it runs: a test may stop it as soon as it has.
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if ignore_term {
        // SAFETY: ignoring a signal installs no handler code.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGTERM,
                nix::sys::signal::SigHandler::SigIgn,
            )
        };
    }
    println!(
        "helper running pid={} app={}",
        std::process::id(),
        std::env::var("P2POS_APP_ID").unwrap_or_default()
    );
    let mut names: Vec<String> = std::env::vars_os()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        println!("env {name}");
    }
    if ignore_term {
        println!("ignoring SIGTERM");
        std::future::pending::<()>().await;
    }
    term.recv().await;
    println!("got SIGTERM");
    ExitCode::SUCCESS
}

async fn echo() -> Result<(), Box<dyn std::error::Error>> {
    let app_id = std::env::var("P2POS_APP_ID")?;
    let client = Client::connect(&Target::resolve(TargetOptions::default())?).await?;
    let mut session = client
        .apps()
        .session(SessionRequest {
            app_id: app_id.clone(),
        })
        .await?
        .into_inner();
    while let Some(event) = session.next().await {
        match event?.kind {
            Some(session_event::Kind::Registered(_)) => println!("echo ready"),
            Some(session_event::Kind::Incoming(incoming)) => {
                let client = client.clone();
                let app_id = app_id.clone();
                tokio::spawn(async move {
                    if let Err(e) = echo_channel(client, app_id, incoming.channel_id).await {
                        eprintln!("channel {}: {e}", incoming.channel_id);
                    }
                });
            }
            // Calls are for service providers; this helper provides none.
            Some(session_event::Kind::Call(_)) | None => {}
        }
    }
    Ok(())
}

async fn echo_channel(
    client: Client,
    app_id: String,
    channel_id: u64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let accept = AcceptChannel {
        channel_id,
        app_id,
        batch: false,
        half_close: false,
    };
    let mut channel = client.accept_channel(accept).await?;
    while let Some(frame) = channel.receiver.message().await? {
        channel.sender.send(frame).await?;
    }
    Ok(())
}
