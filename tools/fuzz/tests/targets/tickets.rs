//! Target `tickets`: what a user pastes to name a peer — tickets (`p2pos` + base32 of a
//! `TicketData`), multiaddrs ending in `/p2p/`, peer ids and `NAME@GROUP` — read by
//! [`parse_ticket`], [`parse_target`] and [`PeerArg::parse`]: any text is a peer or a clear
//! `InvalidTarget`, a ticket damaged in transit is refused or still names a well-formed peer,
//! and a ticket comes back as written (`parse(encode(x)) == x`, in either case).

use libp2p::{Multiaddr, PeerId, identity::Keypair, multiaddr::Protocol};
use p2pos_fuzz::{fuzz, mutate::damaged};
use p2pos_proto::overlay::v1::TicketData;
use p2pos_protocols::{
    ids::PeerArg,
    network::{
        Error,
        ticket::{MAX_TICKET_ADDRESSES, MAX_TICKET_LEN, encode_ticket, parse_target, parse_ticket},
    },
};
use proptest::{collection::vec, prelude::*};
use prost::Message;

fn peer() -> impl Strategy<Value = PeerId> {
    any::<[u8; 32]>().prop_map(|seed| {
        Keypair::ed25519_from_bytes(seed)
            .expect("32 bytes are a key")
            .public()
            .to_peer_id()
    })
}

fn address(peer: PeerId) -> impl Strategy<Value = Multiaddr> {
    let ip = prop_oneof![
        any::<[u8; 4]>().prop_map(|ip| Protocol::Ip4(ip.into())),
        any::<[u8; 16]>().prop_map(|ip| Protocol::Ip6(ip.into())),
        "[a-z]{1,12}\\.[a-z]{2,3}".prop_map(|name| Protocol::Dns(name.into())),
    ];
    let transport = prop_oneof![
        any::<u16>().prop_map(|p| vec![Protocol::Tcp(p)]),
        any::<u16>().prop_map(|p| vec![Protocol::Udp(p), Protocol::QuicV1]),
    ];
    (ip, transport, any::<bool>()).prop_map(move |(ip, transport, with_peer)| {
        let mut addr = Multiaddr::empty().with(ip);
        for p in transport {
            addr.push(p);
        }
        if with_peer {
            addr.push(Protocol::P2p(peer));
        }
        addr
    })
}

/// A peer and the addresses a ticket of it carries (sometimes more than a ticket keeps).
fn ticket_parts() -> impl Strategy<Value = (PeerId, Vec<Multiaddr>)> {
    peer().prop_flat_map(|peer| (Just(peer), vec(address(peer), 0..40)))
}

#[derive(Debug, Clone)]
enum Case {
    /// Any text, parsed as a target and as an app's peer argument.
    Text(String),
    /// A ticket, damaged.
    Damaged(String),
    /// A ticket of this peer and these addresses, upper-cased or not, with spaces or not.
    Back(PeerId, Vec<Multiaddr>, bool, bool),
    /// A `TicketData` of any bytes, made into a ticket.
    Data(Vec<u8>, Vec<Vec<u8>>),
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,80}",
        "(p2pos|P2POS|/|12D3KooW|Qm)[a-zA-Z2-7/@.=0-9-]{0,120}",
        "[a-z0-9._-]{0,40}@[a-z0-9 ]{0,40}",
        Just("p2pos".to_owned() + &"a".repeat(MAX_TICKET_LEN)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let tickets = ticket_parts()
        .prop_map(|(peer, addrs)| encode_ticket(&peer, &addrs).into_bytes())
        .boxed();
    prop_oneof![
        3 => text().prop_map(Case::Text),
        4 => damaged(tickets, 64)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
            .prop_map(Case::Damaged),
        2 => (ticket_parts(), any::<bool>(), any::<bool>())
            .prop_map(|((peer, addrs), upper, spaced)| Case::Back(peer, addrs, upper, spaced)),
        1 => (vec(any::<u8>(), 0..64), vec(vec(any::<u8>(), 0..40), 0..4))
            .prop_map(|(id, addrs)| Case::Data(id, addrs)),
    ]
}

#[test]
fn tickets() {
    fuzz("tickets", case(), |case| {
        match case {
            Case::Text(text) | Case::Damaged(text) => {
                check_any(&text)?;
            }
            Case::Back(peer, addrs, upper, spaced) => {
                let mut ticket = encode_ticket(&peer, &addrs);
                if upper {
                    ticket = ticket.to_ascii_uppercase();
                }
                if spaced {
                    ticket = format!(" \t{ticket}\n");
                }
                let kept: Vec<Multiaddr> = addrs
                    .into_iter()
                    .take(MAX_TICKET_ADDRESSES)
                    .map(|mut a| {
                        if a.iter().last() == Some(Protocol::P2p(peer)) {
                            a.pop();
                        }
                        a
                    })
                    .collect();
                prop_assert_eq!(
                    parse_target(&ticket).map_err(|e| e.to_string()),
                    Ok((peer, kept.clone()))
                );
                if !spaced {
                    prop_assert_eq!(
                        parse_ticket(&ticket).map_err(|e| e.to_string()),
                        Ok((peer, kept))
                    );
                }
            }
            Case::Data(peer_id, addresses) => {
                let data = TicketData {
                    peer_id: peer_id.into(),
                    addresses: addresses.into_iter().map(Into::into).collect(),
                };
                let body = data_encoding::BASE32_NOPAD.encode(&data.encode_to_vec());
                check_any(&format!("p2pos{}", body.to_ascii_lowercase()))?;
            }
        }
        Ok(())
    });
}

/// Any text: a peer, or an `InvalidTarget` that shows at most 64 characters of it.
fn check_any(text: &str) -> Result<(), TestCaseError> {
    let refused = |result: Result<(), Error>| -> Result<(), TestCaseError> {
        match result {
            Ok(()) => Ok(()),
            Err(Error::InvalidTarget { input, reason }) => {
                prop_assert!(input.chars().count() <= 65, "{input:?}");
                prop_assert!(!reason.is_empty());
                Ok(())
            }
            Err(e) => Err(TestCaseError::fail(format!("not InvalidTarget: {e}"))),
        }
    };
    refused(parse_ticket(text).map(|(_, addrs)| assert!(addrs.len() <= MAX_TICKET_ADDRESSES)))?;
    refused(parse_target(text).map(|_| ()))?;
    refused(PeerArg::parse(text).map(|_| ()))?;
    Ok(())
}
