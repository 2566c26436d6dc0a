//! The command line of `p2pctl`: global options and one variant per command (clap derive; the
//! doc comments are the help text).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use p2pos_client::TargetOptions;

/// Administer the local P2P OS node (p2posd) through its gRPC gateway.
#[derive(Debug, Parser)]
#[command(name = "p2pctl", version)]
pub(crate) struct Cli {
    /// Where the node is.
    #[command(flatten)]
    pub(crate) node: NodeOptions,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How to reach the node; unset options fall back to the data directory.
#[derive(Debug, Args)]
pub(crate) struct NodeOptions {
    /// The node's data directory (holds gateway.sock and gateway.token)
    /// [default: ~/.local/share/p2pos]
    #[arg(long, global = true, value_name = "DIR", env = "P2POS_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// The gateway: unix:/path/to/gateway.sock or http://127.0.0.1:PORT
    #[arg(long, global = true, value_name = "ADDR", env = "P2POS_GATEWAY")]
    pub(crate) gateway: Option<String>,
    /// The token to present (required on a TCP gateway)
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        env = "P2POS_TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,
}

impl NodeOptions {
    /// The options as the client SDK takes them.
    pub(crate) fn target_options(&self) -> TargetOptions {
        TargetOptions {
            gateway: self.gateway.clone(),
            token: self.token.clone(),
            data_dir: self.data_dir.clone(),
        }
    }
}

/// `--json` for read commands.
#[derive(Debug, Args, Clone, Copy)]
pub(crate) struct JsonFlag {
    /// Print JSON instead of text
    #[arg(long)]
    pub(crate) json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Show the node's status: identity, uptime, addresses, peers and services
    Status(JsonFlag),
    /// Print this node's peer id
    Id(JsonFlag),
    /// Print a ticket other nodes can dial to reach this one
    Ticket(JsonFlag),
    /// List connected peers
    Peers(JsonFlag),
    /// Connect to a peer given as a ticket, a multiaddr with /p2p/<peer id>, or a peer id
    Dial {
        /// Ticket, multiaddr or peer id
        target: String,
        /// Give up after this many seconds [default: the node's, 10 s]
        #[arg(long, value_name = "SECS")]
        timeout: Option<u32>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Measure the round-trip time to a peer
    Ping {
        /// Peer id
        peer: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List the apps registered on this node
    Apps(JsonFlag),
    /// Send a message to an app on a peer (delivered now, or queued until the peer returns)
    Send {
        /// Peer id, ticket or multiaddr
        peer: String,
        /// App id, e.g. chat
        app: String,
        /// The message text (several words are joined with spaces)
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Follow the node's events until interrupted
    Events(JsonFlag),
    /// Stop the node
    Shutdown,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn send_joins_words() {
        let cli = Cli::parse_from(["p2pctl", "send", "peer", "chat", "hello", "world", "--json"]);
        match cli.command {
            Command::Send {
                text, json, app, ..
            } => {
                assert_eq!(text.join(" "), "hello world");
                assert_eq!(app, "chat");
                assert!(json.json);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
