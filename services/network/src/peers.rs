//! What the overlay remembers across restarts: known peers with their addresses (tree `peers`,
//! redialled at start) and the ports it listened on (tree `overlay`, key `listen`, reused at
//! start for addresses configured with port 0).
//!
//! Only addresses the node itself connected to (an outbound connection that succeeded), or that
//! its user gave in a ticket, are *confirmed* and stored. Addresses that others claimed (a
//! peer's identify listen addresses, DHT answers, a joining member's addresses, addresses given
//! for one dial) are only *heard*: kept in memory, bounded, for dialing during this run, and
//! stored only once a connection to one of them succeeds. So no peer or DHT answer can fill the
//! stored book, nor make the node dial addresses of its choosing at every start.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use bytes::Bytes;
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use p2pos_kernel::{Store, events::now_ms, store::Writer};
use p2pos_proto::overlay::v1::TicketData;
use prost::Message;
use tracing::warn;

use p2pos_protocols::network::ticket::without_peer;

/// Store tree of known peers.
pub(crate) const PEERS_TREE: &str = "peers";
/// Store tree of what the network remembers of itself (listen ports).
pub(crate) const OVERLAY_TREE: &str = "overlay";
const LISTEN_KEY: &[u8] = b"listen";
/// Most addresses remembered per peer.
pub(crate) const MAX_ADDRS_PER_PEER: usize = 8;
/// Most peers remembered.
pub(crate) const MAX_PEERS: usize = 1024;
/// Most peers whose heard (unconfirmed) addresses are kept in memory.
pub(crate) const MAX_HEARD_PEERS: usize = 1024;
/// How stale a peer's last-seen time may get before an unchanged sighting rewrites it.
const REFRESH_MS: u64 = 10 * 60 * 1000;

struct Known {
    addrs: Vec<Multiaddr>,
    seen_ms: u64,
}

/// Known peers and their addresses: the confirmed ones mirrored in the store, the heard ones in
/// memory only.
pub(crate) struct PeerBook {
    writer: Writer,
    peers: HashMap<PeerId, Known>,
    /// Addresses claimed for peers, not connected to yet; `Known::seen_ms` is when last heard.
    heard: HashMap<PeerId, Known>,
}

impl PeerBook {
    /// The peers remembered in `store`; what the book learns goes back through `writer`, off
    /// the swarm task's thread.
    pub(crate) fn load(store: &dyn Store, writer: Writer) -> Self {
        let peers = load(store);
        Self {
            writer,
            peers,
            heard: HashMap::new(),
        }
    }

    /// Confirmed peers (those redialled at start), most recently seen first.
    pub(crate) fn peers(&self) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut all: Vec<_> = self.peers.iter().collect();
        all.sort_by_key(|(_, k)| std::cmp::Reverse(k.seen_ms));
        all.into_iter()
            .map(|(p, k)| (*p, k.addrs.clone()))
            .collect()
    }

    /// The addresses known for `peer`: the confirmed ones first, then those heard.
    pub(crate) fn addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let mut all = self.confirmed(peer);
        for a in self
            .heard
            .get(peer)
            .map(|k| k.addrs.iter())
            .into_iter()
            .flatten()
        {
            if !all.contains(a) {
                all.push(a.clone());
            }
        }
        all
    }

    /// The confirmed addresses of `peer` (stored, redialled at start).
    pub(crate) fn confirmed(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers
            .get(peer)
            .map(|k| k.addrs.clone())
            .unwrap_or_default()
    }

    /// Keeps addresses claimed for `peer` (newest first) for this run, without storing them:
    /// they are dialled when the peer is wanted, and stored once a connection to one succeeds.
    /// At most [`MAX_HEARD_PEERS`] peers are kept, the least recently heard going first.
    pub(crate) fn hear(&mut self, peer: PeerId, addrs: impl IntoIterator<Item = Multiaddr>) {
        let confirmed = self.peers.get(&peer).map(|k| k.addrs.as_slice());
        let fresh: Vec<Multiaddr> = clean(&peer, addrs)
            .into_iter()
            .filter(|a| confirmed.is_none_or(|c| !c.contains(a)))
            .collect();
        if fresh.is_empty() {
            return;
        }
        let known = self.heard.entry(peer).or_insert(Known {
            addrs: Vec::new(),
            seen_ms: 0,
        });
        known.addrs = merge(fresh, &known.addrs);
        known.seen_ms = now_ms();
        while self.heard.len() > MAX_HEARD_PEERS {
            let Some(oldest) = self
                .heard
                .iter()
                .min_by_key(|(_, k)| k.seen_ms)
                .map(|(p, _)| *p)
            else {
                return;
            };
            self.heard.remove(&oldest);
        }
    }

    /// Records that `peer` is reachable at `addrs` (newest first), and persists it: addresses
    /// the node connected to, or that its user gave.
    pub(crate) fn add(&mut self, peer: PeerId, addrs: impl IntoIterator<Item = Multiaddr>) {
        let fresh = clean(&peer, addrs);
        if fresh.is_empty() {
            return;
        }
        if let Some(heard) = self.heard.get_mut(&peer) {
            heard.addrs.retain(|a| !fresh.contains(a));
            if heard.addrs.is_empty() {
                self.heard.remove(&peer);
            }
        }
        let known = self.peers.entry(peer).or_insert(Known {
            addrs: Vec::new(),
            seen_ms: 0,
        });
        let merged = merge(fresh, &known.addrs);
        let now = now_ms();
        if merged == known.addrs && now.saturating_sub(known.seen_ms) < REFRESH_MS {
            return; // nothing new worth a write
        }
        known.addrs = merged;
        known.seen_ms = now;
        let value = encode(&peer, known);
        self.writer.insert(PEERS_TREE, &peer.to_bytes(), &value);
        self.evict();
    }

    fn evict(&mut self) {
        while self.peers.len() > MAX_PEERS {
            let Some(oldest) = self
                .peers
                .iter()
                .min_by_key(|(_, k)| k.seen_ms)
                .map(|(p, _)| *p)
            else {
                return;
            };
            self.peers.remove(&oldest);
            self.writer.remove(PEERS_TREE, &oldest.to_bytes());
        }
    }
}

