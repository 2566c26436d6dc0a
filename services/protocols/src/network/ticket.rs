//! Tickets — `p2pos` + lowercase base32 (RFC 4648, no padding) of a protobuf `TicketData` — and
//! the parser of every way a user can name a peer: ticket, multiaddr with `/p2p/`, or peer id;
//! and, where a group member is resolved (app channels and messages), `NAME@GROUP`.

use bytes::Bytes;
use data_encoding::BASE32_NOPAD;
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use p2pos_proto::overlay::v1::TicketData;
use prost::Message;

use super::Error;

/// Every ticket starts with this.
pub const TICKET_PREFIX: &str = "p2pos";
/// Longest ticket accepted, in characters.
pub const MAX_TICKET_LEN: usize = 8 * 1024;
/// Most addresses taken from one ticket.
pub const MAX_TICKET_ADDRESSES: usize = 32;

/// Encodes a ticket for `peer` reachable at `addresses` (a trailing `/p2p/` is dropped).
pub fn encode_ticket(peer: &PeerId, addresses: &[Multiaddr]) -> String {
    let data = TicketData {
        peer_id: Bytes::from(peer.to_bytes()),
        addresses: addresses
            .iter()
            .take(MAX_TICKET_ADDRESSES)
            .map(|a| Bytes::from(without_peer(a.clone(), peer).to_vec()))
            .collect(),
    };
    let body = BASE32_NOPAD
        .encode(&data.encode_to_vec())
        .to_ascii_lowercase();
    format!("{TICKET_PREFIX}{body}")
}

/// Parses a ticket into the peer and its addresses.
pub fn parse_ticket(ticket: &str) -> Result<(PeerId, Vec<Multiaddr>), Error> {
    let invalid = |reason: &str| invalid_target(ticket, reason);
    if ticket.len() > MAX_TICKET_LEN {
        return Err(invalid("the ticket is too long"));
    }
    let body = ticket
        .get(..TICKET_PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(TICKET_PREFIX))
        .map(|_| &ticket[TICKET_PREFIX.len()..])
        .ok_or_else(|| invalid("a ticket starts with \"p2pos\""))?;
    let bytes = BASE32_NOPAD
        .decode(body.to_ascii_uppercase().as_bytes())
        .map_err(|_| invalid("the ticket is damaged (not base32); copy it again in full"))?;
    let TicketData { peer_id, addresses } = TicketData::decode(bytes.as_slice())
        .map_err(|_| invalid("the ticket is damaged; copy it again in full"))?;
    let peer = PeerId::from_bytes(&peer_id)
        .ok()
        .filter(is_well_formed)
        .ok_or_else(|| invalid("the ticket holds no valid peer id"))?;
    let addresses = addresses
        .iter()
        .take(MAX_TICKET_ADDRESSES)
        .filter_map(|a| Multiaddr::try_from(a.to_vec()).ok())
        .map(|a| without_peer(a, &peer))
        .collect();
    Ok((peer, addresses))
}

/// A group member named `NAME@GROUP` (its short name, then a group's id or name): the name and
/// the group, or `None` when `target` is another form. No ticket, multiaddr (they start with
/// `/`) or peer id holds an `@`; a member's name never does, so the first `@` splits.
pub fn split_member(target: &str) -> Option<(&str, &str)> {
    let target = target.trim();
    if target.starts_with('/') {
        return None;
    }
    target
        .split_once('@')
        .map(|(name, group)| (name.trim(), group.trim()))
}

/// Parses a peer named as a ticket, a multiaddr ending in `/p2p/<peer id>`, or a bare peer id.
/// Returns the peer and the addresses the input carries (none for a bare peer id). A
/// `NAME@GROUP` is refused here: it needs the groups service (see [`split_member`]).
pub fn parse_target(target: &str) -> Result<(PeerId, Vec<Multiaddr>), Error> {
    let target = target.trim();
    if target.is_empty() {
        return Err(invalid_target(target, "it is empty"));
    }
    if split_member(target).is_some() {
        return Err(invalid_target(
            target,
            "NAME@GROUP names a group member, which only app channels and messages resolve",
        ));
    }
    if target.starts_with('/') {
        let addr: Multiaddr = target
            .parse()
            .map_err(|e| invalid_target(target, &format!("not a valid multiaddr ({e})")))?;
        let Some(Protocol::P2p(peer)) = addr.iter().last() else {
            return Err(invalid_target(
                target,
                "the multiaddr does not end in /p2p/<peer id>",
            ));
        };
        return Ok((peer, vec![without_peer(addr, &peer)]));
    }
    if target
        .get(..TICKET_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(TICKET_PREFIX))
    {
        return parse_ticket(target);
    }
    let peer = target
        .parse::<PeerId>()
        .ok()
        .filter(is_well_formed)
        .ok_or_else(|| invalid_target(target, "not a ticket, multiaddr or peer id"))?;
    Ok((peer, Vec::new()))
}

