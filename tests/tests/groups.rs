//! Groups on real nodes: formed through invites (a single-use invite works once, an expired one
//! not at all), every member sees the same member list, a removed member is refused by every
//! member — also by one that learned the removal from another member while the removing admin
//! was stopped — two admins removing each other while apart converge to one list, and
//! membership survives restarting every node. Driven through `p2pctl groups`.

use std::{collections::BTreeSet, time::Duration};

use p2pos_tests::{Node, full_mesh, full_mesh_with, p2pctl, wait_for};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn ctl(node: &Node, args: &[&str]) -> String {
    let (ok, out, err) = p2pctl(node, args);
    assert!(ok, "p2pctl {args:?} failed: {err}");
    out
}

fn ctl_json(node: &Node, args: &[&str]) -> Value {
    serde_json::from_str(&ctl(node, args)).expect("json")
}

/// `node`'s members of `group` and its admins, if it answers.
fn members(node: &Node, group: &str) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
    let (ok, out, _) = p2pctl(node, &["groups", "members", group, "--json"]);
    if !ok {
        return None;
    }
    let v: Value = serde_json::from_str(&out).ok()?;
    let list = v["members"].as_array()?;
    let all = list
        .iter()
        .filter_map(|m| m["peer_id"].as_str())
        .map(String::from);
    let admins = list
        .iter()
        .filter(|m| m["admin"].as_bool() == Some(true))
        .filter_map(|m| m["peer_id"].as_str())
        .map(String::from);
    Some((all.collect(), admins.collect()))
}

async fn wait_members(node: &Node, group: &str, want: &BTreeSet<String>, what: &str) {
    wait_for(what, T, || async {
        members(node, group).filter(|(m, _)| m == want).map(|_| ())
    })
    .await;
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).clone()).collect()
}

/// Restarts `node` and waits until its gateway answers.
async fn restart(node: &mut Node) {
    node.restart();
    node.client().await;
}

fn join(node: &Node, invite: &str) -> (bool, String) {
    let (ok, _, err) = p2pctl(node, &["groups", "join", invite]);
    (ok, err)
}

/// A group of `nodes`: the first founds it; the others join with invites (`admins` of them
/// with an admin invite). Answers its id.
async fn form(nodes: &[Node], ids: &[String], admins: &[usize]) -> String {
    let founder = &nodes[0];
    ctl(founder, &["groups", "create", "friends"]);
    let list = ctl_json(founder, &["groups", "list", "--json"]);
    let group = list[0]["id"].as_str().expect("id").to_owned();
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let mut args = vec!["groups", "invite", &group];
        if admins.contains(&i) {
            args.push("--admin");
        }
        let invite = ctl(founder, &args).trim().to_owned();
        let (ok, err) = join(node, &invite);
        assert!(ok, "node {i} joins: {err}");
    }
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    for (i, node) in nodes.iter().enumerate() {
        wait_members(node, &group, &all, &format!("node {i} to see every member")).await;
    }
    // `status` shows the groups a node holds.
    let status = ctl_json(&nodes[1], &["status", "--json"]);
    assert_eq!(
        status["groups"][0]["id"].as_str(),
        Some(group.as_str()),
        "{status}"
    );
    group
}

