//! Groups formed over gRPC for tests: the first client founds a group and invites the others,
//! and the test goes on once every node sees every member.

use std::{collections::BTreeSet, time::Duration};

use p2pos_client::Client;
use p2pos_proto::group::v1::{CreateRequest, GroupRef, InviteRequest, JoinRequest};

use crate::{Node, p2pctl, wait_for};

/// How long forming a group may take.
pub const FORM_DEADLINE: Duration = Duration::from_secs(60);

/// The peer ids `client`'s node sees as members of `group`.
pub async fn members(client: &Client, group: &str) -> Option<BTreeSet<String>> {
    let reply = client
        .groups()
        .members(GroupRef {
            group: group.to_owned(),
        })
        .await
        .ok()?
        .into_inner();
    Some(reply.members.into_iter().map(|m| m.peer_id).collect())
}

/// Waits until every one of `clients` sees exactly `want` as `group`'s members.
pub async fn wait_members(clients: &[&Client], group: &str, want: &BTreeSet<String>) {
    for (i, client) in clients.iter().enumerate() {
        wait_for(
            &format!("node {i} to see the members {want:?}"),
            FORM_DEADLINE,
            || async { members(client, group).await.filter(|m| m == want) },
        )
        .await;
    }
}

/// A group named `name` of the nodes of `clients` (their peer ids in `ids`): the first founds
/// it, each other joins with an invite of its own. Answers its id once every node sees every
/// member.
pub async fn form(clients: &[Client], ids: &[String], name: &str) -> String {
    let founder = &clients[0];
    let group = founder
        .groups()
        .create(CreateRequest {
            name: name.to_owned(),
        })
        .await
        .expect("create a group")
        .into_inner()
        .id;
    for (i, client) in clients.iter().enumerate().skip(1) {
        let invite = founder
            .groups()
            .invite(InviteRequest {
                group: group.clone(),
                ..InviteRequest::default()
            })
            .await
            .expect("an invite")
            .into_inner()
            .invite;
        client
            .groups()
            .join(JoinRequest {
                invite,
                name: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("node {i} joins: {e}"));
    }
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    wait_members(&clients.iter().collect::<Vec<_>>(), &group, &all).await;
    group
}

/// A group named `name` of `nodes` formed as people do it, with `p2pctl groups create`, `invite`
/// and `join`: the first node founds it, each other joins with an invite of its own. Waits until
/// every node lists every member; answers the group's id.
pub async fn form_group(nodes: &mut [Node], name: &str) -> String {
    let (ok, out, err) = p2pctl(&nodes[0], &["groups", "create", name]);
    assert!(ok, "groups create: {err}");
    let group = out
        .split_whitespace()
        .next()
        .expect("the group's id")
        .to_owned();
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let (ok, invite, err) = p2pctl(&nodes[0], &["groups", "invite", &group]);
        assert!(ok, "groups invite: {err}");
        let (ok, _, err) = p2pctl(node, &["groups", "join", invite.trim()]);
        assert!(ok, "node {i} joins: {err}");
    }
    let mut clients = Vec::new();
    let mut all = BTreeSet::new();
    for node in nodes.iter_mut() {
        clients.push(node.client().await);
        all.insert(node.peer_id().await);
    }
    wait_members(&clients.iter().collect::<Vec<_>>(), &group, &all).await;
    group
}
