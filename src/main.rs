//! `p2posd`, the P2P OS node daemon: parses flags, environment and the config file, then boots
//! the kernel with every service's child spec, each with its own part of the configuration.
//! This binary is the one place that knows every service crate and wires them together.
//!
//! # Layout
//! - this file: flags, tracing, the runtime, the services in start order, signals.
//! - `config`: `p2posd.toml`, the kernel's settings and one table per service.
//! - `effective`: the effective configuration as TOML, secrets left out (`Monitor.GetConfig`).
//! - `repair`: `p2posd --repair`, the report of a damaged store's salvage.

mod config;
mod effective;
mod repair;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use config::NodeConfig;
use p2pos_kernel::{Kernel, config::Strategy};
use tracing::{error, info};

/// The P2P OS node: a peer-to-peer application server for the apps on this computer.
///
/// With no flags it just works: data in the user's data directory, the gateway socket there,
/// TCP and QUIC on all interfaces, mDNS and the DHT on.
#[derive(Parser, Debug)]
#[command(name = "p2posd", version, about)]
struct Cli {
    /// Data directory (identity, store, gateway socket, tokens).
    #[arg(long, env = "P2POS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML config file. Default: `p2posd.toml` in the data directory, if it exists.
    #[arg(long, env = "P2POS_CONFIG")]
    config: Option<PathBuf>,
    /// Multiaddr to listen on (repeatable). Default: TCP and QUIC on 0.0.0.0, ports chosen once.
    #[arg(long, env = "P2POS_LISTEN", value_delimiter = ',')]
    listen: Vec<String>,
    /// Peer to dial at start: a ticket or a multiaddr with /p2p/ (repeatable).
    #[arg(long, env = "P2POS_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// An address at which others reach this node (repeatable): a relay on a public address, a
    /// port forwarded on the router. Confirmed at once, without waiting for AutoNAT.
    #[arg(long, env = "P2POS_EXTERNAL_ADDRESS", value_delimiter = ',')]
    external_address: Vec<String>,
    /// Treat private IPv4 addresses as reachable from outside: for networks whose "internet" is
    /// private (a campus or carrier-grade NAT, a lab).
    #[arg(long)]
    trust_private_addresses: bool,
    /// Turn mDNS discovery off.
    #[arg(long)]
    no_mdns: bool,
    /// Turn the Kademlia DHT off.
    #[arg(long)]
    no_kademlia: bool,
    /// Never serve as a circuit relay for others.
    #[arg(long)]
    no_relay_server: bool,
    /// Also serve the gateway on this loopback TCP address (every call then needs a token).
    #[arg(long, env = "P2POS_GATEWAY_TCP")]
    gateway_tcp: Option<SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics (loopback only).
    #[arg(long, env = "P2POS_METRICS")]
    metrics: Option<SocketAddr>,
    /// Let this peer diagnose this node from its own (`p2pctl doctor PEER` there sees this
    /// node's side): a peer id, or group:NAME for a group's members. Repeatable.
    #[arg(long, value_name = "PEER|group:NAME")]
    allow_diagnosis: Vec<String>,
    /// Serve the dashboard, a web page behind the admin credential, at http://ADDR/ (loopback
    /// only); `p2pctl dashboard` prints its login link.
    #[arg(long, env = "P2POS_DASHBOARD")]
    dashboard: Option<SocketAddr>,
    /// Directory of helper programs (plug-ins) that apps may start. Default: DATA_DIR/plugins.
    #[arg(long, env = "P2POS_PLUGIN_DIR")]
    plugin_dir: Option<PathBuf>,
    /// Supervision strategy: one-for-one or rest-for-one.
    #[arg(long, value_parser = parse_strategy)]
    strategy: Option<Strategy>,
    /// Restart intensity: most restarts within --restart-period before the node stops.
    #[arg(long)]
    max_restarts: Option<u32>,
    /// Restart intensity window, in seconds.
    #[arg(long)]
    restart_period: Option<u64>,
    /// Allow the admin InjectPanic call (for testing supervision).
    #[arg(long, hide = true)]
    allow_fault_injection: bool,
    /// Fault point SERVICE=panic-on-start (for testing crash loops; repeatable).
    #[arg(long, hide = true)]
    failpoint: Vec<String>,
    /// Repair a damaged store, then exit (the node must be stopped): the store is moved aside
    /// as it is (`store.damaged-<time>`, never deleted), whatever can still be read is copied
    /// into a new one, and a report says what was recovered and lost. The identity is kept.
    #[arg(long)]
    repair: bool,
    /// Log filter, in `RUST_LOG` syntax.
    #[arg(
        long,
        env = "P2POS_LOG",
        default_value = "info,libp2p=warn,libp2p_kad=error,sled=warn"
    )]
    log: String,
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    match s {
        "one-for-one" | "one_for_one" => Ok(Strategy::OneForOne),
        "rest-for-one" | "rest_for_one" => Ok(Strategy::RestForOne),
        other => Err(format!(
            "unknown strategy {other:?}; use one-for-one or rest-for-one"
        )),
    }
}

