//! Why two peers are connected only through a relay, and what would let them connect directly:
//! the reasoning of `doctor PEER`, from both sides' views (this node's, and the peer's when it
//! allows this node to see it).

use p2pos_protocols::network::HolePunch;

/// One side of the pair, as it sees itself.
#[derive(Debug, Clone)]
pub(crate) struct Side {
    /// How the verdict names it: "this node", "the peer 12D3…".
    pub(crate) name: String,
    /// AutoNAT's verdict.
    pub(crate) reachability: String,
    /// How its NAT maps ports (`OverlayStatus.nat_mapping`).
    pub(crate) nat_mapping: String,
    /// The port to forward on its router, as people write it and as `--external-address`
    /// takes it.
    pub(crate) port: Option<(String, String)>,
}

impl Side {
    fn randomizes(&self) -> bool {
        self.nat_mapping == "port-randomizing"
    }

    /// "forwarding UDP/4001 on the peer's router (then --external-address …)".
    fn forwarding(&self) -> String {
        let (port, tail) = self
            .port
            .clone()
            .unwrap_or_else(|| ("its port".into(), "<proto>/<port>".into()));
        format!(
            "forwarding {port} on {}'s router (and declaring it with --external-address \
             /ip4/<public ip>/{tail})",
            self.name
        )
    }
}

/// Why the pair is relayed (a sentence that starts "relayed, because") and what would let it
/// connect directly.
pub(crate) fn why_relayed(us: &Side, them: Option<&Side>, punch: &HolePunch) -> (String, String) {
    // A public side should have been dialled directly: something between drops it.
    if let Some(public) = std::iter::once(us)
        .chain(them)
        .find(|s| s.reachability == "public")
    {
        return (
            format!(
                "relayed, because {}'s public addresses did not answer from the other side, \
                 though peers elsewhere reach them: a firewall between the two drops the \
                 traffic",
                public.name
            ),
            "check the firewalls on both sides for the node's ports (`p2pctl status` lists \
             them)"
                .to_owned(),
        );
    }
    let randomizing: Vec<&Side> = std::iter::once(us)
        .chain(them)
        .filter(|s| s.randomizes())
        .collect();
    if !randomizing.is_empty() {
        let who: Vec<&str> = randomizing.iter().map(|s| s.name.as_str()).collect();
        let verb = if who.len() == 1 { "is" } else { "are" };
        let summary = format!(
            "relayed, because {} {verb} behind a NAT that maps ports per destination and has no \
             port mapping: you will stay relayed",
            who.join(" and ")
        );
        let fixes: Vec<String> = randomizing.iter().map(|s| s.forwarding()).collect();
        return (
            summary,
            format!("{} would allow direct connections", fixes.join(", and ")),
        );
    }
    let both_ways = match them {
        Some(them) => format!("{}, or {}", them.forwarding(), us.forwarding()),
        None => format!("{}, or on the peer's router", us.forwarding()),
    };
    let unseen = match them {
        Some(_) => String::new(),
        None => " (the peer's own view, which it does not share with this node, would tell \
                  which side's NAT is in the way)"
            .to_owned(),
    };
    match punch {
        HolePunch::Failed(e) => (
            format!(
                "relayed, because hole punching failed: {e}. Neither NAT is known to give each \
                 destination a new port, so a router likely drops or answers the attempts{unseen}"
            ),
            format!("{both_ways} would allow direct connections"),
        ),
        HolePunch::NotTried => (
            "relayed, because hole punching has not run yet (it starts when the relayed \
             connection opens)"
                .to_owned(),
            "run the doctor again in a few seconds".to_owned(),
        ),
        HolePunch::Succeeded => (
            "relayed, because the direct connection hole punching made has closed since".to_owned(),
            format!(
                "a new relayed connection punches again; if this repeats, {both_ways} would keep \
                 a direct connection"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(name: &str, mapping: &str) -> Side {
        Side {
            name: name.to_owned(),
            reachability: "private".to_owned(),
            nat_mapping: mapping.to_owned(),
            port: Some(("UDP/4001".to_owned(), "udp/4001/quic-v1".to_owned())),
        }
    }

    #[test]
    fn a_port_randomizing_nat_on_either_side_is_named_with_its_fix() {
        let us = side("this node", "endpoint-independent");
        let them = side("B", "port-randomizing");
        let (summary, remedy) = why_relayed(&us, Some(&them), &HolePunch::NotTried);
        assert_eq!(
            summary,
            "relayed, because B is behind a NAT that maps ports per destination and has no port \
             mapping: you will stay relayed"
        );
        assert!(
            remedy.starts_with("forwarding UDP/4001 on B's router"),
            "{remedy}"
        );
        assert!(
            remedy.ends_with("would allow direct connections"),
            "{remedy}"
        );
        let both = why_relayed(
            &side("this node", "port-randomizing"),
            Some(&them),
            &HolePunch::NotTried,
        );
        assert!(both.0.contains("this node and B are behind"), "{}", both.0);
    }

    #[test]
    fn a_failed_hole_punch_says_its_error_and_what_is_not_known() {
        let us = side("this node", "unknown");
        let failed = HolePunch::Failed("Giving up after 3 attempts".into());
        let (summary, remedy) = why_relayed(&us, None, &failed);
        assert!(summary.starts_with("relayed, because hole punching failed: Giving up"));
        assert!(
            summary.contains("does not share with this node"),
            "{summary}"
        );
        assert!(remedy.contains("on the peer's router"), "{remedy}");
        let (summary, _) = why_relayed(&us, Some(&side("B", "unknown")), &failed);
        assert!(!summary.contains("does not share"), "{summary}");
        let (summary, _) = why_relayed(&us, None, &HolePunch::NotTried);
        assert!(summary.contains("has not run yet"), "{summary}");
        let public = Side {
            reachability: "public".to_owned(),
            ..side("B", "none")
        };
        let (summary, _) = why_relayed(&us, Some(&public), &failed);
        assert!(
            summary.contains("B's public addresses did not answer"),
            "{summary}"
        );
    }
}
