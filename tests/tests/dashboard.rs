//! The dashboard (`p2posd --dashboard`), in a real headless Chromium driven over the DevTools
//! protocol: the page loads with no console error, shows the node's peer id and a connected
//! peer (a second real node), and a new event (a third node connects) within 2 s of it
//! happening; a screenshot is saved in `target/test-artifacts/dashboard.png`. Without the admin
//! credential, with a wrong one, or for a host that is not a loopback one, the node refuses.
//!
//! Needs Chromium (`apt-get install -y chromium`; `.ci/run` installs it): without it the test
//! fails saying so.

use std::{
    io::{Read, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use p2pos_tests::{Node, START_DEADLINE, cdp::Browser, free_port, p2pctl, status_when, wait_for};

/// The HTTP status code the dashboard at `addr` answers `GET path` with, sent with `headers`.
fn status_code(addr: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let response = raw_get(addr, path, headers);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"))
}

/// Where the test leaves its screenshot: `target/test-artifacts/`.
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> → target/test-artifacts
    let target = exe.ancestors().nth(3).expect("target directory");
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts directory");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_node_live_in_a_real_browser() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut a = Node::start(&["--dashboard", &addr]);
    let mut b = Node::start(&[]);
    let a_id = a.peer_id().await;
    let b_id = b.peer_id().await;
    let (ok, out, err) = p2pctl(&a, &["dial", &b.ticket().await]);
    assert!(ok, "{out}{err}");
    let client = a.client().await;
    let status = status_when(&client, "A's status names its dashboard", |s| {
        !s.dashboard_url.is_empty()
    })
    .await;
    assert_eq!(status.dashboard_url, format!("http://{addr}/"));

    // The credential: none, a wrong one, and the right one for a host that is not loopback.
    let token = std::fs::read_to_string(a.data_dir.join("gateway.token")).expect("token");
    let token = token.trim();
    let bearer = format!("Bearer {token}");
    let host = ("Host", addr.as_str());
    assert_eq!(status_code(&addr, "/", &[host]), 401, "no credential");
    assert_eq!(
        status_code(&addr, "/api/events", &[host]),
        401,
        "no credential"
    );
    assert_eq!(
        status_code(
            &addr,
            "/api/status",
            &[host, ("Authorization", "Bearer 00ff")]
        ),
        401,
        "a wrong token"
    );
    assert_eq!(
        status_code(&addr, "/login?token=00ff", &[host]),
        401,
        "a login with a wrong token"
    );
    assert_eq!(
        status_code(
            &addr,
            "/api/status",
            &[host, ("Cookie", "p2pos_dashboard=00ff")]
        ),
        401,
        "a made-up cookie"
    );
    assert_eq!(
        status_code(
            &addr,
            "/api/status",
            &[("Host", "attacker.example:80"), ("Authorization", &bearer)]
        ),
        403,
        "a host that is not a loopback one (DNS rebinding)"
    );
    assert_eq!(
        status_code(&addr, "/api/status", &[host, ("Authorization", &bearer)]),
        200,
        "the admin token"
    );

    // p2pctl prints the login link.
    let (ok, login, err) = p2pctl(&a, &["dashboard"]);
    assert!(ok, "{err}");
    let login = login.trim().to_owned();
    assert_eq!(login, format!("http://{addr}/login?token={token}"));
    let (ok, json, err) = p2pctl(&a, &["dashboard", "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["login_url"], login.as_str());
    assert_eq!(json["url"], format!("http://{addr}/"));
    // A node without a dashboard says so, on one line.
    let (ok, _, err) = p2pctl(&b, &["dashboard"]);
    assert!(!ok);
    assert!(
        err.starts_with("error: the node's dashboard is off") && err.trim().lines().count() == 1,
        "{err}"
    );

    // The page, in a real browser.
    let log = a.data_dir.with_file_name("chromium.log");
    let browser = Browser::start(&log);
    let page = browser.new_page();
    page.navigate(&login);
    let shown = |expression: String| {
        let page = &page;
        async move {
            page.eval(&expression)
                .ok()
                .and_then(|v| v.as_bool())
                .unwrap_or(false)
                .then_some(())
        }
    };
    wait_for("the page shows A's peer id", START_DEADLINE, || {
        shown(format!(
            "document.getElementById('peer-id').textContent === '{a_id}'"
        ))
    })
    .await;
    wait_for(
        "the page lists B as a connected peer",
        START_DEADLINE,
        || {
            shown(format!(
                "document.querySelector('#peers tr[data-peer=\"{b_id}\"]') !== null"
            ))
        },
    )
    .await;
    wait_for(
        "the page shows B's connection, which happened before it opened",
        START_DEADLINE,
        || {
            shown(format!(
                "[...document.querySelectorAll('#events li[data-kind=\"peer_connected\"]')]
                   .some((li) => li.textContent.includes('{b_id}'))"
            ))
        },
    )
    .await;
    wait_for("the page follows the node's events", START_DEADLINE, || {
        shown("document.getElementById('live').textContent === 'live'".into())
    })
    .await;
    assert_eq!(
        page.eval("location.pathname").expect("path"),
        "/",
        "the login sent the browser on to the page"
    );

    // A new event: a third node connects to A; the page shows it within 2 s.
    let mut c = Node::start(&[]);
    let c_id = c.peer_id().await;
    let a_ticket = a.ticket().await;
    let (ok, out, err) = p2pctl(&c, &["dial", &a_ticket]);
    let connected = Instant::now();
    assert!(ok, "{out}{err}");
    let row = format!(
        "(() => {{ const row = [...document.querySelectorAll('#events li[data-kind=\"peer_connected\"]')]
             .find((li) => li.textContent.includes('{c_id}'));
           return row ? [Number(row.dataset.atMs), Number(row.dataset.receivedMs)] : null; }})()"
    );
    let (at_ms, received_ms) = wait_for(
        "the page shows C's connection in its event log",
        Duration::from_secs(2),
        || {
            let page = &page;
            let row = row.clone();
            async move {
                let value = page.eval(&row).ok()?;
                let pair = value.as_array()?;
                Some((pair[0].as_f64()?, pair[1].as_f64()?))
            }
        },
    )
    .await;
    let seen_after = connected.elapsed();
    assert!(
        received_ms - at_ms <= 2000.0,
        "the event reached the page {} ms after it happened",
        received_ms - at_ms
    );
    assert!(seen_after <= Duration::from_secs(2), "{seen_after:?}");

    // The charts get their samples (every 2 s) and the lists their answers.
    wait_for("the charts have samples", START_DEADLINE, || {
        shown("state.samples.length >= 2".into())
    })
    .await;
    wait_for("the page lists C as a peer", START_DEADLINE, || {
        shown(format!(
            "document.querySelector('#peers tr[data-peer=\"{c_id}\"]') !== null"
        ))
    })
    .await;

    let path = artifacts().join("dashboard.png");
    std::fs::write(&path, page.screenshot()).expect("write the screenshot");
    println!("screenshot: {}", path.display());

    let errors = browser.errors();
    assert!(
        errors.is_empty(),
        "the page logged errors: {}",
        serde_json::to_string_pretty(&errors).unwrap_or_default()
    );
    drop(browser);
    c.stop().await;
    b.stop().await;
    a.stop().await;
}