/// The peers remembered in `store`.
fn load(store: &dyn Store) -> HashMap<PeerId, Known> {
    let mut peers = HashMap::new();
    match store.scan_prefix(PEERS_TREE, b"", MAX_PEERS) {
        Ok(pairs) => {
            for (k, v) in pairs {
                if let (Ok(peer), Some(known)) = (PeerId::from_bytes(&k), decode(&v)) {
                    peers.insert(peer, known);
                }
            }
        }
        Err(e) => warn!("cannot read the known peers: {e}"),
    }
    peers
}

/// The peers remembered in `store`, with their addresses.
pub(crate) fn stored(store: &dyn Store) -> Vec<(PeerId, Vec<Multiaddr>)> {
    load(store).into_iter().map(|(p, k)| (p, k.addrs)).collect()
}

/// `addrs` without `/p2p/<peer>`, dialable ones only.
fn clean(peer: &PeerId, addrs: impl IntoIterator<Item = Multiaddr>) -> Vec<Multiaddr> {
    addrs
        .into_iter()
        .map(|a| without_peer(a, peer))
        .filter(is_dialable)
        .collect()
}

/// `fresh`, then those of `old` not in it, at most [`MAX_ADDRS_PER_PEER`].
fn merge(fresh: Vec<Multiaddr>, old: &[Multiaddr]) -> Vec<Multiaddr> {
    let mut merged: Vec<Multiaddr> = Vec::new();
    for a in fresh.into_iter().chain(old.iter().cloned()) {
        if !merged.contains(&a) {
            merged.push(a);
        }
    }
    merged.truncate(MAX_ADDRS_PER_PEER);
    merged
}

/// Whether an address is worth remembering and handing out: not unspecified, not a port 0.
pub(crate) fn is_dialable(addr: &Multiaddr) -> bool {
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_unspecified(),
        Protocol::Tcp(port) | Protocol::Udp(port) => port != 0,
        _ => true,
    })
}

fn encode(peer: &PeerId, known: &Known) -> Vec<u8> {
    let data = TicketData {
        peer_id: Bytes::from(peer.to_bytes()),
        addresses: known
            .addrs
            .iter()
            .map(|a| Bytes::from(a.to_vec()))
            .collect(),
    };
    let mut out = known.seen_ms.to_be_bytes().to_vec();
    out.extend(data.encode_to_vec());
    out
}

fn decode(value: &[u8]) -> Option<Known> {
    let (seen, rest) = value.split_at_checked(8)?;
    let seen_ms = u64::from_be_bytes(seen.try_into().ok()?);
    let data = TicketData::decode(rest).ok()?;
    let addrs = data
        .addresses
        .iter()
        .filter_map(|a| Multiaddr::try_from(a.to_vec()).ok())
        .take(MAX_ADDRS_PER_PEER)
        .collect();
    Some(Known { addrs, seen_ms })
}

/// Remembers the addresses the node listens on (through `writer`).
pub(crate) fn save_listen_addrs(writer: &Writer, addrs: &[Multiaddr]) {
    let text = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    writer.insert(OVERLAY_TREE, LISTEN_KEY, text.as_bytes());
}

