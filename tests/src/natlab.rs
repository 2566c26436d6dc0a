//! A NAT lab in network namespaces: an "internet" (a bridge) with a public relay host on it, and
//! pairs of homes, each home a host on its own LAN behind its own NAT router (nftables
//! masquerade), as a user at home meets the network. Made by a test and removed when it is
//! dropped (also when the test panics).
//!
//! ```text
//!                      relay (.2)
//!                          |
//!   internet: bridge ------+------------------------- ...
//!         |                         |
//!   router A (WAN .10+2i)     router B (WAN .11+2i)     pair i; every link to the bridge
//!         |  192.168.1.1            |  192.168.1.1      has latency (`Config::delay`,
//!   host A  192.168.1.2       host B  192.168.1.2       `Config::relay_delay`)
//! ```
//!
//! Both homes of a pair use the same LAN subnet, as real homes do. A host reaches the internet
//! only through its router; the router forwards from its WAN to its LAN only what answers the
//! host's own traffic (conntrack "established, related"), so no host is reachable unsolicited.
//! What the router does with unsolicited packets to itself, and whether it keeps the host's
//! source ports, is the pair's [`Nat`].
//!
//! # Layout
//! - this file: the plan ([`Config`], [`Internet`], [`Nat`]), building and removing the lab.
//! - `wire`: links with latency (TAP devices and one thread that carries their frames).
//! - `trials`: p2posd nodes in the lab, measured: reservations, dials by peer id, direct
//!   connections.
//! - `report`: the numbers of a set of trials, and their report.
//! - `apps`: what apps send across the lab (channel frames, messages), checked.

pub mod apps;
pub mod report;
pub mod trials;
mod wire;

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

/// Prefix of every namespace a lab makes: `p2nat-<pid>-<lab>-<name>`.
const PREFIX: &str = "p2nat-";
/// Most home pairs in one lab (WAN addresses .10 to .209).
pub const MAX_PAIRS: usize = 100;

/// The addresses of the lab's "internet".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Internet {
    /// 5.0.0.0/24: addresses libp2p counts as global (no private, shared, documentation or
    /// benchmarking range). Nothing leaves the machine: the lab is all inside namespaces.
    Public,
    /// 100.64.0.0/24, the carrier-grade NAT range (RFC 6598): an "internet" of private IPv4
    /// addresses, as between the homes of a carrier or a campus NAT. libp2p's AutoNAT counts
    /// none of it as global.
    Private,
}

impl Internet {
    /// The internet address of host number `n` (the relay is 2; routers from 10).
    pub fn address(self, n: u8) -> Ipv4Addr {
        match self {
            Internet::Public => Ipv4Addr::new(5, 0, 0, n),
            Internet::Private => Ipv4Addr::new(100, 64, 0, n),
        }
    }
}

/// What a router does with an unsolicited packet arriving on its WAN side for itself (one that
/// answers nothing the router or its host sent). Unsolicited packets are never forwarded to the
/// LAN, whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsolicited {
    /// Drops it silently (the sender's SYN or datagram times out).
    Drop,
    /// Rejects it: a TCP reset, an ICMP port-unreachable for anything else (the packet never
    /// reaches the router's stack, and leaves no conntrack entry behind).
    Reject,
    /// Accepts it to the router's own stack, which has no listener and answers as a host does
    /// (TCP reset, ICMP port-unreachable). A UDP datagram accepted so leaves a conntrack entry
    /// (30 s) that the router's later masquerading must not clash with.
    Accept,
}

/// How one home's router translates and filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nat {
    /// Masquerade with `fully-random`: every new flow gets a random source port, so the port a
    /// peer sees depends on the destination (endpoint-dependent mapping, a "symmetric" NAT).
    /// Without it the router keeps the host's port where it can (endpoint-independent mapping).
    pub random_ports: bool,
    /// What it does with unsolicited packets to itself.
    pub unsolicited: Unsolicited,
}

