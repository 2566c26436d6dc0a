//! Diagnosis for bug reports: the node keeps its recent log lines whatever its stderr filter
//! (`p2pctl logs`), `p2pctl diag bundle FILE` writes one archive with the node's status,
//! configuration (no secrets), logs, metrics, peers, helpers, services and versions, the
//! diagnostic calls are the admin's only, and `p2pctl` shows progress on a slow dial only on a
//! terminal and never with `--json`.

use std::{
    collections::BTreeMap,
    io::Read,
    path::Path,
    process::{Command, Stdio},
};

use p2pos_proto::{
    monitor::v1::{GetConfigRequest, GetLogsRequest, GetMetricsRequest},
    tasks::v1::{HelperSpec, RestartPolicy},
};
use p2pos_tests::{Node, bin, free_port, p2pctl};
use serde_json::Value;
use tonic::Code;

/// The files of a bundle, by name (the folder they are in left out).
fn bundle_files(path: &Path) -> BTreeMap<String, String> {
    let file = std::fs::File::open(path).expect("open the bundle");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut files = BTreeMap::new();
    for entry in archive.entries().expect("a tar.gz") {
        let mut entry = entry.expect("an entry");
        let path = entry.path().expect("a path").into_owned();
        let mut parts = path.components();
        assert_eq!(
            parts.next().map(|c| c.as_os_str().to_owned()),
            Some("p2pos-diag".into()),
            "{path:?} is in the bundle's folder"
        );
        let name = parts.as_path().display().to_string();
        let mut text = String::new();
        entry.read_to_string(&mut text).expect("text");
        files.insert(name, text);
    }
    files
}

/// Every sample line of `text` is `name{labels} value` with a number for value, and it ends
/// with `# EOF`: the Prometheus (OpenMetrics) text format.
fn assert_prometheus_text(text: &str) {
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let mut samples = 0;
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, value) = line.rsplit_once(' ').expect("name and value");
        let metric = name.split('{').next().unwrap_or_default();
        assert!(
            !metric.is_empty()
                && metric
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "a metric name: {line}"
        );
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "a number: {line}"
        );
        samples += 1;
    }
    assert!(samples > 0, "{text}");
}

