//! The membership log of one group: a DAG of signed operations and the pure rule that turns it
//! into a member list, the same on every node that holds the same operations.
//!
//! # The rule
//! - Operations are ordered by (depth, hash), depth being 0 for create and one more than the
//!   deepest parent otherwise: a topological order every node computes alike.
//! - An operation is accepted only if its parents are all known and its signer is an admin in
//!   the state computed from its parents' history (its ancestors), or it removes its own signer
//!   who is a member there (leaving). That depends on its ancestors only, so every node gives
//!   the same verdict, whatever order operations arrive in. A name operation is accepted
//!   when its signer is a member there.
//! - A peer is a member when some accepted add of it (create for the founder, add member, add
//!   admin) has every accepted removal of it (remove member) among its ancestors: a removal
//!   wins over a concurrent add; an add made after seeing the removal re-adds. Admins likewise,
//!   with adds = create, add admin and removals = remove admin, remove member.
//! - The name is that of the last rename in the order, else the create's.
//! - A member's short name is that of its last name operation (which any member signs for
//!   itself) in the order; a peer that is not a member has none. Two members may hold the
//!   same name (named concurrently, or on purpose): the name is then ambiguous.
//!
//! Two admins removing each other concurrently: both removals were made by an admin of their
//! moment, so both apply and neither stays a member; the other members and admins remain. A
//! group left with no admin keeps its members but can no longer change.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use libp2p::PeerId;

use crate::op::{GroupId, Hash, Kind, Op};

/// Most operations one group's log holds.
pub const MAX_OPS: usize = 1024;

/// Why an operation is not in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// It is for another group, or another group's create.
    WrongGroup,
    /// A parent is not known (yet).
    MissingParent,
    /// Its signer may not do it.
    NotAuthorized(String),
    /// The log is full.
    Full,
}

/// A set of operations, by their index in this log.
#[derive(Debug, Clone, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn set(&mut self, i: usize) {
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, 0);
        }
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn has(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn union(&mut self, other: &Bits) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
}

#[derive(Debug)]
struct Entry {
    op: Op,
    depth: u32,
    /// Strict ancestors.
    ancestors: Bits,
}

/// Who is in a group, and its name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    /// The name.
    pub name: String,
    /// The members (admins included).
    pub members: BTreeSet<PeerId>,
    /// The admins.
    pub admins: BTreeSet<PeerId>,
    /// The members' short names (members that named themselves only).
    pub names: BTreeMap<PeerId, String>,
}

impl State {
    /// The members named `name`.
    pub fn named(&self, name: &str) -> Vec<PeerId> {
        self.names
            .iter()
            .filter(|(_, n)| n.as_str() == name)
            .map(|(p, _)| *p)
            .collect()
    }
}

/// One group's log.
#[derive(Debug)]
pub struct Log {
    id: GroupId,
    founder: PeerId,
    entries: Vec<Entry>,
    index: HashMap<Hash, usize>,
    heads: BTreeSet<Hash>,
}

impl Log {
    /// A log founded by `genesis`, a create operation.
    pub fn new(genesis: Op) -> Result<Log, Rejected> {
        if !matches!(genesis.kind, Kind::Create { .. }) || genesis.group.is_some() {
            return Err(Rejected::WrongGroup);
        }
        let hash = genesis.hash;
        Ok(Log {
            id: GroupId::of(&hash),
            founder: genesis.signer,
            entries: vec![Entry {
                op: genesis,
                depth: 0,
                ancestors: Bits::default(),
            }],
            index: [(hash, 0)].into(),
            heads: [hash].into(),
        })
    }

    /// The group's id.
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// Who founded it.
    pub fn founder(&self) -> PeerId {
        self.founder
    }

    /// Operations held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never: a log holds its create operation.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The operations no other operation names as a parent.
    pub fn heads(&self) -> Vec<Hash> {
        self.heads.iter().copied().collect()
    }

    /// Whether `peer` was ever added (a former member may hold valid operations made
    /// concurrently with its removal).
    pub fn ever_added(&self, peer: &PeerId) -> bool {
        self.entries.iter().any(|e| match &e.op.kind {
            Kind::Create { .. } => e.op.signer == *peer,
            Kind::AddMember(p) | Kind::AddAdmin(p) => p == peer,
            _ => false,
        })
    }

    /// Whether `hash` is in the log.
    pub fn contains(&self, hash: &Hash) -> bool {
        self.index.contains_key(hash)
    }

    /// Adds `op` after checking it; `Ok(false)` if it was there already.
    pub fn insert(&mut self, op: Op) -> Result<bool, Rejected> {
        if self.index.contains_key(&op.hash) {
            return Ok(false);
        }
        if op.group != Some(self.id) {
            return Err(Rejected::WrongGroup);
        }
        if self.entries.len() >= MAX_OPS {
            return Err(Rejected::Full);
        }
        let mut ancestors = Bits::default();
        let mut depth = 0;
        for parent in &op.parents {
            let &i = self.index.get(parent).ok_or(Rejected::MissingParent)?;
            ancestors.union(&self.entries[i].ancestors);
            ancestors.set(i);
            depth = depth.max(self.entries[i].depth + 1);
        }
        let before = self.state_of(&ancestors);
        let is_member = before.members.contains(&op.signer);
        let leaving = op.kind == Kind::RemoveMember(op.signer) && is_member;
        if let Kind::SetName(_) = op.kind {
            if !is_member {
                return Err(Rejected::NotAuthorized(format!(
                    "{} is not a member of the group where it named itself",
                    op.signer
                )));
            }
        } else if !before.admins.contains(&op.signer) && !leaving {
            return Err(Rejected::NotAuthorized(format!(
                "{} is not an admin of the group where it signed",
                op.signer
            )));
        }
        for parent in &op.parents {
            self.heads.remove(parent);
        }
        self.heads.insert(op.hash);
        self.index.insert(op.hash, self.entries.len());
        self.entries.push(Entry {
            op,
            depth,
            ancestors,
        });
        Ok(true)
    }

