//! The membership rule: authorization, concurrent removals and adds, forged signatures, and
//! convergence whatever order operations arrive in.

use libp2p::identity::Keypair;
use p2pos_protocols::network::sign_with;

use super::*;
use crate::op::{self, OP_TYPE};

struct Peer(Keypair);

impl Peer {
    fn new() -> Self {
        Self(Keypair::generate_ed25519())
    }

    fn id(&self) -> PeerId {
        self.0.public().to_peer_id()
    }

    fn sign(&self, group: Option<GroupId>, parents: &[Hash], kind: Kind) -> Op {
        let body = op::body(group, parents, 0, &kind);
        let bytes = sign_with(&self.0, OP_TYPE, body).expect("signed");
        Op::open(&bytes).expect("opens")
    }

    fn create(&self) -> Log {
        Log::new(self.sign(
            None,
            &[],
            Kind::Create {
                name: "friends".into(),
                nonce: rand::random::<[u8; 16]>().to_vec(),
            },
        ))
        .expect("created")
    }

    /// Signs `kind` on top of `log`'s heads and adds it there.
    fn act(&self, log: &mut Log, kind: Kind) -> Op {
        let op = self.sign(Some(log.id()), &log.heads(), kind);
        log.insert(op.clone()).expect("accepted");
        op
    }
}

fn copy(log: &Log) -> Log {
    let ops: Vec<Op> = log.ops().into_iter().cloned().collect();
    let mut copy = Log::new(ops[0].clone()).expect("genesis");
    let (_, rejected) = copy.insert_all(ops[1..].to_vec());
    assert!(rejected.is_empty(), "{rejected:?}");
    copy
}

#[test]
fn the_founder_adds_members_and_renames() {
    let (a, b) = (Peer::new(), Peer::new());
    let mut log = a.create();
    a.act(&mut log, Kind::AddMember(b.id()));
    a.act(&mut log, Kind::Rename("family".into()));
    let state = log.state();
    assert_eq!(state.name, "family");
    assert_eq!(state.members, [a.id(), b.id()].into());
    assert_eq!(state.admins, [a.id()].into());
    assert_eq!(log.founder(), a.id());
}

#[test]
fn a_non_admin_signer_is_rejected_but_may_leave() {
    let (a, b, c) = (Peer::new(), Peer::new(), Peer::new());
    let mut log = a.create();
    a.act(&mut log, Kind::AddMember(b.id()));
    let by_member = b.sign(Some(log.id()), &log.heads(), Kind::AddMember(c.id()));
    assert!(matches!(
        log.insert(by_member),
        Err(Rejected::NotAuthorized(_))
    ));
    let by_stranger = c.sign(Some(log.id()), &log.heads(), Kind::AddMember(c.id()));
    assert!(matches!(
        log.insert(by_stranger),
        Err(Rejected::NotAuthorized(_))
    ));
    b.act(&mut log, Kind::RemoveMember(b.id()));
    assert_eq!(log.state().members, [a.id()].into());
}

#[test]
fn a_forged_signature_does_not_open() {
    let a = Peer::new();
    let log = a.create();
    let op = a.sign(Some(log.id()), &log.heads(), Kind::Rename("x".into()));
    let mut forged = op.bytes.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x55;
    assert!(Op::open(&forged).is_err());
    // A body signed for another purpose does not open as an operation either.
    let other = sign_with(
        &a.0,
        "/p2pos/group/invite",
        op::body(None, &[], 0, &op.kind),
    )
    .expect("signed");
    assert!(Op::open(&other).is_err());
}

#[test]
fn operations_of_another_group_or_unknown_parents_are_not_taken() {
    let a = Peer::new();
    let mut log = a.create();
    let other = a.create();
    let op = a.sign(Some(other.id()), &other.heads(), Kind::Rename("x".into()));
    assert_eq!(log.insert(op), Err(Rejected::WrongGroup));
    let orphan = a.sign(Some(log.id()), &[[9; 32]], Kind::Rename("x".into()));
    assert_eq!(log.insert(orphan), Err(Rejected::MissingParent));
}

#[test]
fn a_removal_wins_over_a_concurrent_add_and_a_later_add_re_adds() {
    let (a, b, x) = (Peer::new(), Peer::new(), Peer::new());
    let mut log = a.create();
    a.act(&mut log, Kind::AddAdmin(b.id()));
    a.act(&mut log, Kind::AddMember(x.id()));
    let mut other = copy(&log);
    // Concurrently: b removes x, a adds x again.
    b.act(&mut log, Kind::RemoveMember(x.id()));
    let add = a.act(&mut other, Kind::AddMember(x.id()));
    log.insert(add).expect("merged");
    assert!(!log.state().members.contains(&x.id()));
    // An add that saw the removal re-adds.
    a.act(&mut log, Kind::AddMember(x.id()));
    assert!(log.state().members.contains(&x.id()));
}

