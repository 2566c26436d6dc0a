//! `p2pos-test-helper`: a small helper program for the task-control tests, started by a node
//! from its plug-in directory.
//!
//! - `run [--ignore-term | --fork]`: prints `helper running pid=<pid> app=<P2POS_APP_ID>` and
//!   one `env <NAME>` line per environment variable, then runs until SIGTERM (`got SIGTERM` and
//!   exit 0), or, with `--ignore-term`, until killed. With `--fork` it first starts a copy of
//!   itself (`run`) as its own child and prints `child pid=<pid>`.
//!   With `--escape` it first starts `/bin/sleep 1000` in a session of its own (`setsid`, out
//!   of the helper's process group) and prints `escaped pid=<pid>`.
//! - `exit CODE`: writes `exiting with CODE` to stderr and exits with CODE.
//! - `alloc MIB`: allocates and touches MIB mebibytes, printing `allocated N MiB` every 16,
//!   then `allocated all` and waits for ever.
//! - `spawn N`: tries to start N `/bin/sleep 1000` processes, printing `spawn failed after K:
//!   <error>` at the first failure, then `started K of N`, and waits for ever.
//! - `echo`: opens an app session as `$P2POS_APP_ID` with `$P2POS_TOKEN` on `$P2POS_GATEWAY`,
//!   prints `echo ready`, and echoes every frame of every channel opened to it.
//! - `whoami`: calls `Node.GetInfo` on `$P2POS_GATEWAY` as any client finds the node (with
//!   `$P2POS_TOKEN` if set, else with the admin token beside the socket if it can read it) and
//!   prints `whoami: <scope>` or `whoami refused: <code>: <message>`.

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
        ["run", "--escape"] => {
            let escaped = detached_sleep(true);
            match escaped {
                Ok(pid) => println!("escaped pid={pid}"),
                Err(e) => eprintln!("cannot escape: {e}"),
            }
            runtime.block_on(run(false))
        }
        ["alloc", mib] => alloc(mib.parse().unwrap_or(0)),
        ["spawn", n] => spawn(n.parse().unwrap_or(0)),
        ["exit", code] => {
            eprintln!("exiting with {code}");
            ExitCode::from(code.parse::<u8>().unwrap_or(1))
        }
        ["whoami"] => {
            let line = runtime.block_on(whoami());
            println!("{line}");
            ExitCode::SUCCESS
        }
        ["echo"] => match runtime.block_on(echo()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        _ => {
            eprintln!(
                "usage: p2pos-test-helper run [--ignore-term | --fork | --escape] | exit CODE | \
                 echo | whoami | alloc MIB | spawn N"
            );
            ExitCode::from(2)
        }
    }
}

/// Starts `/bin/sleep 1000` (in a new session if `setsid`); its pid.
fn detached_sleep(setsid: bool) -> std::io::Result<u32> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/bin/sleep");
    cmd.arg("1000")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if setsid {
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
    }
    Ok(cmd.spawn()?.id())
}

fn wait_for_ever() -> ExitCode {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn alloc(mib: usize) -> ExitCode {
    use std::io::Write;
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for i in 1..=mib {
        // Every page written, so that it is really used.
        let mut chunk = vec![0u8; 1 << 20];
        for page in chunk.chunks_mut(4096) {
            page[0] = 1;
        }
        kept.push(chunk);
        if i % 16 == 0 {
            println!("allocated {i} MiB");
            let _ = std::io::stdout().flush();
        }
    }
    println!("allocated all");
    let _ = std::io::stdout().flush();
    std::hint::black_box(&kept);
    wait_for_ever()
}

fn spawn(n: usize) -> ExitCode {
    use std::io::Write;
    let mut started = 0;
    for _ in 0..n {
        match detached_sleep(false) {
            Ok(_) => started += 1,
            Err(e) => {
                println!("spawn failed after {started}: {e}");
                break;
            }
        }
    }
    println!("started {started} of {n}");
    let _ = std::io::stdout().flush();
    wait_for_ever()
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

async fn whoami() -> String {
    let target = match Target::resolve(TargetOptions::default()) {
        Ok(target) => target,
        Err(e) => return format!("whoami refused: no target: {e}"),
    };
    let client = match Client::connect(&target).await {
        Ok(client) => client,
        Err(e) => return format!("whoami refused: cannot connect: {e}"),
    };
    match client
        .node()
        .get_info(p2pos_proto::node::v1::GetInfoRequest {})
        .await
    {
        Ok(info) => format!("whoami: {}", info.into_inner().caller_scope),
        Err(status) => format!("whoami refused: {:?}: {}", status.code(), status.message()),
    }
}

async fn echo() -> Result<(), Box<dyn std::error::Error>> {
    let app_id = std::env::var("P2POS_APP_ID")?;
    let client = Client::connect(&Target::resolve(TargetOptions::default())?).await?;
    let mut session = client
        .apps()
        .session(SessionRequest {
            app_id: app_id.clone(),
            group: String::new(),
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
        transport: 0,
    };
    let mut channel = client.accept_channel(accept).await?;
    while let Some(frame) = channel.receiver.message().await? {
        channel.sender.send(frame).await?;
    }
    Ok(())
}
