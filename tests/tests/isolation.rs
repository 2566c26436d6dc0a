//! Local isolation (issue 16, items 1 and 2): what an app, and a helper it starts, can reach
//! on its own node. Each test tries the attack against a real `p2posd` with real gRPC calls,
//! and real helper processes (a shell script and `p2pos-test-helper` in the plug-in
//! directory), and checks that it is refused or bounded.

use std::{os::unix::fs::PermissionsExt, time::Duration};

use p2pos_client::{Client, Gateway, Target};
use p2pos_proto::{
    app::v1::SessionRequest,
    node::v1::GetInfoRequest,
    overlay::v1::PingRequest,
    service::v1::RegisterRequest,
    tasks::v1::{HelperSpec, HelperState, ListHelpersRequest, RestartPolicy},
};
use p2pos_tests::{
    Node, open_session, p2pctl,
    tasks::{add, get, helper_ref, in_state, logs, start},
};

/// A spec of `app` (empty: node-wide) running `program` from the plug-in directory.
fn spec(app: &str, name: &str, program: &str, args: &[&str]) -> HelperSpec {
    HelperSpec {
        name: name.into(),
        app_id: app.into(),
        program: program.into(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        restart: RestartPolicy::Never as i32,
        outlive_session: true,
        ..HelperSpec::default()
    }
}

/// Writes an executable shell script `name` into `node`'s plug-in directory.
fn install_script(node: &Node, name: &str, body: &str) {
    let dir = node.data_dir.join("plugins");
    std::fs::create_dir_all(&dir).expect("plug-in directory");
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write the script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The Landlock ABI version of this kernel; 0 without Landlock.
fn landlock_abi() -> i64 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only returns
    // the ABI version.
    let v = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    v.max(0)
}

/// The lines of helper `app`/`name` once it has exited.
async fn output_when_exited(client: &Client, app: &str, name: &str) -> Vec<String> {
    let exited = in_state(client, app, name, HelperState::Exited).await;
    assert_eq!(exited.reason, "exited with code 0", "{exited:?}");
    logs(client, app, name).await
}

/// A client of `node`'s socket presenting no token at all: the token file it would read
/// beside the data directory it names does not exist.
async fn tokenless(node: &Node) -> (Client, tempfile::TempDir) {
    let empty = tempfile::tempdir().expect("tempdir");
    let target = Target::new(
        Gateway::Unix(node.data_dir.join("gateway.sock")),
        None,
        Some(empty.path().to_owned()),
    )
    .expect("target");
    let client = Client::connect(&target).await.expect("connect");
    (client, empty)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_call_without_a_token_is_refused_and_the_tools_read_the_token() {
    let mut node = Node::start(&[]);
    node.client().await;
    let (anonymous, _empty) = tokenless(&node).await;
    let err = anonymous
        .node()
        .get_info(GetInfoRequest {})
        .await
        .expect_err("no token on the socket");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let token_file = node.data_dir.join("gateway.token");
    assert!(
        err.message().contains(&token_file.display().to_string()),
        "the message says where the token is: {err:?}"
    );
    // Health still answers the node's user without a token.
    let health = tonic_health::pb::health_client::HealthClient::new(anonymous.channel())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health without a token");
    assert_eq!(health.into_inner().status, 1, "SERVING");
    let mode = std::fs::metadata(&token_file).expect("token").permissions();
    assert_eq!(mode.mode() & 0o777, 0o600);

    // p2pctl finds the token by itself: by data directory, and beside a socket named alone.
    let (ok, out, err) = p2pctl(&node, &["id"]);
    assert!(ok, "{out}{err}");
    let gateway = format!("unix:{}", node.data_dir.join("gateway.sock").display());
    let out = std::process::Command::new(p2pos_tests::bin("p2pctl"))
        .args(["--gateway", &gateway, "id"])
        .env_remove("P2POS_TOKEN")
        .env_remove("P2POS_DATA_DIR")
        .output()
        .expect("p2pctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A client that outlives a restart presents the new token.
    let admin = node.client().await;
    node.stop().await;
    node.restart();
    node.client().await;
    let info = admin
        .node()
        .get_info(GetInfoRequest {})
        .await
        .expect("the rewritten token");
    assert_eq!(info.into_inner().caller_scope, "admin");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_helper_cannot_read_the_nodes_secrets_nor_be_admin_without_its_token() {
    let mut node = Node::start(&[]);
    node.install_plugin("p2pos-test-helper");
    install_script(
        &node,
        "spy",
        r#"data=$(dirname "${P2POS_GATEWAY#unix:}")
try() { if "$@" >/dev/null 2>&1; then echo "$what: GOT"; else echo "$what: denied"; fi; }
what="read gateway.token" try cat "$data/gateway.token"
what="read identity.key" try cat "$data/identity.key"
what="list store" try ls "$data/store"
what="list helpers" try ls "$data/helpers"
what="write data dir" try touch "$data/planted"
what="write /tmp" try touch "/tmp/p2pos-spy-$$"
rm -f "/tmp/p2pos-spy-$$"
what="write own dir" try touch "$P2POS_HELPER_DIR/own"
what="read /etc/passwd" try cat /etc/passwd
P2POS_TOKEN= "$data/plugins/p2pos-test-helper" whoami
"$data/plugins/p2pos-test-helper" whoami
"#,
    );
    let app = node.app_client("spyapp").await;
    add(&app, spec("", "spy", "spy", &[]))
        .await
        .expect("add the script");
    start(&app, "", "spy").await.expect("start");
    let lines = output_when_exited(&app, "spyapp", "spy").await;
    let said = |line: &str| lines.iter().any(|l| l == line);
    assert!(said("write own dir: GOT"), "{lines:#?}");
    assert!(said("read /etc/passwd: GOT"), "{lines:#?}");
    assert!(said("whoami: app:spyapp:spy"), "its own token: {lines:#?}");
    assert!(!node.data_dir.join("planted").exists() || landlock_abi() == 0);
    if landlock_abi() == 0 {
        // No Landlock: the node says so, once, and helpers run unconfined.
        assert!(
            node.log().contains("the kernel has no Landlock"),
            "{}",
            node.log()
        );
        return;
    }
    for secret in [
        "read gateway.token",
        "read identity.key",
        "list store",
        "list helpers",
        "write data dir",
        "write /tmp",
    ] {
        assert!(said(&format!("{secret}: denied")), "{secret}: {lines:#?}");
    }
    assert!(!node.data_dir.join("planted").exists());
    // Without its token, and unable to read the admin's, it is nobody.
    let refused = lines
        .iter()
        .find(|l| l.starts_with("whoami refused: Unauthenticated"))
        .unwrap_or_else(|| panic!("no token, no scope: {lines:#?}"));
    assert!(refused.contains("gateway.token"), "{refused}");
    assert!(
        !lines.iter().any(|l| l == "whoami: admin"),
        "never admin: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apps_helper_environment_is_an_allow_list() {
    let mut node = Node::start(&[]);
    install_script(&node, "show-env", "env | sort\n");
    // What BASH_ENV would run in a bash script plug-in, were it let through.
    let planted = node.data_dir.join("plugins/planted.sh");
    std::fs::write(&planted, "echo PWNED\n").expect("write");
    let app = node.app_client("envapp").await;
    let planted = planted.display().to_string();
    for name in [
        "PATH",
        "BASH_ENV",
        "ENV",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "NODE_OPTIONS",
        "PERL5OPT",
        "RUBYOPT",
        "JAVA_TOOL_OPTIONS",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "GCONV_PATH",
        "HOME",
    ] {
        let mut bad = spec("", "show-env", "show-env", &[]);
        bad.env.insert(name.into(), planted.clone());
        let err = add(&app, bad).await.expect_err(name);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err:?}");
        assert!(err.message().contains(name), "{name}: {err:?}");
    }
    let err = get_err(&app, "show-env").await;
    assert_eq!(err, tonic::Code::NotFound, "nothing was added");

    let mut good = spec("", "show-env", "show-env", &[]);
    good.env.insert("APP_GREETING".into(), "hi".into());
    add(&app, good).await.expect("APP_ variables pass");
    start(&app, "", "show-env").await.expect("start");
    let lines = output_when_exited(&app, "envapp", "show-env").await;
    let names: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    assert!(lines.iter().any(|l| l == "APP_GREETING=hi"), "{lines:#?}");
    for name in names {
        assert!(
            name == "APP_GREETING"
                || name.starts_with("P2POS_")
                || ["PWD", "OLDPWD", "SHLVL", "_"].contains(&name),
            "{name} is not the app's nor the node's: {lines:#?}"
        );
    }
}

/// The code `GetHelper` fails with.
async fn get_err(client: &Client, name: &str) -> tonic::Code {
    client
        .tasks()
        .get_helper(helper_ref("", name))
        .await
        .expect_err("no such helper")
        .code()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_acts_only_as_helpers_that_exist() {
    let mut node = Node::start(&[]);
    node.install_plugin("p2pos-test-helper");
    let app = node.app_client("scoped").await;
    let session_as = |app_id: &'static str| {
        let app = app.clone();
        async move {
            app.apps()
                .session(SessionRequest {
                    app_id: app_id.into(),
                    group: String::new(),
                })
                .await
                .map(|_| ())
        }
    };
    let err = session_as("scoped:ghost")
        .await
        .expect_err("no such helper");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("scoped:ghost"), "{err:?}");
    let err = app
        .services()
        .register(RegisterRequest {
            app_id: "scoped:ghost".into(),
            service: "ghost/1".into(),
            description: String::new(),
            certificates: Vec::new(),
        })
        .await
        .expect_err("no such helper");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = add(
        &app,
        spec("scoped:ghost", "deeper", "p2pos-test-helper", &["run"]),
    )
    .await
    .expect_err("a helper of no helper");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // Once the helper's spec exists, the app may act as it; once removed, no more.
    add(&app, spec("", "ghost", "p2pos-test-helper", &["run"]))
        .await
        .expect("add");
    let _session = open_session(&app, "scoped:ghost").await;
    app.tasks()
        .remove_helper(helper_ref("", "ghost"))
        .await
        .expect("remove");
    let err = session_as("scoped:ghost").await.expect_err("removed");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // The admin is not bound by it.
    let admin = node.client().await;
    let _admin_session = open_session(&admin, "scoped:ghost").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_and_its_helpers_share_one_budget() {
    let mut node = Node::start(&[]);
    node.install_plugin("p2pos-test-helper");
    let app = node.app_client("budget").await;
    for name in ["h1", "h2"] {
        add(&app, spec("", name, "p2pos-test-helper", &["run"]))
            .await
            .expect("add");
    }
    // Services: 32 for the app and its helpers together.
    let mut sessions = Vec::new();
    for app_id in ["budget", "budget:h1", "budget:h2"] {
        sessions.push(open_session(&app, app_id).await);
    }
    let register = |app_id: &str, n: usize| {
        let app = app.clone();
        let request = RegisterRequest {
            app_id: app_id.into(),
            service: format!("svc-{n}/1"),
            description: String::new(),
            certificates: Vec::new(),
        };
        async move { app.services().register(request).await }
    };
    for n in 0..32 {
        let app_id = ["budget", "budget:h1"][n % 2];
        register(app_id, n).await.expect("within the budget");
    }
    let err = register("budget:h2", 99)
        .await
        .expect_err("over the budget");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("one app"), "{err:?}");

    // Sessions: 128 for the app and its helpers together (3 open already).
    for n in 3..128 {
        let app_id = ["budget", "budget:h1", "budget:h2"][n % 3];
        sessions.push(open_session(&app, app_id).await);
    }
    let err = app
        .apps()
        .session(SessionRequest {
            app_id: "budget:h2".into(),
            group: String::new(),
        })
        .await
        .expect_err("over the budget");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    // Another app has its own budget.
    let other = node.app_client("other").await;
    let _other = open_session(&other, "other").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_ping_never_dials_an_address_it_names() {
    let mut node = Node::start(&[]);
    let app = node.app_client("pinger").await;
    // Someone's address the app would like the node to connect to.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stranger = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let address = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{stranger}");
    // A ticket is alphanumeric, like a peer id, but carries the address.
    let ticket = p2pos_protocols::network::ticket::encode_ticket(
        &stranger,
        &[format!("/ip4/127.0.0.1/tcp/{port}")
            .parse()
            .expect("multiaddr")],
    );
    for target in [address.as_str(), ticket.as_str()] {
        let err = app
            .overlay()
            .ping(PingRequest {
                peer_id: target.into(),
            })
            .await
            .expect_err("an address");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("Dial"), "{err:?}");
    }
    // Nothing connected to the address, and the node does not know it.
    let accepted = tokio::time::timeout(Duration::from_millis(500), listener.accept()).await;
    assert!(accepted.is_err(), "the node dialed the address");
    let (ok, out, err) = p2pctl(&node, &["peers", "--json"]);
    assert!(ok, "{err}");
    assert!(!out.contains(&stranger.to_string()), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn apps_do_not_see_the_environment_of_the_admins_specs() {
    let mut node = Node::start(&[]);
    node.install_plugin("p2pos-test-helper");
    let admin = node.client().await;
    let mut secretive = spec("", "secretive", "p2pos-test-helper", &["run"]);
    secretive
        .env
        .insert("UPSTREAM_API_KEY".into(), "hunter2".into());
    add(&admin, secretive).await.expect("admin add");
    let app = node.app_client("viewer").await;
    let mut own = spec("", "mine", "p2pos-test-helper", &["run"]);
    own.env.insert("APP_MODE".into(), "fast".into());
    add(&app, own).await.expect("app add");

    let listed = app
        .tasks()
        .list_helpers(ListHelpersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .helpers;
    let env_of = |name: &str| {
        listed
            .iter()
            .find(|h| h.spec.as_ref().is_some_and(|s| s.name == name))
            .and_then(|h| h.spec.clone())
            .unwrap_or_else(|| panic!("{name} listed: {listed:#?}"))
            .env
    };
    assert!(env_of("secretive").is_empty(), "{listed:#?}");
    assert_eq!(
        env_of("mine").get("APP_MODE").map(String::as_str),
        Some("fast")
    );
    // Nor in its own instance of it, before or after it starts.
    let view = get(&app, "", "secretive").await;
    assert!(view.spec.expect("spec").env.is_empty());
    let started = start(&app, "", "secretive").await.expect("start");
    assert!(started.spec.expect("spec").env.is_empty());
    let view = get(&app, "viewer", "secretive").await;
    assert!(view.spec.expect("spec").env.is_empty());
    // The admin sees it.
    let view = get(&admin, "", "secretive").await;
    assert_eq!(
        view.spec
            .expect("spec")
            .env
            .get("UPSTREAM_API_KEY")
            .map(String::as_str),
        Some("hunter2")
    );
}
