//! The overlay in-process: real kernels (temporary data directories, 127.0.0.1, mDNS off) that
//! run only the overlay and a probe capturing the service context, driven through the
//! kernel's registry exactly as the gateway drives them (see `common`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use p2pos_proto::{
    app::v1::DeliveryState,
    monitor::v1::{Event, event::Kind},
};
use p2pos_protocols::{
    apps::{ChannelStream, Session},
    wire,
};
use p2pos_tests::wait_for;
use tokio_util::codec::Framed;

use crate::common::{Node, T, channel, next_channel, open_channel};

#[actix_rt::test]
async fn channels_and_messages_flow_between_two_nodes() {
    let a = Node::boot().await;
    let b = Node::boot().await;
    let (b_ticket, b_addrs) = b.ticket().await;
    assert!(b_ticket.starts_with("p2pos"));
    assert!(
        b_addrs.iter().any(|a| a.starts_with("/ip4/127.0.0.1/tcp/")),
        "{b_addrs:?}"
    );

    let mut session = b.chat_session().await;
    assert_eq!(session.registered.peer_id, b.peer_id());

    // A opens a channel by ticket; B's session announces it and B accepts.
    let (a_end, b_end) = open_and_accept(&a, &b, &mut session).await;
    assert_eq!(b_end.peer_id, a.peer_id());
    assert!(b_end.inbound);
    assert!(!a_end.inbound);
    assert_eq!(a_end.peer_id, b.peer_id());

    // Frames flow both ways, boundaries kept.
    let mut a_io = Framed::new(a_end.io, wire::codec(wire::MAX_CHANNEL_FRAME));
    let mut b_io = Framed::new(b_end.io, wire::codec(wire::MAX_CHANNEL_FRAME));
    for frame in [&b"hello"[..], b"", &[7u8; 100_000]] {
        a_io.send(Bytes::copy_from_slice(frame))
            .await
            .expect("send");
        let got = tokio::time::timeout(T, b_io.next()).await.expect("in time");
        assert_eq!(&got.expect("open").expect("frame")[..], frame);
    }
    b_io.send(Bytes::from_static(b"world")).await.expect("send");
    let got = tokio::time::timeout(T, a_io.next()).await.expect("in time");
    assert_eq!(&got.expect("open").expect("frame")[..], b"world");

    // An app nobody runs on B is a clear error.
    let err = a
        .open_channel("nobody", &b_ticket.clone())
        .await
        .expect_err("not listening");
    assert!(err.message.contains("nobody"), "{err:?}");

    // Three messages while B's app is registered: delivered, and received in order.
    for i in 1..=3 {
        let reply = a
            .send("chat", &b.peer_id(), Bytes::from(format!("message {i}")))
            .await;
        let Ok(reply) = reply else {
            panic!("send: {reply:?}");
        };
        assert_eq!(reply.state(), DeliveryState::Delivered, "message {i}");
    }
    let Ok(mut inbox) = b.receive("chat").await else {
        panic!("receive");
    };
    for i in 1..=3u64 {
        let msg = tokio::time::timeout(T, inbox.recv())
            .await
            .expect("in time")
            .expect("message");
        assert_eq!(msg.payload, Bytes::from(format!("message {i}")));
        assert_eq!(msg.sequence, i);
        assert_eq!(msg.from_peer, a.peer_id());
    }

    // A message for an app B never registered is taken as any other (B does not tell which
    // apps it has), and held there for the app should it register.
    let reply = a
        .send("ghost", &b.peer_id(), Bytes::from_static(b"boo"))
        .await;
    let Ok(reply) = reply else {
        panic!("send: {reply:?}");
    };
    assert_eq!(reply.state(), DeliveryState::Delivered);
    let Ok(mut ghost) = b.receive("ghost").await else {
        panic!("receive");
    };
    let msg = tokio::time::timeout(T, ghost.recv())
        .await
        .expect("in time")
        .expect("message");
    assert_eq!(msg.payload, Bytes::from_static(b"boo"));
    let Ok(apps) = a.list_apps().await else {
        panic!("list apps");
    };
    assert!(apps.apps.iter().all(|app| app.outbox == 0), "{apps:?}");

    // Bad input gets the right codes.
    let err = a
        .send(
            "chat",
            &b.peer_id(),
            Bytes::from(vec![0u8; wire::MAX_PAYLOAD + 1]),
        )
        .await
        .expect_err("too large");
    assert_eq!(
        err.code,
        p2pos_kernel::ErrorCode::ResourceExhausted,
        "{err:?}"
    );
    assert!(err.message.contains("1 MiB"), "{err:?}");
    let err = a.dial("not a ticket").await.expect_err("garbage");
    assert_eq!(
        err.code,
        p2pos_kernel::ErrorCode::InvalidArgument,
        "{err:?}"
    );
    let err = a.dial(&a.peer_id()).await.expect_err("self");
    assert_eq!(
        err.code,
        p2pos_kernel::ErrorCode::InvalidArgument,
        "{err:?}"
    );
    let err = a
        .ping("12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA")
        .await
        .expect_err("stranger");
    assert!(
        matches!(
            err.code,
            p2pos_kernel::ErrorCode::NotFound | p2pos_kernel::ErrorCode::Unavailable
        ),
        "{err:?}"
    );
}

