//! One membership operation: a libp2p signed envelope of a `GroupOpBody` (payload type
//! [`OP_TYPE`]), opened into a checked [`Op`] (who signed it, its hash, its parents, what it
//! does), and group ids.

use std::{fmt, str::FromStr};

use data_encoding::BASE32_NOPAD;
use libp2p::PeerId;
use p2pos_proto::wire::v1::{GroupCreate, GroupOpBody, group_op_body};
use p2pos_protocols::network::open_signed;
use prost::Message;
use sha2::{Digest, Sha256};

/// The payload type operations are signed as.
pub const OP_TYPE: &str = "/p2pos/group/op";
/// Largest signed operation, in bytes.
pub const MAX_OP: usize = 2048;
/// Most parents one operation names.
pub const MAX_PARENTS: usize = 16;
/// Longest group name, in characters.
pub const MAX_NAME: usize = 64;
pub use p2pos_protocols::names::{MAX_MEMBER_NAME, check_member_name};

/// An operation's hash: the SHA-256 of its signed bytes.
pub type Hash = [u8; 32];

/// The SHA-256 of `bytes`.
pub fn hash(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// A group's id: the first 16 bytes of its create operation's hash, written as 26 lowercase
/// base32 characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub [u8; 16]);

impl GroupId {
    /// The id of the group whose create operation hashes to `genesis`.
    pub fn of(genesis: &Hash) -> Self {
        let mut id = [0; 16];
        id.copy_from_slice(&genesis[..16]);
        Self(id)
    }

    /// From its 16 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE32_NOPAD.encode(&self.0).to_ascii_lowercase())
    }
}

impl FromStr for GroupId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let bytes = BASE32_NOPAD
            .decode(s.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| ())?;
        Self::from_bytes(&bytes).ok_or(())
    }
}

/// What an operation does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Founds the group: its signer is the first member and admin.
    Create {
        /// The group's first name.
        name: String,
        /// Random bytes, so that each group founded has its own id.
        nonce: Vec<u8>,
    },
    /// Adds a member.
    AddMember(PeerId),
    /// Removes a member (an admin's removal, or a member leaving).
    RemoveMember(PeerId),
    /// Makes a peer an admin (and a member).
    AddAdmin(PeerId),
    /// Makes an admin a plain member.
    RemoveAdmin(PeerId),
    /// Renames the group.
    Rename(String),
    /// Names its signer within the group (a member's short name).
    SetName(String),
}

/// A signed operation whose signature verified.
#[derive(Debug, Clone)]
pub struct Op {
    /// The SHA-256 of `bytes`.
    pub hash: Hash,
    /// The peer whose node key signed it.
    pub signer: PeerId,
    /// Its group (`None` for create, which defines the id).
    pub group: Option<GroupId>,
    /// The heads its signer saw.
    pub parents: Vec<Hash>,
    /// When it was signed (informational).
    pub time_ms: u64,
    /// What it does.
    pub kind: Kind,
    /// The signed envelope.
    pub bytes: Vec<u8>,
}

/// A name checked: trimmed, 1 to [`MAX_NAME`] characters, no control characters.
pub fn check_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(format!("a group name has 1 to {MAX_NAME} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("a group name has no control characters".into());
    }
    Ok(name.to_owned())
}

fn peer(bytes: &[u8]) -> Result<PeerId, String> {
    PeerId::from_bytes(bytes).map_err(|_| "an operation names a bad peer id".to_owned())
}

/// The body to sign for an operation of `group` (none for create) after `parents`.
pub fn body(group: Option<GroupId>, parents: &[Hash], time_ms: u64, kind: &Kind) -> Vec<u8> {
    use group_op_body::Kind as K;
    let kind = match kind {
        Kind::Create { name, nonce } => K::Create(GroupCreate {
            name: name.clone(),
            nonce: nonce.clone().into(),
        }),
        Kind::AddMember(p) => K::AddMember(p.to_bytes().into()),
        Kind::RemoveMember(p) => K::RemoveMember(p.to_bytes().into()),
        Kind::AddAdmin(p) => K::AddAdmin(p.to_bytes().into()),
        Kind::RemoveAdmin(p) => K::RemoveAdmin(p.to_bytes().into()),
        Kind::Rename(name) => K::Rename(name.clone()),
        Kind::SetName(name) => K::SetName(name.clone()),
    };
    let mut parents = parents.to_vec();
    parents.sort_unstable();
    GroupOpBody {
        group: group.map(|g| g.0.to_vec().into()).unwrap_or_default(),
        parents: parents.into_iter().map(|h| h.to_vec().into()).collect(),
        time_ms,
        kind: Some(kind),
    }
    .encode_to_vec()
}

impl Op {
    /// Opens signed bytes: the signature must verify and the body be well formed (its own
    /// rules only; whether its signer may do it is the log's business).
    pub fn open(bytes: &[u8]) -> Result<Op, String> {
        if bytes.len() > MAX_OP {
            return Err(format!("an operation is at most {MAX_OP} bytes"));
        }
        let (signer, payload) = open_signed(OP_TYPE, bytes)
            .ok_or_else(|| "an operation whose signature does not verify".to_owned())?;
        let GroupOpBody {
            group,
            parents,
            time_ms,
            kind,
        } = GroupOpBody::decode(payload.as_slice())
            .map_err(|e| format!("an unreadable operation: {e}"))?;
        if parents.len() > MAX_PARENTS {
            return Err(format!("an operation names at most {MAX_PARENTS} parents"));
        }
        let parents = parents
            .iter()
            .map(|p| Hash::try_from(&p[..]))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "an operation names a bad parent hash".to_owned())?;
        use group_op_body::Kind as K;
        let kind = match kind {
            None => return Err("an operation that does nothing".into()),
            Some(K::Create(GroupCreate { name, nonce })) => Kind::Create {
                name: check_name(&name)?,
                nonce: nonce.to_vec(),
            },
            Some(K::AddMember(p)) => Kind::AddMember(peer(&p)?),
            Some(K::RemoveMember(p)) => Kind::RemoveMember(peer(&p)?),
            Some(K::AddAdmin(p)) => Kind::AddAdmin(peer(&p)?),
            Some(K::RemoveAdmin(p)) => Kind::RemoveAdmin(peer(&p)?),
            Some(K::Rename(name)) => Kind::Rename(check_name(&name)?),
            Some(K::SetName(name)) => Kind::SetName(check_member_name(&name)?),
        };
        let create = matches!(kind, Kind::Create { .. });
        let group = match (create, group.is_empty()) {
            (true, true) if parents.is_empty() => None,
            (true, _) => return Err("a create operation has no group and no parents".into()),
            (false, _) if parents.is_empty() => {
                return Err("an operation other than create names its parents".into());
            }
            (false, _) => {
                Some(GroupId::from_bytes(&group).ok_or_else(|| "a bad group id".to_owned())?)
            }
        };
        Ok(Op {
            hash: hash(bytes),
            signer,
            group,
            parents,
            time_ms,
            kind,
            bytes: bytes.to_vec(),
        })
    }
}