impl Cli {
    /// Defaults, then the config file, then environment and flags.
    fn into_config(self) -> Result<NodeConfig, String> {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(p2pos_client::default_data_dir);
        let mut config = match &self.config {
            Some(path) => NodeConfig::from_file(path).map_err(|e| e.to_string())?,
            None => {
                let implicit = data_dir.join("p2posd.toml");
                if implicit.exists() {
                    NodeConfig::from_file(&implicit).map_err(|e| e.to_string())?
                } else {
                    NodeConfig::default()
                }
            }
        };
        if self.data_dir.is_some() || config.data_dir.as_os_str().is_empty() {
            config.data_dir = data_dir;
        }
        let network = &mut config.network;
        if !self.listen.is_empty() {
            network.listen = self.listen;
        }
        network.bootstrap.extend(self.bootstrap);
        network.external_addresses.extend(self.external_address);
        network.trust_private_addresses |= self.trust_private_addresses;
        network.mdns &= !self.no_mdns;
        network.kademlia &= !self.no_kademlia;
        network.relay_server &= !self.no_relay_server;
        config.gateway.tcp = self.gateway_tcp.or(config.gateway.tcp);
        config.monitor.metrics = self.metrics.or(config.monitor.metrics);
        config.monitor.allow_diagnosis.extend(self.allow_diagnosis);
        config.monitor.dashboard = self.dashboard.or(config.monitor.dashboard);
        config.tasks.plugin_dir = self.plugin_dir.or(config.tasks.plugin_dir);
        if let Some(strategy) = self.strategy {
            config.supervisor.strategy = strategy;
        }
        if let Some(n) = self.max_restarts {
            config.supervisor.max_restarts = n;
        }
        if let Some(secs) = self.restart_period {
            config.supervisor.period_secs = secs;
        }
        config.allow_fault_injection |= self.allow_fault_injection;
        config.failpoints.extend(self.failpoint);
        config.validate()?;
        config.tasks.helper_shim = std::env::current_exe().ok();
        Ok(config)
    }
}

/// Logs to stderr through `filter`, and INFO and above, whatever `filter` says, to `logs` (the
/// ring `Monitor.GetLogs` and the doctor read).
fn init_tracing(filter: &str, logs: &p2pos_monitor::LogRing) {
    use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(stderr)
        .with(logs.layer())
        .init();
    // A panicking service is restarted by the kernel; say clearly where it panicked.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        error!(thread = thread.name().unwrap_or("?"), "panic: {info}");
    }));
}

fn main() -> ExitCode {
    // `p2posd` also runs in front of each helper program, as its shim,
    p2pos_tasks::shim::run_if_requested();
    // ... and as the sandbox of each WebAssembly job it runs for a peer (behind the shim).
    p2pos_sandbox::run_if_requested();
    let cli = Cli::parse();
    let logs = p2pos_monitor::LogRing::default();
    init_tracing(&cli.log, &logs);
    let repair = cli.repair;
    let mut config = match cli.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("p2posd: error: {e}");
            return ExitCode::from(2);
        }
    };
    if repair {
        return repair::run(&config.data_dir);
    }
    config.monitor.effective_config = effective::render(&config);
    config.monitor.logs = logs;
    let data_dir = config.data_dir.clone();
    let runner = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("cannot start the tokio runtime")
    });
    let booted = runner.block_on(async move {
        let kernel_config = config.kernel();
        let NodeConfig {
            network,
            overlay,
            gateway,
            monitor,
            tasks,
            resources,
            groups,
            ..
        } = config;
        // Start order: the network first (the overlay needs its handle), port forwarding after
        // the overlay (it provides its exposures there, as an app), the gateway last.
        let children = vec![
            p2pos_network::child_spec(network),
            p2pos_overlay::child_spec(overlay),
            p2pos_forward::child_spec(),
            p2pos_tasks::child_spec(tasks.clone()),
            p2pos_resources::child_spec(resources),
            // Jobs after the resource manager they find and lease runners through.
            p2pos_tasks::jobs_child_spec(tasks),
            p2pos_groups::child_spec(groups),
            p2pos_monitor::child_spec(monitor),
            p2pos_gateway::child_spec(gateway),
        ];
        let kernel = Kernel::boot(kernel_config, children)?;
        actix::spawn(async move {
            wait_for_signal().await;
            info!("signal received; shutting down (send it again to stop at once)");
            kernel.shutdown(0);
            wait_for_signal().await;
            error!("second signal: stopping at once");
            std::process::exit(130);
        });
        Ok::<_, p2pos_kernel::BootError>(())
    });
    if let Err(e) = booted {
        if let p2pos_kernel::BootError::Store(p2pos_kernel::store::StoreError::Damaged { .. }) = e {
            eprintln!(
                "p2posd: error: {e}. Nothing was changed; the node does not start on a damaged \
                 store. Run `p2posd --repair --data-dir {}` to move it aside, keep what can \
                 still be read and see what was lost (the identity is kept).",
                shell_quoted(&data_dir.display().to_string())
            );
            return ExitCode::from(1);
        }
        eprintln!("p2posd: error: {e}");
        // Another node on this data directory is a usage error, like a bad flag.
        let in_use = matches!(
            e,
            p2pos_kernel::BootError::Lock(p2pos_kernel::lock::LockError::InUse { .. })
        );
        return ExitCode::from(if in_use { 2 } else { 1 });
    }
    match runner.run_with_code() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("p2posd: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `s` as one word for a POSIX shell: as it is if it needs no quoting, else in single quotes.
fn shell_quoted(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quoted;

    #[test]
    fn repair_commands_quote_the_data_dir_for_the_shell() {
        assert_eq!(shell_quoted("/home/me/.p2pos"), "/home/me/.p2pos");
        assert_eq!(shell_quoted("/home/me/my node"), "'/home/me/my node'");
        assert_eq!(shell_quoted("/tmp/it's"), r"'/tmp/it'\''s'");
    }
}