impl Nat {
    /// Endpoint-independent mapping; unsolicited packets dropped.
    pub const DROPPING: Nat = Nat {
        random_ports: false,
        unsolicited: Unsolicited::Drop,
    };
    /// Endpoint-independent mapping; unsolicited packets rejected.
    pub const REJECTING: Nat = Nat {
        random_ports: false,
        unsolicited: Unsolicited::Reject,
    };
    /// Endpoint-independent mapping; unsolicited packets answered by the router's own stack.
    pub const ACCEPTING: Nat = Nat {
        random_ports: false,
        unsolicited: Unsolicited::Accept,
    };
    /// Random source ports (endpoint-dependent mapping); unsolicited packets dropped.
    pub const RANDOM_PORTS: Nat = Nat {
        random_ports: true,
        unsolicited: Unsolicited::Drop,
    };

    /// The router's nftables ruleset: masquerade on the WAN, forward to the LAN only what
    /// answers the LAN, and unsolicited packets to the router treated as `self.unsolicited`.
    fn ruleset(self) -> String {
        let random = if self.random_ports {
            " fully-random"
        } else {
            ""
        };
        let unsolicited = match self.unsolicited {
            Unsolicited::Drop => "iifname \"wan\" drop",
            Unsolicited::Reject => {
                "iifname \"wan\" meta l4proto tcp reject with tcp reset\n    \
                 iifname \"wan\" reject with icmpx type port-unreachable"
            }
            Unsolicited::Accept => "",
        };
        format!(
            "table ip nat {{\n  chain postrouting {{\n    \
             type nat hook postrouting priority srcnat; policy accept;\n    \
             oifname \"wan\" masquerade{random}\n  }}\n}}\n\
             table inet filter {{\n  chain forward {{\n    \
             type filter hook forward priority filter; policy drop;\n    \
             iifname \"lan\" oifname \"wan\" accept\n    \
             iifname \"wan\" oifname \"lan\" ct state established,related accept\n  }}\n  \
             chain input {{\n    \
             type filter hook input priority filter; policy accept;\n    \
             iifname \"wan\" ct state established,related accept\n    \
             {unsolicited}\n  }}\n}}\n"
        )
    }
}

/// The lab's plan.
#[derive(Debug, Clone)]
pub struct Config {
    /// The internet's addresses. Default: [`Internet::Public`].
    pub internet: Internet,
    /// The routers of home A and home B of every pair. Default: both [`Nat::DROPPING`].
    pub nats: [Nat; 2],
    /// Home pairs (for trials that run side by side, each pair on its own). Default: 1.
    pub pairs: usize,
    /// Latency of each home router's link to the internet's bridge, each way: a host reaches
    /// the other home of its pair through two of them. Default: 10 ms.
    pub delay: Duration,
    /// Latency of the relay's link to the bridge, each way: a host reaches the relay through
    /// its router's link and this one. Default: 10 ms.
    pub relay_delay: Duration,
    /// How long after the dial a trial waits for a direct connection. Default:
    /// [`trials::DIRECT_DEADLINE`].
    pub direct_within: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            internet: Internet::Public,
            nats: [Nat::DROPPING; 2],
            pairs: 1,
            delay: Duration::from_millis(10),
            relay_delay: Duration::from_millis(10),
            direct_within: trials::DIRECT_DEADLINE,
        }
    }
}

/// One home: a host behind its router.
#[derive(Debug, Clone)]
pub struct Home {
    /// The host's namespace (run nodes here).
    pub host: String,
    /// The router's namespace.
    pub router: String,
    /// The router's address on the internet: what peers see of the host.
    pub wan_ip: Ipv4Addr,
    /// The host's address on its LAN (192.168.1.2 in every home).
    pub lan_ip: Ipv4Addr,
}

/// A lab made by [`NatLab::create`]; every namespace it made is deleted on drop.
pub struct NatLab {
    config: Config,
    /// Every namespace made so far, in order (deleted in reverse).
    namespaces: Vec<String>,
    relay: String,
    pairs: Vec<[Home; 2]>,
    /// Stopped before the namespaces are deleted.
    delay_line: Option<wire::DelayLine>,
}

/// Labs made by this process so far (for unique names).
static LABS: AtomicUsize = AtomicUsize::new(0);

