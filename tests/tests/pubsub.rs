//! Group pubsub on real nodes, driven over gRPC: every member's posts reach every other member
//! that follows the topic, each sender's in order, and the publisher hears which members' nodes
//! have them; a removed member stops receiving and its posts are refused by everyone (also by a
//! member that learns of the removal from another member while the removing admin is
//! stopped); a member that was stopped for 30 s catches up on what it missed; posts survive a
//! restart.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use futures::StreamExt;
use p2pos_client::Client;
use p2pos_proto::group::v1::{
    MemberRequest, PublishReply, PublishRequest, SubscribeRequest, TopicMessage,
};
use p2pos_tests::{
    Node,
    groups::{form, wait_members},
    star, wait_for,
};
use tonic::{Code, Streaming};

const T: Duration = Duration::from_secs(30);
const APP: &str = "chat";
const TOPIC: &str = "room";

async fn publish(client: &Client, group: &str, text: &str, report_ms: u32) -> PublishReply {
    client
        .groups()
        .publish(PublishRequest {
            group: group.to_owned(),
            app: APP.to_owned(),
            topic: TOPIC.to_owned(),
            data: text.as_bytes().to_vec().into(),
            report_ms,
        })
        .await
        .unwrap_or_else(|e| panic!("publish {text:?}: {e}"))
        .into_inner()
}

async fn subscribe(client: &Client, group: &str, since_ms: u64) -> Streaming<TopicMessage> {
    client
        .groups()
        .subscribe(SubscribeRequest {
            group: group.to_owned(),
            app: APP.to_owned(),
            topic: TOPIC.to_owned(),
            since_ms,
        })
        .await
        .expect("subscribe")
        .into_inner()
}

/// The next message on `stream`, within [`T`].
async fn next(stream: &mut Streaming<TopicMessage>, what: &str) -> TopicMessage {
    match tokio::time::timeout(T, stream.next()).await {
        Ok(Some(Ok(message))) => message,
        Ok(Some(Err(e))) => panic!("{what}: the subscription failed: {e}"),
        Ok(None) => panic!("{what}: the subscription ended"),
        Err(_) => panic!("{what}: nothing within {T:?}"),
    }
}

fn text(message: &TopicMessage) -> String {
    String::from_utf8_lossy(&message.data).into_owned()
}

/// Every message `client`'s node holds on the topic (a replay from the start).
async fn held(client: &Client, group: &str, until: &str) -> Vec<String> {
    let mut replay = subscribe(client, group, 1).await;
    let mut texts = Vec::new();
    loop {
        let message = next(&mut replay, &format!("the replay up to {until:?}")).await;
        texts.push(text(&message));
        if texts.last().is_some_and(|t| t == until) {
            return texts;
        }
    }
}