#[actix_rt::test]
async fn a_peer_known_only_by_id_is_found_through_the_dht() {
    let a = Node::boot().await;
    let b = Node::boot().await;
    let c = Node::boot().await;
    let (b_ticket, _) = b.ticket().await;
    assert_eq!(a.dial(&b_ticket).await.expect("A dials B"), b.peer_id());
    wait_for("B to have A in its routing table", T, || async {
        (b.routing_table_size().await >= 1).then_some(())
    })
    .await;
    c.dial(&b_ticket).await.expect("C dials B");

    // C knows A only by its id: the look-up goes through B.
    assert_eq!(
        c.dial(&a.peer_id()).await.expect("C dials A by id"),
        a.peer_id()
    );
    match c.find_peer(&a.peer_id()).await {
        Ok(found) => assert!(
            found
                .addresses
                .iter()
                .any(|x| x.starts_with("/ip4/127.0.0.1/tcp/")),
            "{found:?}"
        ),
        other => panic!("find peer: {other:?}"),
    }
    let peers = c.peers().await;
    let to_a = peers
        .iter()
        .find(|p| p.peer_id == a.peer_id())
        .expect("A among C's peers");
    assert_eq!(to_a.transport, "tcp");
    assert!(to_a.agent_version.is_empty() || to_a.agent_version.starts_with("p2posd/"));
    match c.ping(&a.peer_id()).await {
        Ok(p) => assert!(p.rtt_us > 0),
        other => panic!("ping: {other:?}"),
    }
}

#[actix_rt::test]
async fn a_restarted_network_keeps_its_port_redials_its_peers_and_the_overlay_follows() {
    let a = Node::boot().await;
    let b = Node::boot().await;
    let (_, a_addrs) = a.ticket().await;
    let (b_ticket, _) = b.ticket().await;
    a.dial(&b_ticket).await.expect("A dials B");

    let mut events = a.ctx.events.subscribe();
    a.ctx.kernel.inject_panic("network").await.expect("inject");
    let restarted = tokio::time::timeout(T, async {
        loop {
            if let Ok(Event {
                kind: Some(Kind::ServiceRestarted(r)),
                ..
            }) = events.recv().await
            {
                return r;
            }
        }
    })
    .await
    .expect("a restart");
    assert_eq!(
        (restarted.service.as_str(), restarted.reason.as_str()),
        ("network", "panicked")
    );
    // The old swarm is gone (its port is free again) and the new one takes the same port...
    let again = wait_for("A's network to answer again", T, || async {
        let (_, addresses) = a.try_ticket().await.ok()?;
        (!addresses.is_empty()).then_some(addresses)
    })
    .await;
    assert_eq!(again, a_addrs, "same listen address after a restart");
    // ... and redials B by itself.
    wait_for("A to redial B", T, || async {
        a.peers()
            .await
            .iter()
            .any(|p| p.peer_id == b.peer_id())
            .then_some(())
    })
    .await;
    // The overlay, which took the old network's handle, was restarted after it and serves
    // its protocols on the new one.
    let mut states = a.ctx.states.clone();
    let back = tokio::time::timeout(
        T,
        states.wait_for(|s| {
            s.iter()
                .filter(|s| s.name == "network" || s.name == "overlay")
                .all(|s| s.state == p2pos_kernel::ServiceState::Running)
        }),
    )
    .await;
    assert!(
        matches!(back, Ok(Ok(_))),
        "every service back in time: {:?}",
        a.ctx.states.borrow()
    );
    let mut session = b.chat_session().await;
    let (_a_end, _b_end) = open_and_accept(&a, &b, &mut session).await;
}

