//! Validated names, parsed once at the edge (the gateway, or a frame from a peer) and carried
//! as types from there on: [`AppId`], [`ServiceName`], [`PeerRef`], [`PeerArg`]. A service
//! that receives one needs not check it again.

use std::{fmt, ops::Deref};

use libp2p::{Multiaddr, PeerId};

use crate::{names, network};

/// An app id that follows the grammar of [`names`]: an app's (`chat`) or a helper's
/// (`chat:voice`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppId(String);

impl AppId {
    /// Checks `input` against the grammar; the error says why, for people.
    pub fn parse(input: &str) -> Result<AppId, String> {
        names::check_app_id(input)?;
        Ok(AppId(input.to_owned()))
    }

    /// The app id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The app id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl Deref for AppId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest name part of a service name.
const MAX_SERVICE_NAME: usize = 48;
/// Most digits in a service's version.
const MAX_VERSION_DIGITS: usize = 9;

/// A service name in canonical form, `<name>/<version>`: the name 1 to 48 characters of
/// `[A-Za-z0-9._-]`, the version 1 to 9 digits with no leading zero (`0` itself is a version),
/// so that one service has one name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName(String);

impl ServiceName {
    /// A service name as apps give it: always `<name>/<version>`. The error is the reason, for
    /// people.
    pub fn parse(input: &str) -> Result<ServiceName, &'static str> {
        if !input.contains('/') {
            Self::parse_or_first(input)?;
            return Err("it has no version (write it as name/version)");
        }
        Self::parse_or_first(input)
    }

    /// [`ServiceName::parse`], its error a sentence for people.
    pub fn parse_explained(input: &str) -> Result<ServiceName, String> {
        Self::parse(input).map_err(|reason| invalid_service_name(input, reason))
    }

    /// A service name as port forwarding takes it: a bare name means version `1`.
    pub fn parse_or_first(input: &str) -> Result<ServiceName, &'static str> {
        let (name, version) = input.split_once('/').unwrap_or((input, "1"));
        if name.is_empty() {
            return Err("the name is empty");
        }
        if name.len() > MAX_SERVICE_NAME {
            return Err("the name is longer than 48 characters");
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err("the name has a character other than [A-Za-z0-9._-]");
        }
        if version.is_empty()
            || version.len() > MAX_VERSION_DIGITS
            || !version.chars().all(|c| c.is_ascii_digit())
        {
            return Err("the version is not 1 to 9 digits");
        }
        if version.len() > 1 && version.starts_with('0') {
            return Err("the version has a leading zero");
        }
        Ok(ServiceName(format!("{name}/{version}")))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl Deref for ServiceName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why `input` is not a service name, in a sentence for people.
pub fn invalid_service_name(input: &str, reason: &str) -> String {
    format!(
        "invalid service name {:?}: {reason}; a service name is 1 to 48 letters, digits, '.', '_' \
         or '-', a '/', and a version of 1 to 9 digits without leading zeros (e.g. translate/1)",
        input.chars().take(80).collect::<String>()
    )
}

/// A peer as a user names it — a ticket, a multiaddr ending in `/p2p/<peer id>`, or a bare peer
/// id — parsed: the peer and the addresses the input carried (none for a bare peer id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRef {
    /// The peer.
    pub peer: PeerId,
    /// Addresses the input carried.
    pub addrs: Vec<Multiaddr>,
}

impl PeerRef {
    /// Parses any of the three forms.
    pub fn parse(input: &str) -> Result<PeerRef, network::Error> {
        let (peer, addrs) = network::ticket::parse_target(input)?;
        Ok(PeerRef { peer, addrs })
    }
}

/// A peer argument where a group member may be named too (app channels and messages): a peer
/// in one of [`PeerRef`]'s forms, or `NAME@GROUP`, which the groups service resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerArg {
    /// A ticket, multiaddr or peer id.
    Peer(PeerRef),
    /// A member's short name (checked) within a group (its id or name, not checked here).
    Member {
        /// The member's short name.
        name: String,
        /// The group.
        group: String,
    },
}

impl PeerArg {
    /// Parses any of the four forms; a member's name is checked against its grammar.
    pub fn parse(input: &str) -> Result<PeerArg, network::Error> {
        let Some((name, group)) = network::ticket::split_member(input) else {
            return PeerRef::parse(input).map(PeerArg::Peer);
        };
        let invalid = |reason: String| network::Error::InvalidTarget {
            input: input.trim().chars().take(64).collect(),
            reason,
        };
        let name = names::check_member_name(name).map_err(invalid)?;
        if group.is_empty() {
            return Err(invalid("the group after '@' is empty".into()));
        }
        Ok(PeerArg::Member {
            name,
            group: group.to_owned(),
        })
    }
}

impl From<PeerId> for PeerRef {
    fn from(peer: PeerId) -> Self {
        PeerRef {
            peer,
            addrs: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_the_spec() {
        let ok = |s: &str| ServiceName::parse_or_first(s).expect(s).into_string();
        assert_eq!(ok("web"), "web/1");
        assert_eq!(ok("web/2"), "web/2");
        assert_eq!(ok("web/0"), "web/0");
        assert_eq!(ok("web/10"), "web/10");
        assert_eq!(
            ok("org.example_web-x/123456789"),
            "org.example_web-x/123456789"
        );
        for bad in [
            "",
            "/1",
            "web/",
            "web/x",
            "web/1/2",
            "web/1234567890",
            "web/01",
            "web/00",
            "we b",
            "wéb",
            "web/-1",
            &"x".repeat(49),
        ] {
            assert!(ServiceName::parse_or_first(bad).is_err(), "{bad}");
        }
        let max = "x".repeat(48);
        assert_eq!(ok(&max), format!("{max}/1"));
        assert_eq!(
            ServiceName::parse("translate"),
            Err("it has no version (write it as name/version)")
        );
        assert_eq!(
            ServiceName::parse("a b"),
            Err("the name has a character other than [A-Za-z0-9._-]")
        );
        assert_eq!(
            ServiceName::parse("translate/1").map(|s| s.into_string()),
            Ok("translate/1".to_owned())
        );
    }

    #[test]
    fn app_ids_and_peers_are_checked_once() {
        assert_eq!(
            AppId::parse("chat:voice").expect("valid").as_str(),
            "chat:voice"
        );
        assert!(AppId::parse("a/b").is_err());
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let parsed = PeerRef::parse(&peer.to_string()).expect("a peer id");
        assert_eq!(parsed, PeerRef::from(peer));
        assert!(PeerRef::parse("nonsense").is_err());
        assert_eq!(
            PeerArg::parse(&peer.to_string()).expect("a peer id"),
            PeerArg::Peer(PeerRef::from(peer))
        );
        assert_eq!(
            PeerArg::parse(" alice@my friends ").expect("a member"),
            PeerArg::Member {
                name: "alice".into(),
                group: "my friends".into()
            }
        );
        for bad in ["Alice@friends", "@friends", "alice@", "al ice@g"] {
            let err = PeerArg::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("NAME@GROUP"), "{err}");
        }
    }
}