/// Whether a parsed peer id is a whole one: an inlined public key that decodes, or a
/// SHA-256 digest (libp2p's parser accepts truncated ids).
fn is_well_formed(peer: &PeerId) -> bool {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    match hash.code() {
        0x00 => libp2p::identity::PublicKey::try_decode_protobuf(hash.digest()).is_ok(),
        0x12 => hash.digest().len() == 32,
        _ => false,
    }
}

/// `addr` without a trailing `/p2p/<peer>` component.
pub fn without_peer(mut addr: Multiaddr, peer: &PeerId) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(p)) if p == *peer) {
        addr.pop();
    }
    addr
}

fn invalid_target(input: &str, reason: &str) -> Error {
    let mut shown: String = input.chars().take(64).collect();
    if shown.len() < input.len() {
        shown.push('…');
    }
    Error::InvalidTarget {
        input: shown,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer_id() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn addrs() -> Vec<Multiaddr> {
        vec![
            "/ip4/127.0.0.1/tcp/4001".parse().expect("addr"),
            "/ip4/192.168.1.7/udp/4001/quic-v1".parse().expect("addr"),
        ]
    }

    #[test]
    fn a_ticket_round_trips() {
        let peer = peer_id();
        let ticket = encode_ticket(&peer, &addrs());
        assert!(ticket.starts_with("p2pos"));
        assert_eq!(ticket, ticket.to_ascii_lowercase());
        assert!(!ticket.contains('='));
        assert_eq!(parse_ticket(&ticket).expect("parse"), (peer, addrs()));
        assert_eq!(parse_target(&ticket).expect("parse"), (peer, addrs()));
        // Case does not matter, surrounding blanks neither.
        let upper = format!("  {} \n", ticket.to_ascii_uppercase());
        assert_eq!(parse_target(&upper).expect("parse"), (peer, addrs()));
    }

    #[test]
    fn a_trailing_p2p_is_dropped_from_ticket_addresses() {
        let peer = peer_id();
        let with_p2p = addrs()[0].clone().with(Protocol::P2p(peer));
        let ticket = encode_ticket(&peer, &[with_p2p]);
        assert_eq!(
            parse_ticket(&ticket).expect("parse").1,
            vec![addrs()[0].clone()]
        );
    }

    #[test]
    fn damaged_tickets_are_clear_errors() {
        let peer = peer_id();
        let ticket = encode_ticket(&peer, &addrs());
        for bad in [
            "p2pos",
            "p2pos!!!!",
            &ticket[..ticket.len() / 2],
            &format!("p2pos{}", "a".repeat(MAX_TICKET_LEN)),
        ] {
            let err = parse_target(bad).expect_err(bad);
            assert!(matches!(err, Error::InvalidTarget { .. }), "{err}");
            assert!(err.to_string().contains("expected a ticket"), "{err}");
        }
    }

    #[test]
    fn multiaddrs_need_a_peer_id() {
        let peer = peer_id();
        let text = format!("/ip4/10.0.0.1/tcp/7/p2p/{peer}");
        let (p, a) = parse_target(&text).expect("parse");
        assert_eq!(p, peer);
        assert_eq!(
            a,
            vec!["/ip4/10.0.0.1/tcp/7".parse::<Multiaddr>().expect("addr")]
        );
        let err = parse_target("/ip4/10.0.0.1/tcp/7").expect_err("no peer");
        assert!(err.to_string().contains("/p2p/"), "{err}");
        assert!(parse_target("/not/a/multiaddr").is_err());
    }

    #[test]
    fn relay_addresses_keep_the_relay() {
        let relay = peer_id();
        let peer = peer_id();
        let text = format!("/ip4/10.0.0.1/tcp/7/p2p/{relay}/p2p-circuit/p2p/{peer}");
        let (p, a) = parse_target(&text).expect("parse");
        assert_eq!(p, peer);
        assert_eq!(
            a[0].to_string(),
            format!("/ip4/10.0.0.1/tcp/7/p2p/{relay}/p2p-circuit")
        );
    }

    #[test]
    fn bare_peer_ids_and_garbage() {
        let peer = peer_id();
        assert_eq!(
            parse_target(&peer.to_string()).expect("parse"),
            (peer, Vec::new())
        );
        // libp2p alone would take the truncated one.
        let truncated = &peer.to_string()[..20];
        for bad in [
            "",
            "   ",
            "not a ticket",
            "12D3KooWnope",
            truncated,
            "alice@friends",
        ] {
            let err = parse_target(bad).expect_err(bad);
            assert!(matches!(err, Error::InvalidTarget { .. }), "{err}");
        }
    }

    #[test]
    fn members_are_named_name_at_group() {
        assert_eq!(split_member("alice@friends"), Some(("alice", "friends")));
        assert_eq!(
            split_member(" bob@my friends@home "),
            Some(("bob", "my friends@home"))
        );
        assert_eq!(split_member("@g"), Some(("", "g")));
        let peer = peer_id();
        assert_eq!(split_member(&peer.to_string()), None);
        assert_eq!(split_member(&encode_ticket(&peer, &addrs())), None);
        assert_eq!(split_member(&format!("/dns/a@b/tcp/1/p2p/{peer}")), None);
    }
}