    /// Adds every operation of `ops` that can be, in any order they come; answers those added
    /// and why each other one was not.
    pub fn insert_all(&mut self, ops: Vec<Op>) -> (Vec<Hash>, Vec<Rejected>) {
        let mut added = Vec::new();
        let mut waiting = ops;
        loop {
            let mut rejected = Vec::new();
            let mut later = Vec::new();
            let before = added.len();
            for op in waiting {
                let hash = op.hash;
                match self.insert(op.clone()) {
                    Ok(true) => added.push(hash),
                    Ok(false) => {}
                    Err(Rejected::MissingParent) => later.push(op),
                    Err(why) => rejected.push(why),
                }
            }
            if later.is_empty() || added.len() == before {
                rejected.extend(later.iter().map(|_| Rejected::MissingParent));
                return (added, rejected);
            }
            waiting = later;
        }
    }

    /// Indices in (depth, hash) order.
    fn order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.entries.len()).collect();
        order.sort_by_key(|&i| (self.entries[i].depth, self.entries[i].op.hash));
        order
    }

    /// The operations, parents before children, in (depth, hash) order.
    pub fn ops(&self) -> Vec<&Op> {
        self.order()
            .into_iter()
            .map(|i| &self.entries[i].op)
            .collect()
    }

    /// The operations someone whose heads are `heads` lacks (heads unknown here are ignored),
    /// parents first.
    pub fn missing_for(&self, heads: &[Hash]) -> Vec<&Op> {
        let mut known = Bits::default();
        for head in heads {
            if let Some(&i) = self.index.get(head) {
                known.union(&self.entries[i].ancestors);
                known.set(i);
            }
        }
        self.order()
            .into_iter()
            .filter(|&i| !known.has(i))
            .map(|i| &self.entries[i].op)
            .collect()
    }

    /// The state from every operation held.
    pub fn state(&self) -> State {
        let mut all = Bits::default();
        for i in 0..self.entries.len() {
            all.set(i);
        }
        self.state_of(&all)
    }

    /// The state from the operations in `set` (a set closed under ancestry).
    fn state_of(&self, set: &Bits) -> State {
        // The last naming operation in (depth, hash) order.
        let mut named: Option<(u32, Hash, &str)> = None;
        // Per signer, its last name operation in (depth, hash) order.
        let mut member_names: HashMap<PeerId, (u32, Hash, &str)> = HashMap::new();
        // Per peer: the indices of its member adds, member removals, admin adds, admin removals.
        let mut by_peer: HashMap<PeerId, [Vec<usize>; 4]> = HashMap::new();
        for (i, entry) in self.entries.iter().enumerate().filter(|(i, _)| set.has(*i)) {
            let op = &entry.op;
            let key = (entry.depth, op.hash);
            let (peer, slots): (PeerId, &[usize]) = match &op.kind {
                Kind::Create { name, .. } | Kind::Rename(name) => {
                    if named.is_none_or(|(d, h, _)| (d, h) < key) {
                        named = Some((key.0, key.1, name));
                    }
                    match op.kind {
                        Kind::Create { .. } => (op.signer, &[0, 2]),
                        _ => continue,
                    }
                }
                Kind::SetName(name) => {
                    let last = member_names
                        .entry(op.signer)
                        .or_insert((key.0, key.1, name));
                    if (last.0, last.1) < key {
                        *last = (key.0, key.1, name);
                    }
                    continue;
                }
                Kind::AddMember(p) => (*p, &[0]),
                Kind::RemoveMember(p) => (*p, &[1, 3]),
                Kind::AddAdmin(p) => (*p, &[0, 2]),
                Kind::RemoveAdmin(p) => (*p, &[3]),
            };
            let lists = by_peer.entry(peer).or_default();
            for &slot in slots {
                lists[slot].push(i);
            }
        }
        // Some add that has seen every removal.
        let survives = |adds: &[usize], removes: &[usize]| {
            adds.iter()
                .any(|&a| removes.iter().all(|&r| self.entries[a].ancestors.has(r)))
        };
        let mut state = State {
            name: named
                .map(|(_, _, name)| name.to_owned())
                .unwrap_or_default(),
            ..State::default()
        };
        for (peer, [adds, removes, admin_adds, admin_removes]) in by_peer {
            if survives(&adds, &removes) {
                state.members.insert(peer);
            }
            if survives(&admin_adds, &admin_removes) {
                state.admins.insert(peer);
            }
        }
        state.names = member_names
            .into_iter()
            .filter(|(peer, _)| state.members.contains(peer))
            .map(|(peer, (_, _, name))| (peer, name.to_owned()))
            .collect();
        state
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
