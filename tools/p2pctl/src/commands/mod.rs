//! Runs a parsed command: resolves the target, connects, and hands over to the command group.

mod apps;
mod bundle;
mod dashboard;
mod diag;
mod doctor;
mod duration;
mod event_view;
mod forward;
mod groups;
mod helper_view;
mod helpers;
mod job_view;
mod jobs;
mod logs;
mod monitor;
mod node;
mod overlay;
mod payload;
mod pubsub;
mod resources;
mod services;
pub(crate) mod size;
mod tokens;

use p2pos_client::{Client, Target, describe_status};

use crate::cli::{Cli, Command};

/// Connects to the node and runs the command.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { node, command } = cli;
    let target = Target::resolve(node.target_options())?;
    let client = Client::connect(&target).await?;
    match command {
        Command::Status(flag) => monitor::status(&client, flag.json).await,
        Command::Doctor {
            target,
            group,
            verbose,
            json,
        } => doctor::run(&client, target, group, verbose, json.json).await,
        Command::Resources { json, command } => resources::run(&client, json, command).await,
        Command::Events(flag) => monitor::events(&client, flag.json).await,
        Command::Logs(args) => logs::logs(&client, args).await,
        Command::Diag(command) => diag::run(&client, command).await,
        Command::Helpers(command) => helpers::run(&client, command).await,
        Command::Services(command) => services::run(&client, command).await,
        Command::Forward(command) => forward::run(&client, command).await,
        Command::Groups(command) => groups::run(&client, command).await,
        Command::Tokens(command) => tokens::run(&client, command).await,
        Command::Jobs(command) => jobs::run(&client, command).await,
        Command::Id(flag) => node::id(&client, flag.json).await,
        Command::Shutdown => node::shutdown(&client).await,
        Command::Dashboard(flag) => dashboard::login_url(&client, flag.json).await,
        Command::Ticket(flag) => overlay::ticket(&client, flag.json).await,
        Command::Peers(flag) => overlay::peers(&client, flag.json).await,
        Command::Dial {
            target,
            timeout,
            json,
        } => overlay::dial(&client, &target, timeout, json.json).await,
        Command::Ping { peer, json } => overlay::ping(&client, &peer, json.json).await,
        Command::Apps(flag) => apps::list(&client, flag.json).await,
        Command::Send {
            peer,
            app,
            text,
            file,
            key,
            json,
        } => {
            let text = (!text.is_empty()).then(|| text.join(" "));
            let payload = payload::Source::from_args(text, file).read()?;
            apps::send(&client, (&peer, &app), payload, key, json.json).await
        }
    }
}

/// Turns a failed call into a readable error: `<what>: <message> (<meaning>)`.
pub(crate) trait RpcResult<T> {
    /// Maps the status of a failed call, naming what was attempted.
    fn or_fail(self, what: &str) -> anyhow::Result<T>;
}

impl<T> RpcResult<T> for Result<tonic::Response<T>, tonic::Status> {
    fn or_fail(self, what: &str) -> anyhow::Result<T> {
        self.map(tonic::Response::into_inner)
            .map_err(|status| anyhow::anyhow!("{what}: {}", describe_status(&status)))
    }
}

/// How a command ends that neither succeeded nor failed with an error line and status 1: `jobs
/// run` exits with its job's exit code, or 130 for a cancelled job.
#[derive(Debug)]
pub(crate) struct ExitWith {
    /// The exit status.
    pub(crate) code: u8,
    /// A line said on stderr first (`error: ...`), if any.
    pub(crate) message: Option<String>,
}

impl ExitWith {
    /// Says the message, if any, and gives the exit status.
    pub(crate) fn report(&self) -> std::process::ExitCode {
        if let Some(message) = &self.message {
            eprintln!("error: {message}");
        }
        std::process::ExitCode::from(self.code)
    }
}

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.message {
            Some(message) => write!(f, "{message} (exit status {})", self.code),
            None => write!(f, "exit status {}", self.code),
        }
    }
}

impl std::error::Error for ExitWith {}