#[test]
fn two_admins_removing_each_other_concurrently_both_go_the_same_everywhere() {
    let (a, b, c, d) = (Peer::new(), Peer::new(), Peer::new(), Peer::new());
    let mut log = a.create();
    a.act(&mut log, Kind::AddAdmin(b.id()));
    a.act(&mut log, Kind::AddAdmin(c.id()));
    a.act(&mut log, Kind::AddMember(d.id()));
    let mut side_b = copy(&log);
    let a_removes_b = a.act(&mut log, Kind::RemoveMember(b.id()));
    let b_removes_a = b.act(&mut side_b, Kind::RemoveMember(a.id()));
    // b, not knowing yet, adds someone on its side: valid where it signed.
    let e = Peer::new();
    let b_adds_e = b.act(&mut side_b, Kind::AddMember(e.id()));
    // Merge both ways, in different orders.
    let mut one = copy(&log);
    assert_eq!(
        one.insert_all(vec![b_adds_e.clone(), b_removes_a.clone()])
            .1,
        vec![]
    );
    let mut two = copy(&side_b);
    two.insert(a_removes_b).expect("merged");
    assert_eq!(one.state(), two.state());
    assert_eq!(one.heads(), two.heads());
    let state = one.state();
    assert_eq!(state.members, [c.id(), d.id(), e.id()].into());
    assert_eq!(state.admins, [c.id()].into());
    // Once b has seen its removal, what it signs is refused.
    let late = b.sign(
        Some(one.id()),
        &one.heads(),
        Kind::AddMember(Peer::new().id()),
    );
    assert!(matches!(one.insert(late), Err(Rejected::NotAuthorized(_))));
}

#[test]
fn the_missing_operations_are_what_a_peer_lacks_parents_first() {
    let (a, b) = (Peer::new(), Peer::new());
    let mut log = a.create();
    let early = log.heads();
    a.act(&mut log, Kind::AddMember(b.id()));
    a.act(&mut log, Kind::Rename("n".into()));
    let missing = log.missing_for(&early);
    assert_eq!(missing.len(), 2);
    assert!(matches!(missing[0].kind, Kind::AddMember(_)));
    assert!(log.missing_for(&log.heads()).is_empty());
    assert_eq!(log.missing_for(&[[1; 32]]).len(), 3);
}

#[test]
fn a_full_log_refuses_more() {
    let a = Peer::new();
    let mut log = a.create();
    for i in 1..MAX_OPS {
        a.act(&mut log, Kind::Rename(format!("n{i}")));
    }
    let one_more = a.sign(Some(log.id()), &log.heads(), Kind::Rename("x".into()));
    assert_eq!(log.insert(one_more), Err(Rejected::Full));
}

#[test]
fn members_name_themselves_and_the_last_name_wins_everywhere() {
    let (a, b, c) = (Peer::new(), Peer::new(), Peer::new());
    let mut log = a.create();
    a.act(&mut log, Kind::AddMember(b.id()));
    // A plain member names itself; a stranger may not.
    b.act(&mut log, Kind::SetName("bob".into()));
    let by_stranger = c.sign(Some(log.id()), &log.heads(), Kind::SetName("eve".into()));
    assert!(matches!(
        log.insert(by_stranger),
        Err(Rejected::NotAuthorized(_))
    ));
    a.act(&mut log, Kind::SetName("alice".into()));
    b.act(&mut log, Kind::SetName("bobby".into()));
    let state = log.state();
    assert_eq!(state.names.get(&a.id()).map(String::as_str), Some("alice"));
    assert_eq!(state.names.get(&b.id()).map(String::as_str), Some("bobby"));
    assert_eq!(state.named("bobby"), vec![b.id()]);
    assert!(state.named("bob").is_empty());
    // Concurrent names of one member: the same winner on every copy, whatever the order.
    let mut side = copy(&log);
    let one = b.act(&mut log, Kind::SetName("b1".into()));
    let two = b.act(&mut side, Kind::SetName("b2".into()));
    side.insert(one).expect("merged");
    log.insert(two).expect("merged");
    assert_eq!(log.state(), side.state());
    // Two members with one name: both are named so.
    let b_name = log.state().names[&b.id()].clone();
    a.act(&mut log, Kind::SetName(b_name.clone()));
    assert_eq!(log.state().named(&b_name), {
        let mut both = vec![a.id(), b.id()];
        both.sort();
        both
    });
    // A removed member has no name.
    a.act(&mut log, Kind::RemoveMember(b.id()));
    assert!(!log.state().names.contains_key(&b.id()));
}

#[test]
fn member_names_follow_their_grammar() {
    for good in ["alice", "a", "bob-laptop", "x.y_z-0", &"n".repeat(32)] {
        assert_eq!(op::check_member_name(good).as_deref(), Ok(good));
    }
    for bad in ["", "Alice", "al ice", "ali@ce", "é", &"n".repeat(33)] {
        let err = op::check_member_name(bad).expect_err(bad);
        assert!(err.contains("member name"), "{err}");
    }
}