/// A config file's `[monitor] dashboard` turns it on as the flag does; a non-loopback
/// address is refused at start with a clear error.
#[tokio::test(flavor = "multi_thread")]
async fn the_config_file_turns_it_on_and_a_public_address_is_refused() {
    let addr = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("p2posd.toml");
    std::fs::write(&config, format!("[monitor]\ndashboard = \"{addr}\"\n")).expect("config");
    let mut node = Node::start(&["--config", config.to_str().expect("utf-8 path")]);
    let client = node.client().await;
    let status = status_when(&client, "the status names the dashboard", |s| {
        !s.dashboard_url.is_empty()
    })
    .await;
    assert_eq!(status.dashboard_url, format!("http://{addr}/"));
    assert_eq!(status_code(&addr, "/", &[("Host", &addr)]), 401);
    node.stop().await;

    let out = std::process::Command::new(p2pos_tests::bin("p2posd"))
        .args(["--dashboard", "0.0.0.0:7070", "--data-dir"])
        .arg(dir.path().join("refused"))
        .output()
        .expect("run p2posd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dashboard must be a loopback address"),
        "{err}"
    );
}

/// The monitor restarts (it panicked): the dashboard is back on the same address, and a
/// browser's login still holds (the cookie lasts as long as the node's admin token).
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_survives_a_restart_of_the_monitor() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut node = Node::start(&["--dashboard", &addr, "--allow-fault-injection"]);
    let client = node.client().await;
    status_when(&client, "the dashboard is on", |s| {
        !s.dashboard_url.is_empty()
    })
    .await;
    let token = std::fs::read_to_string(node.data_dir.join("gateway.token")).expect("token");
    let login = format!("/login?token={}", token.trim());
    let response = raw_get(&addr, &login, &[("Host", &addr)]);
    let cookie = response
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("a cookie: {response}"))
        .to_owned();
    let with_cookie = [("Host", addr.as_str()), ("Cookie", cookie.as_str())];
    assert_eq!(status_code(&addr, "/api/status", &with_cookie), 200);

    client
        .node()
        .inject_panic(p2pos_proto::node::v1::InjectPanicRequest {
            service: "monitor".into(),
        })
        .await
        .expect("inject a panic");
    status_when(&client, "the monitor restarted", |s| {
        s.services
            .iter()
            .any(|m| m.name == "monitor" && m.restarts == 1 && m.state == "running")
    })
    .await;
    wait_for("the dashboard answers again", START_DEADLINE, || async {
        (std::net::TcpStream::connect(&addr).is_ok()
            && status_code(&addr, "/api/status", &with_cookie) == 200)
            .then_some(())
    })
    .await;
    node.stop().await;
}

