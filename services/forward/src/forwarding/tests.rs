//! Tests of port forwarding, in-process: real TCP servers on 127.0.0.1:0, channels as
//! in-memory duplex pipes, a real sled store in a temporary directory.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio_util::task::AbortOnDropHandle;

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use p2pos_kernel::{ErrorCode, ServiceError, Store, store::SledStore};
use p2pos_proto::service::v1::{ExposeRequest, Exposure, OpenForwardRequest};
use p2pos_protocols::{
    apps::ChannelStream,
    wire::{FrameCodec, MAX_CHANNEL_FRAME, MAX_PAYLOAD, codec},
};
use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::*;

/// How long any one step of a test may take.
const DEADLINE: Duration = Duration::from_secs(20);
/// Buffer of the in-memory channels.
const PIPE: usize = 64 * 1024;

/// A sled store in a fresh temporary directory.
fn store() -> (TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open store");
    (dir, store)
}

/// `fut`, or a failed test after [`DEADLINE`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {DEADLINE:?}"))
}

/// Waits until `cond` holds, or fails the test after [`DEADLINE`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A TCP server on 127.0.0.1:0 that echoes each connection and closes its write side when
/// the client closes its own.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

fn expose_req(target: &str, service: &str) -> ExposeRequest {
    ExposeRequest {
        target: target.into(),
        service: service.into(),
    }
}

fn forward_req(service: &str, peer: &str, listen: &str) -> OpenForwardRequest {
    OpenForwardRequest {
        service: service.into(),
        peer: peer.into(),
        listen: listen.into(),
        ..OpenForwardRequest::default()
    }
}

/// A framed client on one end of a channel.
fn framed(
    io: DuplexStream,
) -> (
    FramedRead<tokio::io::ReadHalf<DuplexStream>, FrameCodec>,
    FramedWrite<tokio::io::WriteHalf<DuplexStream>, FrameCodec>,
) {
    let (r, w) = tokio::io::split(io);
    (
        FramedRead::new(r, codec(MAX_CHANNEL_FRAME)),
        FramedWrite::new(w, codec(MAX_CHANNEL_FRAME)),
    )
}

/// Reads frames until `len` bytes have come.
async fn read_bytes(
    frames: &mut FramedRead<tokio::io::ReadHalf<DuplexStream>, FrameCodec>,
    len: usize,
) -> Vec<u8> {
    let mut got = Vec::with_capacity(len);
    while got.len() < len {
        let frame = frames
            .next()
            .await
            .expect("a frame, not the end")
            .expect("a good frame");
        got.extend_from_slice(&frame);
    }
    assert_eq!(got.len(), len, "more bytes than sent");
    got
}

/// `len` bytes that are not all alike.
fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn code(err: Error) -> ErrorCode {
    ServiceError::from(err).code
}

/// An exposure served over one end of a duplex pipe, with a framed client on the other.
async fn exposed_echo() -> (TempDir, Forwarding, SocketAddr) {
    let target = echo_server().await;
    let (dir, store) = store();
    let mut fwd = Forwarding::load(store).expect("load");
    let exposure = within(
        "expose",
        fwd.expose(expose_req(&target.to_string(), "echo")),
    )
    .await
    .expect("expose");
    assert_eq!(exposure.service, "echo/1");
    assert_eq!(exposure.target, target.to_string());
    (dir, fwd, target)
}

#[tokio::test]
async fn an_exposure_splices_a_channel_onto_its_target() {
    let (_dir, fwd, _) = exposed_echo().await;
    let (ours, theirs) = tokio::io::duplex(PIPE);
    fwd.serve("echo/1", Box::new(theirs)).expect("serve");
    let (mut rx, mut tx) = framed(ours);

    within("small round trip", async {
        tx.send(Bytes::from_static(b"hello")).await.expect("send");
        assert_eq!(read_bytes(&mut rx, 5).await, b"hello");
    })
    .await;

    // A full-size frame and then some, written while the echo is read.
    let sent = body(MAX_PAYLOAD + 12_345);
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            tx.send(Bytes::copy_from_slice(&sent[..MAX_PAYLOAD]))
                .await
                .expect("send 1 MiB");
            tx.send(Bytes::copy_from_slice(&sent[MAX_PAYLOAD..]))
                .await
                .expect("send the rest");
            tx
        })
    };
    let got = within("1 MiB round trip", read_bytes(&mut rx, sent.len())).await;
    assert!(got == sent, "the echoed bytes differ");
    let mut tx = writer.await.expect("writer");

    // Our end of frames closes the target's input; the target then closes, and so do the
    // frames towards us.
    within("half-close", async {
        SinkExt::<Bytes>::close(&mut tx).await.expect("close");
        assert!(rx.next().await.is_none(), "frames after the end");
    })
    .await;
    until("the tunnel to close", || {
        let list = fwd.exposures().exposures;
        list[0].connections == 1 && list[0].open == 0
    })
    .await;
}