/// The addresses the node listened on last time.
pub(crate) fn load_listen_addrs(store: &dyn Store) -> Vec<Multiaddr> {
    match store.get(OVERLAY_TREE, LISTEN_KEY) {
        Ok(Some(v)) => String::from_utf8_lossy(&v)
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            warn!("cannot read the remembered listen addresses: {e}");
            Vec::new()
        }
    }
}

/// The shape of a listen address: IP, transport and port.
fn shape(addr: &Multiaddr) -> Option<(IpAddr, &'static str, u16)> {
    let mut iter = addr.iter();
    let ip = match iter.next()? {
        Protocol::Ip4(ip) => IpAddr::V4(ip),
        Protocol::Ip6(ip) => IpAddr::V6(ip),
        _ => return None,
    };
    match (iter.next()?, iter.next()) {
        (Protocol::Tcp(port), None) => Some((ip, "tcp", port)),
        (Protocol::Udp(port), Some(Protocol::QuicV1)) if iter.next().is_none() => {
            Some((ip, "quic", port))
        }
        _ => None,
    }
}

/// For each configured listen address, the address to try first: a port-0 address gets the port
/// remembered for it, so peers that know this node's address find it again after a restart. A
/// remembered port is given out once, and never when the configuration names that port itself
/// (`--listen tcp/0 --listen tcp/4001` must not put both on 4001 and lose the first).
pub(crate) fn remembered_ports(
    configured: &[Multiaddr],
    remembered: &[Multiaddr],
) -> Vec<Option<Multiaddr>> {
    let same_port = |a: &Multiaddr, b: &Multiaddr| match (shape(a), shape(b)) {
        (Some((_, ta, pa)), Some((_, tb, pb))) => ta == tb && pa == pb && pa != 0,
        _ => false,
    };
    let mut left: Vec<Multiaddr> = remembered
        .iter()
        .filter(|r| !configured.iter().any(|c| same_port(c, r)))
        .cloned()
        .collect();
    configured
        .iter()
        .map(|addr| {
            let again = with_remembered_port(addr, &left)?;
            left.retain(|r| !same_port(&again, r));
            Some(again)
        })
        .collect()
}

/// `configured` with the port remembered for the same IP version and transport (and the same
/// IP, unless `configured` listens on all interfaces), if its port is 0 and one is remembered.
fn with_remembered_port(configured: &Multiaddr, remembered: &[Multiaddr]) -> Option<Multiaddr> {
    let (ip, transport, 0) = shape(configured)? else {
        return None;
    };
    let port = remembered
        .iter()
        .filter_map(shape)
        .find_map(|(rip, rt, port)| {
            let same_ip = if ip.is_unspecified() {
                rip.is_ipv4() == ip.is_ipv4()
            } else {
                rip == ip
            };
            (same_ip && rt == transport && port != 0).then_some(port)
        })?;
    Some(
        configured
            .iter()
            .map(|p| match p {
                Protocol::Tcp(0) => Protocol::Tcp(port),
                Protocol::Udp(0) => Protocol::Udp(port),
                other => other,
            })
            .collect(),
    )
}

