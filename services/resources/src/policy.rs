//! The owner's sharing policy: checked, kept in the store (tree `resources`), and read back at
//! start (the `[resources.share]` table gives the first one).

use std::{str::FromStr, sync::Arc};

use libp2p::PeerId;
use p2pos_kernel::{ServiceError, Store};
use p2pos_proto::resources::v1::{Amounts, Sharing, When};
use prost::Message;

/// The service's store tree.
pub const TREE: &str = "resources";
/// Where the policy is kept.
const KEY: &[u8] = b"sharing";
/// Most peers a policy names.
pub const MAX_PEERS: usize = 256;
/// The idle threshold when the policy gives none.
pub const DEFAULT_IDLE_BELOW: f64 = 25.0;

/// Most groups a policy names.
pub const MAX_GROUPS: usize = 16;

/// Whether `sharing` lends anything to anyone.
pub fn lends(sharing: &Sharing) -> bool {
    let amounts = sharing.amounts.unwrap_or_default();
    (!sharing.peers.is_empty() || !sharing.groups.is_empty())
        && (amounts.cpu > 0.0 || amounts.memory_bytes > 0 || amounts.disk_bytes > 0)
}

/// The idle threshold of `sharing`, in percent.
pub fn idle_below(sharing: &Sharing) -> f64 {
    if sharing.idle_below_percent > 0.0 {
        sharing.idle_below_percent
    } else {
        DEFAULT_IDLE_BELOW
    }
}

/// `amounts` checked: finite, not negative, CPU at most `cores`.
pub fn check_amounts(amounts: &Amounts, cores: f64) -> Result<(), String> {
    if !amounts.cpu.is_finite() || amounts.cpu < 0.0 {
        return Err(format!(
            "cpu must be a number of cores >= 0, not {}",
            amounts.cpu
        ));
    }
    if cores > 0.0 && amounts.cpu > cores {
        return Err(format!(
            "cpu {} is more than the machine's {cores} cores",
            amounts.cpu
        ));
    }
    Ok(())
}

/// `sharing` checked and put in its canonical form (peer ids as the node prints them, sorted,
/// once each), against a machine of `cores` cores and `memory` bytes.
pub fn check(mut sharing: Sharing, cores: f64, memory: u64) -> Result<Sharing, ServiceError> {
    let amounts = sharing.amounts.unwrap_or_default();
    check_amounts(&amounts, cores).map_err(ServiceError::invalid)?;
    if memory > 0 && amounts.memory_bytes > memory {
        return Err(ServiceError::invalid(format!(
            "memory {} bytes is more than the machine's {memory}",
            amounts.memory_bytes
        )));
    }
    if sharing.peers.len() > MAX_PEERS {
        return Err(ServiceError::invalid(format!(
            "a policy names at most {MAX_PEERS} peers, not {}",
            sharing.peers.len()
        )));
    }
    let mut peers = Vec::with_capacity(sharing.peers.len());
    for peer in &sharing.peers {
        let parsed = PeerId::from_str(peer.trim()).map_err(|_| {
            ServiceError::invalid(format!(
                "{:?} is not a peer id",
                peer.chars().take(80).collect::<String>()
            ))
        })?;
        peers.push(parsed.to_string());
    }
    peers.sort();
    peers.dedup();
    sharing.peers = peers;
    if sharing.groups.len() > MAX_GROUPS {
        return Err(ServiceError::invalid(format!(
            "a policy names at most {MAX_GROUPS} groups, not {}",
            sharing.groups.len()
        )));
    }
    sharing.groups.sort();
    sharing.groups.dedup();
    let idle = sharing.idle_below_percent;
    if !idle.is_finite() || !(0.0..=100.0).contains(&idle) {
        return Err(ServiceError::invalid(format!(
            "idle_below_percent must be 1 to 100 (0: the default), not {idle}"
        )));
    }
    if When::try_from(sharing.when).is_err() {
        return Err(ServiceError::invalid(format!(
            "unknown `when` {}",
            sharing.when
        )));
    }
    Ok(sharing)
}

/// The policy kept in `store`, if any. Blocks.
pub fn load(store: &Arc<dyn Store>) -> Result<Option<Sharing>, ServiceError> {
    let Some(bytes) = store.get(TREE, KEY)? else {
        return Ok(None);
    };
    Sharing::decode(bytes.as_slice()).map(Some).map_err(|e| {
        ServiceError::internal(format!("the stored sharing policy is unreadable: {e}"))
    })
}

/// Keeps `sharing` in `store`, durably. Blocks.
pub fn save(store: &Arc<dyn Store>, sharing: &Sharing) -> Result<(), ServiceError> {
    store.insert(TREE, KEY, &sharing.encode_to_vec())?;
    store.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_checked_and_made_canonical() {
        let peer = PeerId::random().to_string();
        let sharing = Sharing {
            amounts: Some(Amounts {
                cpu: 1.5,
                memory_bytes: 1 << 30,
                disk_bytes: 0,
            }),
            peers: vec![format!(" {peer}"), peer.clone()],
            groups: Vec::new(),
            when: When::Idle as i32,
            idle_below_percent: 0.0,
        };
        let checked = check(sharing.clone(), 2.0, 8 << 30).expect("valid");
        assert_eq!(checked.peers, vec![peer.clone()]);
        assert!(lends(&checked));
        assert_eq!(idle_below(&checked), DEFAULT_IDLE_BELOW);

        let too_much_cpu = Sharing {
            amounts: Some(Amounts {
                cpu: 3.0,
                ..Amounts::default()
            }),
            ..sharing.clone()
        };
        let err = check(too_much_cpu, 2.0, 8 << 30).expect_err("3 of 2 cores");
        assert!(err.message.contains("2 cores"), "{err:?}");
        let nan = Sharing {
            amounts: Some(Amounts {
                cpu: f64::NAN,
                ..Amounts::default()
            }),
            ..sharing.clone()
        };
        assert!(check(nan, 2.0, 8 << 30).is_err());
        let bad_peer = Sharing {
            peers: vec!["nobody".into()],
            ..sharing.clone()
        };
        let err = check(bad_peer, 2.0, 8 << 30).expect_err("not a peer id");
        assert!(err.message.contains("not a peer id"), "{err:?}");
        let too_much_memory = Sharing {
            amounts: Some(Amounts {
                memory_bytes: 16 << 30,
                ..Amounts::default()
            }),
            ..sharing
        };
        assert!(check(too_much_memory, 2.0, 8 << 30).is_err());
        assert!(!lends(&Sharing::default()));
    }
}