/// `opener` opens a channel to app `chat` on `acceptor`, whose `session` announces it and
/// which accepts it.
async fn open_and_accept(
    opener: &Node,
    acceptor: &Node,
    session: &mut Session,
) -> (ChannelStream, ChannelStream) {
    let registry = opener.ctx.registry.clone();
    let (ticket, _) = acceptor.ticket().await;
    let opening = tokio::spawn(async move { open_channel(&registry, "chat", &ticket).await });
    let incoming = next_channel(session).await;
    let accepted = channel(acceptor.accept_channel("chat", incoming.channel_id).await);
    (channel(opening.await.expect("join")), accepted)
}

#[actix_rt::test]
async fn max_channels_counts_open_channels_on_both_ends() {
    let a = Node::boot_with(1).await;
    let b = Node::boot_with(1).await;
    let c = Node::boot().await;
    let mut session = b.chat_session().await;
    let (a_end, b_end) = open_and_accept(&a, &b, &mut session).await;

    // A has its one channel open: a second is refused at once, whatever the peer.
    let (c_ticket, _) = c.ticket().await;
    let err = a
        .open_channel("chat", &c_ticket)
        .await
        .expect_err("over A's limit");
    assert_eq!(
        err.code,
        p2pos_kernel::ErrorCode::ResourceExhausted,
        "{err:?}"
    );
    assert!(
        err.message.contains("too many open channels (limit 1)"),
        "{err:?}"
    );
    // B has its one channel open (accepted, not just pending). A peer's first channel is
    // still taken (so that peers holding B's every place cannot shut another out), its second
    // is answered BUSY.
    let (c_first, b_first) = open_and_accept(&c, &b, &mut session).await;
    let (b_ticket, _) = b.ticket().await;
    let err = c
        .open_channel("chat", &b_ticket)
        .await
        .expect_err("over B's limit");
    assert_eq!(
        err.code,
        p2pos_kernel::ErrorCode::ResourceExhausted,
        "{err:?}"
    );
    assert!(err.message.contains("limit 1"), "{err:?}");

    // Closing the channels (their streams dropped, as the gateway does) frees the places.
    drop((a_end, b_end, c_first, b_first));
    let (_c_end, _b_end) = open_and_accept(&c, &b, &mut session).await;
    let (_a_end, _c_end) = {
        let mut c_session = c.chat_session().await;
        open_and_accept(&a, &c, &mut c_session).await
    };
}

/// Opens a channel to `app_id` on `node` itself, naming the node as `peer`; `session` (of that
/// app) is told and accepts. Returns the opener's end and the acceptor's.
async fn open_and_accept_locally(
    node: &Node,
    app_id: &str,
    peer: String,
    session: &mut Session,
) -> (ChannelStream, ChannelStream) {
    let registry = node.ctx.registry.clone();
    let app = app_id.to_owned();
    let opening = tokio::spawn(async move { open_channel(&registry, &app, &peer).await });
    let incoming = next_channel(session).await;
    assert_eq!(
        incoming.peer_id,
        node.peer_id(),
        "announced as from this node"
    );
    assert_eq!(incoming.app_id, app_id);
    let accepted = channel(node.accept_channel(app_id, incoming.channel_id).await);
    assert_eq!(accepted.channel_id, incoming.channel_id);
    (channel(opening.await.expect("join")), accepted)
}

