//! The groups actor: answers `p2pos.group.v1` (each call runs in its own task on the cheap
//! [`Node`] handle), serves `/p2pos/group/1`, and exchanges heads with members when they
//! connect and when it starts.

use std::{collections::HashMap, time::Duration};

use actix::prelude::*;
use p2pos_kernel::{
    Call, ChildHandle, ChildSpec, DeathGuard, InjectPanic, Protocol, RestartType, ServiceContext,
    ServiceError, StopService, Uses, store::Writer,
};
use p2pos_proto::group::v1::{ListReply, SyncReply};
use p2pos_protocols::{
    Groups, answer, groups,
    network::{Accepting, Limits, NETWORK, NetEvent, Network, accept::drop_stream},
};
use tokio::task::JoinHandle;

use crate::{
    Config,
    book::{Book, TREE},
    node::Node,
    op::GroupId,
    pubsub::{hub::Pubsub, stored, wire},
    sync::{FRAME_WAIT, MAX_FRAME, PROTOCOL},
};

/// Inbound `/p2pos/group/1` streams served at once, in all and from one peer.
const INBOUND_TOTAL: usize = 64;
const INBOUND_PER_PEER: usize = 4;
/// Inbound `/p2pos/pubsub/1` streams (receipts, catch-up) served at once, in all and from one
/// peer.
const PUBSUB_TOTAL: usize = 256;
const PUBSUB_PER_PEER: usize = 16;

/// The service's name.
pub const NAME: &str = "groups";

/// What the service keeps in the store, in the words of a repair report (`p2posd --repair`).
pub const STORE_CONTENTS: &[p2pos_kernel::store::Contents] = &[
    p2pos_kernel::store::Contents {
        tree: TREE,
        prefix: Some(b'o'),
        what: "group logs (members and their changes)",
    },
    p2pos_kernel::store::Contents {
        tree: TREE,
        prefix: Some(b'u'),
        what: "uses of invites this node signed",
    },
    p2pos_kernel::store::Contents {
        tree: TREE,
        prefix: None,
        what: "other group records",
    },
    p2pos_kernel::store::Contents {
        tree: stored::TREE,
        prefix: None,
        what: "group posts held",
    },
];

/// The child spec the daemon hands to the kernel.
pub fn child_spec(config: Config) -> ChildSpec {
    ChildSpec {
        name: NAME,
        restart: RestartType::Permanent,
        uses: Uses {
            // Its protocol, signing, connection events.
            needs: &[NETWORK],
            // The groups' logs and invite uses.
            trees: &[TREE, stored::TREE],
            provides: &[Groups::NAME],
            ..Uses::default()
        },
        start: Box::new(move |ctx, guard| start(ctx, guard, &config)),
    }
}

fn start(ctx: ServiceContext, guard: DeathGuard, config: &Config) -> Result<ChildHandle, String> {
    let net: Network = ctx.registry.take(NETWORK).map_err(|e| e.to_string())?;
    let book = Book::load(ctx.store.clone()).map_err(|e| e.message)?;
    let node = Node::new(book, net.clone());
    let serving = node.clone();
    let accepting = net
        .accept(
            PROTOCOL,
            Limits {
                total: INBOUND_TOTAL,
                per_peer: INBOUND_PER_PEER,
                max_frame: MAX_FRAME,
                idle: FRAME_WAIT,
            },
            move |peer, stream| serving.clone().serve(peer, stream),
            drop_stream,
        )
        .map_err(|e| e.to_string())?;
    let (writer, _) = Writer::spawn(ctx.store.clone(), NAME).map_err(|e| e.to_string())?;
    let pubsub = Pubsub::load(node.book().clone(), net.clone(), ctx.store.as_ref(), writer);
    let serving = pubsub.clone();
    let accepting_pubsub = net
        .accept(
            wire::PROTOCOL,
            Limits {
                total: PUBSUB_TOTAL,
                per_peer: PUBSUB_PER_PEER,
                max_frame: wire::MAX_FRAME,
                idle: wire::FRAME_WAIT,
            },
            move |peer, stream| serving.clone().serve(peer, stream),
            drop_stream,
        )
        .map_err(|e| e.to_string())?;
    let resync = Duration::from_secs(config.resync_secs);
    let follower = tokio::spawn(follow(node.clone(), pubsub.clone(), net, resync));
    let sweeper = tokio::spawn(pubsub.clone().sweep_forever());
    let addr = GroupsService {
        ctx: ctx.clone(),
        _guard: guard,
        node,
        pubsub,
        tasks: [follower, sweeper],
        _accepting: [accepting, accepting_pubsub],
    }
    .start();
    ctx.registry
        .register::<Groups>(addr.clone().recipient())
        .map_err(|e| e.to_string())?;
    Ok(ChildHandle {
        stop: addr.clone().recipient(),
        panic: addr.recipient(),
    })
}