/// Publishes probes from `client` until every one of `others` follows the topic (gossip needs
/// their subscriptions to have arrived): answers once a probe's receipts name them all.
async fn until_followed(client: &Client, group: &str, others: &[&String]) {
    let want: BTreeSet<String> = others.iter().map(|s| (*s).clone()).collect();
    wait_for("every member to follow the topic", T, || async {
        let reply = publish(client, group, "probe", 2000).await;
        let sent: BTreeSet<String> = reply.sent_to.into_iter().collect();
        let delivered: BTreeSet<String> = reply.delivered.into_iter().collect();
        (sent.is_superset(&want) && delivered.is_superset(&want)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_members_posts_reach_every_follower_in_order_with_receipts() {
    let (_nodes, clients, ids) = star(5).await;
    let group = form(&clients, &ids, "friends").await;
    let mut streams = Vec::new();
    for client in &clients {
        streams.push(subscribe(client, &group, 0).await);
    }
    for (i, client) in clients.iter().enumerate() {
        let others: Vec<&String> = ids.iter().filter(|id| **id != ids[i]).collect();
        until_followed(client, &group, &others).await;
    }
    // Each member publishes three posts and hears that every other member's node has each.
    for (i, client) in clients.iter().enumerate() {
        for n in 0..3 {
            let reply = publish(client, &group, &format!("{i}:{n}"), 10_000).await;
            assert!(reply.missing.is_empty(), "node {i} post {n}: {reply:?}");
            assert_eq!(reply.delivered.len(), 4, "node {i} post {n}: {reply:?}");
        }
    }
    // Every follower gets the twelve posts of the others, each sender's in order.
    for (i, stream) in streams.iter_mut().enumerate() {
        let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
        while got.values().map(Vec::len).sum::<usize>() < 12 {
            let message = next(stream, &format!("node {i}'s posts")).await;
            let t = text(&message);
            if t == "probe" || message.sender == ids[i] {
                continue;
            }
            assert!(!message.replayed, "{message:?}");
            got.entry(message.sender).or_default().push(t);
        }
        for (sender, texts) in &got {
            let j = ids.iter().position(|id| id == sender).expect("a member");
            let want: Vec<String> = (0..3).map(|n| format!("{j}:{n}")).collect();
            assert_eq!(texts, &want, "node {i} from node {j}");
        }
        assert_eq!(got.len(), 4, "node {i}: {got:?}");
    }
}

/// A member's subscription that reached another member's node before that node knew of the
/// member (refused then) is heard again once it does: the node reconnects to it, and gossip
/// then counts it as a follower.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_refused_before_the_member_was_known_is_heard_again() {
    let (mut nodes, mut clients, ids) = star(3).await;
    let (a, b, j) = (0, 1, 2);
    let group = form(&clients[..2], &ids[..2], "friends").await;
    // b sleeps through j's joining; then the admin goes too.
    nodes[b].stop().await;
    let invite = clients[a]
        .groups()
        .invite(p2pos_proto::group::v1::InviteRequest {
            group: group.clone(),
            ..Default::default()
        })
        .await
        .expect("an invite")
        .into_inner()
        .invite;
    clients[j]
        .groups()
        .join(p2pos_proto::group::v1::JoinRequest {
            invite,
            name: String::new(),
        })
        .await
        .expect("join");
    let _j_follows = subscribe(&clients[j], &group, 0).await;
    nodes[a].stop().await;
    nodes[b].restart();
    clients[b] = nodes[b].client().await;
    let _b_follows = subscribe(&clients[b], &group, 0).await;
    // j reaches b: its subscription arrives before b has heard of j's joining (from j itself).
    let ticket = nodes[b].ticket().await;
    let (ok, _, err) = p2pos_tests::p2pctl(&nodes[j], &["dial", &ticket]);
    assert!(ok, "{err}");
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    wait_members(&[&clients[b]], &group, &all).await;
    until_followed(&clients[b], &group, &[&ids[j]]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_member_stops_receiving_and_its_posts_are_refused_everywhere() {
    // 0 is the admin, 3 is removed; 2 is stopped while 0 removes 3 and learns of it from 1
    // after 0 has stopped.
    let (mut nodes, mut clients, ids, metrics) = nodes_with_metrics(4).await;
    let group = form(&clients, &ids, "friends").await;
    let mut removed = subscribe(&clients[3], &group, 0).await;
    let mut stays = subscribe(&clients[1], &group, 0).await;
    until_followed(&clients[0], &group, &[&ids[1], &ids[3]]).await;
    publish(&clients[0], &group, "before", 0).await;
    while text(&next(&mut removed, "the removed member's last post").await) != "before" {}

    nodes[2].stop().await;
    clients[0]
        .groups()
        .remove(MemberRequest {
            group: group.clone(),
            peer: ids[3].clone(),
        })
        .await
        .expect("remove");
    let rest: BTreeSet<String> = [&ids[0], &ids[1], &ids[2]].into_iter().cloned().collect();
    wait_members(&[&clients[0], &clients[1]], &group, &rest).await;

    // The removed member's node is told: its subscription ends, it publishes no more.
    let ended = loop {
        match tokio::time::timeout(T, removed.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(status))) => break status,
            other => {
                panic!("the removed member's subscription did not end with an error: {other:?}")
            }
        }
    };
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended}");
    let refused = clients[3]
        .groups()
        .publish(PublishRequest {
            group: group.clone(),
            app: APP.to_owned(),
            topic: TOPIC.to_owned(),
            data: b"from the removed".to_vec().into(),
            report_ms: 0,
        })
        .await
        .expect_err("a removed member's node publishes no more");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");

    // 2 learns of the removal from 1 while the admin is stopped.
    nodes[0].stop().await;
    nodes[2].restart();
    clients[2] = nodes[2].client().await;
    wait_members(&[&clients[2]], &group, &rest).await;
    let mut late = subscribe(&clients[2], &group, 0).await;
    until_followed(&clients[1], &group, &[&ids[2]]).await;

    // The removed member's own key, on a bare gossipsub peer (its node bypassed): both remaining
    // members refuse to count it a follower and reject its posts.
    let key = p2pos_kernel::identity::load_or_create(&nodes[3].data_dir).expect("3's key");
    nodes[3].stop().await;
    let addrs = [address(&clients[1]).await, address(&clients[2]).await];
    let mut peer = bare::Peer::start(key, &group, &addrs);
    bare::until_rejected(&mut peer, &[&metrics[1], &metrics[2]]).await;
    let probe = publish(&clients[1], &group, "after", 3000).await;
    assert!(!probe.sent_to.contains(&ids[3]), "{probe:?}");
    assert_eq!(probe.delivered, vec![ids[2].clone()], "{probe:?}");
    while text(&next(&mut late, "node 2 gets node 1's post").await) != "after" {}
    while text(&next(&mut stays, "node 1 sees its own post").await) != "after" {}
    peer.run(Duration::from_secs(1)).await;
    assert_eq!(peer.got, 0, "the removed member still receives");
    for (client, name) in [(&clients[1], "node 1"), (&clients[2], "node 2")] {
        let texts = held(client, &group, "after").await;
        assert!(
            !texts.iter().any(|t| t == "forged"),
            "{name} holds the removed member's post: {texts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_stopped_for_30_s_catches_up_and_posts_survive_a_restart() {
    let (mut nodes, mut clients, ids) = star(3).await;
    let group = form(&clients, &ids, "friends").await;
    let _follows = subscribe(&clients[2], &group, 0).await;
    let mut away = subscribe(&clients[1], &group, 0).await;
    until_followed(&clients[0], &group, &[&ids[1], &ids[2]]).await;
    publish(&clients[0], &group, "before", 0).await;
    while text(&next(&mut away, "the post before going away").await) != "before" {}
    let since = p2pos_kernel::events::now_ms();

    nodes[1].stop().await;
    let started = std::time::Instant::now();
    for n in 0..5 {
        publish(&clients[0], &group, &format!("missed {n}"), 0).await;
        publish(&clients[2], &group, &format!("also missed {n}"), 0).await;
    }
    // Away for 30 s in all (a live node would have had them long since).
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(started.elapsed())).await;
    nodes[1].restart();
    clients[1] = nodes[1].client().await;
    let mut back = subscribe(&clients[1], &group, since).await;
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while got.values().map(Vec::len).sum::<usize>() < 10 {
        let message = next(&mut back, "the missed posts").await;
        if text(&message).starts_with("probe") {
            continue;
        }
        assert!(message.replayed, "{message:?}");
        got.entry(message.sender.clone())
            .or_default()
            .push(text(&message));
    }
    let want0: Vec<String> = (0..5).map(|n| format!("missed {n}")).collect();
    let want2: Vec<String> = (0..5).map(|n| format!("also missed {n}")).collect();
    assert_eq!(got.get(&ids[0]), Some(&want0), "{got:?}");
    assert_eq!(got.get(&ids[2]), Some(&want2), "{got:?}");

    // Live posts follow the caught-up ones.
    publish(&clients[0], &group, "live", 0).await;
    let live = next(&mut back, "a live post after catching up").await;
    assert_eq!((text(&live).as_str(), live.replayed), ("live", false));

    // What a node holds survives its restart, and its post numbers go on.
    nodes[0].stop().await;
    nodes[0].restart();
    clients[0] = nodes[0].client().await;
    let texts = held(&clients[0], &group, "live").await;
    assert!(texts.contains(&"missed 4".to_owned()), "{texts:?}");
    let next_seq = publish(&clients[0], &group, "after restart", 0).await.seq;
    assert!(
        next_seq > 6,
        "post numbers start again after a restart: {next_seq}"
    );
}

/// A bare libp2p gossipsub peer run by the test, with `key`, following `group`'s topic of
/// [`APP`] and [`TOPIC`] and dialling `addr`.
mod bare {
    use std::time::Duration;

    use libp2p::{
        Multiaddr, Swarm,
        gossipsub::{self, IdentTopic, MessageAuthenticity},
        identity::Keypair,
    };
    use p2pos_groups::{
        op::GroupId,
        pubsub::{post::POST_TYPE, topic::TopicKey},
    };
    use p2pos_proto::wire::v1::GroupPost;
    use prost::Message as _;

    use super::{APP, TOPIC};

    pub(crate) struct Peer {
        pub(crate) swarm: Swarm<gossipsub::Behaviour>,
        pub(crate) topic: IdentTopic,
        key: Keypair,
        group: GroupId,
        seq: u64,
        /// Group posts gossip gave it.
        pub(crate) got: usize,
    }

    impl Peer {
        pub(crate) fn start(key: Keypair, group: &str, addrs: &[Multiaddr]) -> Peer {
            let group: GroupId = group.parse().expect("a group id");
            let topic_key = TopicKey {
                group,
                app: APP.to_owned(),
                topic: TOPIC.to_owned(),
            };
            let topic = IdentTopic::new(format!(
                "/p2pos/gossip/1/{group}/{}",
                topic_key.gossip_topic()
            ));
            let mut swarm = p2pos_tests::bare_swarm(key.clone(), |key| {
                gossipsub::Behaviour::<gossipsub::IdentityTransform>::new(
                    MessageAuthenticity::Signed(key.clone()),
                    gossipsub::Config::default(),
                )
                .expect("gossipsub")
            });
            swarm.behaviour_mut().subscribe(&topic).expect("subscribe");
            for addr in addrs {
                swarm.dial(addr.clone()).expect("dial");
            }
            Peer {
                swarm,
                topic,
                key,
                group,
                seq: 0,
                got: 0,
            }
        }

        /// Publishes a post claiming the group, signed with its key.
        pub(crate) fn publish(&mut self) {
            self.seq += 1;
            let body = GroupPost {
                group: self.group.0.to_vec().into(),
                app: APP.to_owned(),
                topic: TOPIC.to_owned(),
                seq: self.seq,
                sent_ms: p2pos_kernel::events::now_ms(),
                data: b"forged".to_vec().into(),
                report: false,
                prev: self.seq - 1,
            }
            .encode_to_vec();
            let envelope =
                p2pos_protocols::network::sign_with(&self.key, POST_TYPE, body).expect("sign");
            let _ = self
                .swarm
                .behaviour_mut()
                .publish(self.topic.clone(), envelope);
        }

        /// Runs its swarm for `time`, counting the group posts it gets.
        pub(crate) async fn run(&mut self, time: Duration) {
            let until = tokio::time::Instant::now() + time;
            while let Ok(event) = tokio::time::timeout_at(
                until,
                futures::StreamExt::select_next_some(&mut self.swarm),
            )
            .await
            {
                if let libp2p::swarm::SwarmEvent::Behaviour(gossipsub::Event::Message { .. }) =
                    event
                {
                    self.got += 1;
                }
            }
        }
    }

    /// The posts a node rejected, from its metrics at `metrics`.
    pub(crate) fn rejected(metrics: &str) -> f64 {
        let body = p2pos_tests::http_get(metrics, "/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("p2pos_overlay_gossip_rejected_total "))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    /// Publishes until every node at `metrics` rejected one of its posts.
    pub(crate) async fn until_rejected(peer: &mut Peer, metrics: &[&str]) {
        let deadline = tokio::time::Instant::now() + super::T;
        while metrics.iter().any(|m| rejected(m) < 1.0) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a node never rejected a forged post"
            );
            peer.publish();
            peer.run(Duration::from_millis(200)).await;
        }
    }
}

/// The first listen address of `client`'s node.
async fn address(client: &Client) -> libp2p::Multiaddr {
    let ticket = client
        .overlay()
        .get_ticket(p2pos_proto::overlay::v1::GetTicketRequest {})
        .await
        .expect("ticket")
        .into_inner();
    ticket.addresses[0].parse().expect("an address")
}

/// Nodes started with their metrics on (and their addresses), every other one connected to the
/// first, with a client of each and their peer ids.
async fn nodes_with_metrics(n: usize) -> (Vec<Node>, Vec<Client>, Vec<String>, Vec<String>) {
    let metrics: Vec<String> = (0..n)
        .map(|_| format!("127.0.0.1:{}", p2pos_tests::free_port()))
        .collect();
    let mut nodes: Vec<Node> = metrics
        .iter()
        .map(|m| Node::start(&["--metrics", m]))
        .collect();
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for node in &mut nodes {
        clients.push(node.client().await);
        ids.push(node.peer_id().await);
    }
    let hub = nodes[0].ticket().await;
    for node in nodes.iter().skip(1) {
        let (ok, _, err) = p2pos_tests::p2pctl(node, &["dial", &hub]);
        assert!(ok, "{err}");
    }
    (nodes, clients, ids, metrics)
}

/// A node outside the group (a bare libp2p gossipsub peer run by the test) that knows the
/// group's id and the topic subscribes and publishes posts claiming the group, signed with its
/// own key: the members' nodes refuse its subscription (gossip never sends it the group's
/// posts) and reject its posts (counted in `p2pos_overlay_gossip_rejected`), so no member holds
/// them.
#[tokio::test(flavor = "multi_thread")]
async fn a_non_member_forging_the_group_is_refused_and_rejected() {
    let (_nodes, clients, ids, metrics) = nodes_with_metrics(2).await;
    let group = form(&clients, &ids, "friends").await;
    let mut follows = subscribe(&clients[0], &group, 0).await;
    let _b_follows = subscribe(&clients[1], &group, 0).await;
    until_followed(&clients[1], &group, &[&ids[0]]).await;

    let key = libp2p::identity::Keypair::generate_ed25519();
    let forger = key.public().to_peer_id().to_string();
    let mut peer = bare::Peer::start(key, &group, &[address(&clients[0]).await]);
    bare::until_rejected(&mut peer, &[&metrics[0]]).await;

    // A member's post: gossip does not count the forger as a follower, and it gets nothing.
    let reply = publish(&clients[1], &group, "members only", 3000).await;
    assert!(!reply.sent_to.contains(&forger), "{reply:?}");
    assert_eq!(reply.delivered, vec![ids[0].clone()], "{reply:?}");
    while text(&next(&mut follows, "a's post from b").await) != "members only" {}
    peer.run(Duration::from_secs(2)).await;
    assert_eq!(peer.got, 0, "the forger got the group's posts");
    for (i, client) in clients.iter().enumerate() {
        let texts = held(client, &group, "members only").await;
        assert!(
            !texts.iter().any(|t| t == "forged"),
            "node {i} holds a forged post: {texts:?}"
        );
    }
}