#[actix_rt::test]
async fn a_channel_to_the_own_peer_id_connects_two_local_sessions() {
    let node = Node::boot().await;
    let mut session = node.session("x").await;
    let (opener, acceptor) =
        open_and_accept_locally(&node, "x", node.peer_id(), &mut session).await;
    assert_eq!(
        (opener.peer_id.as_str(), opener.inbound),
        (node.peer_id().as_str(), false)
    );
    assert_eq!(
        (acceptor.peer_id.as_str(), acceptor.inbound),
        (node.peer_id().as_str(), true)
    );
    assert_eq!(
        (opener.app_id.as_str(), acceptor.app_id.as_str()),
        ("x", "x")
    );
    assert_ne!(opener.channel_id, acceptor.channel_id, "one id per end");

    // Frames flow both ways, boundaries kept, larger ones than the pipe holds included.
    let mut a = Framed::new(opener.io, wire::codec(wire::MAX_CHANNEL_FRAME));
    let mut b = Framed::new(acceptor.io, wire::codec(wire::MAX_CHANNEL_FRAME));
    let big = Bytes::from(vec![7u8; wire::MAX_PAYLOAD]);
    for frame in [Bytes::from_static(b"hello"), Bytes::new(), big] {
        let (sent, got) = tokio::join!(a.send(frame.clone()), b.next());
        sent.expect("send");
        assert_eq!(got.expect("open").expect("frame"), frame);
    }
    for frame in [&b"one"[..], b"two"] {
        b.send(Bytes::from_static(frame)).await.expect("send");
    }
    for frame in [&b"one"[..], b"two"] {
        let got = tokio::time::timeout(T, a.next()).await.expect("in time");
        assert_eq!(&got.expect("open").expect("frame")[..], frame);
    }

    // Half-close: the opener's end of frames reaches the acceptor, who may still answer.
    SinkExt::<Bytes>::close(&mut a).await.expect("close");
    let end = tokio::time::timeout(T, b.next()).await.expect("in time");
    assert!(end.is_none(), "{end:?}");
    b.send(Bytes::from_static(b"last words"))
        .await
        .expect("send");
    let got = tokio::time::timeout(T, a.next()).await.expect("in time");
    assert_eq!(&got.expect("open").expect("frame")[..], b"last words");
    SinkExt::<Bytes>::close(&mut b).await.expect("close");
    let end = tokio::time::timeout(T, a.next()).await.expect("in time");
    assert!(end.is_none(), "{end:?}");

    // The node named by its ticket or by a multiaddr is the node too.
    let (ticket, addrs) = node.ticket().await;
    let by_addr = format!("{}/p2p/{}", addrs[0], node.peer_id());
    for peer in [ticket, by_addr] {
        let (opener, acceptor) = open_and_accept_locally(&node, "x", peer, &mut session).await;
        assert!(!opener.inbound && acceptor.inbound);
    }

    // An app with no session here: FAILED_PRECONDITION, at once.
    let err = node
        .open_channel("nobody", &node.peer_id())
        .await
        .expect_err("not running");
    assert_eq!(
        err.code,
        p2pos_kernel::ErrorCode::FailedPrecondition,
        "{err:?}"
    );
    assert!(
        err.message
            .contains("app 'nobody' is not running on this node"),
        "{err:?}"
    );
    // Messages to oneself stay refused.
    let err = node
        .send("x", &node.peer_id(), Bytes::from_static(b"me"))
        .await
        .expect_err("self");
    assert_eq!(
        err.code,
        p2pos_kernel::ErrorCode::InvalidArgument,
        "{err:?}"
    );
}

