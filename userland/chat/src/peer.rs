//! Naming peers: the peer id inside a PEER argument (peer id, ticket or multiaddr; a group
//! member's `NAME@GROUP` is resolved by the node), and the short form shown before received
//! lines.

use data_encoding::BASE32_NOPAD;
use p2pos_proto::overlay::v1::TicketData;
use prost::Message;

/// The prefix of ticket strings.
const TICKET_PREFIX: &str = "p2pos";

/// The base58btc alphabet of peer ids.
const BASE58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// The group of a PEER argument that names a group member, `NAME@GROUP` (as the node's
/// parser tells them: no ticket, multiaddr or peer id holds an `@`).
pub(crate) fn member_group(arg: &str) -> Option<&str> {
    let arg = arg.trim();
    if arg.starts_with('/') {
        return None;
    }
    arg.split_once('@').map(|(_, group)| group.trim())
}

/// The peer id named by a PEER argument: a ticket is decoded, a multiaddr gives its last
/// `/p2p/<id>`, anything else is taken as a peer id. `None` when it cannot be told here (a
/// `NAME@GROUP`: the node resolves it, and the first channel tells the peer id).
pub(crate) fn peer_id_of(arg: &str) -> Option<String> {
    let arg = arg.trim();
    if arg.is_empty() || member_group(arg).is_some() {
        return None;
    }
    if arg.starts_with('/') {
        let (_, rest) = arg.rsplit_once("/p2p/")?;
        let id = rest.split('/').next().unwrap_or_default();
        return (!id.is_empty()).then(|| id.to_owned());
    }
    if let Some(encoded) = arg.strip_prefix(TICKET_PREFIX) {
        return ticket_peer_id(encoded);
    }
    Some(arg.to_owned())
}

/// Decodes the base32 body of a ticket and renders its peer id in base58.
fn ticket_peer_id(encoded: &str) -> Option<String> {
    let bytes = BASE32_NOPAD
        .decode(encoded.to_ascii_uppercase().as_bytes())
        .ok()?;
    let data = TicketData::decode(bytes.as_slice()).ok()?;
    (!data.peer_id.is_empty()).then(|| base58(&data.peer_id))
}

/// Base58btc (Bitcoin alphabet), as libp2p prints peer ids.
fn base58(bytes: &[u8]) -> String {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    // Little-endian base-58 digits of the number the bytes spell.
    let mut digits: Vec<u8> = Vec::with_capacity(bytes.len() * 138 / 100 + 1);
    for &byte in &bytes[zeros..] {
        let mut carry = u32::from(byte);
        for digit in digits.iter_mut() {
            carry += u32::from(*digit) << 8;
            *digit = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let mut out = String::with_capacity(zeros + digits.len());
    out.extend(std::iter::repeat_n('1', zeros));
    out.extend(
        digits
            .iter()
            .rev()
            .map(|d| char::from(BASE58[usize::from(*d)])),
    );
    out
}

/// The last 8 characters of a peer id, shown before its lines (every ed25519 peer id starts
/// with the same `12D3KooW`, so the end is what tells peers apart).
pub(crate) fn short(peer_id: &str) -> &str {
    match peer_id.char_indices().rev().nth(7) {
        Some((at, _)) => &peer_id[at..],
        None => peer_id,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base58_matches_known_vectors() {
        assert_eq!(base58(b""), "");
        assert_eq!(base58(&[0]), "1");
        assert_eq!(base58(&[0, 0, 1]), "112");
        assert_eq!(base58(b"hello world"), "StV1DL6CwTryKyV");
        assert_eq!(base58(&[255; 4]), "7YXq9G");
    }

    #[test]
    fn reads_peer_ids_from_arguments() {
        assert_eq!(peer_id_of("12D3KooWabc").as_deref(), Some("12D3KooWabc"));
        assert_eq!(
            peer_id_of("/ip4/1.2.3.4/tcp/1/p2p/12D3KooWabc").as_deref(),
            Some("12D3KooWabc")
        );
        assert_eq!(
            peer_id_of("/ip4/1.2.3.4/tcp/1/p2p/R/p2p-circuit/p2p/12D3KooWdst").as_deref(),
            Some("12D3KooWdst")
        );
        assert_eq!(peer_id_of("/ip4/1.2.3.4/tcp/1"), None);
        assert_eq!(peer_id_of("  "), None);
        assert_eq!(peer_id_of("alice@friends"), None);
        assert_eq!(member_group(" alice@friends "), Some("friends"));
        assert_eq!(member_group("12D3KooWabc"), None);
        assert_eq!(member_group("/dns/a@b/tcp/1/p2p/12D3KooWabc"), None);
    }

    #[test]
    fn decodes_tickets() {
        let data = TicketData {
            peer_id: b"hello world".to_vec().into(),
            addresses: vec![vec![4, 127, 0, 0, 1].into()],
        };
        let ticket = format!(
            "p2pos{}",
            BASE32_NOPAD
                .encode(&data.encode_to_vec())
                .to_ascii_lowercase()
        );
        assert_eq!(peer_id_of(&ticket).as_deref(), Some("StV1DL6CwTryKyV"));
        assert_eq!(peer_id_of("p2pos!!!"), None);
    }

    #[test]
    fn shortens_peer_ids() {
        assert_eq!(short("12D3KooWAbCdEf"), "oWAbCdEf");
        assert_eq!(short("abc"), "abc");
    }
}
