//! `groups`: groups with a signed member list (`p2pos.group.v1.Groups`); their pubsub commands
//! are in `pubsub`.

use p2pos_client::Client;
use p2pos_proto::group::v1::{
    CreateRequest, Group, GroupRef, InviteRequest, JoinRequest, ListRequest, MemberRequest,
    RenameRequest, SetNameRequest, SyncOutcome,
};
use serde_json::{Value, json};

use super::{RpcResult, duration, pubsub};
use crate::{cli::GroupsCommand, output};

pub(crate) fn group_json(g: &Group) -> Value {
    json!({
        "id": g.id,
        "name": g.name,
        "founder": g.founder,
        "members": g.members,
        "admins": g.admins,
        "member": g.member,
        "admin": g.admin,
        "ops": g.ops,
    })
}

pub(crate) fn group_line(g: &Group) -> String {
    let role = match (g.member, g.admin) {
        (_, true) => "admin",
        (true, false) => "member",
        (false, false) => "removed",
    };
    format!(
        "{} {:?}: {} members, {} admins; this node: {role}",
        g.id, g.name, g.members, g.admins
    )
}

/// Runs one `groups` subcommand.
pub(crate) async fn run(client: &Client, command: GroupsCommand) -> anyhow::Result<()> {
    let mut groups = client.groups();
    match command {
        GroupsCommand::Create { name } => {
            let group = groups
                .create(CreateRequest { name })
                .await
                .or_fail("cannot create the group")?;
            output::line(group_line(&group))?;
        }
        GroupsCommand::Invite {
            group,
            uses,
            expires,
            admin,
            json,
        } => {
            let reply = groups
                .invite(InviteRequest {
                    group,
                    max_uses: uses,
                    expires_secs: duration::parse("--expires", &expires)?.as_secs(),
                    admin,
                })
                .await
                .or_fail("cannot make an invite")?;
            if json {
                output::json_line(&json!({
                    "invite": reply.invite,
                    "expires_ms": reply.expires_ms,
                    "max_uses": reply.max_uses,
                }))?;
            } else {
                output::line(reply.invite)?;
            }
        }
        GroupsCommand::Join { invite, name } => {
            let joining = groups.join(JoinRequest {
                invite,
                name: name.unwrap_or_default(),
            });
            let group = crate::progress::during(
                "reaching the admin who signed the invite to join",
                false,
                joining,
            )
            .await
            .or_fail("cannot join")?;
            output::line(group_line(&group))?;
        }
        GroupsCommand::Name { group, name } => {
            let g = groups
                .set_name(SetNameRequest {
                    group,
                    name: name.clone(),
                })
                .await
                .or_fail("cannot name this node in the group")?;
            output::line(format!("named {name} in {}", group_line(&g)))?;
        }
        GroupsCommand::Leave { group } => {
            groups
                .leave(GroupRef {
                    group: group.clone(),
                })
                .await
                .or_fail("cannot leave")?;
            output::line(format!("left {group}"))?;
        }
        GroupsCommand::List(flag) => {
            let list = groups
                .list(ListRequest {})
                .await
                .or_fail("cannot list groups")?;
            if flag.json {
                output::json_line(&Value::Array(list.groups.iter().map(group_json).collect()))?;
            } else if list.groups.is_empty() {
                output::line("no groups")?;
            } else {
                for g in &list.groups {
                    output::line(group_line(g))?;
                }
            }
        }
        GroupsCommand::Members { group, json } => {
            let reply = groups
                .members(GroupRef { group })
                .await
                .or_fail("cannot list members")?;
            if json {
                output::json_line(&json!({
                    "group": reply.group.as_ref().map(group_json),
                    "members": reply.members.iter().map(|m| json!({
                        "peer_id": m.peer_id,
                        "admin": m.admin,
                        "local": m.local,
                        "name": m.name,
                    })).collect::<Vec<_>>(),
                }))?;
            } else {
                if let Some(g) = &reply.group {
                    output::line(group_line(g))?;
                }
                let mut table = output::table(["peer", "name", "role"]);
                for m in &reply.members {
                    let role = if m.admin { "admin" } else { "member" };
                    let role = if m.local {
                        format!("{role} (this node)")
                    } else {
                        role.to_owned()
                    };
                    table.add_row([m.peer_id.clone(), output::dash_if_empty(&m.name), role]);
                }
                output::print_table(&table)?;
            }
        }
        GroupsCommand::Remove { group, peer } => {
            let g = groups
                .remove(MemberRequest { group, peer })
                .await
                .or_fail("cannot remove the member")?;
            output::line(group_line(&g))?;
        }
        GroupsCommand::AddAdmin { group, peer } => {
            let g = groups
                .add_admin(MemberRequest { group, peer })
                .await
                .or_fail("cannot make the member an admin")?;
            output::line(group_line(&g))?;
        }
        GroupsCommand::RemoveAdmin { group, peer } => {
            let g = groups
                .remove_admin(MemberRequest { group, peer })
                .await
                .or_fail("cannot make the admin a plain member")?;
            output::line(group_line(&g))?;
        }
        GroupsCommand::Rename { group, name } => {
            let g = groups
                .rename(RenameRequest { group, name })
                .await
                .or_fail("cannot rename the group")?;
            output::line(group_line(&g))?;
        }
        GroupsCommand::Publish(args) => pubsub::publish(client, args).await?,
        GroupsCommand::Watch(args) => pubsub::watch(client, args).await?,
        GroupsCommand::Sync { group, json } => {
            let syncing = groups.sync(GroupRef { group });
            let reply = crate::progress::during("exchanging with every member", json, syncing)
                .await
                .or_fail("cannot sync")?;
            let outcome = |o: i32| match SyncOutcome::try_from(o).unwrap_or_default() {
                SyncOutcome::Synced => "synced",
                SyncOutcome::Refused => "refused",
                SyncOutcome::Unreached => "unreached",
                SyncOutcome::Unspecified => "?",
            };
            if json {
                output::json_line(&json!({
                    "group": reply.group.as_ref().map(group_json),
                    "peers": reply.peers.iter().map(|p| json!({
                        "peer_id": p.peer_id,
                        "outcome": outcome(p.outcome),
                        "message": p.message,
                        "received": p.received,
                    })).collect::<Vec<_>>(),
                }))?;
            } else {
                let mut table = output::table(["peer", "outcome", "received", "message"]);
                for p in &reply.peers {
                    table.add_row([
                        p.peer_id.clone(),
                        outcome(p.outcome).to_owned(),
                        p.received.to_string(),
                        output::dash_if_empty(&p.message),
                    ]);
                }
                output::print_table(&table)?;
            }
        }
    }
    Ok(())
}