#[actix_rt::test]
async fn a_local_channel_counts_once_per_end() {
    let node = Node::boot_with(2).await;
    let mut session = node.session("x").await;
    let (opener, acceptor) =
        open_and_accept_locally(&node, "x", node.peer_id(), &mut session).await;
    let err = node
        .open_channel("x", &node.peer_id())
        .await
        .expect_err("over the limit");
    assert_eq!(
        err.code,
        p2pos_kernel::ErrorCode::ResourceExhausted,
        "{err:?}"
    );
    assert!(err.message.contains("limit 2"), "{err:?}");
    // Both ends dropped (as the gateway's splices do): both places are free again.
    drop((opener, acceptor));
    let (_opener, _acceptor) =
        open_and_accept_locally(&node, "x", node.peer_id(), &mut session).await;
}

#[actix_rt::test]
async fn a_local_channel_not_accepted_in_30_s_times_out() {
    let node = Node::boot_with(2).await;
    let mut session = node.session("x").await;
    let started = Instant::now();
    let registry = node.ctx.registry.clone();
    let peer = node.peer_id();
    let opening = tokio::spawn(async move { open_channel(&registry, "x", &peer).await });
    let incoming = next_channel(&mut session).await;
    let err = tokio::time::timeout(T + Duration::from_secs(10), opening)
        .await
        .expect("answered")
        .expect("join")
        .expect_err("not accepted");
    assert_eq!(
        err.code,
        p2pos_kernel::ErrorCode::DeadlineExceeded,
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(29), "{err:?}");
    // Too late to accept it; and both of its places are free again.
    let err = node
        .accept_channel("x", incoming.channel_id)
        .await
        .expect_err("expired");
    assert_eq!(err.code, p2pos_kernel::ErrorCode::NotFound, "{err:?}");
    let (_opener, _acceptor) =
        open_and_accept_locally(&node, "x", node.peer_id(), &mut session).await;
}

#[actix_rt::test]
async fn a_send_in_flight_when_the_overlay_restarts_is_queued_once() {
    let a = Node::boot().await;
    // A peer behind a port that takes connections and never answers: delivery waits.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let peer = libp2p::PeerId::random();
    let target = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}");

    let mut events = a.ctx.events.subscribe();
    let (sent, ()) = futures::join!(
        a.send("chat", &target, Bytes::from_static(b"hello")),
        async {
            a.ctx.kernel.inject_panic("overlay").await.expect("inject");
        }
    );
    // The message was stored before the overlay went: it is the outbox's now, and the caller
    // is told so (an error would have it sent again, twice).
    match sent {
        Ok(reply) => assert_eq!(reply.state(), DeliveryState::Queued),
        Err(err) => panic!("the send was stored before the restart, yet: {err}"),
    }

    // Once the overlay is back, the message the send had stored is still in the outbox.
    tokio::time::timeout(T, async {
        while !matches!(
            events.recv().await,
            Ok(Event {
                kind: Some(Kind::ServiceRestarted(_)),
                ..
            })
        ) {}
    })
    .await
    .expect("a restart");
    let apps = wait_for("the overlay to answer again", T, || async {
        a.list_apps().await.ok()
    })
    .await;
    let chat = apps.apps.iter().find(|app| app.app_id == "chat");
    assert_eq!(chat.map(|app| app.outbox), Some(1), "{apps:?}");
}

/// Reads `n` messages from `inbox`, in time.
async fn read(
    inbox: &mut tokio::sync::mpsc::Receiver<p2pos_proto::app::v1::ReceivedMessage>,
    n: usize,
) -> Vec<p2pos_proto::app::v1::ReceivedMessage> {
    let mut got = Vec::with_capacity(n);
    for i in 0..n {
        let msg = tokio::time::timeout(T, inbox.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} did not arrive"))
            .expect("the stream is open");
        got.push(msg);
    }
    got
}

/// A and B, connected, B's app `chat` in session (the returned one), and `n` lines from A's
/// `chat` stored in B's inbox: "line 1" to "line n".
async fn lines_delivered(n: usize) -> (Node, Node, Session) {
    let a = Node::boot().await;
    let b = Node::boot().await;
    let (b_ticket, _) = b.ticket().await;
    let session = b.chat_session().await;
    a.dial(&b_ticket).await.expect("dial");
    for i in 1..=n {
        let sent = a
            .send("chat", &b.peer_id(), Bytes::from(format!("line {i}")))
            .await
            .expect("send");
        assert_eq!(sent.state(), DeliveryState::Delivered, "line {i}");
    }
    (a, b, session)
}

