//! How far an address reaches — this host, this link, this site (private addresses, the inside
//! of a NAT), or the internet — and so which of a peer's addresses are worth keeping, dialling
//! and advertising: a peer that reached this node from elsewhere gains nothing from its
//! loopback or link-local addresses, and a node advertises to the DHT only addresses that
//! others can reach.
//!
//! The IPv6 test is written here rather than taken from libp2p-autonat 0.16, whose
//! `is_global_ip` applies the multicast-scope test to unicast addresses too, and so calls every
//! unicast address whose first group ends in 1–5 or 8 (2001::/16, 2601::/16, 2a01::/16, …)
//! non-global.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};

/// How far an address reaches, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Scope {
    /// This host only.
    Loopback,
    /// This link only (`169.254/16`, `fe80::/10`).
    LinkLocal,
    /// This site or the inside of a NAT (`10/8`, `172.16/12`, `192.168/16`, `100.64/10`,
    /// `fc00::/7`), or any other address not routed on the internet.
    Private,
    /// The internet (and DNS names, which are meant for it).
    Global,
}

/// The scope of `addr`'s first (IP or DNS) part; for a relayed address, that of the relay's.
pub(crate) fn scope(addr: &Multiaddr) -> Scope {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => scope_v4(ip),
        Some(Protocol::Ip6(ip)) => scope_v6(ip),
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) | Protocol::Dnsaddr(_)) => {
            Scope::Global
        }
        _ => Scope::Private,
    }
}

fn scope_v4(ip: Ipv4Addr) -> Scope {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Scope::Loopback
    } else if ip.is_link_local() {
        Scope::LinkLocal
    } else if ip.is_private()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        // 100.64/10, shared address space (carrier-grade NAT).
        || (a == 100 && b & 0xc0 == 64)
        // 192.0.0/24, protocol assignments.
        || (a == 192 && b == 0 && c == 0)
        // 198.18/15, benchmarking.
        || (a == 198 && b & 0xfe == 18)
        // 240/4, reserved.
        || a >= 240
    {
        Scope::Private
    } else {
        Scope::Global
    }
}

fn scope_v6(ip: Ipv6Addr) -> Scope {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return scope_v4(v4);
    }
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Scope::Loopback
    } else if first & 0xffc0 == 0xfe80 {
        Scope::LinkLocal
    } else if ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7, unique local.
        || first & 0xfe00 == 0xfc00
        // 2001:db8::/32, documentation.
        || (first == 0x2001 && ip.segments()[1] == 0xdb8)
    {
        Scope::Private
    } else {
        Scope::Global
    }
}

/// Whether `addr`, an address a peer claims, can serve a peer that this node reaches at
/// `via` (the remote addresses of its connections to it): loopback addresses only if it is
/// on this host, link-local ones only if it is on this link, private ones only if it is on a
/// private network too (or `trust_private`: the "internet" is private) — never through a relay
/// alone.
pub(crate) fn usable(addr: &Multiaddr, via: &[Multiaddr], trust_private: bool) -> bool {
    let direct = via.iter().filter(|a| !is_relayed(a)).map(scope);
    let nearest = direct.min();
    match scope(addr) {
        Scope::Global => true,
        Scope::Private => trust_private || nearest.is_some_and(|s| s <= Scope::Private),
        Scope::LinkLocal => nearest.is_some_and(|s| s <= Scope::LinkLocal),
        Scope::Loopback => nearest == Some(Scope::Loopback),
    }
}

/// The narrowest scope of the addresses this node advertises in the DHT, among peers it
/// reaches at `connected` (the remote addresses of its connections): addresses as wide as the
/// widest its peers are at — global ones on the internet, private ones as well on a network
/// with no internet in reach (a LAN, or `trust_private`), loopback ones as well when every peer
/// is on this host.
pub(crate) fn advertised_floor<'a>(
    connected: impl Iterator<Item = &'a Multiaddr>,
    trust_private: bool,
) -> Scope {
    let widest = connected
        .filter(|a| !is_relayed(a))
        .map(scope)
        .max()
        .unwrap_or(Scope::Global);
    match trust_private {
        true => widest.min(Scope::Private),
        false => widest,
    }
}

/// Whether peers elsewhere can reach this node at `addr` (which it listens on or was seen at),
/// given the [`advertised_floor`]: a relayed address counts with its relay's address.
pub(crate) fn advertisable(addr: &Multiaddr, floor: Scope) -> bool {
    scope(addr) >= floor
}

