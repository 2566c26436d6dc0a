//! Members' short names and channels in a group, on real nodes: names signed by each member
//! for itself are seen by every member; `NAME@GROUP` resolves for `Apps.Send` and
//! `Apps.Channel` (and `p2pctl send`, `p2p-chat`), an unknown one is `NOT_FOUND` and one two members hold `INVALID_ARGUMENT`
//! naming both; a member's channel in the group reaches another member, which sees its group;
//! a node never in the group, and a removed member once the removal reached the accepting node,
//! are refused at the hello with `PERMISSION_DENIED` and the accepting app never sees their
//! channels; a session restricted to a group takes no other channel.

use std::{collections::BTreeMap, time::Duration};

use futures::{SinkExt, StreamExt, channel::mpsc};
use p2pos_client::Client;
use p2pos_proto::{
    app::v1::{
        AcceptChannel, ChannelInput, ChannelOutput, OpenChannel, ReceiveRequest, SendRequest,
        SessionEvent, SessionRequest, channel_input, channel_output, session_event,
    },
    group::v1::SetNameRequest,
};
use p2pos_tests::{Chat, Node, full_mesh, next_incoming, open_session, p2pctl, wait_for};
use serde_json::Value;
use tonic::{Code, Status, Streaming};

const T: Duration = Duration::from_secs(60);

fn ctl(node: &Node, args: &[&str]) -> String {
    let (ok, out, err) = p2pctl(node, args);
    assert!(ok, "p2pctl {args:?} failed: {err}");
    out
}