/// Waits up to `patience` for the port of `addr` to be free (a restarted overlay's previous
/// swarm may still be closing). libp2p listens with `SO_REUSEPORT`, so a plain bind is the
/// honest test of whether anyone else holds the port.
pub(crate) async fn port_is_free(addr: &Multiaddr, patience: Duration) -> bool {
    let Some((ip, transport, port)) = shape(addr) else {
        return false;
    };
    let socket = std::net::SocketAddr::new(ip, port);
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let free = match transport {
            "tcp" => std::net::TcpListener::bind(socket).is_ok(),
            _ => std::net::UdpSocket::bind(socket).is_ok(),
        };
        if free {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use p2pos_kernel::store::SledStore;

    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    #[test]
    fn remembered_ports_match_transport_and_ip() {
        let remembered = vec![
            ma("/ip4/127.0.0.1/tcp/4001"),
            ma("/ip4/192.168.1.2/udp/4002/quic-v1"),
        ];
        let got = |c: &str| with_remembered_port(&ma(c), &remembered);
        assert_eq!(
            got("/ip4/127.0.0.1/tcp/0"),
            Some(ma("/ip4/127.0.0.1/tcp/4001"))
        );
        assert_eq!(got("/ip4/0.0.0.0/tcp/0"), Some(ma("/ip4/0.0.0.0/tcp/4001")));
        assert_eq!(
            got("/ip4/0.0.0.0/udp/0/quic-v1"),
            Some(ma("/ip4/0.0.0.0/udp/4002/quic-v1"))
        );
        assert_eq!(got("/ip4/10.0.0.1/tcp/0"), None);
        assert_eq!(got("/ip4/127.0.0.1/tcp/5000"), None);
        assert_eq!(got("/ip6/::/tcp/0"), None);
    }

    #[test]
    fn a_remembered_port_goes_to_one_address_and_never_to_a_configured_port() {
        let remembered = vec![
            ma("/ip4/127.0.0.1/tcp/4001"),
            ma("/ip4/127.0.0.1/tcp/4002"),
            ma("/ip4/127.0.0.1/tcp/4003"),
        ];
        let configured = vec![
            ma("/ip4/127.0.0.1/tcp/0"),
            ma("/ip4/127.0.0.1/tcp/4001"),
            ma("/ip4/127.0.0.1/tcp/0"),
            ma("/ip4/127.0.0.1/tcp/0"),
        ];
        assert_eq!(
            remembered_ports(&configured, &remembered),
            vec![
                Some(ma("/ip4/127.0.0.1/tcp/4002")),
                None,
                Some(ma("/ip4/127.0.0.1/tcp/4003")),
                None,
            ]
        );
    }

    #[test]
    fn the_book_persists_bounded_addresses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let peer = PeerId::random();
        {
            let (writer, thread) = Writer::spawn(store.clone(), "test").expect("writer");
            let mut book = PeerBook::load(store.as_ref(), writer);
            let addrs: Vec<_> = (1..20)
                .map(|p| ma(&format!("/ip4/10.0.0.1/tcp/{p}")))
                .collect();
            book.add(peer, addrs);
            book.add(peer, [ma("/ip4/0.0.0.0/tcp/1"), ma("/ip4/10.0.0.9/tcp/9")]);
            drop(book);
            thread.join().expect("written");
        }
        let (writer, _thread) = Writer::spawn(store.clone(), "test").expect("writer");
        let book = PeerBook::load(store.as_ref(), writer);
        let addrs = book.addresses(&peer);
        assert_eq!(addrs.len(), MAX_ADDRS_PER_PEER);
        assert_eq!(addrs[0], ma("/ip4/10.0.0.9/tcp/9"), "newest first");
        assert_eq!(book.peers().len(), 1);
    }

    #[test]
    fn heard_addresses_are_dialled_but_stored_only_once_connected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let honest = PeerId::random();
        let claimed = PeerId::random();
        {
            let (writer, thread) = Writer::spawn(store.clone(), "test").expect("writer");
            let mut book = PeerBook::load(store.as_ref(), writer);
            book.add(honest, [ma("/ip4/10.0.0.1/tcp/1")]);
            // A flood of DHT answers and identify claims: peers and addresses of others' choosing.
            for i in 0..(MAX_HEARD_PEERS + 100) {
                let port = u16::try_from(i % 60_000 + 1).expect("port");
                book.hear(PeerId::random(), [ma(&format!("/ip4/10.9.9.9/tcp/{port}"))]);
            }
            book.hear(
                claimed,
                [ma("/ip4/10.0.0.2/tcp/2"), ma("/ip4/10.0.0.3/tcp/3")],
            );
            book.hear(honest, [ma("/ip4/10.0.0.4/tcp/4")]);
            assert!(
                book.heard.len() <= MAX_HEARD_PEERS,
                "heard peers are bounded"
            );
            assert_eq!(book.peers().len(), 1, "claims displace no confirmed peer");
            assert_eq!(
                book.addresses(&honest),
                [ma("/ip4/10.0.0.1/tcp/1"), ma("/ip4/10.0.0.4/tcp/4")],
                "confirmed first, then heard, all dialled this run"
            );
            assert_eq!(book.addresses(&claimed).len(), 2);
            // A connection to one of the claimed addresses succeeded: that one is stored.
            book.add(claimed, [ma("/ip4/10.0.0.3/tcp/3")]);
            assert_eq!(book.confirmed(&claimed), [ma("/ip4/10.0.0.3/tcp/3")]);
            assert_eq!(
                book.addresses(&claimed),
                [ma("/ip4/10.0.0.3/tcp/3"), ma("/ip4/10.0.0.2/tcp/2")]
            );
            drop(book);
            thread.join().expect("written");
        }
        let (writer, _thread) = Writer::spawn(store.clone(), "test").expect("writer");
        let book = PeerBook::load(store.as_ref(), writer);
        assert_eq!(book.peers().len(), 2, "only the peers connected to");
        assert_eq!(book.addresses(&honest), [ma("/ip4/10.0.0.1/tcp/1")]);
        assert_eq!(
            book.addresses(&claimed),
            [ma("/ip4/10.0.0.3/tcp/3")],
            "the claimed address never connected to is gone"
        );
    }
}
