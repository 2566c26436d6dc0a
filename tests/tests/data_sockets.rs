//! Data sockets: a channel's frames over a plain local socket the node names when the channel
//! opens, with the gRPC call kept as the channel's control. Real nodes, the Rust SDK (which
//! uses data sockets by default), and raw sockets for what an SDK would never do.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use p2pos_client::{Channel, Client, Gateway, Target};
use p2pos_proto::app::v1::{
    AcceptChannel, ChannelInput, ChannelOutput, ChannelTransport, DataSocket, OpenChannel,
    channel_input, channel_output,
};
use p2pos_tests::{Node, free_port, next_incoming, open_session, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::{Code, Streaming};

const T: Duration = Duration::from_secs(30);
const APP: &str = "data";

/// Two nodes, B's `data` session open; A's client, B's client and session, B's ticket.
struct Pair {
    a: Node,
    b: Node,
    client_a: Client,
    client_b: Client,
    session_b: Streaming<p2pos_proto::app::v1::SessionEvent>,
    ticket_b: String,
}

impl Pair {
    async fn start() -> Pair {
        let mut a = Node::start(&[]);
        let mut b = Node::start(&[]);
        let client_a = a.client().await;
        let client_b = b.client().await;
        let session_b = open_session(&client_b, APP).await;
        let ticket_b = b.ticket().await;
        Pair {
            a,
            b,
            client_a,
            client_b,
            session_b,
            ticket_b,
        }
    }

    /// A channel from A to B through the SDK on both ends (data sockets, the default).
    async fn channels(&mut self) -> (Channel<ChannelInput>, Channel<ChannelInput>) {
        let client = self.client_a.clone();
        let open = OpenChannel {
            app_id: APP.into(),
            peer: self.ticket_b.clone(),
            ..Default::default()
        };
        let opening = tokio::spawn(async move { client.open_channel(open).await });
        let b = self.accept_on_b().await;
        let a = opening.await.expect("join").expect("A opens");
        (a, b)
    }

    /// B accepts the next channel announced on its session, through the SDK.
    async fn accept_on_b(&mut self) -> Channel<ChannelInput> {
        let incoming = next_incoming(&mut self.session_b, T).await;
        let accept = AcceptChannel {
            channel_id: incoming.channel_id,
            app_id: APP.into(),
            ..Default::default()
        };
        self.client_b
            .accept_channel(accept)
            .await
            .expect("B accepts")
    }

    /// A channel from A to B that B accepts through the SDK and A opens with a raw call asking
    /// for `transport`: A's call and where its data socket is.
    async fn raw_open(
        &mut self,
        transport: ChannelTransport,
    ) -> (RawCall, DataSocket, Channel<ChannelInput>) {
        let open = OpenChannel {
            app_id: APP.into(),
            peer: self.ticket_b.clone(),
            transport: transport as i32,
            ..Default::default()
        };
        let client = self.client_a.clone();
        let opening = tokio::spawn(async move { RawCall::open(&client, open).await });
        let b = self.accept_on_b().await;
        let (call, socket) = opening.await.expect("join");
        (call, socket, b)
    }
}

/// An `Apps.Channel` call made by hand: its input (kept open) and output.
struct RawCall {
    _input: futures::channel::mpsc::Sender<ChannelInput>,
    output: Streaming<ChannelOutput>,
}

impl RawCall {
    async fn open(client: &Client, open: OpenChannel) -> (RawCall, DataSocket) {
        let (mut input, rx) = futures::channel::mpsc::channel(1);
        input
            .send(ChannelInput {
                kind: Some(channel_input::Kind::Open(open)),
            })
            .await
            .expect("queue open");
        let mut output = client
            .apps()
            .channel(rx)
            .await
            .expect("the call starts")
            .into_inner();
        let opened = tokio::time::timeout(T, output.message())
            .await
            .expect("opened in time")
            .expect("opened")
            .expect("an output");
        let Some(channel_output::Kind::Opened(opened)) = opened.kind else {
            panic!("expected opened, got {opened:?}");
        };
        let socket = opened.data_socket.expect("a data socket is offered");
        (
            RawCall {
                _input: input,
                output,
            },
            socket,
        )
    }

    /// The call's next output or status, within the deadline.
    async fn next(&mut self) -> Result<Option<ChannelOutput>, tonic::Status> {
        tokio::time::timeout(T, self.output.message())
            .await
            .expect("the call says something in time")
    }
}

/// Connects to a unix data socket and presents `secret`: the node's answer byte, and the reason
/// it gives when it refuses.
async fn present(socket: &DataSocket, secret: &[u8]) -> (UnixStream, u8, String) {
    let mut conn = UnixStream::connect(&socket.unix_path)
        .await
        .expect("connect to the data socket");
    conn.write_all(secret).await.expect("write the secret");
    let answer = conn.read_u8().await.expect("an answer");
    let mut why = String::new();
    if answer != 0 {
        conn.read_to_string(&mut why).await.expect("the reason");
    }
    (conn, answer, why)
}

fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut framed = u32::try_from(bytes.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    framed.extend_from_slice(bytes);
    framed
}

fn numbered(i: u32) -> Bytes {
    Bytes::from(i.to_be_bytes().repeat((i % 20) as usize + 1))
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_cross_data_sockets_in_order_and_each_side_half_closes_on_its_own() {
    const SMALL: u32 = 10_000;
    let mut pair = Pair::start().await;
    let (a, b) = pair.channels().await;
    for side in [&a, &b] {
        let socket = side
            .opened
            .data_socket
            .as_ref()
            .expect("the SDK asked for one");
        assert!(socket.unix_path.ends_with("data.sock"), "{socket:?}");
        assert_eq!(socket.secret.len(), 32);
    }
    let (mut a_tx, mut a_rx) = (a.sender, a.receiver);
    let (mut b_tx, mut b_rx) = (b.sender, b.receiver);
    let big = Bytes::from(
        (0..1024 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );

    // A sends 10,000 small frames, an empty one and a 1 MiB one, then half-closes.
    let sent_big = big.clone();
    let sending = tokio::spawn(async move {
        for i in 0..SMALL {
            a_tx.feed(numbered(i)).await.expect("feed");
        }
        a_tx.feed(Bytes::new()).await.expect("feed the empty frame");
        a_tx.feed(sent_big).await.expect("feed the large frame");
        a_tx.close().await.expect("half-close");
    });
    for i in 0..SMALL {
        let got = tokio::time::timeout(T, b_rx.next())
            .await
            .expect("in time")
            .expect("more frames")
            .expect("a frame");
        assert_eq!(got, numbered(i), "frame {i} arrives whole and in order");
    }
    let empty = b_rx.next().await.expect("the empty frame").expect("ok");
    assert!(empty.is_empty());
    let got = b_rx.next().await.expect("the 1 MiB frame").expect("ok");
    assert_eq!(got, big, "the 1 MiB frame arrives exact");
    assert!(
        tokio::time::timeout(T, b_rx.next())
            .await
            .expect("in time")
            .is_none(),
        "A's half-close is a clean end of its frames for B"
    );
    sending.await.expect("A sent everything");

    // B still sends after A's half-close, then half-closes too.
    b_tx.send(Bytes::from_static(b"after your close"))
        .await
        .expect("B sends");
    b_tx.close().await.expect("B half-closes");
    let got = tokio::time::timeout(T, a_rx.next())
        .await
        .expect("in time")
        .expect("B's frame")
        .expect("ok");
    assert_eq!(got, Bytes::from_static(b"after your close"));
    assert!(
        tokio::time::timeout(T, a_rx.next())
            .await
            .expect("in time")
            .is_none(),
        "B's half-close ends A's receiver cleanly"
    );
    drop(pair);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_abandons_its_channel_is_an_error_for_the_other_app_not_an_end() {
    let mut pair = Pair::start().await;
    let (a, b) = pair.channels().await;
    let (mut a_tx, mut a_rx) = (a.sender, a.receiver);
    a_tx.send(Bytes::from_static(b"hello")).await.expect("send");
    let (_b_tx, mut b_rx) = (b.sender, b.receiver);
    assert_eq!(
        b_rx.next().await.expect("a frame").expect("ok"),
        Bytes::from_static(b"hello")
    );
    // B's app goes away with A still sending: its call and socket end together.
    drop(b_rx);
    let status = tokio::time::timeout(T, a_rx.next())
        .await
        .expect("A hears in time")
        .expect("not a clean end")
        .expect_err("a broken channel is an error");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("peer"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_reused_and_expired_secrets_are_refused_and_the_node_serves_on() {
    let mut pair = Pair::start().await;
    let (mut call, socket, b) = pair.raw_open(ChannelTransport::SocketFrames).await;

    // A wrong secret: refused with the reason, and the channel still waits for its own.
    let mut wrong = socket.secret.to_vec();
    wrong[0] ^= 1;
    let (_, answer, why) = present(&socket, &wrong).await;
    assert_ne!(answer, 0);
    assert!(why.contains("unknown, used or expired"), "{why}");
    // A connection that says nothing is refused too, after a while.
    let mut silent = UnixStream::connect(&socket.unix_path)
        .await
        .expect("connect");
    let mut refused = Vec::new();
    tokio::time::timeout(T, silent.read_to_end(&mut refused))
        .await
        .expect("the node gives up on it")
        .expect("read");
    assert_eq!(refused.first(), Some(&1u8));

    // The right secret works once.
    let (mut conn, answer, _) = present(&socket, &socket.secret).await;
    assert_eq!(answer, 0);
    let (_, again, why) = present(&socket, &socket.secret).await;
    assert_ne!(again, 0, "a secret works once");
    assert!(why.contains("unknown, used or expired"), "{why}");
    conn.write_all(&frame(b"over the socket"))
        .await
        .expect("write");
    let (_b_tx, mut b_rx) = (b.sender, b.receiver);
    assert_eq!(
        b_rx.next().await.expect("a frame").expect("ok"),
        Bytes::from_static(b"over the socket")
    );
    drop(conn);
    let status = call
        .next()
        .await
        .expect_err("closing the socket whole abandons the channel");
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");

    // A secret nobody claims expires: the call says so, and the secret is refused after.
    let (mut call, socket, _b) = pair.raw_open(ChannelTransport::SocketFrames).await;
    let status = tokio::time::timeout(Duration::from_secs(20), call.next())
        .await
        .expect("expiry within 20 s")
        .expect_err("an unclaimed data socket ends the call");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let (_, answer, why) = present(&socket, &socket.secret).await;
    assert_ne!(answer, 0, "an expired secret is refused");
    assert!(why.contains("unknown, used or expired"), "{why}");

    // The node still opens and serves channels.
    let (a, b) = pair.channels().await;
    let (mut a_tx, _a_rx) = (a.sender, a.receiver);
    a_tx.send(Bytes::from_static(b"still fine"))
        .await
        .expect("send");
    let (_b_tx, mut b_rx) = (b.sender, b.receiver);
    assert_eq!(
        b_rx.next().await.expect("a frame").expect("ok"),
        Bytes::from_static(b"still fine")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_frame_or_a_cut_frame_from_the_app_ends_its_channel_with_a_clear_status() {
    let mut pair = Pair::start().await;

    // A frame announcing more than 1 MiB: the frames before it go, then the channel ends.
    let (mut call, socket, b) = pair.raw_open(ChannelTransport::SocketFrames).await;
    let (mut conn, answer, _) = present(&socket, &socket.secret).await;
    assert_eq!(answer, 0);
    let mut bytes = frame(b"fine");
    bytes.extend(u32::try_from(1024 * 1024 + 1).expect("small").to_be_bytes());
    conn.write_all(&bytes).await.expect("write");
    let status = call.next().await.expect_err("the channel ends");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("1048577"), "{status:?}");
    let (_b_tx, mut b_rx) = (b.sender, b.receiver);
    assert_eq!(
        b_rx.next().await.expect("a frame").expect("ok"),
        Bytes::from_static(b"fine")
    );
    let broke = b_rx.next().await.expect("not a clean end");
    assert!(broke.is_err(), "the peer sees the channel break: {broke:?}");

    // An app that goes away inside a frame.
    let (mut call, socket, b) = pair.raw_open(ChannelTransport::SocketFrames).await;
    let (mut conn, answer, _) = present(&socket, &socket.secret).await;
    assert_eq!(answer, 0);
    conn.write_all(&frame(b"cut short")[..7])
        .await
        .expect("write");
    conn.shutdown().await.expect("shut down");
    let status = call.next().await.expect_err("the channel ends");
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(status.message().contains("inside a frame"), "{status:?}");
    let (_b_tx, mut b_rx) = (b.sender, b.receiver);
    let broke = tokio::time::timeout(T, b_rx.next())
        .await
        .expect("in time")
        .expect("not a clean end");
    assert!(broke.is_err(), "the peer sees the channel break: {broke:?}");

    // Anything sent on the call after its first input is refused.
    let (mut call, socket, _b) = pair.raw_open(ChannelTransport::SocketFrames).await;
    let (_conn, answer, _) = present(&socket, &socket.secret).await;
    assert_eq!(answer, 0);
    call._input
        .send(ChannelInput {
            kind: Some(channel_input::Kind::Data(Bytes::from_static(b"misplaced"))),
        })
        .await
        .expect("send");
    let status = call.next().await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_byte_stream_socket_talks_to_a_framed_one() {
    let mut pair = Pair::start().await;
    let (mut call, socket, b) = pair.raw_open(ChannelTransport::SocketBytes).await;
    let (conn, answer, _) = present(&socket, &socket.secret).await;
    assert_eq!(answer, 0);
    let (mut b_tx, mut b_rx) = (b.sender, b.receiver);

    // Bytes in, frames out: whatever the reads cut, the bytes arrive in order.
    let text: Vec<u8> = (0..600_000u32).map(|i| (i % 97) as u8).collect();
    // Written while B reads: more than the buffers on the way hold.
    let (mut conn_read, mut conn_write) = conn.into_split();
    let sent = text.clone();
    let writer = tokio::spawn(async move {
        conn_write.write_all(&sent).await.expect("write");
        conn_write.shutdown().await.expect("half-close");
        conn_write
    });
    let mut got = Vec::new();
    while let Some(frame) = tokio::time::timeout(T, b_rx.next()).await.expect("in time") {
        got.extend_from_slice(&frame.expect("a frame"));
    }
    assert_eq!(got, text, "the byte stream arrives whole");
    let _conn_write = tokio::time::timeout(T, writer)
        .await
        .expect("written in time")
        .expect("the writer");

    // Frames in, bytes out.
    for part in [&b"one "[..], b"", b"two"] {
        b_tx.feed(Bytes::copy_from_slice(part)).await.expect("feed");
    }
    b_tx.close().await.expect("close");
    let mut back = Vec::new();
    tokio::time::timeout(T, conn_read.read_to_end(&mut back))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(back, b"one two");
    match call.next().await {
        Ok(Some(ChannelOutput {
            kind: Some(channel_output::Kind::PeerClosed(_)),
        })) => {}
        other => panic!("expected peer_closed, got {other:?}"),
    }
    assert!(
        matches!(call.next().await, Ok(None)),
        "both directions ended: the call ends with OK"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_never_reads_holds_back_the_sender_and_the_node_s_memory_stays_bounded() {
    let mut pair = Pair::start().await;
    let (_call, socket, b) = pair.raw_open(ChannelTransport::SocketFrames).await;
    let (_conn, answer, _) = present(&socket, &socket.secret).await;
    assert_eq!(answer, 0);
    let rss = |node: &Node| {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", node.pid().expect("running")))
                .expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
    };
    let before = rss(&pair.a);
    // B writes 256 MiB as fast as it can; A's app never reads its socket.
    let (mut b_tx, _b_rx) = (b.sender, b.receiver);
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = written.clone();
    let writer = tokio::spawn(async move {
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        for _ in 0..4096 {
            if b_tx.send(chunk.clone()).await.is_err() {
                break;
            }
            count.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // The writer stalls: its progress stops well short of 256 MiB.
    let stalled = wait_for("the writer to stall", T, || {
        let written = written.clone();
        async move {
            let first = written.load(std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let second = written.load(std::sync::atomic::Ordering::Relaxed);
            (first > 0 && first == second).then_some(second)
        }
    })
    .await;
    assert!(
        stalled < 64 * 1024 * 1024,
        "back-pressure holds the writer back ({stalled} bytes written)"
    );
    let grown = rss(&pair.a).saturating_sub(before) / 1024;
    assert!(grown < 64, "A's node grew by {grown} MiB");
    writer.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_on_the_tcp_gateway_gets_a_tcp_data_socket() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut a = Node::start(&["--gateway-tcp", &addr]);
    let mut b = Node::start(&[]);
    let admin_a = a.client().await;
    let client_b = b.client().await;
    let mut session_b = open_session(&client_b, APP).await;
    let ticket_b = b.ticket().await;
    let token = std::fs::read_to_string(a.data_dir.join("gateway.token")).expect("token");
    let target = Target::new(
        Gateway::Tcp(format!("http://{addr}")),
        Some(token.trim().to_owned()),
        None,
    )
    .expect("target");
    let client_a = Client::connect(&target).await.expect("connect over TCP");
    let open = OpenChannel {
        app_id: APP.into(),
        peer: ticket_b,
        ..Default::default()
    };
    let opening = tokio::spawn(async move { client_a.open_channel(open).await });
    let incoming = next_incoming(&mut session_b, T).await;
    let accept = AcceptChannel {
        channel_id: incoming.channel_id,
        app_id: APP.into(),
        ..Default::default()
    };
    let b_channel = client_b.accept_channel(accept).await.expect("accept");
    let a_channel = opening.await.expect("join").expect("open over TCP");
    let socket = a_channel.opened.data_socket.as_ref().expect("offered");
    assert!(socket.unix_path.is_empty(), "{socket:?}");
    assert!(socket.tcp_address.starts_with("127.0.0.1:"), "{socket:?}");
    let (mut a_tx, _a_rx) = (a_channel.sender, a_channel.receiver);
    a_tx.send(Bytes::from_static(b"via tcp"))
        .await
        .expect("send");
    let (_b_tx, mut b_rx) = (b_channel.sender, b_channel.receiver);
    assert_eq!(
        b_rx.next().await.expect("frame").expect("ok"),
        Bytes::from_static(b"via tcp")
    );
    drop(admin_a);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_app_can_neither_take_the_channel_nor_learn_its_secret() {
    let mut pair = Pair::start().await;
    let other = pair.b.app_client("other").await;
    let client = pair.client_a.clone();
    let open = OpenChannel {
        app_id: APP.into(),
        peer: pair.ticket_b.clone(),
        ..Default::default()
    };
    let opening = tokio::spawn(async move { client.open_channel(open).await });
    let incoming = next_incoming(&mut pair.session_b, T).await;
    // An app scoped to another app id cannot accept it, so it never hears the secret.
    for app_id in [APP, "other"] {
        let accept = AcceptChannel {
            channel_id: incoming.channel_id,
            app_id: app_id.into(),
            ..Default::default()
        };
        let refused = other
            .accept_channel(accept)
            .await
            .expect_err("another app's channel");
        assert!(
            matches!(refused.code(), Code::PermissionDenied | Code::NotFound),
            "{refused:?}"
        );
    }
    // The app it was announced to still takes it, and its data socket works.
    let accept = AcceptChannel {
        channel_id: incoming.channel_id,
        app_id: APP.into(),
        ..Default::default()
    };
    let b = pair
        .client_b
        .accept_channel(accept)
        .await
        .expect("B accepts");
    let a = opening.await.expect("join").expect("A opens");
    let (mut a_tx, _a_rx) = (a.sender, a.receiver);
    a_tx.send(Bytes::from_static(b"mine")).await.expect("send");
    let (_b_tx, mut b_rx) = (b.sender, b.receiver);
    assert_eq!(
        b_rx.next().await.expect("a frame").expect("ok"),
        Bytes::from_static(b"mine")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_cannot_shut_out_an_app_presenting_its_secret() {
    let mut pair = Pair::start().await;
    let (_call, socket, b) = pair.raw_open(ChannelTransport::SocketFrames).await;
    // More connections that say nothing than the node reads secrets from at once.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(
            UnixStream::connect(&socket.unix_path)
                .await
                .expect("connect"),
        );
    }
    let (mut conn, answer, why) = present(&socket, &socket.secret).await;
    assert_eq!(answer, 0, "the app's connection is taken: {why}");
    conn.write_all(&frame(b"through")).await.expect("write");
    let (_b_tx, mut b_rx) = (b.sender, b.receiver);
    assert_eq!(
        tokio::time::timeout(T, b_rx.next())
            .await
            .expect("in time")
            .expect("a frame")
            .expect("ok"),
        Bytes::from_static(b"through")
    );
    // The oldest idle one was let go at once, without the refusal its 2 s would have earned.
    let mut first = idle.remove(0);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(1), first.read_to_end(&mut rest))
        .await
        .expect("closed well before its 2 s ran out");
    assert!(closed.is_ok(), "{closed:?}");
    assert!(rest.is_empty(), "closed, not refused: {rest:?}");
}
