//! Port forwarding: an HTTP server started by the test on node B's computer, exposed as a
//! service, fetched from node A through a forwarded local port; only what was exposed is
//! reachable, and exposures can be listed and withdrawn. Real daemons on loopback.

use std::{sync::Arc, time::Duration};

use p2pos_client::Client;
use p2pos_proto::service::v1::{
    ExposeRequest, ListExposuresRequest, ListForwardsRequest, OpenForwardRequest, WithdrawRequest,
};
use p2pos_tests::{Node, connected_peer, p2pctl, wait_for};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const T: Duration = Duration::from_secs(30);
/// The body of `/big`: 1 MiB that is not all the same byte.
fn big_body() -> Vec<u8> {
    (0..1024 * 1024u32)
        .map(|i| (i * 7 + i / 1024) as u8)
        .collect()
}

/// A minimal HTTP/1.0 server: `/big` is [`big_body`], `/n/<k>` is `hello <k>`, anything else
/// 404. One request per connection.
async fn http_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let big = Arc::new(big_body());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let big = big.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request);
                let path = line.split(' ').nth(1).unwrap_or("/").to_owned();
                let (status, body) = if path == "/big" {
                    ("200 OK", big.to_vec())
                } else if let Some(k) = path.strip_prefix("/n/") {
                    ("200 OK", format!("hello {k}").into_bytes())
                } else {
                    ("404 Not Found", b"no such page".to_vec())
                };
                let head = format!(
                    "HTTP/1.0 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (port, task)
}

/// GETs `path` from `127.0.0.1:port`; the body, or None if the connection closed without an
/// answer.
async fn get(port: u16, path: &str) -> Option<Vec<u8>> {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    socket
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(T, socket.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]);
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    Some(response[split + 4..].to_vec())
}

async fn forward(client: &Client, peer: &str, service: &str) -> u16 {
    let forward = client
        .services()
        .open_forward(OpenForwardRequest {
            service: service.into(),
            peer: peer.into(),
            listen: "127.0.0.1:0".into(),
            ..OpenForwardRequest::default()
        })
        .await
        .expect("open forward")
        .into_inner();
    port_of(&forward)
}

