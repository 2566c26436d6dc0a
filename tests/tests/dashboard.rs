//! The dashboard (`p2posd --dashboard`), in a real headless Chromium driven over the DevTools
//! protocol: the page loads with no console error, shows the node's peer id and a connected
//! peer (a second real node), and a new event (a third node connects) within 2 s of it
//! happening (the event's own time against the page's receipt of it); a screenshot is saved in
//! `target/test-artifacts/dashboard.png`. The login: `p2pctl dashboard` prints a one-time code,
//! never the admin token; a used or made-up code gets `401` and no session; a session works
//! only as an `Authorization` header. Without a credential, with a wrong one, or for a host that
//! is not a loopback one, the node refuses.
//!
//! Needs Chromium (`apt-get install -y chromium`; `.ci/run` installs it): without it the test
//! fails saying so.

use std::{
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use p2pos_tests::{
    Node, START_DEADLINE, cdp::Browser, free_port, http_get_with, http_status, p2pctl, status_when,
    wait_for,
};

/// The HTTP status code the dashboard at `addr` answers `GET path` with, sent with `headers`.
fn status_code(addr: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    http_status(&http_get_with(addr, path, headers))
}

/// A session from the one-time login link `login_url` (`http://ADDR/login?code=C`): the
/// fragment of the `303` answer's `Location` (`/#session=S`).
fn log_in(addr: &str, login_url: &str) -> Result<String, String> {
    let path = login_url
        .strip_prefix(&format!("http://{addr}"))
        .unwrap_or_else(|| panic!("a login link on {addr}: {login_url}"));
    let response = http_get_with(addr, path, &[("Host", addr)]);
    if http_status(&response) != 303 {
        return Err(response);
    }
    response
        .lines()
        .find_map(|l| l.strip_prefix("location: /#session="))
        .map(|s| s.trim().to_owned())
        .ok_or(response)
}

/// `p2pctl dashboard --json` on `node`: a new one-time login link.
fn login_link(node: &Node) -> String {
    let (ok, json, err) = p2pctl(node, &["dashboard", "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    json["login_url"].as_str().expect("login_url").to_owned()
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
    let page = http_get_with(&addr, "/", &[host]);
    assert_eq!(http_status(&page), 200, "the page itself holds no data");
    assert!(!page.contains(&a_id), "{page}");
    assert!(
        page.contains("cross-origin-resource-policy: same-origin"),
        "{page}"
    );
    assert_eq!(
        status_code(&addr, "/api/status", &[host]),
        401,
        "no credential"
    );
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
        status_code(&addr, &format!("/login?token={token}"), &[host]),
        401,
        "the admin token is no login code"
    );
    assert_eq!(
        status_code(&addr, &format!("/login?code={}", "00".repeat(32)), &[host]),
        401,
        "a made-up login code"
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

    // p2pctl prints a one-time login link, never the admin token.
    let (ok, login, err) = p2pctl(&a, &["dashboard"]);
    assert!(ok, "{err}");
    let login = login.trim().to_owned();
    assert!(
        login.starts_with(&format!("http://{addr}/login?code=")),
        "{login}"
    );
    assert!(
        !login.contains(token),
        "the link holds the admin token: {login}"
    );
    let (ok, json, err) = p2pctl(&a, &["dashboard", "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["url"], format!("http://{addr}/"));
    assert_eq!(json["expires_in_secs"], 60);
    let other = json["login_url"].as_str().expect("login_url");
    assert_ne!(other, login, "a new code each time");
    assert!(!other.contains(token));

    // A code makes one session, once; the session works only as a bearer header.
    let session = log_in(&addr, other).expect("a session");
    assert!(!session.contains(token) && session.len() >= 32, "{session}");
    let used = log_in(&addr, other).expect_err("a used code");
    assert_eq!(http_status(&used), 401, "a used code: {used}");
    assert!(!used.contains("location:"), "no session: {used}");
    let with_session = format!("Bearer {session}");
    assert_eq!(
        status_code(
            &addr,
            "/api/status",
            &[host, ("Authorization", &with_session)]
        ),
        200,
        "the session as a header"
    );
    assert_eq!(
        status_code(
            &addr,
            "/api/status",
            &[host, ("Cookie", &format!("p2pos_dashboard={session}"))]
        ),
        401,
        "the session as the old cookie"
    );

    // An app's token gets no login link.
    let app_token = client
        .node()
        .create_app_token(p2pos_proto::node::v1::CreateAppTokenRequest {
            app_id: "chat".into(),
            ttl_secs: 0,
        })
        .await
        .expect("app token")
        .into_inner()
        .token;
    let (ok, out, err) = p2pctl(&a, &["--token", &app_token, "dashboard"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("permission denied") || err.contains("PERMISSION_DENIED"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A node without a dashboard says so, on one line.
    let (ok, _, err) = p2pctl(&b, &["dashboard"]);
    assert!(!ok);
    assert!(
        err.starts_with("error: the node's dashboard is off") && err.trim().lines().count() == 1,
        "{err}"
    );

    // The page, in a real browser: first without a login, then with the link.
    let log = a.data_dir.with_file_name("chromium.log");
    let browser = Browser::start(&log);
    let stranger = browser.new_page();
    stranger.navigate(&format!("http://{addr}/"));
    wait_for(
        "a page opened without a login says to run p2pctl dashboard",
        START_DEADLINE,
        || async {
            stranger
                .eval(
                    "!document.getElementById('problem').hidden && \
                     document.getElementById('problem').textContent.includes('p2pctl dashboard')",
                )
                .ok()
                .and_then(|v| v.as_bool())
                .unwrap_or(false)
                .then_some(())
        },
    )
    .await;
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
        page.eval("location.href").expect("href"),
        format!("http://{addr}/"),
        "the login sent the browser on to the page, the session out of the address bar"
    );
    assert_eq!(
        page.eval("(sessionStorage.getItem('p2pos-dashboard-session') || '').length")
            .expect("session"),
        64,
        "the page keeps its session"
    );
    assert_eq!(
        page.eval("document.cookie").expect("cookies"),
        "",
        "no cookie"
    );
    let login_again = log_in(&addr, &login).expect_err("the browser's code is spent");
    assert_eq!(http_status(&login_again), 401);

    // A new event: a third node connects to A; the page shows it within 2 s of it happening,
    // as the node (the event's `at_ms`) and the page (when its row was made) see it: the
    // test's own view adds CDP round trips and the load of a busy machine.
    let mut c = Node::start(&[]);
    let c_id = c.peer_id().await;
    let a_ticket = a.ticket().await;
    let (ok, out, err) = p2pctl(&c, &["dial", &a_ticket]);
    assert!(ok, "{out}{err}");
    let row = format!(
        "(() => {{ const row = [...document.querySelectorAll('#events li[data-kind=\"peer_connected\"]')]
             .find((li) => li.textContent.includes('{c_id}'));
           return row ? [Number(row.dataset.atMs), Number(row.dataset.receivedMs)] : null; }})()"
    );
    let (at_ms, received_ms) = wait_for(
        "the page shows C's connection in its event log",
        START_DEADLINE,
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
    assert!(
        received_ms - at_ms <= 2000.0,
        "the event reached the page {} ms after it happened",
        received_ms - at_ms
    );
    println!(
        "a new event reached the page {} ms after it happened",
        received_ms - at_ms
    );

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

    // The doctor runs when asked, and its checks appear with their verdicts.
    page.eval("document.getElementById('doctor-run').click(); true")
        .expect("click the doctor's button");
    let store = wait_for("the doctor's checks on the page", START_DEADLINE, || {
        let page = &page;
        async move {
            page.eval(
                "(() => { const row = document.querySelector('#doctor tr[data-check=\"store\"]'); \
                 return row ? row.textContent : null; })()",
            )
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
        }
    })
    .await;
    assert!(store.starts_with("okstore"), "{store}");

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
    assert_eq!(status_code(&addr, "/api/status", &[("Host", &addr)]), 401);
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
/// browser's session still holds (sessions live as long as the node, not the monitor).
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_survives_a_restart_of_the_monitor() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut node = Node::start(&["--dashboard", &addr, "--allow-fault-injection"]);
    let client = node.client().await;
    status_when(&client, "the dashboard is on", |s| {
        !s.dashboard_url.is_empty()
    })
    .await;
    let session = log_in(&addr, &login_link(&node)).expect("a session");
    let bearer = format!("Bearer {session}");
    let with_session = [("Host", addr.as_str()), ("Authorization", bearer.as_str())];
    assert_eq!(status_code(&addr, "/api/status", &with_session), 200);

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
            && status_code(&addr, "/api/status", &with_session) == 200)
            .then_some(())
    })
    .await;
    node.stop().await;
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
