//! The command line of `p2pctl`: global options and one variant per command (clap derive; the
//! doc comments are the help text).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
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
    /// Check the node (no argument), this node and a peer (PEER: a peer id or ticket), or how a
    /// group's members are connected (GROUP): each check with a verdict, what it saw and what
    /// to do. Exits 1 when a check fails
    Doctor {
        /// A peer id or ticket, or a group's name or id (with --group, or when it is no peer)
        target: Option<String>,
        /// TARGET is a group
        #[arg(long)]
        group: bool,
        /// Show what every check saw, not only the failing ones'
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// What this machine has and what the node and its helpers use (no subcommand); what the
    /// owner lends to peers; finding and leasing what peers lend
    Resources {
        /// Print JSON instead of text (the inventory)
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<ResourcesCommand>,
    },
    /// Groups with a signed member list that needs no server: create, invite, join, leave,
    /// list, members, remove, name; publish and watch topics in them
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// App tokens (for apps on the TCP gateway, or presenting one on the socket): create, list,
    /// revoke
    #[command(subcommand)]
    Tokens(TokensCommand),
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
        /// The message text (several words are joined with spaces); `-` reads it from stdin
        #[arg(required_unless_present = "file", num_args = 1..)]
        text: Vec<String>,
        /// Send this file's contents instead (`-`: stdin); at most 1 MiB
        #[arg(long, value_name = "FILE", conflicts_with = "text")]
        file: Option<PathBuf>,
        /// Name the message with this idempotency key (1 to 64 bytes): sending again with the
        /// same key within 24 h answers the message sent the first time, never a second copy
        #[arg(long, value_name = "KEY", value_parser = parse_idempotency_key)]
        key: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Follow the node's events until interrupted
    Events(JsonFlag),
    /// Print the node's recent log lines (info and above, whatever its --log filter)
    Logs(crate::cli_diag::LogsArgs),
    /// Diagnostics for a bug report: `diag bundle FILE`
    #[command(subcommand)]
    Diag(crate::cli_diag::DiagCommand),
    /// Manage helper applications (plug-ins) the node runs and supervises
    #[command(subcommand)]
    Helpers(HelpersCommand),
    /// Services that apps provide to other apps: list, find, call
    #[command(subcommand)]
    Services(ServicesCommand),
    /// Port forwarding: publish a local TCP port as a service, or reach one through a local port
    #[command(subcommand)]
    Forward(ForwardCommand),
    /// WebAssembly jobs run on peers that lend their machines: run, list, status, logs, cancel
    #[command(subcommand)]
    Jobs(crate::cli_jobs::JobsCommand),
    /// Stop the node
    Shutdown,
    /// Print a one-time login link for the node's dashboard (`p2posd --dashboard
    /// 127.0.0.1:PORT`): open it in a browser on this machine within 60 s
    Dashboard(JsonFlag),
}