/// The whole response to `GET path` on `addr`, sent with `headers`.
fn raw_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the dashboard");
    let mut request = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
}

/// The live feed is bounded (four pages at once) but not cut by the 10 s limit of other
/// requests: a feed open for longer still gets the chart samples, every 2 s.
#[tokio::test(flavor = "multi_thread")]
async fn event_feeds_are_few_and_long_lived() {
    use std::io::{BufRead, BufReader};

    let addr = format!("127.0.0.1:{}", free_port());
    let mut node = Node::start(&["--dashboard", &addr]);
    let client = node.client().await;
    status_when(&client, "the dashboard is on", |s| {
        !s.dashboard_url.is_empty()
    })
    .await;
    let token = std::fs::read_to_string(node.data_dir.join("gateway.token")).expect("token");
    let bearer = format!("Bearer {}", token.trim());
    let open_feed = || {
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
        write!(
            stream,
            "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {bearer}\r\n\r\n"
        )
        .expect("request");
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        (status, reader)
    };
    let mut feeds = Vec::new();
    for _ in 0..4 {
        let (status, reader) = open_feed();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        feeds.push(reader);
    }
    let (status, _) = open_feed();
    assert!(status.starts_with("HTTP/1.1 503"), "a fifth feed: {status}");

    let mut feed = feeds.remove(0);
    feed.get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let opened = Instant::now();
    let mut line = String::new();
    loop {
        line.clear();
        let n = feed.read_line(&mut line).expect("the feed stays open");
        assert!(n > 0, "the feed ended after {:?}", opened.elapsed());
        if line.starts_with("event: sample") && opened.elapsed() > Duration::from_secs(12) {
            break;
        }
    }
    drop(feeds);
    node.stop().await;
}
