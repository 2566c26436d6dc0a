//! The network handle as a new service uses it (here, the test's probe): a protocol of its own,
//! accepted within limits and opened from another node, with no change to the network; DHT
//! records signed by the node that put them.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use libp2p::StreamProtocol;
use p2pos_protocols::network::{Error, Limits, accept::drop_stream};
use p2pos_tests::wait_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::common::{Node, T};

/// A protocol no part of the node knows.
const ECHO: StreamProtocol = StreamProtocol::new("/p2pos/test-echo/1");

/// Two nodes, `a` dialled by `b`.
async fn pair() -> (Node, Node) {
    let (a, b) = (Node::boot().await, Node::boot().await);
    let (ticket, _) = a.ticket().await;
    b.dial(&ticket).await.expect("dial");
    (a, b)
}

#[actix_rt::test]
async fn a_service_serves_its_own_protocol_through_the_handle() {
    let (a, b) = pair().await;
    let limits = Limits {
        total: 4,
        per_peer: 1,
        max_frame: 1024,
        idle: T,
    };
    let _serving = a
        .network()
        .accept(
            ECHO,
            limits,
            |_, stream| async move {
                let mut io = stream.compat();
                let mut buf = [0u8; 5];
                if io.read_exact(&mut buf).await.is_ok() {
                    let _ = io.write_all(&buf).await;
                    let _ = io.shutdown().await;
                }
            },
            drop_stream,
        )
        .expect("accept");
    // A second service cannot take the same protocol.
    let taken = a
        .network()
        .accept(ECHO, limits, |_, _| async {}, drop_stream)
        .expect_err("one acceptor");
    assert!(matches!(taken, Error::AlreadyAccepted(_)), "{taken:?}");

    let peer = a.ctx.peer_id;
    let stream = tokio::time::timeout(T, b.network().open_stream(peer, ECHO))
        .await
        .expect("in time")
        .expect("a stream");
    let mut io = stream.compat();
    io.write_all(b"hello").await.expect("write");
    let mut echoed = Vec::new();
    tokio::time::timeout(T, io.read_to_end(&mut echoed))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(echoed, b"hello");

    // A node that does not serve it says so.
    let other = b.ctx.peer_id;
    let refused = a.network().open_stream(other, ECHO).await;
    assert!(refused.is_err(), "b does not accept {ECHO}");
}

#[actix_rt::test]
async fn a_silent_inbound_stream_is_closed_after_its_protocols_idle_time() {
    let (a, b) = pair().await;
    let limits = Limits {
        total: 4,
        per_peer: 1,
        max_frame: 1024,
        idle: Duration::from_secs(1),
    };
    let _serving = a
        .network()
        .accept(
            ECHO,
            limits,
            |_, stream| async move {
                assert_eq!(
                    stream.max_frame(),
                    1024,
                    "the handler learns the frame limit"
                );
                // A handler that would wait for ever on a peer that says nothing.
                let mut io = stream.compat();
                let mut buf = [0u8; 5];
                if io.read_exact(&mut buf).await.is_ok() {
                    let _ = io.write_all(&buf).await;
                }
                std::future::pending::<()>().await;
            },
            drop_stream,
        )
        .expect("accept");
    let stream = tokio::time::timeout(T, b.network().open_stream(a.ctx.peer_id, ECHO))
        .await
        .expect("in time")
        .expect("a stream");
    let mut io = stream.compat();
    // Bytes that move keep it open...
    io.write_all(b"hello").await.expect("write");
    let mut echoed = [0u8; 5];
    tokio::time::timeout(T, io.read_exact(&mut echoed))
        .await
        .expect("in time")
        .expect("echoed");
    // ... and once nothing moves for the idle time, the serving side closes it.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(T, io.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the idle stream was closed by the acceptor");
    assert!(rest.is_empty(), "{rest:?}");
}

#[actix_rt::test]
async fn records_are_signed_by_the_node_that_put_them() {
    let (a, b) = pair().await;
    wait_for("a in b's routing table", T, || async {
        (b.routing_table_size().await > 0 && a.routing_table_size().await > 0).then_some(())
    })
    .await;
    let key = "/p2pos/test/record".to_owned();
    a.network()
        .put_record(key.clone(), Bytes::from_static(b"from a"))
        .await
        .expect("put");
    let found = wait_for("b to get a's record", T, || {
        let (net, key) = (b.network(), key.clone());
        async move { net.get_record(key).await.ok() }
    })
    .await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].publisher, a.ctx.peer_id);
    assert_eq!(found[0].value, Bytes::from_static(b"from a"));

    // Keys outside /p2pos/ and oversized values are refused before they reach the DHT.
    let bad = a
        .network()
        .put_record("/ipfs/x".into(), Bytes::new())
        .await
        .expect_err("refused");
    assert!(matches!(bad, Error::InvalidKey { .. }), "{bad:?}");
    let big = Bytes::from(vec![0u8; p2pos_protocols::network::MAX_RECORD + 1]);
    let bad = a
        .network()
        .put_record(key.clone(), big)
        .await
        .expect_err("refused");
    assert!(matches!(bad, Error::RecordTooLarge { .. }), "{bad:?}");
    let missing = b
        .network()
        .get_record("/p2pos/test/nobody".into())
        .await
        .expect_err("nothing there");
    assert!(
        matches!(missing, Error::RecordNotFound { .. }),
        "{missing:?}"
    );
}

#[actix_rt::test]
async fn connection_events_reach_followers() {
    let (a, b) = (Node::boot().await, Node::boot().await);
    let mut events = tokio_stream::wrappers::BroadcastStream::new(a.network().subscribe());
    let (ticket, _) = b.ticket().await;
    a.dial(&ticket).await.expect("dial");
    let event = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("not lagged");
    let p2pos_protocols::network::NetEvent::Connected(peer) = event else {
        panic!("a connection first: {event:?}");
    };
    assert_eq!(peer, b.ctx.peer_id);
}

#[actix_rt::test]
async fn pings_of_one_peer_at_once_all_succeed() {
    // `b` dialled `a`: it is connected to `a` once the dial answers.
    let (b, a) = pair().await;
    let b_name = b.peer_id();
    let b_id: libp2p::PeerId = b_name.parse().expect("peer id");
    // Twenty at once through the handle, and twenty through Overlay.Ping: libp2p's ping
    // handler keeps one inbound stream per connection, so each fresh stream would end the one
    // before it; they share one round trip instead.
    let net = a.network();
    let direct = futures::future::join_all(
        (0..20).map(|_| net.ping(b_id, Vec::new(), Duration::from_secs(10))),
    );
    let overlay = futures::future::join_all((0..20).map(|_| a.ping(&b_name)));
    let (direct, overlay) = tokio::join!(direct, overlay);
    for (i, rtt) in direct.into_iter().enumerate() {
        let rtt = rtt.unwrap_or_else(|e| panic!("ping {i} through the handle: {e}"));
        assert!(rtt > Duration::ZERO);
    }
    for (i, reply) in overlay.into_iter().enumerate() {
        let reply = reply.unwrap_or_else(|e| panic!("Overlay.Ping {i}: {e:?}"));
        assert!(reply.rtt_us > 0);
    }
    // And again, after the shared one ended.
    let again = futures::future::join_all((0..20).map(|_| a.ping(&b_name))).await;
    assert!(again.iter().all(Result::is_ok), "{again:?}");
}