#[actix_rt::test]
async fn every_receive_of_an_app_gets_every_message_whoever_acknowledges_it() {
    const N: usize = 20;
    let (a, b, _session) = lines_delivered(N).await;

    // Two copies of the app receive at once: the first reads everything and acknowledges
    // it; the second has not read yet, and still gets every line, in order.
    let mut first = b.receive("chat").await.expect("receive");
    let mut second = b.receive("chat").await.expect("a second receive");
    let read_first = read(&mut first, N).await;
    b.ack("chat", read_first[N - 1].inbox_id)
        .await
        .expect("ack");
    assert!(
        b.inbox("chat").await > 0,
        "the lines the second copy has not had yet are still stored"
    );
    let read_second = read(&mut second, N).await;
    let texts = |got: &[p2pos_proto::app::v1::ReceivedMessage]| {
        got.iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&read_first), texts(&read_second));
    // Once the second copy has had them, the acknowledged lines leave the inbox.
    wait_for("the acknowledged lines to leave the inbox", T, || async {
        (b.inbox("chat").await == 0).then_some(())
    })
    .await;

    // A copy that starts later gets only what is not acknowledged, and the earlier copies
    // get the new line too.
    let sent = a
        .send("chat", &b.peer_id(), Bytes::from_static(b"after"))
        .await
        .expect("send");
    assert_eq!(sent.state(), DeliveryState::Delivered);
    let mut third = b.receive("chat").await.expect("a third receive");
    for inbox in [&mut first, &mut second, &mut third] {
        assert_eq!(texts(&read(inbox, 1).await), ["after"]);
    }

    // A copy that goes away holds nothing back: acknowledged while it lagged, then dropped.
    let line = a
        .send("chat", &b.peer_id(), Bytes::from_static(b"last"))
        .await
        .expect("send");
    assert_eq!(line.state(), DeliveryState::Delivered);
    let last = read(&mut first, 1).await;
    read(&mut second, 1).await;
    b.ack("chat", last[0].inbox_id).await.expect("ack");
    drop(third);
    wait_for("a dropped copy to hold nothing back", T, || async {
        (b.inbox("chat").await == 0).then_some(())
    })
    .await;

    // Each app has a bounded number of streams open at once.
    let mut open = Vec::new();
    let err = loop {
        match b.receive("chat").await {
            Ok(stream) => open.push(stream),
            Err(err) => break err,
        }
        assert!(open.len() <= 16, "no limit on Receive streams");
    };
    assert_eq!(
        err.code,
        p2pos_kernel::ErrorCode::ResourceExhausted,
        "{err:?}"
    );
    assert!(err.message.contains("Receive"), "{err:?}");
}

#[actix_rt::test]
async fn a_stalled_copy_of_an_app_is_let_go_and_holds_back_nothing() {
    const N: usize = 20;
    let (_a, b, _session) = lines_delivered(N).await;
    // One copy reads and acknowledges everything; the other never reads past its buffer.
    let mut reading = b.receive("chat").await.expect("receive");
    let mut stalled = b.receive("chat").await.expect("a second receive");
    let got = read(&mut reading, N).await;
    b.ack("chat", got[N - 1].inbox_id).await.expect("ack");
    assert!(b.inbox("chat").await > 0, "held back for the stalled copy");
    // After 30 s without taking a message it is let go, and the inbox empties.
    wait_for(
        "the stalled copy to be let go",
        Duration::from_secs(60),
        || async { (b.inbox("chat").await == 0).then_some(()) },
    )
    .await;
    let mut buffered = 0;
    while tokio::time::timeout(T, stalled.recv())
        .await
        .expect("the stream ends")
        .is_some()
    {
        buffered += 1;
    }
    assert!(
        buffered < N,
        "the stalled stream ended early: {buffered} of {N}"
    );
}