/// `p2pctl tokens ...`
#[derive(Debug, Subcommand)]
pub(crate) enum TokensCommand {
    /// Issue a token scoped to APP; it is printed once and never shown again
    Create {
        /// The app id it is scoped to, e.g. chat
        app: String,
        /// How long it is valid: seconds, or with a unit (`30s`, `10m`, `12h`, `90d`); at most
        /// 365d [default: the node's, 30d]
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// Print JSON: {token, id, app_id, expires_ms}
        #[arg(long)]
        json: bool,
    },
    /// List the app tokens, by app, with their expiry (their ids, never the tokens)
    #[command(visible_alias = "ls")]
    List {
        /// Only this app's tokens
        #[arg(long, value_name = "APP")]
        app: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Revoke a token (the token or its id) or every token of an app; calls still open with it
    /// end at once
    Revoke {
        /// The token, or its id from `p2pctl tokens list`
        #[arg(
            value_name = "TOKEN_OR_ID",
            required_unless_present = "app",
            conflicts_with = "app"
        )]
        which: Option<String>,
        /// Revoke every token of this app instead
        #[arg(long, value_name = "APP")]
        app: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// `p2pctl services ...`
#[derive(Debug, Subcommand)]
pub(crate) enum ServicesCommand {
    /// List the services provided on this node, and by which app
    #[command(visible_alias = "ls")]
    List(JsonFlag),
    /// Find a service's providers: this node's first, then remote ones, nearest first
    Find {
        /// The service, NAME/VERSION (e.g. translate/1)
        service: String,
        /// Most providers to show [default: the node's, 20]
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Only providers that are members of this group (id or name)
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Call a service once and print its answer (as text; bytes that are not UTF-8 as they are)
    Call {
        /// The service, NAME/VERSION (e.g. translate/1)
        service: String,
        /// The request, as text; `-` reads it from stdin (at most 1 MiB)
        #[arg(required_unless_present = "file")]
        payload: Option<String>,
        /// Send this file's contents as the request instead (`-`: stdin); at most 1 MiB
        #[arg(long, value_name = "FILE", conflicts_with = "payload")]
        file: Option<PathBuf>,
        /// The app the call is made for
        #[arg(long, value_name = "APP", default_value = "p2pctl")]
        app: String,
        /// Only this provider (peer id) [default: the best one found]
        #[arg(long, value_name = "PEER")]
        peer: Option<String>,
        /// Only providers that are members of this group (id or name)
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        #[command(flatten)]
        trust: TrustArgs,
        /// Give up after this many milliseconds (at most 60000) [default: 60000]
        #[arg(long, value_name = "MS")]
        timeout: Option<u32>,
        /// Print JSON: {peer_id, provider_app, payload_base64, payload_text}
        #[arg(long)]
        json: bool,
    },
    /// Make a publisher key pair: the secret goes to FILE (0600; kept offline, never on a
    /// node), the public key (p2pospub...) is printed for callers to pin
    Keygen {
        /// Where to write the secret key; an existing file is not overwritten
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Certify that an app on a node provides a service for the publisher: prints a
    /// certificate (p2poscert...) that the provider app passes to Register
    Certify {
        /// The publisher's secret key file (from `keygen`)
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The providing app's id (an app, not a helper: its helpers qualify too); no other
        /// app on the node can present the certificate
        #[arg(long, value_name = "APP")]
        app: String,
        /// The service, NAME/VERSION (e.g. translate/1)
        service: String,
        /// The provider's peer id
        peer: String,
        /// How long the certificate is valid, in days (1 to 3650)
        #[arg(long, value_name = "DAYS", default_value_t = 365)]
        days: u32,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// Which providers a call or a look-up accepts, besides a group.
#[derive(Debug, clap::Args)]
pub(crate) struct TrustArgs {
    /// Only this provider (peer id); repeat for several
    #[arg(long = "only-peer", value_name = "PEER")]
    pub(crate) peers: Vec<String>,
    /// Only providers certified by this publisher key (p2pospub...); repeat for several
    #[arg(long = "publisher-key", value_name = "KEY")]
    pub(crate) publisher_keys: Vec<String>,
}

/// `p2pctl forward ...`
#[derive(Debug, Subcommand)]
pub(crate) enum ForwardCommand {
    /// Publish a TCP service of this computer as a P2P OS service (kept until withdrawn)
    Expose {
        /// The local service: 127.0.0.1:PORT or [::1]:PORT
        target: String,
        /// The name to publish it as; a bare NAME means NAME/1
        #[arg(long = "as", value_name = "NAME")]
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Stop publishing an exposed service
    Withdraw {
        /// The name it was exposed as
        name: String,
    },
    /// List exposed services and open forwards
    #[command(visible_alias = "ls")]
    List(JsonFlag),
    /// Listen on a local port and tunnel each connection to an exposed service
    ///
    /// The forward lives in the node, not in p2pctl (which returns at once), until
    /// `p2pctl forward close ID` or the node stops. With --publisher-key, only services that
    /// an app registered with a certificate of that key are reached: a service exposed with
    /// `forward expose` presents no certificate. A PEER outside --only-peer is refused.
    #[command(allow_missing_positional = true)]
    Connect {
        /// The provider: peer id, ticket or multiaddr [default: the best one found, at each
        /// connection]
        peer: Option<String>,
        /// The exposed service's name (a bare NAME means NAME/1)
        name: String,
        /// Where to listen: 127.0.0.1:PORT or [::1]:PORT (port 0: any free port)
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        listen: String,
        /// Only providers that are members of this group (id or name), at each connection
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Close a forward: its local port stops listening
    Close {
        /// The forward's id, from `forward connect` or `forward list`
        id: u64,
    },
}

/// `--app` of the helper commands.
#[derive(Debug, Args, Clone)]
pub(crate) struct AppOption {
    /// The app the helper belongs to [default: none, a node-wide helper of the admin]
    #[arg(long, value_name = "APP")]
    pub(crate) app: Option<String>,
}

/// A helper named on the command line.
#[derive(Debug, Args, Clone)]
pub(crate) struct HelperName {
    /// The helper's name
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) app: AppOption,
}

/// `p2pctl helpers ...`
/// Amounts of a machine, as flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct AmountsArgs {
    /// CPU in cores (0.5: half a core)
    #[arg(long, default_value_t = 0.0)]
    pub(crate) cpu: f64,
    /// Memory: bytes or a size such as 512M, 2G (binary: as 512MiB, 2GiB; 2GB is decimal)
    #[arg(long, default_value = "0", value_parser = crate::commands::size::bytes)]
    pub(crate) memory: u64,
    /// Disk: bytes or a size such as 10G
    #[arg(long, default_value = "0", value_parser = crate::commands::size::bytes)]
    pub(crate) disk: u64,
}

/// `groups` subcommands; GROUP is a group's id or its name on this node.
#[derive(Debug, Subcommand)]
pub(crate) enum GroupsCommand {
    /// Found a group with this node as its first member and admin
    Create {
        /// Its name
        name: String,
    },
    /// Print an invite to GROUP, signed by this node (an admin)
    Invite {
        /// The group
        group: String,
        /// How many joins it allows
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it lasts: seconds, or with a unit (`30s`, `10m`, `1h`, `2d`)
        #[arg(long, default_value = "1d")]
        expires: String,
        /// Whoever joins with it becomes an admin
        #[arg(long)]
        admin: bool,
        /// Print JSON instead of the invite alone
        #[arg(long)]
        json: bool,
    },
    /// Join with an invite (the admin who signed it must be online)
    Join {
        /// The invite (`p2posgroup...`)
        invite: String,
        /// Name this node in the group right after joining (1 to 32 of [a-z0-9._-]); the
        /// members then reach it as NAME@GROUP
        #[arg(long)]
        name: Option<String>,
    },
    /// Name this node within GROUP: the members then reach it as NAME@GROUP
    Name {
        /// The group
        group: String,
        /// 1 to 32 characters of [a-z0-9._-]
        name: String,
    },
    /// Leave a group: the members are told, then it is forgotten here
    Leave {
        /// The group
        group: String,
    },
    /// The groups this node holds
    List(JsonFlag),
    /// A group's members
    Members {
        /// The group
        group: String,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Remove a member (this node must be an admin)
    Remove {
        /// The group
        group: String,
        /// The member's peer id
        peer: String,
    },
    /// Make a member an admin
    AddAdmin {
        /// The group
        group: String,
        /// The member's peer id
        peer: String,
    },
    /// Make an admin a plain member
    RemoveAdmin {
        /// The group
        group: String,
        /// The admin's peer id
        peer: String,
    },
    /// Rename a group
    Rename {
        /// The group
        group: String,
        /// Its new name
        name: String,
    },
    /// Exchange the member list with every other member now, and say how each fared
    Sync {
        /// The group
        group: String,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Publish TEXT on TOPIC of APP in GROUP, to every member's node that follows it; prints
    /// its number (seq)
    Publish(PublishArgs),
    /// Follow TOPIC of APP in GROUP until interrupted: one line per message, `sender seq time
    /// text` (sender: the end of the publishing node's peer id; data that is not UTF-8 as
    /// `<N bytes: hex>`)
    Watch(WatchArgs),
}

/// `groups publish`: what to publish where.
#[derive(Args, Debug)]
pub(crate) struct PublishArgs {
    /// The group
    pub(crate) group: String,
    /// The app whose topic it is (e.g. chat)
    pub(crate) app: String,
    /// The topic (1 to 128 characters)
    pub(crate) topic: String,
    /// The text (several words are joined with spaces); `-` reads it from stdin; at most
    /// 64 KiB
    #[arg(required = true, num_args = 1..)]
    pub(crate) text: Vec<String>,
    /// Wait this long (at most 60s) for receipts from the other members' nodes, and say
    /// which have it and which are missing: `500ms`, `5s`
    #[arg(long, value_name = "DURATION")]
    pub(crate) report: Option<String>,
    /// Print JSON: {seq, sent_ms, sent_to, delivered, missing}
    #[arg(long)]
    pub(crate) json: bool,
}

/// `groups watch`: which topic to follow, from when.
#[derive(Args, Debug)]
pub(crate) struct WatchArgs {
    /// The group
    pub(crate) group: String,
    /// The app whose topic it is (e.g. chat)
    pub(crate) app: String,
    /// The topic
    pub(crate) topic: String,
    /// First print the messages held that were sent this long ago or since: `10m`, `1h`
    #[arg(long, value_name = "DURATION", conflicts_with = "since_ms")]
    pub(crate) since: Option<String>,
    /// First print the messages held that were sent at or after this time (ms since the
    /// Unix epoch)
    #[arg(long, value_name = "MS")]
    pub(crate) since_ms: Option<u64>,
    /// One JSON object per line: {group, app, topic, sender, seq, sent_ms, replayed,
    /// data_text, data_base64}
    #[arg(long)]
    pub(crate) json: bool,
}

/// `resources` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ResourcesCommand {
    /// Lend at most these amounts to these peers (replaces the policy; admin)
    Share {
        #[command(flatten)]
        amounts: AmountsArgs,
        /// A peer id it is lent to (repeat for more)
        #[arg(long = "to", required_unless_present = "groups")]
        peers: Vec<String>,
        /// A group (id or name) whose members it is lent to (repeat for more)
        #[arg(long = "to-group")]
        groups: Vec<String>,
        /// `always`, or `idle`: only while the owner is not using the machine
        #[arg(long, default_value = "always")]
        when: String,
        /// With `--when idle`: idle while the CPU busy share not due to the node is below this
        /// percentage (default 25)
        #[arg(long, default_value_t = 0.0)]
        idle_below: f64,
    },
    /// Lend nothing to anyone (admin)
    Unshare,
    /// Show what the owner lends, to whom and when
    Sharing(JsonFlag),
    /// Peers whose offers cover these amounts, best first
    Find {
        #[command(flatten)]
        amounts: AmountsArgs,
        /// Ask these peers (repeat) instead of those announcing in the DHT
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// Ask the members of this group (id or name) instead
        #[arg(long, conflicts_with = "peers")]
        group: Option<String>,
        /// Also list the peers that did not match, and why
        #[arg(long)]
        explain: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Reserve amounts on a peer for a time
    Lease {
        /// The lender's peer id
        peer: String,
        #[command(flatten)]
        amounts: AmountsArgs,
        /// Seconds (10 to 86400; default 300)
        #[arg(long, default_value_t = 0)]
        ttl: u32,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Extend a lease this node holds, from now
    Renew {
        /// The lease id
        lease_id: String,
        /// Seconds (10 to 86400; default 300)
        #[arg(long, default_value_t = 0)]
        ttl: u32,
    },
    /// Give a lease this node holds back
    Release {
        /// The lease id
        lease_id: String,
    },
    /// Leases granted to peers and held on peers
    Leases(JsonFlag),
}

#[derive(Debug, Subcommand)]
pub(crate) enum HelpersCommand {
    /// List helpers with their state
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        app: AppOption,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Register (or replace) a helper; it is not started
    ///
    /// p2pctl's options may come anywhere before the program's first argument; from there on
    /// (or after `--`) everything is the program's:
    /// `p2pctl helpers add voice voice-helper --app chat -- --port 5 --json`.
    Add(AddHelper),
    /// Remove a stopped helper
    #[command(visible_alias = "rm")]
    Remove(HelperName),
    /// Start a helper (answers once its process runs)
    Start {
        #[command(flatten)]
        helper: HelperName,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Stop a helper: its stop signal, then SIGKILL after its stop timeout
    Stop {
        #[command(flatten)]
        helper: HelperName,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Stop a helper if it runs, and start it again
    Restart {
        #[command(flatten)]
        helper: HelperName,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show one helper's state
    Status {
        #[command(flatten)]
        helper: HelperName,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Send a signal to a running helper's process group
    Signal {
        #[command(flatten)]
        helper: HelperName,
        /// SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGKILL, SIGSTOP or SIGCONT
        /// (the SIG prefix may be left out)
        signal: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Print a helper's output (stdout and stderr, interleaved as written)
    Logs {
        #[command(flatten)]
        helper: HelperName,
        /// Keep printing new lines until interrupted
        #[arg(short, long)]
        follow: bool,
        /// Only the last N kept lines [default: all kept, at most 1000]
        #[arg(long, value_name = "N")]
        tail: Option<u32>,
        /// One JSON object per line: {seq, at_ms, stream, text}
        #[arg(long)]
        json: bool,
    },
}

/// `p2pctl helpers add`.
#[derive(Debug, Args)]
pub(crate) struct AddHelper {
    /// The helper's name: 1-32 letters, digits, '_' or '-'
    pub(crate) name: String,
    /// The program: a path inside the node's plug-in directory (the admin may also give an
    /// absolute path)
    pub(crate) program: String,
    /// The program's arguments; from the first of them on (or after `--`), everything is the
    /// program's, options included
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) args: Vec<String>,
    #[command(flatten)]
    pub(crate) app: AppOption,
    /// An environment variable of the helper (repeatable); nothing else is inherited besides
    /// the P2POS_* variables the node sets
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub(crate) env: Vec<(String, String)>,
    /// Working directory [default: the helper's own directory under the node's data directory]
    #[arg(long, value_name = "DIR")]
    pub(crate) workdir: Option<PathBuf>,
    /// A file or directory the helper may read besides the system's, its program's and its own
    /// directory, where the node confines helpers (repeatable; never the node's data directory)
    #[arg(long, value_name = "PATH")]
    pub(crate) read: Vec<PathBuf>,
    /// When to restart it after it exits [default: on-failure]
    #[arg(long, value_enum, value_name = "WHEN")]
    pub(crate) restart: Option<RestartArg>,
    /// Most restarts within the restart period before it is marked failed [default: 5]
    #[arg(long, value_name = "N")]
    pub(crate) max_restarts: Option<u32>,
    /// The restart period [default: 60]
    #[arg(long, value_name = "SECS")]
    pub(crate) restart_period: Option<u32>,
    /// The signal that asks it to stop [default: SIGTERM]
    #[arg(long, value_name = "SIG")]
    pub(crate) stop_signal: Option<String>,
    /// How long it has to exit after the stop signal before SIGKILL [default: 5000, at most
    /// 60000]
    #[arg(long, value_name = "MS")]
    pub(crate) stop_timeout: Option<u32>,
    /// Keep it running after the session of the app that started it ends
    #[arg(long)]
    pub(crate) outlive_session: bool,
    /// Its memory limit in bytes (RAM and swap; over it the kernel kills it). Default: the
    /// app's quota
    #[arg(long, value_name = "BYTES")]
    pub(crate) memory: Option<u64>,
    /// Its CPU share in cores (0.5: half a core). Default: the app's quota
    #[arg(long, value_name = "CORES")]
    pub(crate) cpu: Option<f64>,
    /// Most processes and threads it may run at once. Default: the app's quota
    #[arg(long, value_name = "N")]
    pub(crate) pids: Option<u32>,
    #[command(flatten)]
    pub(crate) json: JsonFlag,
}

/// `--restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RestartArg {
    /// Never restarted
    Never,
    /// Restarted when it exits with a non-zero code or is killed by a signal
    OnFailure,
    /// Restarted whenever it exits (unless stopped through the API)
    Always,
}

/// `KEY=VALUE`, with a non-empty key.
fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// An idempotency key: 1 to 64 bytes (an empty one would quietly send without a key).
fn parse_idempotency_key(text: &str) -> Result<String, String> {
    let max = p2pos_client::messages::MAX_IDEMPOTENCY_KEY;
    if text.is_empty() || text.len() > max {
        return Err(format!(
            "an idempotency key is 1 to {max} bytes, this one has {}",
            text.len()
        ));
    }
    Ok(text.to_owned())
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

    #[test]
    fn send_takes_a_file_instead_of_text() {
        let cli = Cli::parse_from(["p2pctl", "send", "peer", "chat", "--file", "m.txt"]);
        match cli.command {
            Command::Send { text, file, .. } => {
                assert!(text.is_empty());
                assert_eq!(file, Some(PathBuf::from("m.txt")));
            }
            other => panic!("unexpected {other:?}"),
        }
        let cli = Cli::parse_from(["p2pctl", "send", "peer", "chat", "-"]);
        assert!(matches!(cli.command, Command::Send { text, .. } if text == ["-"]));
        let cli = Cli::parse_from(["p2pctl", "send", "peer", "chat", "hi", "--key", "order-7"]);
        assert!(matches!(cli.command, Command::Send { key: Some(k), .. } if k == "order-7"));
        assert!(Cli::try_parse_from(["p2pctl", "send", "peer", "chat"]).is_err());
        assert!(
            Cli::try_parse_from(["p2pctl", "send", "peer", "chat", "hi", "--file", "m"]).is_err(),
            "text or a file, not both"
        );
    }

    fn add(args: &[&str]) -> AddHelper {
        let cli = Cli::parse_from(["p2pctl", "helpers", "add"].iter().chain(args));
        match cli.command {
            Command::Helpers(HelpersCommand::Add(add)) => add,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn helpers_add_passes_the_programs_arguments_on() {
        let a = add(&[
            "--env",
            "A=1=2",
            "voice",
            "bin/voice",
            "--app",
            "chat",
            "--env",
            "B=",
            "--restart",
            "on-failure",
            "--port",
            "5",
            "--app",
            "x",
        ]);
        assert_eq!(
            (a.name.as_str(), a.program.as_str()),
            ("voice", "bin/voice")
        );
        assert_eq!(a.app.app.as_deref(), Some("chat"));
        assert_eq!(
            a.env,
            [
                ("A".to_owned(), "1=2".to_owned()),
                ("B".to_owned(), String::new())
            ]
        );
        assert_eq!(a.restart, Some(RestartArg::OnFailure));
        assert_eq!(
            a.args,
            ["--port", "5", "--app", "x"],
            "from the first argument on"
        );
        let a = add(&["voice", "bin", "--json", "--", "--app", "x"]);
        assert_eq!(a.args, ["--app", "x"]);
        assert_eq!(a.app.app, None);
        assert!(a.json.json);
        let a = add(&["voice", "bin", "-v"]);
        assert_eq!(a.args, ["-v"]);
        assert!(
            Cli::try_parse_from(["p2pctl", "helpers", "add", "voice"]).is_err(),
            "no program"
        );
        assert!(
            Cli::try_parse_from(["p2pctl", "helpers", "add", "--env", "=1", "x", "y"]).is_err(),
            "an empty key"
        );
    }

    fn connect(args: &[&str]) -> (Option<String>, String, String) {
        let cli = Cli::parse_from(["p2pctl", "forward", "connect"].iter().chain(args));
        match cli.command {
            Command::Forward(ForwardCommand::Connect {
                peer, name, listen, ..
            }) => (peer, name, listen),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn forward_connect_takes_an_optional_peer_before_the_name() {
        assert_eq!(
            connect(&["web", "--listen", "127.0.0.1:8080"]),
            (None, "web".to_owned(), "127.0.0.1:8080".to_owned())
        );
        assert_eq!(
            connect(&["12D3KooWx", "web/2"]),
            (
                Some("12D3KooWx".to_owned()),
                "web/2".to_owned(),
                "127.0.0.1:0".to_owned()
            )
        );
        assert!(Cli::try_parse_from(["p2pctl", "forward", "connect"]).is_err());
        assert!(Cli::try_parse_from(["p2pctl", "forward", "connect", "a", "b", "c"]).is_err());
    }

    #[test]
    fn services_call_defaults_to_the_p2pctl_app() {
        let cli = Cli::parse_from([
            "p2pctl",
            "services",
            "call",
            "echo/1",
            "hi",
            "--timeout",
            "500",
        ]);
        match cli.command {
            Command::Services(ServicesCommand::Call {
                service,
                payload,
                file,
                app,
                peer,
                timeout,
                json,
                ..
            }) => {
                assert_eq!(
                    (service.as_str(), payload.as_deref(), file),
                    ("echo/1", Some("hi"), None)
                );
                assert_eq!(app, "p2pctl");
                assert_eq!((peer, timeout, json), (None, Some(500), false));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn groups_publish_joins_words_and_watch_takes_one_since() {
        let cli = Cli::parse_from([
            "p2pctl", "groups", "publish", "g", "chat", "room", "hello", "all", "--report", "5s",
        ]);
        match cli.command {
            Command::Groups(GroupsCommand::Publish(PublishArgs {
                group,
                app,
                topic,
                text,
                report,
                json,
            })) => {
                assert_eq!(
                    (group.as_str(), app.as_str(), topic.as_str()),
                    ("g", "chat", "room")
                );
                assert_eq!(text.join(" "), "hello all");
                assert_eq!((report.as_deref(), json), (Some("5s"), false));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            Cli::try_parse_from(["p2pctl", "groups", "publish", "g", "chat", "room"]).is_err(),
            "no text"
        );
        let cli = Cli::parse_from([
            "p2pctl", "groups", "watch", "g", "chat", "room", "--since", "10m", "--json",
        ]);
        assert!(matches!(
            cli.command,
            Command::Groups(GroupsCommand::Watch(WatchArgs { since: Some(s), since_ms: None, json: true, .. }))
                if s == "10m"
        ));
        assert!(
            Cli::try_parse_from([
                "p2pctl",
                "groups",
                "watch",
                "g",
                "chat",
                "room",
                "--since",
                "1m",
                "--since-ms",
                "5"
            ])
            .is_err(),
            "--since or --since-ms, not both"
        );
    }

    #[test]
    fn helpers_logs_takes_follow_and_tail() {
        let cli = Cli::parse_from([
            "p2pctl", "helpers", "logs", "voice", "-f", "--tail", "5", "--app", "chat",
        ]);
        match cli.command {
            Command::Helpers(HelpersCommand::Logs {
                helper,
                follow,
                tail,
                json,
            }) => {
                assert_eq!(helper.name, "voice");
                assert_eq!(helper.app.app.as_deref(), Some("chat"));
                assert!(follow && !json);
                assert_eq!(tail, Some(5));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