/// No key of `value`, however deep, names a token, key, secret or password.
fn assert_no_secret_keys(value: &toml::Value, path: &str) {
    match value {
        toml::Value::Table(table) => {
            for (key, inner) in table {
                let last = key.rsplit('_').next().unwrap_or_default();
                assert!(
                    !["token", "key", "secret", "password"].contains(&last),
                    "config.toml holds {path}{key}"
                );
                assert_no_secret_keys(inner, &format!("{path}{key}."));
            }
        }
        toml::Value::Array(items) => items.iter().for_each(|i| assert_no_secret_keys(i, path)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_holds_status_config_logs_and_metrics_and_logs_are_admin_only() {
    // Stderr shows errors only and the TCP gateway writes a token: the bundle must still have
    // the info lines, and never the token.
    let tcp = format!("127.0.0.1:{}", free_port());
    let mut node = Node::start(&[
        "--log",
        "error",
        "--bootstrap",
        "not-a-peer",
        "--gateway-tcp",
        &tcp,
    ]);
    let peer_id = node.peer_id().await;
    let token = std::fs::read_to_string(node.data_dir.join("gateway.token")).expect("token");
    assert!(token.trim().len() >= 16);

    // A helper whose spec holds an app's secrets, in its environment and its arguments.
    node.install_plugin("p2pos-test-helper");
    let client = node.client().await;
    let spec = HelperSpec {
        name: "keeper".into(),
        program: "p2pos-test-helper".into(),
        args: vec!["--password=hunter2-argument".into()],
        env: [("API_KEY".to_owned(), "xyzzy-environment".to_owned())].into(),
        restart: RestartPolicy::Never as i32,
        ..HelperSpec::default()
    };
    p2pos_tests::tasks::add(&client, spec)
        .await
        .expect("add a helper");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("diag.tar.gz");
    let file = path.to_str().expect("utf-8 path");
    let (ok, out, err) = p2pctl(&node, &["diag", "bundle", file]);
    assert!(ok, "{out}{err}");
    assert!(out.starts_with(&format!("wrote {file} (")), "{out}");

    let files = bundle_files(&path);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    for name in [
        "README.txt",
        "status.json",
        "config.toml",
        "logs.txt",
        "metrics.txt",
        "peers.json",
        "helpers.json",
        "services.json",
        "doctor.json",
        "versions.txt",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
        assert!(
            files["README.txt"].contains(name),
            "the README lists {name}"
        );
    }
    assert!(files["README.txt"].contains("Every part was collected."));
    let doctor: Value = serde_json::from_str(&files["doctor.json"]).expect("doctor JSON");
    assert!(
        doctor["checks"].as_array().is_some_and(|c| c
            .iter()
            .any(|c| c["name"] == "store" && c["verdict"] == "ok")),
        "{doctor}"
    );

    let status: Value = serde_json::from_str(&files["status.json"]).expect("status JSON");
    assert_eq!(status["peer_id"], peer_id.as_str());
    assert!(status["services"].as_array().is_some_and(|s| !s.is_empty()));

    // The node logged this at start at info; its stderr (errors only) did not.
    let logs = &files["logs.txt"];
    let booting = logs
        .lines()
        .find(|l| l.contains("kernel booting"))
        .unwrap_or_else(|| panic!("no start line in:\n{logs}"));
    assert!(
        booting.contains(" INFO ") && booting.contains(&peer_id),
        "{booting}"
    );
    assert!(logs.contains("ignoring bootstrap peer"), "{logs}");
    assert!(
        !node.log().contains("kernel booting"),
        "stderr was errors only"
    );
    assert!(
        files["README.txt"].contains("p2pos_network"),
        "warnings by target"
    );

    assert_prometheus_text(&files["metrics.txt"]);
    assert!(files["metrics.txt"].contains("p2pos_service_up"));

    let config: toml::Value = toml::from_str(&files["config.toml"]).expect("config TOML");
    assert_eq!(
        config["network"]["bootstrap"][0].as_str(),
        Some("not-a-peer"),
        "{config}"
    );
    assert_eq!(config["gateway"]["tcp"].as_str(), Some(tcp.as_str()));
    assert_eq!(
        config["data_dir"].as_str(),
        node.data_dir.to_str(),
        "{config}"
    );
    for (name, text) in &files {
        assert!(
            !text.contains(token.trim()),
            "{name} holds the gateway token"
        );
        for secret in ["hunter2-argument", "xyzzy-environment"] {
            assert!(!text.contains(secret), "{name} holds a helper's secret");
        }
    }
    let helpers: Value = serde_json::from_str(&files["helpers.json"]).expect("helpers JSON");
    assert!(
        helpers.to_string().contains("API_KEY"),
        "the variable's name stays: {helpers}"
    );
    let identity = std::fs::read(node.data_dir.join("identity.key")).expect("identity");
    assert!(identity.len() >= 32);
    for (name, text) in &files {
        let bytes = text.as_bytes();
        assert!(
            !bytes.windows(identity.len()).any(|w| w == identity),
            "{name} holds the identity key"
        );
    }
    assert_no_secret_keys(&config, "");
    assert!(files["versions.txt"].contains("p2posd 0.1.0"));
    assert!(files["versions.txt"].contains(&format!("os {}", std::env::consts::OS)));

    // Never over an existing file, unless --force.
    let before = std::fs::read(&path).expect("bundle");
    let (ok, _, err) = p2pctl(&node, &["diag", "bundle", file]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("exists"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).expect("bundle"), before, "untouched");
    let (ok, _, err) = p2pctl(&node, &["diag", "bundle", file, "--force", "--json"]);
    assert!(ok, "{err}");
    assert!(bundle_files(&path).contains_key("metrics.txt"));

    // `logs --level warn`: the warning the bad bootstrap peer caused, no info line.
    let (ok, out, err) = p2pctl(&node, &["logs", "--level", "warn"]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains(" WARN p2pos_network") && l.contains("ignoring bootstrap peer")),
        "{out}"
    );
    assert!(!out.contains(" INFO "), "{out}");
    let (ok, out, err) = p2pctl(&node, &["logs", "--limit", "3", "--json"]);
    assert!(ok, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0]["seq"].as_u64() < lines[2]["seq"].as_u64(),
        "oldest first"
    );
    let (ok, _, err) = p2pctl(&node, &["logs", "--level", "debug"]);
    assert!(!ok && err.contains("invalid value 'debug'"), "{err}");

    // An app's token gets none of it: refused with PERMISSION_DENIED.
    let app = node.app_client("chat").await;
    let refused = app
        .monitor()
        .get_logs(GetLogsRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = app
        .monitor()
        .get_metrics(GetMetricsRequest {})
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = app
        .monitor()
        .get_config(GetConfigRequest {})
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied);
    // The admin's bad input gets a clear error.
    let admin = node.client().await;
    let bad = admin
        .monitor()
        .get_logs(GetLogsRequest {
            min_level: "loud".into(),
            limit: 1,
        })
        .await
        .expect_err("refused");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let all = admin
        .monitor()
        .get_logs(GetLogsRequest {
            min_level: String::new(),
            limit: u32::MAX,
        })
        .await
        .expect("bounded, not refused")
        .into_inner();
    assert!(!all.lines.is_empty() && all.lines.len() <= 2000);

    // Parts the caller may not have are named in the README; the bundle is still written.
    let app_token = admin
        .node()
        .create_app_token(p2pos_proto::node::v1::CreateAppTokenRequest {
            app_id: "chat".into(),
            ttl_secs: 0,
        })
        .await
        .expect("token")
        .into_inner()
        .token;
    let partial = dir.path().join("partial.tar.gz");
    let partial_file = partial.to_str().expect("utf-8");
    let (ok, out, err) = p2pctl(
        &node,
        &["--token", &app_token, "diag", "bundle", partial_file],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("could not collect") && out.contains("logs.txt"),
        "{out}"
    );
    let files = bundle_files(&partial);
    assert!(files.contains_key("status.json") && !files.contains_key("logs.txt"));
    let readme = &files["README.txt"];
    assert!(
        readme.contains("Could not be collected:") && readme.contains("admin scope"),
        "{readme}"
    );

    // A node that is down: one line, a non-zero exit, no file.
    assert!(node.stop().await.success());
    let down = dir.path().join("down.tar.gz");
    let (ok, _, err) = p2pctl(&node, &["diag", "bundle", down.to_str().expect("utf-8")]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!down.exists());
}

/// A listener that takes TCP connections and never answers: a dial to it hangs until its
/// timeout.
fn silent_listener() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let peer = libp2p::PeerId::random();
    (listener, format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}"))
}

