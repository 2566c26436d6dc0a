//! Invites: a capability signed by an admin — the group, the admin's addresses, an expiry, how
//! many joins it allows, whether it makes admins — written `p2posgroup` + lowercase base32 of
//! the signed envelope (payload type [`INVITE_TYPE`]). The admin who signed it counts its uses.

use data_encoding::BASE32_NOPAD;
use libp2p::{Multiaddr, PeerId};
use p2pos_proto::wire::v1::GroupInviteBody;
use p2pos_protocols::network::open_signed;
use prost::Message;

use crate::op::GroupId;

/// The payload type invites are signed as.
pub const INVITE_TYPE: &str = "/p2pos/group/invite";
/// How an invite string starts.
pub const PREFIX: &str = "p2posgroup";
/// Most joins one invite allows.
pub const MAX_USES: u32 = 1000;
/// An invite's lifetime when none is given: one day.
pub const DEFAULT_EXPIRY_SECS: u64 = 86_400;
/// The longest lifetime: 30 days.
pub const MAX_EXPIRY_SECS: u64 = 30 * 86_400;
/// Longest invite string accepted.
pub const MAX_INVITE: usize = 4096;
/// Most addresses an invite carries.
pub const MAX_ADDRS: usize = 8;

/// An invite whose signature verified.
#[derive(Debug, Clone)]
pub struct Invite {
    /// The admin who signed it (and counts its uses).
    pub signer: PeerId,
    /// The group.
    pub group: GroupId,
    /// Names this invite.
    pub id: [u8; 16],
    /// Where the admin listens.
    pub addrs: Vec<Multiaddr>,
    /// When it expires, in ms since the Unix epoch.
    pub expires_ms: u64,
    /// How many joins it allows.
    pub max_uses: u32,
    /// Whether it makes admins.
    pub admin: bool,
    /// The signed envelope.
    pub signed: Vec<u8>,
}

/// The string of a signed invite.
pub fn encode(signed: &[u8]) -> String {
    format!(
        "{PREFIX}{}",
        BASE32_NOPAD.encode(signed).to_ascii_lowercase()
    )
}

/// An invite string parsed and its signature checked (not its expiry or uses).
pub fn parse(text: &str) -> Result<Invite, String> {
    let text = text.trim();
    if text.len() > MAX_INVITE {
        return Err(format!("an invite is at most {MAX_INVITE} characters"));
    }
    let body = text
        .strip_prefix(PREFIX)
        .ok_or_else(|| format!("an invite starts with {PREFIX}"))?;
    let signed = BASE32_NOPAD
        .decode(body.to_ascii_uppercase().as_bytes())
        .map_err(|_| "the invite is damaged (not base32); copy it again in full".to_owned())?;
    open(&signed)
}

/// A signed invite opened.
pub fn open(signed: &[u8]) -> Result<Invite, String> {
    let (signer, payload) = open_signed(INVITE_TYPE, signed)
        .ok_or_else(|| "the invite's signature does not verify".to_owned())?;
    let GroupInviteBody {
        group,
        invite_id,
        addrs,
        expires_ms,
        max_uses,
        admin,
        name: _,
    } = GroupInviteBody::decode(payload.as_slice())
        .map_err(|e| format!("an unreadable invite: {e}"))?;
    let group = GroupId::from_bytes(&group).ok_or("the invite names a bad group id")?;
    let id = <[u8; 16]>::try_from(&invite_id[..]).map_err(|_| "the invite has a bad id")?;
    let addrs = addrs
        .iter()
        .take(MAX_ADDRS)
        .filter_map(|a| a.parse().ok())
        .collect();
    Ok(Invite {
        signer,
        group,
        id,
        addrs,
        expires_ms,
        max_uses: max_uses.clamp(1, MAX_USES),
        admin,
        signed: signed.to_vec(),
    })
}

/// The body of a new invite.
pub fn body(
    group: GroupId,
    name: &str,
    addrs: &[String],
    expires_ms: u64,
    max_uses: u32,
    admin: bool,
) -> Vec<u8> {
    GroupInviteBody {
        group: group.0.to_vec().into(),
        invite_id: rand::random::<[u8; 16]>().to_vec().into(),
        addrs: addrs.iter().take(MAX_ADDRS).cloned().collect(),
        expires_ms,
        max_uses,
        admin,
        name: name.to_owned(),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;
    use p2pos_protocols::network::sign_with;

    use super::*;

    #[test]
    fn an_invite_round_trips_and_a_damaged_one_is_refused() {
        let key = Keypair::generate_ed25519();
        let group = GroupId([3; 16]);
        let body = body(group, "g", &["/ip4/127.0.0.1/tcp/1".into()], 5, 2, true);
        let text = encode(&sign_with(&key, INVITE_TYPE, body).expect("signed"));
        let invite = parse(&text).expect("parses");
        assert_eq!(invite.signer, key.public().to_peer_id());
        assert_eq!(
            (invite.group, invite.max_uses, invite.admin),
            (group, 2, true)
        );
        assert_eq!(invite.addrs.len(), 1);
        let mut damaged = text.clone();
        damaged.replace_range(20..21, if &text[20..21] == "a" { "b" } else { "a" });
        assert!(parse(&damaged).is_err());
        assert!(parse("p2pos123").is_err());
    }
}