/// The IP address `addr` starts with.
pub(crate) fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// Whether `addr` goes through a relay (`/p2p-circuit`).
pub(crate) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The relay a relayed address goes through: the peer just before `/p2p-circuit` (`None` for
/// a direct address, or one that names no relay).
pub(crate) fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(peer) => last = Some(peer),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().expect("addr")
    }

    #[test]
    fn scopes_follow_the_registries() {
        for (addr, want) in [
            ("/ip4/127.0.0.1/tcp/1", Scope::Loopback),
            ("/ip4/169.254.3.4/tcp/1", Scope::LinkLocal),
            ("/ip4/192.168.1.2/tcp/1", Scope::Private),
            ("/ip4/10.0.0.1/udp/1/quic-v1", Scope::Private),
            ("/ip4/100.64.0.9/tcp/1", Scope::Private),
            ("/ip4/198.18.0.1/tcp/1", Scope::Private),
            ("/ip4/224.0.0.251/udp/5353/quic-v1", Scope::Private),
            ("/ip4/5.0.0.10/tcp/1", Scope::Global),
            ("/ip4/8.8.8.8/tcp/1", Scope::Global),
            ("/ip6/::1/tcp/1", Scope::Loopback),
            ("/ip6/fe80::1/tcp/1", Scope::LinkLocal),
            ("/ip6/fd00::1/tcp/1", Scope::Private),
            ("/ip6/2001:db8::1/tcp/1", Scope::Private),
            ("/ip6/::ffff:192.168.0.1/tcp/1", Scope::Private),
            ("/dns4/relay.example.org/tcp/1", Scope::Global),
        ] {
            assert_eq!(scope(&a(addr)), want, "{addr}");
        }
    }

    /// The prefixes libp2p-autonat 0.16 calls non-global: real ISPs' unicast space.
    #[test]
    fn global_ipv6_prefixes_are_global() {
        for addr in [
            "/ip6/2001:470::1/tcp/1",  // Hurricane Electric
            "/ip6/2601:1c0::1/tcp/1",  // Comcast
            "/ip6/2a01:4f8::1/tcp/1",  // Hetzner
            "/ip6/2a02:8070::1/tcp/1", // Vodafone
            "/ip6/2003:e0::1/tcp/1",   // Deutsche Telekom
            "/ip6/2605:a140::1/tcp/1", // Contabo
            "/ip6/2408:8000::1/tcp/1", // China Unicom
            "/ip6/2400:cb00::1/tcp/1", // Cloudflare
        ] {
            assert_eq!(scope(&a(addr)), Scope::Global, "{addr}");
        }
    }

    #[test]
    fn a_peers_near_addresses_serve_only_peers_that_near() {
        let lan = a("/ip4/192.168.1.5/tcp/1");
        let lo = a("/ip4/127.0.0.1/tcp/1");
        let ll = a("/ip6/fe80::5/tcp/1");
        let public = a("/ip4/5.0.0.2/tcp/1");
        let relayed = a(
            "/ip4/5.0.0.10/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit",
        );
        // Reached from the internet or through a relay: only its global addresses help.
        for via in [vec![public.clone()], vec![relayed.clone()]] {
            assert!(usable(&public, &via, false));
            assert!(!usable(&lan, &via, false));
            assert!(!usable(&lo, &via, false));
            assert!(!usable(&ll, &via, false));
            assert!(usable(&lan, &via, true), "a private internet");
        }
        // On the same LAN: private ones too, not loopback.
        let via = [a("/ip4/192.168.1.9/tcp/7")];
        assert!(usable(&lan, &via, false));
        assert!(!usable(&lo, &via, false));
        assert!(!usable(&ll, &via, false));
        // On the same link or host.
        assert!(usable(&ll, &[a("/ip6/fe80::9/tcp/7")], false));
        assert!(usable(&lo, &[a("/ip4/127.0.0.1/tcp/7")], false));
        assert!(usable(&lan, &[a("/ip4/127.0.0.1/tcp/7")], false));
        // Not connected at all: a claim's near addresses are useless.
        assert!(!usable(&lan, &[], false));
        assert!(usable(&public, &[], false));
    }

    #[test]
    fn only_addresses_others_reach_are_advertised() {
        let public = a("/ip4/5.0.0.2/tcp/1");
        let lan = a("/ip4/192.168.1.2/tcp/1");
        let lo = a("/ip4/127.0.0.1/tcp/1");
        let ll = a("/ip6/fe80::1/tcp/1");
        // Among peers on the internet (or none known yet): global addresses only.
        for connected in [vec![public.clone(), lan.clone()], vec![]] {
            let floor = advertised_floor(connected.iter(), false);
            assert!(advertisable(&public, floor));
            assert!(!advertisable(&lan, floor));
            assert!(!advertisable(&lo, floor));
            assert!(!advertisable(&ll, floor));
        }
        // A private "internet": private ones too, never loopback or link-local.
        let floor = advertised_floor([public.clone()].iter(), true);
        assert!(advertisable(&lan, floor));
        assert!(!advertisable(&lo, floor));
        assert!(!advertisable(&ll, floor));
        // Every peer on this host: loopback ones too.
        let floor = advertised_floor([lo.clone()].iter(), false);
        assert!(advertisable(&lo, floor));
        let relayed = a(
            "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit",
        );
        assert!(advertisable(&relayed, floor));
        assert!(!advertisable(
            &relayed,
            advertised_floor([public].iter(), false)
        ));
    }
}