/// `node`'s members of `group`: peer id → short name (empty: none).
fn names(node: &Node, group: &str) -> Option<BTreeMap<String, String>> {
    let (ok, out, _) = p2pctl(node, &["groups", "members", group, "--json"]);
    if !ok {
        return None;
    }
    let v: Value = serde_json::from_str(&out).ok()?;
    v["members"]
        .as_array()?
        .iter()
        .map(|m| {
            Some((
                m["peer_id"].as_str()?.to_owned(),
                m["name"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

async fn wait_names(nodes: &[Node], group: &str, want: &BTreeMap<String, String>, what: &str) {
    for (i, node) in nodes.iter().enumerate() {
        wait_for(&format!("node {i} to see {what}"), T, || async {
            names(node, group).filter(|n| n == want).map(|_| ())
        })
        .await;
    }
}

/// Node 0 founds `friends` and names itself `alice`; the others join with `joiners`' names.
/// Answers the group's id.
async fn form(nodes: &[Node], ids: &[String], joiners: &[&str]) -> String {
    ctl(&nodes[0], &["groups", "create", "friends"]);
    let list: Value =
        serde_json::from_str(&ctl(&nodes[0], &["groups", "list", "--json"])).expect("json");
    let group = list[0]["id"].as_str().expect("id").to_owned();
    ctl(&nodes[0], &["groups", "name", "friends", "alice"]);
    let mut want = BTreeMap::from([(ids[0].clone(), "alice".to_owned())]);
    for (i, name) in joiners.iter().enumerate() {
        let invite = ctl(&nodes[0], &["groups", "invite", &group])
            .trim()
            .to_owned();
        ctl(&nodes[i + 1], &["groups", "join", &invite, "--name", name]);
        want.insert(ids[i + 1].clone(), (*name).to_owned());
    }
    wait_names(
        &nodes[..=joiners.len()],
        &group,
        &want,
        "every member's name",
    )
    .await;
    group
}

/// Opens a channel of app `app` to `peer` (in `group` if not empty); the `opened` output, the
/// input's sender and the output, or the refusal.
async fn open(
    client: &Client,
    app: &str,
    peer: &str,
    group: &str,
) -> Result<
    (
        channel_output::Kind,
        mpsc::Sender<ChannelInput>,
        Streaming<ChannelOutput>,
    ),
    Status,
> {
    let (mut tx, rx) = mpsc::channel::<ChannelInput>(8);
    tx.send(ChannelInput {
        kind: Some(channel_input::Kind::Open(OpenChannel {
            app_id: app.into(),
            peer: peer.into(),
            batch: false,
            half_close: false,
            group: group.into(),
            transport: 0,
        })),
    })
    .await
    .expect("queue open");
    let mut out = client.apps().channel(rx).await?.into_inner();
    let opened = tokio::time::timeout(T, out.next())
        .await
        .expect("opened in time")
        .expect("an output")?
        .kind
        .expect("a kind");
    Ok((opened, tx, out))
}

/// Accepts `channel_id` for `app`; its input's sender and output.
async fn accept(
    client: &Client,
    app: &str,
    channel_id: u64,
) -> (mpsc::Sender<ChannelInput>, Streaming<ChannelOutput>) {
    let (mut tx, rx) = mpsc::channel::<ChannelInput>(8);
    tx.send(ChannelInput {
        kind: Some(channel_input::Kind::Accept(AcceptChannel {
            channel_id,
            app_id: app.into(),
            batch: false,
            half_close: false,
            transport: 0,
        })),
    })
    .await
    .expect("queue accept");
    let mut out = client
        .apps()
        .channel(rx)
        .await
        .expect("accept")
        .into_inner();
    let opened = out.next().await.expect("opened").expect("no error");
    assert!(matches!(opened.kind, Some(channel_output::Kind::Opened(_))));
    (tx, out)
}

async fn send_frame(tx: &mut mpsc::Sender<ChannelInput>, text: &str) {
    tx.send(ChannelInput {
        kind: Some(channel_input::Kind::Data(text.as_bytes().to_vec().into())),
    })
    .await
    .expect("send a frame");
}

async fn next_frame(out: &mut Streaming<ChannelOutput>) -> Vec<u8> {
    let frame = tokio::time::timeout(T, out.next())
        .await
        .expect("a frame in time")
        .expect("a frame")
        .expect("no error");
    match frame.kind {
        Some(channel_output::Kind::Data(data)) => data.to_vec(),
        other => panic!("expected data, got {other:?}"),
    }
}

/// Refused with `code`, the message holding `needle`.
fn refused<T>(result: Result<T, Status>, code: Code, needle: &str, what: &str) {
    match result {
        Ok(_) => panic!("{what}: expected {code:?}, it went through"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status:?}");
            assert!(status.message().contains(needle), "{what}: {status:?}");
        }
    }
}

async fn send(client: &Client, peer: &str) -> Result<(), Status> {
    client
        .apps()
        .send(SendRequest {
            app_id: "notes".into(),
            peer: peer.into(),
            payload: b"hi".to_vec().into(),
            idempotency_key: Default::default(),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn names_are_seen_by_every_member_and_resolve_for_send_and_channel() {
    let (mut nodes, ids) = full_mesh(3).await;
    let (a, b, c) = (
        nodes[0].client().await,
        nodes[1].client().await,
        nodes[2].client().await,
    );
    let group = form(&nodes, &ids, &["bob", "carol"]).await;

    // People see the names too.
    let table = ctl(&nodes[2], &["groups", "members", "friends"]);
    for name in ["alice", "bob", "carol"] {
        assert!(table.contains(name), "{table}");
    }
    // A name outside the grammar is refused with the reason.
    let bad = a
        .groups()
        .set_name(SetNameRequest {
            group: group.clone(),
            name: "Alice Smith".into(),
        })
        .await;
    refused(
        bad,
        Code::InvalidArgument,
        "lowercase letters",
        "a bad name",
    );
    let (ok, _, err) = p2pctl(
        &nodes[1],
        &["groups", "join", "p2posgroupx", "--name", "B!"],
    );
    assert!(!ok && err.contains("invalid member name"), "{err}");

    // NAME@GROUP for a message: delivered to alice, from bob.
    let _notes = open_session(&a, "notes").await;
    send(&b, "alice@friends")
        .await
        .expect("send to alice@friends");
    let mut inbox = a
        .apps()
        .receive(ReceiveRequest {
            app_id: "notes".into(),
        })
        .await
        .expect("receive")
        .into_inner();
    let got = tokio::time::timeout(T, inbox.next())
        .await
        .expect("a message in time")
        .expect("a message")
        .expect("no error");
    assert_eq!(got.from_peer, ids[1]);
    // By the group's id too.
    send(&c, &format!("alice@{group}")).await.expect("by id");

    // NAME@GROUP for a channel: it opens in the group, and carol's app sees which.
    let mut session = open_session(&c, "talk").await;
    let opening = {
        let a = a.clone();
        tokio::spawn(async move { open(&a, "talk", "carol@friends", "").await })
    };
    let incoming = next_incoming(&mut session, T).await;
    assert_eq!(incoming.peer_id, ids[0]);
    assert_eq!(incoming.group, group);
    let (mut c_tx, mut c_out) = accept(&c, "talk", incoming.channel_id).await;
    let (opened, mut a_tx, mut a_out) = opening.await.expect("join").expect("opened");
    match opened {
        channel_output::Kind::Opened(opened) => {
            assert_eq!(opened.peer_id, ids[2]);
            assert_eq!(opened.group, group);
        }
        other => panic!("expected opened, got {other:?}"),
    }
    send_frame(&mut a_tx, "hello carol").await;
    assert_eq!(next_frame(&mut c_out).await, b"hello carol");
    send_frame(&mut c_tx, "hello alice").await;
    assert_eq!(next_frame(&mut a_out).await, b"hello alice");

    // p2pctl and p2p-chat take NAME@GROUP too.
    let sent = ctl(
        &nodes[2],
        &["send", "alice@friends", "notes", "from carol", "--json"],
    );
    assert!(sent.contains("delivered"), "{sent}");
    let mut alice_chat = Chat::start(&nodes[0], None);
    alice_chat.expect_line("* waiting for a chat", T);
    let mut bob_chat = Chat::start(&nodes[1], Some("alice@friends"));
    bob_chat.expect_line(&format!("* connected to {}", ids[0]), T);
    alice_chat.expect_line(&format!("* connected to {}", ids[1]), T);
    bob_chat.type_line("hi alice, bob here");
    alice_chat.expect_line("hi alice, bob here", T);
    assert!(bob_chat.finish(T).success());
    drop(alice_chat);

    // Unknown names and groups: NOT_FOUND; a name outside the grammar: INVALID_ARGUMENT.
    refused(
        send(&a, "dave@friends").await,
        Code::NotFound,
        "named \"dave\"",
        "unknown name",
    );
    refused(
        send(&a, "bob@enemies").await,
        Code::NotFound,
        "no group",
        "unknown group",
    );
    refused(
        send(&a, "Bob@friends").await,
        Code::InvalidArgument,
        "NAME@GROUP",
        "bad name",
    );
    refused(
        open(&a, "talk", "dave@friends", "").await,
        Code::NotFound,
        "named \"dave\"",
        "a channel to an unknown name",
    );

    // carol renames herself bob: two members hold it, and resolving it names both.
    ctl(&nodes[2], &["groups", "name", &group, "bob"]);
    let want = BTreeMap::from([
        (ids[0].clone(), "alice".to_owned()),
        (ids[1].clone(), "bob".to_owned()),
        (ids[2].clone(), "bob".to_owned()),
    ]);
    wait_names(&nodes, &group, &want, "carol renamed bob").await;
    let ambiguous = send(&a, "bob@friends").await;
    refused(
        ambiguous,
        Code::InvalidArgument,
        "ambiguous",
        "an ambiguous name",
    );
    let ambiguous = open(&a, "talk", "bob@friends", "").await;
    match ambiguous {
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            for id in &ids[1..] {
                assert!(status.message().contains(id.as_str()), "{status:?}");
            }
        }
        Ok(_) => panic!("an ambiguous name opened a channel"),
    }
}

/// Opens a session of `app` on `client` that takes only channels in `group`.
async fn group_session(client: &Client, app: &str, group: &str) -> Streaming<SessionEvent> {
    let mut session = client
        .apps()
        .session(SessionRequest {
            app_id: app.into(),
            group: group.into(),
        })
        .await
        .expect("session")
        .into_inner();
    let first = session.next().await.expect("registered").expect("no error");
    assert!(matches!(
        first.kind,
        Some(session_event::Kind::Registered(_))
    ));
    session
}

#[tokio::test(flavor = "multi_thread")]
async fn channels_in_a_group_refuse_non_members_at_the_hello() {
    // alice (admin), bob, carol are members; dave never is.
    let (mut nodes, ids) = full_mesh(4).await;
    let clients = [
        nodes[0].client().await,
        nodes[1].client().await,
        nodes[2].client().await,
        nodes[3].client().await,
    ];
    let [a, b, c, d] = &clients;
    let group = form(&nodes[..3], &ids[..3], &["bob", "carol"]).await;
    let mut a_talk = open_session(a, "talk").await;
    let mut b_talk = open_session(b, "talk").await;

    // A member's channel in the group opens (named by peer id, the group given).
    let opening = {
        let b = b.clone();
        let (peer, group) = (ids[0].clone(), group.clone());
        tokio::spawn(async move { open(&b, "talk", &peer, &group).await })
    };
    let incoming = next_incoming(&mut a_talk, T).await;
    assert_eq!(
        (incoming.peer_id.as_str(), incoming.group.as_str()),
        (ids[1].as_str(), group.as_str())
    );
    let (_a_tx, mut a_out) = accept(a, "talk", incoming.channel_id).await;
    let (_, mut b_tx, _b_out) = opening.await.expect("join").expect("a member's channel");
    send_frame(&mut b_tx, "member").await;
    assert_eq!(next_frame(&mut a_out).await, b"member");

    // dave, never in the group, is refused at alice's hello (dave's node holds no such group:
    // it names the group by its id, which it cannot resolve otherwise).
    let denied = open(d, "talk", &ids[0], &group).await;
    refused(
        denied,
        Code::PermissionDenied,
        "is not a member of group",
        "dave in the group",
    );
    refused(
        open(d, "talk", "alice@friends", "").await,
        Code::NotFound,
        "no group",
        "dave resolving alice@friends",
    );
    // alice's app never saw dave's channel: the next one it is told of is bob's plain one.
    let opening = {
        let b = b.clone();
        let peer = ids[0].clone();
        tokio::spawn(async move { open(&b, "talk", &peer, "").await })
    };
    let incoming = next_incoming(&mut a_talk, T).await;
    assert_eq!(
        (incoming.peer_id.as_str(), incoming.group.as_str()),
        (ids[1].as_str(), "")
    );
    accept(a, "talk", incoming.channel_id).await;
    opening.await.expect("join").expect("a plain channel");

    // A session that takes only channels in the group: dave's plain channel is refused, a
    // member's channel in the group arrives.
    let mut gtalk = group_session(a, "gtalk", "friends").await;
    refused(
        open(d, "gtalk", &ids[0], "").await,
        Code::PermissionDenied,
        "takes only channels in a group",
        "a plain channel to a group session",
    );
    let opening = {
        let c = c.clone();
        tokio::spawn(async move { open(&c, "gtalk", "alice@friends", "").await })
    };
    let incoming = next_incoming(&mut gtalk, T).await;
    assert_eq!(
        (incoming.peer_id.as_str(), incoming.group.as_str()),
        (ids[2].as_str(), group.as_str())
    );
    accept(a, "gtalk", incoming.channel_id).await;
    opening
        .await
        .expect("join")
        .expect("carol's channel in the group");

    // alice removes carol; once bob has the removal too, carol is refused by both.
    ctl(&nodes[0], &["groups", "remove", "friends", &ids[2]]);
    for (i, node) in nodes[..2].iter().enumerate() {
        wait_for(&format!("node {i} to see carol removed"), T, || async {
            names(node, &group)
                .filter(|n| !n.contains_key(&ids[2]))
                .map(|_| ())
        })
        .await;
    }
    for (to, name) in [(0, "alice"), (1, "bob")] {
        let denied = open(c, "talk", &ids[to], &group).await;
        refused(
            denied,
            Code::PermissionDenied,
            "not a member",
            &format!("carol to {name}"),
        );
    }
    // Neither app saw carol's channels: the next each is told of is a member's.
    for (session, acceptor, opener, opener_id, to) in [
        (&mut a_talk, a, b, &ids[1], &ids[0]),
        (&mut b_talk, b, a, &ids[0], &ids[1]),
    ] {
        let opening = {
            let (opener, to, group) = (opener.clone(), to.clone(), group.clone());
            tokio::spawn(async move { open(&opener, "talk", &to, &group).await })
        };
        let incoming = next_incoming(session, T).await;
        assert_eq!(&incoming.peer_id, opener_id);
        accept(acceptor, "talk", incoming.channel_id).await;
        opening.await.expect("join").expect("a member's channel");
    }
}