#[tokio::test(flavor = "multi_thread")]
async fn invites_member_lists_removal_and_restarts() {
    let (mut nodes, ids) = full_mesh(5).await;
    let [a, b, c, d, e] = [&ids[0], &ids[1], &ids[2], &ids[3], &ids[4]];
    ctl(&nodes[0], &["groups", "create", "friends"]);
    let group = ctl_json(&nodes[0], &["groups", "list", "--json"])[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // A single-use invite works once.
    let once = ctl(&nodes[0], &["groups", "invite", "friends", "--admin"])
        .trim()
        .to_owned();
    assert!(join(&nodes[1], &once).0);
    let (ok, err) = join(&nodes[2], &once);
    assert!(!ok && err.contains("used up"), "second use: {err}");

    // An expired invite is refused.
    let short = ctl_json(
        &nodes[0],
        &["groups", "invite", &group, "--expires", "1s", "--json"],
    );
    let expires_ms = short["expires_ms"].as_u64().expect("expiry");
    wait_for("the invite to expire", T, || async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_millis() as u64;
        (now > expires_ms + 100).then_some(())
    })
    .await;
    let (ok, err) = join(&nodes[2], short["invite"].as_str().expect("invite"));
    assert!(!ok && err.contains("expired"), "expired invite: {err}");

    // A three-use invite lets the other three in; every member sees all five.
    let three = ctl(&nodes[0], &["groups", "invite", &group, "--uses", "3"])
        .trim()
        .to_owned();
    for node in &nodes[2..] {
        let (ok, err) = join(node, &three);
        assert!(ok, "join: {err}");
    }
    let all = set(&[a, b, c, d, e]);
    for (i, node) in nodes.iter().enumerate() {
        wait_members(node, &group, &all, &format!("node {i} to see all five")).await;
    }
    let (_, admins) = members(&nodes[3], &group).expect("members");
    assert_eq!(admins, set(&[a, b]));

    // d is away while a removes e; then a goes, and d learns the removal from b or c.
    nodes[3].stop().await;
    ctl(&nodes[0], &["groups", "remove", &group, e]);
    let without_e = set(&[a, b, c, d]);
    wait_members(&nodes[1], &group, &without_e, "b to see e removed").await;
    wait_members(&nodes[2], &group, &without_e, "c to see e removed").await;
    nodes[0].stop().await;
    nodes[3].restart();
    wait_members(
        &nodes[3],
        &group,
        &without_e,
        "d to learn e's removal from b or c",
    )
    .await;
    // e is refused by every member that runs: b, c and d.
    wait_for("every running member to refuse e", T, || async {
        let v = serde_json::from_str::<Value>(
            &p2pctl(&nodes[4], &["groups", "sync", &group, "--json"]).1,
        )
        .ok()?;
        let refused: BTreeSet<String> = v["peers"]
            .as_array()?
            .iter()
            .filter(|p| p["outcome"] == "refused")
            .filter_map(|p| p["peer_id"].as_str().map(String::from))
            .collect();
        (refused == set(&[b, c, d])).then_some(())
    })
    .await;

    // Every node restarts; the member list stays.
    for node in &mut nodes[1..] {
        node.stop().await;
    }
    for node in &mut nodes[..4] {
        node.restart();
    }
    for (i, node) in nodes[..4].iter().enumerate() {
        wait_members(node, &group, &without_e, &format!("node {i} after restart")).await;
    }
    let list = ctl_json(&nodes[1], &["groups", "list", "--json"]);
    assert_eq!(list[0]["name"], "friends");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_admins_removing_each_other_apart_converge() {
    let (mut nodes, ids) = full_mesh(5).await;
    let [a, b, c, d, e] = [&ids[0], &ids[1], &ids[2], &ids[3], &ids[4]];
    // a founds; b and e are admins too; c and d members.
    let group = form(&nodes, &ids, &[1, 4]).await;
    // Apart: a alone removes b; then b alone removes a.
    for node in &mut nodes[1..] {
        node.stop().await;
    }
    ctl(&nodes[0], &["groups", "remove", &group, b]);
    nodes[0].stop().await;
    restart(&mut nodes[1]).await;
    ctl(&nodes[1], &["groups", "remove", &group, a]);
    nodes[1].stop().await;
    for node in &mut nodes {
        node.restart();
    }
    // Both removals apply everywhere: c, d and e remain, e the one admin.
    let remaining = set(&[c, d, e]);
    for (i, node) in nodes.iter().enumerate().skip(2) {
        wait_members(node, &group, &remaining, &format!("node {i} to converge")).await;
        let (_, admins) = members(node, &group).expect("members");
        assert_eq!(admins, set(&[e]), "node {i}'s admins");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_missed_a_change_gets_it_at_the_next_exchange() {
    use nix::{
        sys::signal::{Signal, kill},
        unistd::Pid,
    };
    let config_dir = tempfile::tempdir().expect("tempdir");
    let config = config_dir.path().join("p2posd.toml");
    std::fs::write(&config, "[groups]\nresync_secs = 2\n").expect("config");
    let (nodes, ids) = full_mesh_with(3, &["--config", config.to_str().expect("utf-8")]).await;
    let group = form(&nodes, &ids, &[]).await;
    // C's node is frozen (a laptop asleep) for longer than A's push of a change may take
    // (20 s): it misses the push, and no new connection tells it anything.
    let c = Pid::from_raw(i32::try_from(nodes[2].pid().expect("pid")).expect("pid"));
    kill(c, Signal::SIGSTOP).expect("freeze C");
    ctl(&nodes[0], &["groups", "remove", &group, &ids[1]]);
    tokio::time::sleep(Duration::from_secs(25)).await;
    kill(c, Signal::SIGCONT).expect("thaw C");
    // The periodic exchange brings it the removal.
    let want: BTreeSet<String> = [ids[0].clone(), ids[2].clone()].into();
    wait_members(
        &nodes[2],
        &group,
        &want,
        "C to learn of the removal it missed",
    )
    .await;
}