#[tokio::test]
async fn each_direction_half_closes_on_its_own() {
    // The target says hello and closes its write side first, then reads until the end.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = listener.local_addr().expect("addr");
    let (heard_tx, heard_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        tcp.write_all(b"greeting").await.expect("write");
        tcp.shutdown().await.expect("shutdown");
        let mut heard = Vec::new();
        tcp.read_to_end(&mut heard).await.expect("read");
        let _ = heard_tx.send(heard);
    });
    let (_dir, store) = store();
    let mut fwd = Forwarding::load(store).expect("load");
    fwd.expose(expose_req(&target.to_string(), "hello/2"))
        .await
        .expect("expose");
    let (ours, theirs) = tokio::io::duplex(PIPE);
    fwd.serve("hello/2", Box::new(theirs)).expect("serve");
    let (mut rx, mut tx) = framed(ours);
    within("the target's end", async {
        assert_eq!(read_bytes(&mut rx, 8).await, b"greeting");
        assert!(rx.next().await.is_none(), "frames after the target's end");
    })
    .await;
    // The other direction is still open.
    within("late bytes", async {
        tx.send(Bytes::from_static(b"late ")).await.expect("send");
        tx.send(Bytes::from_static(b"words")).await.expect("send");
        SinkExt::<Bytes>::close(&mut tx).await.expect("close");
        assert_eq!(heard_rx.await.expect("heard"), b"late words");
    })
    .await;
}

#[tokio::test]
async fn a_target_that_is_down_closes_the_channel() {
    // A port that was free a moment ago.
    let target = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (_dir, store) = store();
    let mut fwd = Forwarding::load(store).expect("load");
    fwd.expose(expose_req(&target.to_string(), "down"))
        .await
        .expect("expose");
    let (ours, theirs) = tokio::io::duplex(PIPE);
    fwd.serve("down", Box::new(theirs)).expect("serve");
    let (mut rx, _tx) = framed(ours);
    within("the channel to close", async {
        assert!(rx.next().await.is_none());
    })
    .await;
    let err = fwd
        .serve("nothing/1", Box::new(tokio::io::duplex(8).0))
        .expect_err("not exposed");
    assert_eq!(code(err), ErrorCode::NotFound);
}

/// An opener that serves each channel through `exposer` on an in-memory pipe.
fn loopback_opener(exposer: Arc<Mutex<Forwarding>>) -> Opener {
    Arc::new(move |service: String, peer: String| {
        let (ours, theirs) = tokio::io::duplex(PIPE);
        let served = exposer
            .lock()
            .expect("exposer lock")
            .serve(&service, Box::new(theirs));
        async move {
            served?;
            Ok(ChannelStream {
                channel_id: 0,
                peer_id: peer,
                app_id: String::new(),
                inbound: false,
                io: Box::new(ours),
                group: String::new(),
                circuit: None,
            })
        }
        .boxed()
    })
}