/// The port of a forward just opened.
fn port_of(forward: &p2pos_proto::service::v1::Forward) -> u16 {
    forward
        .listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exposed_http_server_is_fetched_through_a_forwarded_port() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    let client_a = a.client().await;
    let client_b = b.client().await;
    let b_id = b.peer_id().await;
    let (ok, _, err) = p2pctl(&a, &["dial", &b.ticket().await]);
    assert!(ok, "{err}");
    connected_peer(&client_a, &b_id, "A connected to B").await;

    let (port, _server) = http_server().await;
    let (other_port, _other) = http_server().await;
    let (ok, out, err) = p2pctl(
        &b,
        &[
            "forward",
            "expose",
            &format!("127.0.0.1:{port}"),
            "--as",
            "web",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("web/1"), "{out}");

    // By peer and name: the body arrives intact.
    let local = forward(&client_a, &b_id, "web").await;
    let body = wait_for("the page through the tunnel", T, || async move {
        get(local, "/n/1").await
    })
    .await;
    assert_eq!(body, b"hello 1");
    assert_eq!(get(local, "/big").await.expect("1 MiB"), big_body());

    // 100 requests at once.
    let requests: Vec<_> = (0..100)
        .map(|k| tokio::spawn(async move { (k, get(local, &format!("/n/{k}")).await) }))
        .collect();
    for request in requests {
        let (k, body) = request.await.expect("request task");
        assert_eq!(body.expect("an answer"), format!("hello {k}").into_bytes());
    }

    // By name alone: the DHT finds B.
    let by_name = forward(&client_a, "", "web/1").await;
    let body = wait_for("the page by name", T, || async move {
        get(by_name, "/n/2").await
    })
    .await;
    assert_eq!(body, b"hello 2");

    // By name, among given peers: B is one of them.
    let among = client_a
        .services()
        .open_forward(OpenForwardRequest {
            service: "web/1".into(),
            listen: "127.0.0.1:0".into(),
            peers: vec![b_id.clone()],
            ..OpenForwardRequest::default()
        })
        .await
        .expect("a forward among given peers")
        .into_inner();
    assert!(among.warning.is_empty(), "{}", among.warning);
    let among = port_of(&among);
    assert_eq!(get(among, "/n/4").await.expect("through B"), b"hello 4");
    // Among given peers that do not provide it (A itself): the forward warns, and no
    // connection reaches B.
    let a_id = a.peer_id().await;
    let none = client_a
        .services()
        .open_forward(OpenForwardRequest {
            service: "web/1".into(),
            listen: "127.0.0.1:0".into(),
            peers: vec![a_id.clone()],
            ..OpenForwardRequest::default()
        })
        .await
        .expect("a forward among peers that do not provide it")
        .into_inner();
    assert!(!none.warning.is_empty(), "no warning: {none:?}");
    let none = port_of(&none);
    assert_eq!(get(none, "/n/6").await, None, "B is not among the peers");
    // A provider named outside the peers named: refused, as by the services API.
    let outside = client_a
        .services()
        .open_forward(OpenForwardRequest {
            service: "web/1".into(),
            peer: b_id.clone(),
            listen: "127.0.0.1:0".into(),
            peers: vec![a_id.clone()],
            ..OpenForwardRequest::default()
        })
        .await
        .expect_err("B is not among the peers named");
    assert_eq!(
        outside.code(),
        tonic::Code::FailedPrecondition,
        "{outside:?}"
    );
    // By name, pinning a publisher key that certifies nobody (with p2pctl's flag): the
    // forward opens, warns, and no connection reaches B.
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("publisher.key");
    let key_file = key_file.to_str().expect("utf-8 path");
    let (ok, key, err) = p2pctl(&a, &["services", "keygen", "--out", key_file]);
    assert!(ok, "{err}");
    let (ok, out, err) = p2pctl(
        &a,
        &[
            "forward",
            "connect",
            "web",
            "--publisher-key",
            key.trim(),
            "--json",
        ],
    );
    assert!(ok, "{err}");
    assert!(err.contains("warning"), "{err}");
    let pinned: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let pinned: u16 = pinned["listen"]
        .as_str()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("a port");
    assert_eq!(get(pinned, "/n/5").await, None, "B is not certified");
    let (ok, _, err) = p2pctl(
        &a,
        &[
            "forward",
            "connect",
            "web",
            "--publisher-key",
            "p2pospubnotakey",
        ],
    );
    assert!(!ok && err.contains("publisher_keys"), "{err}");

    // What was not exposed cannot be reached: a service is named, never an address, and only
    // exposed names lead anywhere.
    let unexposed = forward(&client_a, &b_id, "other").await;
    assert_eq!(get(unexposed, "/n/3").await, None, "nobody exposes `other`");
    for name in [format!("127.0.0.1:{other_port}"), format!("{other_port}/1")] {
        let err = client_a
            .services()
            .open_forward(OpenForwardRequest {
                service: name.clone(),
                peer: b_id.clone(),
                listen: "127.0.0.1:0".into(),
                ..OpenForwardRequest::default()
            })
            .await;
        if let Err(status) = err {
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{name}: {status:?}"
            );
        } else {
            let port = forward(&client_a, &b_id, &name).await;
            assert_eq!(get(port, "/n/3").await, None, "{name} leads nowhere");
        }
    }
    // Only loopback targets can be exposed.
    let err = client_b
        .services()
        .expose(ExposeRequest {
            target: "10.1.2.3:80".into(),
            service: "lan".into(),
        })
        .await
        .expect_err("not a loopback target");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // Listed, then withdrawn: new connections find nothing.
    let exposures = client_b
        .services()
        .list_exposures(ListExposuresRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(exposures.exposures.len(), 1);
    assert_eq!(exposures.exposures[0].target, format!("127.0.0.1:{port}"));
    assert!(exposures.exposures[0].connections >= 102);
    client_b
        .services()
        .withdraw(WithdrawRequest {
            service: "web".into(),
        })
        .await
        .expect("withdraw");
    assert_eq!(get(local, "/n/4").await, None, "withdrawn");
    let (ok, out, _) = p2pctl(&b, &["forward", "list", "--json"]);
    assert!(ok);
    assert!(!out.contains(&format!("127.0.0.1:{port}")), "{out}");
}

/// A forward to a service nobody provides: the user is warned when it opens (on p2pctl's
/// stderr and in the node's log), and every connection it then closes is logged and counted
/// with its reason (the forward's status, and the Prometheus counter).
#[tokio::test(flavor = "multi_thread")]
async fn a_forward_to_a_service_nobody_provides_warns_and_counts_its_resets() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut a = Node::start(&["--metrics", &format!("127.0.0.1:{metrics_port}")]);
    let mut b = Node::start(&[]);
    let client_a = a.client().await;
    let b_id = b.peer_id().await;
    let (ok, _, err) = p2pctl(&a, &["dial", &b.ticket().await]);
    assert!(ok, "{err}");
    connected_peer(&client_a, &b_id, "A connected to B").await;

    let (ok, out, err) = p2pctl(&a, &["forward", "connect", &b_id, "nosuch"]);
    assert!(ok, "opened all the same (a provider may come later): {err}");
    assert!(
        err.contains("warning: nobody was found to provide 'nosuch/1'"),
        "{out}\n{err}"
    );
    assert!(
        a.log().contains("nobody was found to provide"),
        "{}",
        a.log()
    );
    let listen = out
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .and_then(|w| w.rsplit(':').next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("{out}"));

    // A connection: closed, and now logged and counted.
    assert_eq!(get(listen, "/").await, None, "no provider: closed");
    let client = &client_a;
    let forward = wait_for(
        "the reset counted in the forward's status",
        T,
        || async move {
            let forwards = client
                .services()
                .list_forwards(ListForwardsRequest {})
                .await
                .ok()?
                .into_inner()
                .forwards;
            forwards.into_iter().find(|f| f.resets >= 1)
        },
    )
    .await;
    assert!(forward.last_reset.contains("nosuch/1"), "{forward:?}");
    assert!(
        a.log().contains("forwarded connection reset"),
        "{}",
        a.log()
    );
    let metrics = get(metrics_port, "/metrics").await.expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"p2pos_forward_connection_resets_total{reason="no_channel"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forward_by_name_reaches_only_members_of_its_group() {
    let (_nodes, clients, ids) = p2pos_tests::star(2).await;
    let (a, b) = (&clients[0], &clients[1]);
    let (port, _server) = http_server().await;
    b.services()
        .expose(ExposeRequest {
            target: format!("127.0.0.1:{port}"),
            service: "web/1".into(),
        })
        .await
        .expect("expose");
    let both = p2pos_tests::groups::form(&clients, &ids, "both").await;
    let alone = a
        .groups()
        .create(p2pos_proto::group::v1::CreateRequest {
            name: "alone".into(),
        })
        .await
        .expect("a group of A alone")
        .into_inner()
        .id;
    let open = |group: &str, peer: &str| OpenForwardRequest {
        service: "web/1".into(),
        peer: peer.into(),
        listen: "127.0.0.1:0".into(),
        group: group.into(),
        ..OpenForwardRequest::default()
    };

    // B is a member of `both`: reached by name.
    let through = a
        .services()
        .open_forward(open(&both, ""))
        .await
        .expect("a forward within the group")
        .into_inner();
    let through = port_of(&through);
    let body = wait_for("the page through a member", T, || async move {
        get(through, "/n/1").await
    })
    .await;
    assert_eq!(body, b"hello 1");

    // B is no member of `alone`: the forward warns, and no connection reaches B.
    let none = a
        .services()
        .open_forward(open("alone", ""))
        .await
        .expect("a forward within a group B is not in")
        .into_inner();
    assert!(!none.warning.is_empty(), "no warning: {none:?}");
    assert_eq!(get(port_of(&none), "/n/2").await, None, "B is not a member");
    // Naming B with it: refused; an unknown group: NOT_FOUND.
    let named = a
        .services()
        .open_forward(open(&alone, &ids[1]))
        .await
        .expect_err("B is not a member");
    assert_eq!(named.code(), tonic::Code::FailedPrecondition, "{named:?}");
    let unknown = a
        .services()
        .open_forward(open("nobody-knows", ""))
        .await
        .expect_err("no such group");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
}