/// Exchanges heads with every member at start and every `resync`, and with each member
/// that connects (and catches up on followed topics from it); tells the network each group's
/// members as they change.
async fn follow(node: Node, pubsub: Pubsub, net: Network, resync: Duration) {
    let mut events = net.subscribe();
    let mut changes = node.book().changes();
    let mut scopes = HashMap::new();
    pubsub.membership_changed(&mut scopes).await;
    let mut ticks = tokio::time::interval(resync);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let tell_all = |node: &Node| {
        for group in node.book().ids() {
            node.tell_members(group, None);
        }
    };
    loop {
        tokio::select! {
            // The first tick is at once: the exchange at start.
            _ = ticks.tick() => tell_all(&node),
            changed = changes.changed() => match changed {
                Ok(()) => pubsub.membership_changed(&mut scopes).await,
                Err(_) => return,
            },
            event = events.recv() => match event {
                Ok(NetEvent::Connected(peer)) => {
                    node.connected(peer);
                    pubsub.connected(peer);
                }
                Ok(NetEvent::Disconnected(_) | NetEvent::Direct(_)) => {}
                // Connections missed: every member is asked.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => tell_all(&node),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// The groups actor.
struct GroupsService {
    ctx: ServiceContext,
    _guard: DeathGuard,
    node: Node,
    pubsub: Pubsub,
    /// Follows the network and the book; sweeps pubsub.
    tasks: [JoinHandle<()>; 2],
    /// Serves `/p2pos/group/1` and `/p2pos/pubsub/1` while it lives.
    _accepting: [Accepting; 2],
}

impl Drop for GroupsService {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Its follow tasks hold the pubsub too: they are stopped here, not left running.
        self.pubsub.close();
    }
}

impl Actor for GroupsService {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        if self.ctx.config.panics_on_start(NAME) {
            panic!("failpoint {NAME}=panic-on-start");
        }
    }
}

impl Handler<StopService> for GroupsService {
    type Result = ();

    fn handle(&mut self, _: StopService, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<InjectPanic> for GroupsService {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) {
        panic!("injected fault in {NAME}");
    }
}

impl Handler<Call<Groups>> for GroupsService {
    type Result = ();

    fn handle(&mut self, Call(request): Call<Groups>, _: &mut Self::Context) {
        use groups::Request;
        let node = self.node.clone();
        let pubsub = self.pubsub.clone();
        tokio::spawn(async move {
            match request {
                Request::Publish {
                    app,
                    request,
                    reply,
                } => answer(reply, pubsub.publish(app, request).await),
                Request::Subscribe {
                    app,
                    request,
                    reply,
                } => answer(reply, pubsub.subscribe(app, request)),
                Request::Create { request, reply } => {
                    answer(reply, node.create(&request.name).await);
                }
                Request::Invite { request, reply } => answer(reply, node.invite(request).await),
                Request::Join { request, reply } => {
                    answer(reply, node.join_named(&request.invite, &request.name).await);
                }
                Request::SetName { request, reply } => {
                    answer(reply, node.set_name(&request.group, &request.name).await);
                }
                Request::Resolve { group, name, reply } => {
                    let resolved =
                        node.resolve(&group, name.as_deref())
                            .map(|(id, peer)| groups::Resolved {
                                group: id.to_string(),
                                peer,
                            });
                    answer(reply, resolved);
                }
                Request::Admit { group, peer, reply } => {
                    answer(reply, node.admit_channel(&group, &peer));
                }
                Request::Leave { group, reply } => answer(reply, node.leave(&group).await),
                Request::List { reply } => {
                    let groups = node
                        .book()
                        .ids()
                        .into_iter()
                        .filter_map(|g| node.summary(g).ok())
                        .collect();
                    answer::<_, ServiceError>(reply, Ok(ListReply { groups }));
                }
                Request::Members { group, reply } => {
                    let members = node.book().resolve(&group).and_then(|g| node.members(g));
                    answer(reply, members);
                }
                Request::Change {
                    change,
                    request,
                    reply,
                } => {
                    let changed = node.change(change, &request.group, &request.peer).await;
                    answer(reply, changed);
                }
                Request::Rename { request, reply } => {
                    answer(reply, node.rename(&request.group, &request.name).await);
                }
                Request::Sync { group, reply } => {
                    let synced = match node.book().resolve(&group) {
                        Ok(g) => {
                            let peers = node.sync_all(g).await;
                            node.summary(g).map(|group| SyncReply {
                                group: Some(group),
                                peers,
                            })
                        }
                        Err(e) => Err(e),
                    };
                    answer(reply, synced);
                }
                Request::IsMember { group, peer, reply } => {
                    let member = group
                        .parse::<GroupId>()
                        .is_ok_and(|g| node.book().is_member(g, &peer));
                    answer::<_, ServiceError>(reply, Ok(member));
                }
            }
        });
    }
}