impl NatLab {
    /// Whether a lab can be made here: root, `ip` (iproute2), `nft` (nftables) and
    /// `/dev/net/tun`. The error names what is missing.
    pub fn available() -> Result<(), String> {
        let mut missing = Vec::new();
        if !nix::unistd::geteuid().is_root() {
            missing.push("root (to make network namespaces)".to_owned());
        }
        for (tool, flag, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
            let found = Command::new(tool)
                .arg(flag)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                missing.push(format!("`{tool}` (apt-get install {package})"));
            }
        }
        if !Path::new("/dev/net/tun").exists() {
            missing.push("/dev/net/tun (the links' latency uses TAP devices)".to_owned());
        }
        match missing.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "the NAT lab cannot run here; it needs {}",
                missing.join(", ")
            )),
        }
    }

    /// Makes the lab of `config`. On any error, what was made so far is removed again.
    pub fn create(config: Config) -> Result<NatLab, String> {
        NatLab::available()?;
        if config.pairs == 0 || config.pairs > MAX_PAIRS {
            return Err(format!("1 to {MAX_PAIRS} home pairs, not {}", config.pairs));
        }
        remove_stale();
        let pid = std::process::id();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let name = |what: &str| format!("{PREFIX}{pid}-{n}-{what}");
        let mut lab = NatLab {
            relay: name("relay"),
            pairs: Vec::new(),
            namespaces: Vec::new(),
            delay_line: None,
            config: config.clone(),
        };
        // Links are made as TAP devices in this namespace, so their names must be unique on
        // the machine until they are moved (and renamed) into the lab.
        let tap_name = |link: usize, end: usize| {
            format!("n{:06x}{:02x}{:03x}{end}", pid & 0xff_ffff, n & 0xff, link)
        };
        let mut links = Vec::new();
        let internet = name("internet");
        lab.add_namespace(&internet)?;
        ip(&["-n", &internet, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &internet, "link", "set", "br0", "up"])?;

        let relay = lab.relay.clone();
        lab.add_namespace(&relay)?;
        let relay_ip = config.internet.address(2);
        let [a, b] = [tap_name(0, 0), tap_name(0, 1)];
        let ends = link([&a, &b], [(&relay, "eth0"), (&internet, "relay")])?;
        links.push((ends, config.relay_delay));
        ip(&[
            "-n",
            &relay,
            "addr",
            "add",
            &format!("{relay_ip}/24"),
            "dev",
            "eth0",
        ])?;

        for pair in 0..config.pairs {
            let mut homes = Vec::new();
            for (side, nat) in config.nats.iter().enumerate() {
                let letter = ["a", "b"][side];
                let home = Home {
                    host: name(&format!("host{pair}{letter}")),
                    router: name(&format!("router{pair}{letter}")),
                    wan_ip: config
                        .internet
                        .address(u8::try_from(10 + 2 * pair + side).map_err(|e| e.to_string())?),
                    lan_ip: Ipv4Addr::new(192, 168, 1, 2),
                };
                let index = 1 + 2 * pair + side;
                lab.add_namespace(&home.router)?;
                lab.add_namespace(&home.host)?;
                let port = format!("r{pair}{letter}");
                let ends = [tap_name(index, 0), tap_name(index, 1)];
                let ends = link(
                    [&ends[0], &ends[1]],
                    [(&home.router, "wan"), (&internet, &port)],
                )?;
                links.push((ends, config.delay));
                build_home(&home, *nat)?;
                homes.push(home);
            }
            if let Ok(pair) = <[Home; 2]>::try_from(homes) {
                lab.pairs.push(pair);
            }
        }
        lab.delay_line = Some(wire::DelayLine::start(links).map_err(|e| e.to_string())?);
        Ok(lab)
    }

    fn add_namespace(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// The relay host's namespace.
    pub fn relay_ns(&self) -> &str {
        &self.relay
    }

    /// The relay host's internet address.
    pub fn relay_ip(&self) -> Ipv4Addr {
        self.config.internet.address(2)
    }

    /// The lab's plan.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The homes A and B of pair `pair` (`0..config.pairs`).
    pub fn homes(&self, pair: usize) -> &[Home; 2] {
        &self.pairs[pair]
    }

    /// Forgets every translation and flow the routers track (`conntrack -F`; needs the
    /// `conntrack` tool), as a router restarted would.
    pub fn flush_conntrack(&self) -> Result<(), String> {
        for home in self.pairs.iter().flatten() {
            in_ns(&home.router, "conntrack", &["-F"], None)?;
        }
        Ok(())
    }

    /// The flows `router` (a namespace) tracks, as `conntrack -L` lists them.
    pub fn conntrack(&self, router: &str) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", router, "conntrack", "-L"])
            .output()
            .map_err(|e| format!("conntrack: {e} (apt-get install conntrack)"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Runs `f` on a thread of its own that has entered network namespace `ns` (a name `ip netns`
/// knows), and returns what `f` returns: sockets `f` makes belong to that namespace (and go on
/// working there when handed to other threads). A panic in `f` is passed on.
pub fn in_namespace<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    use std::os::fd::AsRawFd;
    let path = Path::new("/run/netns").join(ns);
    let handle = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let thread = std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a descriptor that stays open for the call.
        let rc = unsafe { nix::libc::setns(handle.as_raw_fd(), nix::libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        Ok(f())
    });
    match thread.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        self.delay_line = None;
        for ns in self.namespaces.iter().rev() {
            // Deleting a namespace deletes its interfaces, and with them the veth peers.
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Makes a link from two TAP devices named `taps` and moves each into its namespace under its
/// name there, `ends[i] = (namespace, name)`, up; an end named in the internet's namespace joins
/// its bridge. Returns the devices' files, for the delay line.
fn link(taps: [&str; 2], ends: [(&str, &str); 2]) -> Result<[std::fs::File; 2], String> {
    let mut files = Vec::new();
    for (tap, (ns, name)) in taps.into_iter().zip(ends) {
        let file = wire::tap(tap).map_err(|e| format!("TAP device {tap}: {e}"))?;
        ip(&["link", "set", "dev", tap, "netns", ns, "name", name])?;
        if ns.ends_with("-internet") {
            ip(&["-n", ns, "link", "set", name, "master", "br0"])?;
        }
        ip(&["-n", ns, "link", "set", name, "up"])?;
        files.push(file);
    }
    <[std::fs::File; 2]>::try_from(files).map_err(|_| "two ends".to_owned())
}

/// Addresses, routes and rules of one home whose router's WAN link exists: the LAN (a veth
/// pair), forwarding and the NAT.
fn build_home(home: &Home, nat: Nat) -> Result<(), String> {
    let (router, host) = (home.router.as_str(), home.host.as_str());
    let wan = format!("{}/24", home.wan_ip);
    let lan = format!("{}/24", home.lan_ip);
    ip(&["-n", router, "addr", "add", &wan, "dev", "wan"])?;
    ip(&[
        "-n", router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", host,
    ])?;
    ip(&["-n", router, "addr", "add", "192.168.1.1/24", "dev", "lan"])?;
    ip(&["-n", router, "link", "set", "lan", "up"])?;
    ip(&["-n", host, "addr", "add", &lan, "dev", "eth0"])?;
    ip(&["-n", host, "link", "set", "eth0", "up"])?;
    ip(&["-n", host, "route", "add", "default", "via", "192.168.1.1"])?;
    in_ns(
        router,
        "sh",
        &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
        None,
    )?;
    in_ns(router, "nft", &["-f", "-"], Some(&nat.ruleset()))
}

/// Deletes the namespaces of labs whose process is gone (killed before it could drop them).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = ns
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Runs `ip args`; the error quotes the command and what it said.
fn ip(args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").args(args), None)
}

/// Runs `program args` in namespace `ns`, with `input` on its stdin.
fn in_ns(ns: &str, program: &str, args: &[&str], input: Option<&str>) -> Result<(), String> {
    run(
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args),
        input,
    )
}

fn run(cmd: &mut Command, input: Option<&str>) -> Result<(), String> {
    use std::io::Write;
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("{shown}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{shown}: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}