/// Runs p2pctl under a pseudo-terminal (`script` from util-linux); returns all it wrote there.
fn p2pctl_on_a_terminal(node: &Node, args: &[&str]) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut line = format!(
        "{} --data-dir {}",
        quote(bin("p2pctl").to_str().expect("utf-8")),
        quote(node.data_dir.to_str().expect("utf-8"))
    );
    for arg in args {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("TERM", "xterm")
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::null())
        .output()
        .expect("`script` (util-linux) runs p2pctl under a pseudo-terminal");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_dial_shows_progress_on_a_terminal_only() {
    let mut node = Node::start(&[]);
    node.client().await;
    let (_listener, target) = silent_listener();

    let shown = p2pctl_on_a_terminal(&node, &["dial", &target, "--timeout", "2"]);
    assert!(shown.contains("dialing /ip4/127.0.0.1/tcp/"), "{shown:?}");
    assert!(shown.contains("error: cannot dial"), "{shown:?}");

    let json = p2pctl_on_a_terminal(&node, &["dial", &target, "--timeout", "2", "--json"]);
    assert!(json.contains("error: cannot dial"), "{json:?}");
    assert!(
        !json.contains("dialing"),
        "no progress with --json: {json:?}"
    );
    assert!(
        !json.contains('\u{1b}'),
        "no terminal control bytes: {json:?}"
    );

    let (ok, out, err) = p2pctl(&node, &["dial", &target, "--timeout", "2"]);
    assert!(!ok);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(
        err.starts_with("error: cannot dial") && !err.contains('\u{1b}'),
        "{err:?}"
    );
}
