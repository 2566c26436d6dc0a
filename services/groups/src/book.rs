//! The groups this node holds, their logs kept in the store tree [`TREE`] (key `o` + group id +
//! operation hash → the signed operation; read back and re-checked at start), and the uses of
//! the invites this node signed (key `u` + invite id → uses, expiry).

use std::{
    collections::{BTreeMap, HashMap},
    str::FromStr,
    sync::{Arc, Mutex, MutexGuard},
};

use libp2p::PeerId;
use p2pos_kernel::{ServiceError, Store, events::now_ms, store::BatchOp};
use tracing::warn;

use crate::{
    log::{Log, MAX_OPS, Rejected},
    op::{GroupId, Hash, Op},
};

/// The service's store tree.
pub const TREE: &str = "groups";
/// Most groups one node holds.
pub const MAX_GROUPS: usize = 64;
/// Most invites whose uses are counted at once (expired ones are forgotten).
pub const MAX_INVITES: usize = 1024;

#[derive(Default)]
struct Inner {
    groups: BTreeMap<GroupId, Log>,
    /// Invite id → (uses, expiry in ms).
    uses: HashMap<[u8; 16], (u32, u64)>,
}

/// The groups held: cheap to clone.
#[derive(Clone)]
pub struct Book {
    inner: Arc<Mutex<Inner>>,
    store: Arc<dyn Store>,
    /// Counts changes to the groups held (member lists included).
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

fn op_key(group: GroupId, hash: &Hash) -> Vec<u8> {
    [&b"o"[..], &group.0, hash].concat()
}

fn use_key(id: &[u8; 16]) -> Vec<u8> {
    [&b"u"[..], id].concat()
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::internal(e.to_string())
}

impl Book {
    /// What the store holds (operations that no longer check are dropped, with a warning).
    pub fn load(store: Arc<dyn Store>) -> Result<Book, ServiceError> {
        let mut inner = Inner::default();
        let mut by_group: BTreeMap<GroupId, Vec<Op>> = BTreeMap::new();
        for (key, value) in store.scan_prefix(TREE, b"o", MAX_GROUPS * MAX_OPS)? {
            let Some(group) = key.get(1..17).and_then(GroupId::from_bytes) else {
                continue;
            };
            match Op::open(&value) {
                Ok(op) => by_group.entry(group).or_default().push(op),
                Err(e) => warn!(%group, "a stored group operation is unreadable: {e}"),
            }
        }
        for (group, ops) in by_group {
            let (genesis, rest): (Vec<Op>, Vec<Op>) = ops
                .into_iter()
                .partition(|op| op.group.is_none() && GroupId::of(&op.hash) == group);
            let Some(Ok(mut log)) = genesis.into_iter().next().map(Log::new) else {
                warn!(%group, "a stored group has no create operation; dropped");
                continue;
            };
            let (_, rejected) = log.insert_all(rest);
            if !rejected.is_empty() {
                warn!(%group, "{} stored operations no longer check", rejected.len());
            }
            inner.groups.insert(group, log);
        }
        let now = now_ms();
        for (key, value) in store.scan_prefix(TREE, b"u", MAX_INVITES * 2)? {
            let (Ok(id), Ok(v)) = (
                <[u8; 16]>::try_from(&key[1..]),
                <[u8; 12]>::try_from(&value[..]),
            ) else {
                continue;
            };
            let uses = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
            let expires = u64::from_le_bytes([v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]]);
            if expires > now {
                inner.uses.insert(id, (uses, expires));
            }
        }
        Ok(Book {
            inner: Arc::new(Mutex::new(inner)),
            store,
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `ops` of `group`, flushed.
    fn save(&self, group: GroupId, ops: &[&Op]) -> Result<(), ServiceError> {
        let batch = ops
            .iter()
            .map(|op| BatchOp::Insert(op_key(group, &op.hash), op.bytes.clone()))
            .collect();
        self.store.batch(TREE, batch)?;
        self.store.flush()?;
        Ok(())
    }

    /// Holds a new group (its whole log), kept in the store.
    pub fn add(&self, log: Log) -> Result<(), ServiceError> {
        let id = log.id();
        {
            let inner = self.lock();
            if !inner.groups.contains_key(&id) && inner.groups.len() >= MAX_GROUPS {
                return Err(ServiceError::new(
                    p2pos_kernel::ErrorCode::ResourceExhausted,
                    format!("this node holds {MAX_GROUPS} groups, the most it may"),
                ));
            }
        }
        self.save(id, &log.ops())?;
        let mut inner = self.lock();
        match inner.groups.get_mut(&id) {
            // Joined again: merge.
            Some(held) => {
                held.insert_all(log.ops().into_iter().cloned().collect());
            }
            None => {
                inner.groups.insert(id, log);
            }
        }
        drop(inner);
        self.changed();
        Ok(())
    }

    /// Adds `ops` to `group`'s log and keeps those new; answers how many were new and the
    /// reasons others were refused.
    pub fn insert(
        &self,
        group: GroupId,
        ops: Vec<Op>,
    ) -> Result<(usize, Vec<Rejected>), ServiceError> {
        let mut inner = self.lock();
        let log = inner
            .groups
            .get_mut(&group)
            .ok_or_else(|| ServiceError::not_found(format!("no group {group} here")))?;
        let (added, rejected) = log.insert_all(ops);
        let ops: Vec<&Op> = log
            .ops()
            .into_iter()
            .filter(|op| added.contains(&op.hash))
            .collect();
        if !ops.is_empty() {
            self.save(group, &ops)?;
            drop(inner);
            self.changed();
        }
        Ok((added.len(), rejected))
    }

    /// `f` of `group`'s log, if held.
    pub fn with<R>(&self, group: GroupId, f: impl FnOnce(&Log) -> R) -> Option<R> {
        self.lock().groups.get(&group).map(f)
    }

    /// The groups held.
    pub fn ids(&self) -> Vec<GroupId> {
        self.lock().groups.keys().copied().collect()
    }

    /// The group `name_or_id` names: an id, or the current name of exactly one group here.
    pub fn resolve(&self, name_or_id: &str) -> Result<GroupId, ServiceError> {
        let inner = self.lock();
        if let Ok(id) = GroupId::from_str(name_or_id)
            && inner.groups.contains_key(&id)
        {
            return Ok(id);
        }
        let named: Vec<GroupId> = inner
            .groups
            .iter()
            .filter(|(_, log)| log.state().name == name_or_id.trim())
            .map(|(id, _)| *id)
            .collect();
        match named.as_slice() {
            [one] => Ok(*one),
            [] => Err(ServiceError::not_found(format!(
                "no group {:?} here (by id or name)",
                name_or_id.chars().take(80).collect::<String>()
            ))),
            many => Err(ServiceError::invalid(format!(
                "{} groups are named {name_or_id:?}; give an id: {}",
                many.len(),
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The members of `group` but `local`, as this node knows.
    pub fn others(&self, group: GroupId, local: &PeerId) -> Vec<PeerId> {
        self.with(group, |log| log.state().members)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p != local)
            .collect()
    }

    /// Whether `peer` is a member of `group` now, as this node knows.
    pub fn is_member(&self, group: GroupId, peer: &PeerId) -> bool {
        self.with(group, |log| log.state().members.contains(peer))
            .unwrap_or(false)
    }

    /// Forgets `group` here, store included.
    pub fn forget(&self, group: GroupId) -> Result<(), ServiceError> {
        let keys = self
            .store
            .scan_prefix(TREE, &[&b"o"[..], &group.0].concat(), MAX_OPS + 1)?;
        self.store.batch(
            TREE,
            keys.into_iter().map(|(k, _)| BatchOp::Remove(k)).collect(),
        )?;
        self.store.flush()?;
        self.lock().groups.remove(&group);
        self.changed();
        Ok(())
    }

    /// Follows changes to the groups held (a counter that grows).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Counts one use of invite `id` (allowing `max_uses` until `expires_ms`), durably; `Err`
    /// with how many it allowed once used up.
    pub fn use_invite(&self, id: [u8; 16], max_uses: u32, expires_ms: u64) -> Result<(), String> {
        let now = now_ms();
        let uses = {
            let mut inner = self.lock();
            inner.uses.retain(|_, (_, e)| *e > now);
            if !inner.uses.contains_key(&id) && inner.uses.len() >= MAX_INVITES {
                return Err(format!("{MAX_INVITES} invites are in use here, the most"));
            }
            let entry = inner.uses.entry(id).or_insert((0, expires_ms));
            if entry.0 >= max_uses {
                return Err(format!(
                    "this invite allowed {max_uses} join{} and was used up",
                    if max_uses == 1 { "" } else { "s" }
                ));
            }
            entry.0 += 1;
            entry.0
        };
        let value = [&uses.to_le_bytes()[..], &expires_ms.to_le_bytes()].concat();
        self.store
            .insert(TREE, &use_key(&id), &value)
            .and_then(|()| self.store.flush())
            .map_err(internal)
            .map_err(|e| e.message)
    }
}
