//! Bad input of every kind gets the right status or error, and the node keeps serving.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use p2pos_client::{Client, Gateway, Target};
use p2pos_proto::{
    app::v1::{
        AcceptChannel, ChannelInput, OpenChannel, ReceiveRequest, SendRequest, SessionRequest,
        channel_input, session_event,
    },
    node::v1::{CreateAppTokenRequest, GetInfoRequest, ShutdownRequest},
    overlay::v1::DialRequest,
};
use p2pos_tests::{Node, bin, open_session};

const T: Duration = Duration::from_secs(30);
/// A valid peer id that no node here has.
const STRANGER: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

async fn still_serving(client: &Client) {
    client
        .node()
        .get_info(GetInfoRequest {})
        .await
        .expect("the node still answers");
}

async fn open_channel(client: &Client, app: &str, peer: &str) -> Result<(), tonic::Status> {
    let first = ChannelInput {
        kind: Some(channel_input::Kind::Open(OpenChannel {
            app_id: app.into(),
            peer: peer.into(),
            batch: false,
            half_close: false,
            group: String::new(),
            transport: 0,
        })),
    };
    let mut out = client
        .apps()
        .channel(futures::stream::iter(vec![first]).chain(futures::stream::pending()))
        .await?
        .into_inner();
    match out.next().await {
        Some(Ok(_)) => Ok(()),
        Some(Err(status)) => Err(status),
        None => Err(tonic::Status::unknown("channel ended")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn peers_apps_and_sizes() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    let client = a.client().await;
    let b_ticket = b.ticket().await;

    let err = client
        .overlay()
        .dial(DialRequest {
            target: "not a ticket".into(),
            timeout_ms: 0,
        })
        .await
        .expect_err("garbage target");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    let err = tokio::time::timeout(T, open_channel(&client, "chat", STRANGER))
        .await
        .expect("answers in time")
        .expect_err("unknown peer");
    assert!(
        matches!(err.code(), tonic::Code::NotFound | tonic::Code::Unavailable),
        "{err}"
    );

    // B is up but no app "nobody" listens there.
    let err = open_channel(&client, "nobody", &b_ticket)
        .await
        .expect_err("app not listening");
    assert!(
        matches!(
            err.code(),
            tonic::Code::FailedPrecondition | tonic::Code::NotFound
        ),
        "{err}"
    );
    assert!(err.message().contains("nobody"), "{err}");

    let too_big = Bytes::from(vec![7u8; 1024 * 1024 + 1]);
    let err = client
        .apps()
        .send(SendRequest {
            app_id: "chat".into(),
            peer: b_ticket.clone(),
            payload: too_big,
            idempotency_key: Default::default(),
        })
        .await
        .expect_err("oversize");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    // A client without the SDK's own 2 MiB limit: the node refuses it.
    let unlimited = p2pos_proto::app::v1::apps_client::AppsClient::new(client.channel())
        .max_encoding_message_size(usize::MAX);
    let err = unlimited
        .clone()
        .send(SendRequest {
            app_id: "chat".into(),
            peer: b_ticket.clone(),
            payload: Bytes::from(vec![7u8; 5 * 1024 * 1024]),
            idempotency_key: Default::default(),
        })
        .await
        .expect_err("far oversize");
    assert!(
        matches!(
            err.code(),
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
        ),
        "{err}"
    );

    let err = client
        .apps()
        .session(SessionRequest {
            app_id: "bad/app".into(),
            group: String::new(),
        })
        .await
        .expect_err("bad app id");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    still_serving(&client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_gateway_needs_the_right_token_and_app_tokens_are_scoped() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut node = Node::start(&["--gateway-tcp", &addr]);
    let admin = node.client().await;
    let gateway = Gateway::Tcp(format!("http://{addr}"));

    // No token: a raw channel without the interceptor's header.
    let channel = tonic::transport::Endpoint::try_from(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("tcp connect");
    let anonymous = Client::with_channel(channel, None).expect("client");
    let err = anonymous
        .node()
        .get_info(GetInfoRequest {})
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = tonic_health::pb::health_client::HealthClient::new(anonymous.channel())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect_err("health needs a token on TCP too");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

    let wrong =
        Client::connect(&Target::new(gateway.clone(), Some("wrong".into()), None).expect("target"))
            .await
            .expect("connect");
    let err = wrong
        .node()
        .get_info(GetInfoRequest {})
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

    let token = std::fs::read_to_string(node.data_dir.join("gateway.token")).expect("token file");
    let right = Client::connect(
        &Target::new(gateway.clone(), Some(token.trim().into()), None).expect("target"),
    )
    .await
    .expect("connect");
    let info = right
        .node()
        .get_info(GetInfoRequest {})
        .await
        .expect("admin token works")
        .into_inner();
    assert_eq!(info.caller_scope, "admin");

    // An app token sees only its own app.
    let app_token = admin
        .node()
        .create_app_token(CreateAppTokenRequest {
            app_id: "chat".into(),
            ttl_secs: 0,
        })
        .await
        .expect("app token")
        .into_inner()
        .token;
    let app = Client::connect(&Target::new(gateway, Some(app_token), None).expect("target"))
        .await
        .expect("connect");
    let info = app
        .node()
        .get_info(GetInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.caller_scope, "app:chat");
    let err = app
        .apps()
        .receive(ReceiveRequest {
            app_id: "other".into(),
        })
        .await
        .expect_err("another app's inbox");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let err = app
        .node()
        .shutdown(ShutdownRequest {})
        .await
        .expect_err("admin only");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    app.apps()
        .receive(ReceiveRequest {
            app_id: "chat".into(),
        })
        .await
        .expect("its own inbox");

    // The token file is private and rewritten at each start.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(node.data_dir.join("gateway.token"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(node.stop().await.success());
    node.restart();
    node.client().await;
    let token2 = std::fs::read_to_string(node.data_dir.join("gateway.token")).expect("token file");
    assert_ne!(token.trim(), token2.trim(), "a new token at each start");
}

/// A copy of a program in a fresh directory under /tmp that every uid may enter and run
/// (mode 0755), removed on drop.
struct ReachableCopy {
    dir: tempfile::TempDir,
    program: std::path::PathBuf,
}

impl ReachableCopy {
    fn of(program: &std::path::Path) -> ReachableCopy {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("p2pos-any-uid-")
            .tempdir_in("/tmp")
            .expect("temp dir under /tmp");
        let mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(dir.path(), mode.clone()).expect("chmod 0755 the dir");
        let copy = dir.path().join(program.file_name().expect("a file name"));
        std::fs::copy(program, &copy).expect("copy the program");
        std::fs::set_permissions(&copy, mode).expect("chmod 0755 the copy");
        ReachableCopy { dir, program: copy }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: run by .ci/run (tools/run-tests --include-ignored)"]
async fn another_uid_cannot_use_the_socket() {
    assert!(
        nix::unistd::getuid().is_root(),
        "this test needs root, to run a client as another uid"
    );
    let mut node = Node::start(&[]);
    let client = node.client().await;
    // The checkout (and so target/) may be where uid 65534 cannot go (a clone under /root,
    // a `mktemp -d` folder): it runs a copy of p2pctl from a directory it can enter.
    let reachable = ReachableCopy::of(&bin("p2pctl"));
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(&reachable.program)
        .arg("--data-dir")
        .arg(&node.data_dir)
        .arg("id")
        .current_dir(reachable.dir.path())
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run p2pctl as nobody");
    assert!(!out.status.success(), "uid 65534 must be refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error:"), "one-line error: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    still_serving(&client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_config_file_stops_the_node_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("p2posd.toml");
    std::fs::write(&config, "mdns = \"maybe\"\n[[[").expect("write");
    let out = std::process::Command::new(bin("p2posd"))
        .arg("--data-dir")
        .arg(dir.path().join("node"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run p2posd");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid config file"), "{stderr}");
    assert!(
        !dir.path().join("node").exists(),
        "nothing created for a bad config"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_the_same_data_dir_is_refused_and_the_first_keeps_serving() {
    let mut first = Node::start(&[]);
    let client = first.client().await;
    let token = std::fs::read_to_string(first.data_dir.join("gateway.token")).expect("token");
    let out = std::process::Command::new(bin("p2posd"))
        .arg("--data-dir")
        .arg(&first.data_dir)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .output()
        .expect("run p2posd");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let says = format!(
        "p2posd: error: another p2posd (pid {}) is using {}",
        first.pid().expect("running"),
        first.data_dir.display()
    );
    assert_eq!(stderr.trim(), says, "one line naming the first node");
    tokio::time::timeout(T, still_serving(&client))
        .await
        .expect("in time");
    assert_eq!(
        std::fs::read_to_string(first.data_dir.join("gateway.token")).expect("token"),
        token,
        "the second one touched nothing of the first's"
    );

    // The lock file outlives the node, naming a pid that is gone: it blocks nothing.
    let old_pid = first.pid().expect("running");
    assert!(first.stop().await.success());
    let lock = first.data_dir.join("p2posd.lock");
    assert_eq!(
        std::fs::read_to_string(&lock).expect("lock file").trim(),
        old_pid.to_string()
    );
    first.restart();
    first.client().await;
    assert_eq!(
        std::fs::read_to_string(&lock).expect("lock file").trim(),
        first.pid().expect("running").to_string()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_and_misplaced_channel_frames_end_the_channel_with_a_clear_status() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    let client_a = a.client().await;
    let client_b = b.client().await;
    let b_ticket = b.ticket().await;
    // B's app accepts every channel and reads until it ends.
    let mut session = open_session(&client_b, "sink").await;
    let acceptor = tokio::spawn(async move {
        while let Some(Ok(event)) = session.next().await {
            if let Some(session_event::Kind::Incoming(incoming)) = event.kind {
                let accept = AcceptChannel {
                    channel_id: incoming.channel_id,
                    app_id: "sink".into(),
                    batch: true,
                    half_close: false,
                    transport: 0,
                };
                let client = client_b.clone();
                tokio::spawn(async move {
                    if let Ok(mut channel) = client.accept_channel(accept).await {
                        while let Ok(Some(_)) = channel.receiver.message().await {}
                    }
                });
            }
        }
    });

    // One frame over 1 MiB alone (`data`) or inside a batch after a good one (`frames`), and
    // a batch that ends inside a frame: each ends the channel with a clear status.
    let mut oversize_packed = Vec::new();
    for frame in [&b"fine"[..], &vec![1u8; 1024 * 1024 + 1]] {
        oversize_packed.extend_from_slice(&u32::try_from(frame.len()).unwrap().to_be_bytes());
        oversize_packed.extend_from_slice(frame);
    }
    let cases = [
        (
            channel_input::Kind::Data(Bytes::from(vec![1u8; 1024 * 1024 + 1])),
            tonic::Code::ResourceExhausted,
            "1048576-byte limit",
        ),
        (
            channel_input::Kind::Frames(oversize_packed.into()),
            tonic::Code::ResourceExhausted,
            "1048576-byte limit",
        ),
        (
            channel_input::Kind::Frames(Bytes::from_static(b"\0\0\0\x0aabc")),
            tonic::Code::InvalidArgument,
            "4-byte big-endian length",
        ),
    ];
    for (bad, code, says) in cases {
        let open = ChannelInput {
            kind: Some(channel_input::Kind::Open(OpenChannel {
                app_id: "sink".into(),
                peer: b_ticket.clone(),
                batch: true,
                half_close: false,
                group: String::new(),
                transport: 0,
            })),
        };
        let bad = ChannelInput { kind: Some(bad) };
        let mut output = client_a
            .apps()
            .channel(futures::stream::iter([open, bad]).chain(futures::stream::pending()))
            .await
            .expect("opens")
            .into_inner();
        let err = tokio::time::timeout(T, async {
            loop {
                match output.message().await {
                    Ok(Some(_opened)) => continue,
                    Ok(None) => panic!("the channel ended without an error"),
                    Err(status) => return status,
                }
            }
        })
        .await
        .expect("ends in time");
        assert_eq!(err.code(), code, "{err}");
        assert!(err.message().contains(says), "{err}");
    }

    // A batch as the first message: nothing to open yet.
    let first = ChannelInput {
        kind: Some(channel_input::Kind::Frames(Bytes::from_static(
            b"\0\0\0\x05early",
        ))),
    };
    let err = client_a
        .apps()
        .channel(futures::stream::iter(vec![first]).chain(futures::stream::pending()))
        .await
        .expect_err("batch first");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("`open` or `accept`"), "{err}");

    acceptor.abort();
    still_serving(&client_a).await;
}