/// Sends `body` through a forward and reads the echo to the end.
async fn through(listen: SocketAddr, body: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(listen).await.expect("connect");
    let (mut r, mut w) = tcp.split();
    let write = async {
        w.write_all(body).await.expect("write");
        w.shutdown().await.expect("shutdown");
    };
    let mut got = Vec::new();
    let read = async {
        r.read_to_end(&mut got).await.expect("read");
    };
    tokio::join!(write, read);
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_tunnels_connections_to_an_exposure() {
    let (_dir_b, exposer, _) = exposed_echo().await;
    let exposer = Arc::new(Mutex::new(exposer));
    let (_dir_a, store) = store();
    let mut fwd = Forwarding::load(store).expect("load");
    let forward = fwd
        .open_forward(
            forward_req("echo", "", "127.0.0.1:0"),
            loopback_opener(exposer.clone()),
        )
        .expect("open forward");
    assert_eq!(forward.service, "echo/1");
    let listen: SocketAddr = forward.listen.parse().expect("bound address");
    assert_ne!(listen.port(), 0);

    let big = body(MAX_PAYLOAD + 1);
    let got = within("1 MiB through the forward", through(listen, &big)).await;
    assert!(got == big, "the 1 MiB body differs");

    let mut clients = tokio::task::JoinSet::new();
    for i in 0..100 {
        clients.spawn(async move {
            let msg = format!("GET /{i} HTTP/1.0\r\n\r\n").into_bytes();
            assert_eq!(through(listen, &msg).await, msg, "connection {i}");
        });
    }
    within("100 concurrent connections", async {
        while let Some(done) = clients.join_next().await {
            done.expect("client");
        }
    })
    .await;

    until("the counts to settle", || {
        let f = &fwd.forwards().forwards[0];
        let e = &exposer.lock().expect("lock").exposures().exposures[0];
        f.connections == 101 && f.open == 0 && e.connections == 101 && e.open == 0
    })
    .await;

    // Closed: the port no longer accepts.
    fwd.close_forward(forward.forward_id).expect("close");
    assert!(fwd.forwards().forwards.is_empty());
    within("the listener to go", async {
        while TcpStream::connect(listen).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        code(fwd.close_forward(forward.forward_id).expect_err("gone")),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn a_failed_open_closes_the_connection() {
    let (_dir, store) = store();
    let mut fwd = Forwarding::load(store).expect("load");
    let opener: Opener = Arc::new(|service: String, _peer: String| {
        async move { Err(Error::NotExposed(service)) }.boxed()
    });
    let forward = fwd
        .open_forward(forward_req("web/1", "", "127.0.0.1:0"), opener)
        .expect("open forward");
    let listen: SocketAddr = forward.listen.parse().expect("addr");
    let mut tcp = TcpStream::connect(listen).await.expect("connect");
    let mut got = Vec::new();
    // Closed, cleanly or (data unread on the way) by a reset, with nothing said.
    if let Err(e) = within("the connection to close", tcp.read_to_end(&mut got)).await {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    assert!(got.is_empty());
}

#[tokio::test]
async fn a_full_forward_closes_new_connections_at_once() {
    let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let listen = listener.local_addr().expect("addr");
    let tunnels = Tunnels::new(1);
    // Holds the first connection's channel open for ever.
    let opener: Opener = Arc::new(|_, _| futures::future::pending().boxed());
    let _accept = AbortOnDropHandle::new(tokio::spawn(tunnel::accept_loop(Listener {
        listener,
        forward_id: 1,
        service: "web/1".into(),
        peer: String::new(),
        opener,
        tunnels: tunnels.clone(),
        resets: super::resets::Resets::default(),
    })));
    let _first = TcpStream::connect(listen).await.expect("first");
    until("the first tunnel", || tunnels.open() == 1).await;
    let mut second = TcpStream::connect(listen).await.expect("second");
    let mut buf = [0u8; 1];
    let n = within("the second to be closed", second.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(tunnels.total(), 1);
}

#[tokio::test]
async fn bad_requests_get_clear_codes() {
    let (_dir, store) = store();
    let mut fwd = Forwarding::load(store).expect("load");
    let expose_err = |fwd: &mut Forwarding, target: &str, service: &str| {
        fwd.expose(expose_req(target, service))
            .now_or_never()
            .expect("answered at once")
            .expect_err("refused")
    };
    for (target, service) in [
        ("10.0.0.1:80", "web"),
        ("0.0.0.0:80", "web"),
        ("web:80", "web"),
        ("127.0.0.1", "web"),
        ("127.0.0.1:0", "web"),
        ("127.0.0.1:80", ""),
        ("127.0.0.1:80", "web/x"),
        ("127.0.0.1:80", &"w".repeat(49)),
    ] {
        let err = expose_err(&mut fwd, target, service);
        assert_eq!(code(err), ErrorCode::InvalidArgument, "{target} {service}");
    }
    assert!(fwd.exposures().exposures.is_empty());

    for i in 0..MAX_EXPOSURES {
        fwd.expose(expose_req("127.0.0.1:80", &format!("s{i}")))
            .await
            .expect("expose");
    }
    // Replacing one is no new exposure; another one is one too many.
    fwd.expose(expose_req("[::1]:81", "s0"))
        .await
        .expect("replace");
    let err = expose_err(&mut fwd, "127.0.0.1:80", "one-more");
    assert_eq!(code(err), ErrorCode::ResourceExhausted);
    assert_eq!(fwd.exposures().exposures.len(), MAX_EXPOSURES);
    let names = fwd.exposed_services();
    assert!(names.contains(&"s0/1".to_owned()) && !names.contains(&"s0/2".to_owned()));

    let err = fwd.withdraw("nope").await.expect_err("not exposed");
    assert_eq!(code(err), ErrorCode::NotFound);
    let err = fwd.withdraw("").await.expect_err("bad name");
    assert_eq!(code(err), ErrorCode::InvalidArgument);

    let opener = || -> Opener { Arc::new(|_, _| futures::future::pending().boxed()) };
    for (service, peer, listen, want) in [
        ("web", "", "0.0.0.0:0", ErrorCode::InvalidArgument),
        ("web", "", "192.168.1.1:8080", ErrorCode::InvalidArgument),
        ("web", "", "nowhere", ErrorCode::InvalidArgument),
        ("", "", "127.0.0.1:0", ErrorCode::InvalidArgument),
        (
            "web",
            "not-a-peer",
            "127.0.0.1:0",
            ErrorCode::InvalidArgument,
        ),
    ] {
        let err = fwd
            .open_forward(forward_req(service, peer, listen), opener())
            .expect_err("refused");
        assert_eq!(code(err), want, "{service} {peer} {listen}");
    }
    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    let err = fwd
        .open_forward(forward_req("web", "", &taken), opener())
        .expect_err("in use");
    assert!(matches!(err, Error::Listen { .. }), "{err}");
    assert_eq!(code(err), ErrorCode::FailedPrecondition);

    for _ in 0..MAX_FORWARDS {
        fwd.open_forward(forward_req("web", "", "127.0.0.1:0"), opener())
            .expect("open");
    }
    let err = fwd
        .open_forward(forward_req("web", "", "127.0.0.1:0"), opener())
        .expect_err("too many");
    assert_eq!(code(err), ErrorCode::ResourceExhausted);
    assert_eq!(fwd.forwards().forwards.len(), MAX_FORWARDS);
}

#[tokio::test]
async fn exposures_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listed = |fwd: &Forwarding| -> Vec<(String, String)> {
        fwd.exposures()
            .exposures
            .into_iter()
            .map(
                |Exposure {
                     service, target, ..
                 }| (service, target),
            )
            .collect()
    };
    {
        let store = SledStore::open(dir.path()).expect("open");
        let mut fwd = Forwarding::load(store).expect("load");
        for (target, service) in [
            ("127.0.0.1:8080", "web"),
            ("[::1]:22", "ssh/2"),
            ("127.0.0.1:5432", "db"),
        ] {
            fwd.expose(expose_req(target, service))
                .await
                .expect("expose");
        }
        fwd.expose(expose_req("127.0.0.1:8081", "web/1"))
            .await
            .expect("replace");
        fwd.withdraw("db").await.expect("withdraw");
        let forward = fwd
            .open_forward(
                forward_req("web", "", "127.0.0.1:0"),
                Arc::new(|_, _| futures::future::pending().boxed()),
            )
            .expect("forward");
        assert_eq!(fwd.forwards().forwards[0].forward_id, forward.forward_id);
    }
    // sled's background threads may hold the file lock for a moment after the last handle in
    // this process is gone: wait for it, with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let store = loop {
        match SledStore::open(dir.path()) {
            Ok(store) => break store,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!("the store is still locked: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    let fwd = Forwarding::load(store).expect("load again");
    assert_eq!(
        listed(&fwd),
        [
            ("ssh/2".to_owned(), "[::1]:22".to_owned()),
            ("web/1".to_owned(), "127.0.0.1:8081".to_owned()),
        ]
    );
    assert_eq!(fwd.exposed_services(), ["ssh/2", "web/1"]);
    assert!(fwd.forwards().forwards.is_empty(), "forwards are not kept");
}

#[tokio::test]
async fn an_unreadable_record_is_skipped_and_kept() {
    let (_dir, store) = store();
    store
        .insert(EXPOSURES_TREE, b"bad/1", b"\xff\xff")
        .expect("insert");
    let good = Exposure {
        service: "good/1".into(),
        target: "127.0.0.1:80".into(),
        connections: 0,
        open: 0,
        ..Exposure::default()
    };
    store
        .insert(EXPOSURES_TREE, b"good/1", &good.encode_to_vec())
        .expect("insert");
    let fwd = Forwarding::load(store.clone()).expect("load");
    assert_eq!(fwd.exposed_services(), ["good/1"]);
    assert!(store.get(EXPOSURES_TREE, b"bad/1").expect("get").is_some());
}

#[tokio::test]
async fn the_store_sees_an_exposure_and_its_withdrawal_in_the_order_they_were_made() {
    let (_dir, store) = store();
    let mut fwd = Forwarding::load(store.clone()).expect("load");
    let exposing = fwd.expose(expose_req("127.0.0.1:8080", "web"));
    let withdrawing = fwd.withdraw("web");
    // The withdrawal's future is driven first: it still writes after the exposure.
    within("the withdrawal", withdrawing)
        .await
        .expect("withdraw");
    within("the exposure", exposing).await.expect("expose");
    let again = Forwarding::load(store).expect("load");
    assert!(
        again.exposures().exposures.is_empty(),
        "a withdrawn exposure came back: {:?}",
        again.exposures()
    );
}
