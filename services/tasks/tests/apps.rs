//! The task-control service in-process, as apps drive it: plug-ins from the plug-in directory,
//! caller scopes, helpers bound to the app's session, instances of admin-installed specs, and
//! the exact environment a helper gets.

mod support;

use std::os::unix::fs::PermissionsExt;

use p2pos_kernel::ErrorCode;
use p2pos_proto::tasks::v1::{HelperSpec, HelperState, ListHelpersRequest};
use support::{Node, Req, Resp, T, eventually, r, spec};

fn app_spec(name: &str, program: &str) -> HelperSpec {
    HelperSpec {
        name: name.to_owned(),
        program: program.to_owned(),
        ..HelperSpec::default()
    }
}

#[actix_rt::test]
async fn an_apps_helper_runs_from_the_plugin_dir_and_lives_by_its_session() {
    let node = Node::boot().await;
    node.install(
        "voice-plugin",
        "#!/bin/sh\necho \"$P2POS_APP_ID $P2POS_HELPER $P2POS_HELPER_OWNER\"\nexec /bin/sleep 30\n",
    );

    // Programs must stay inside the plug-in directory, exist and be executable.
    let code = |r: Result<_, p2pos_kernel::ServiceError>| r.expect_err("refused").code;
    assert_eq!(
        code(node.add("chat", app_spec("x", "/bin/sleep")).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(node.add("chat", app_spec("x", "../x")).await),
        ErrorCode::InvalidArgument
    );
    let err = node
        .add("chat", app_spec("x", "p2p-voice"))
        .await
        .expect_err("missing");
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(
        err.message.contains("(install it there)"),
        "{}",
        err.message
    );

    let added = node
        .add("chat", app_spec("voice", "voice-plugin"))
        .await
        .expect("add");
    let added_spec = added.spec.expect("spec");
    assert_eq!(
        added_spec.app_id, "chat",
        "an empty app id means the caller"
    );
    assert_eq!(added.helper_app_id, "chat:voice");

    // Other apps see nothing of it.
    let err = node.get("other", "chat", "voice").await.expect_err("scope");
    assert_eq!(err.code, ErrorCode::PermissionDenied);
    let err = node
        .call("chatty", Req::Start(r("chat", "voice")))
        .await
        .expect_err("scope");
    assert_eq!(err.code, ErrorCode::PermissionDenied);

    // No session, no helper.
    let err = node
        .call("chat", Req::Start(r("", "voice")))
        .await
        .expect_err("no session");
    assert_eq!(err.code, ErrorCode::FailedPrecondition);
    assert!(err.message.contains("no open session"), "{}", err.message);

    node.open_session("chat");
    let running = node
        .status("chat", Req::Start(r("", "voice")))
        .await
        .expect("start");
    assert_eq!(running.state(), HelperState::Running);
    let pid = running.pid;
    let lines = eventually("the helper's greeting", T, || async {
        let lines = node.log_texts("chat", "voice").await;
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert_eq!(lines, ["chat:voice voice chat"]);
    let err = node
        .logs("other", "chat", "voice", 0, false)
        .await
        .expect_err("scope");
    assert_eq!(err.code, ErrorCode::PermissionDenied);

    node.end_session("chat");
    let stopped = node.wait_state("chat", "voice", HelperState::Stopped).await;
    assert_eq!(stopped.reason, "the session of app chat ended");
    assert!(!support::alive(pid));

    // An app's helper may outlive the session when its spec says so; nothing to watch then.
    let mut outliving = app_spec("voice", "voice-plugin");
    outliving.outlive_session = true;
    node.add("chat", outliving).await.expect("replace");
    let running = node
        .status("chat", Req::Start(r("chat", "voice")))
        .await
        .expect("start without a session");
    assert_eq!(running.state(), HelperState::Running);
    node.status("chat", Req::Stop(r("", "voice")))
        .await
        .expect("stop");
}

#[actix_rt::test]
async fn an_app_gets_its_own_instance_of_an_admin_spec_with_a_clean_environment() {
    let node = Node::boot().await;
    let mut env = spec("env", "/usr/bin/env", &[]);
    env.env = [("GREETING".to_owned(), "hi".to_owned())].into();
    env.outlive_session = true;
    node.add("", env).await.expect("admin add");

    // The app sees the admin's spec, and its own view of it before it starts it.
    let Resp::List(list) = node
        .call("chat", Req::List(ListHelpersRequest::default()))
        .await
        .expect("list")
    else {
        panic!("a list");
    };
    assert_eq!(list.helpers.len(), 1);
    assert_eq!(list.helpers[0].spec.as_ref().expect("spec").app_id, "");
    let view = node.get("chat", "", "env").await.expect("view");
    assert_eq!(view.helper_app_id, "chat:env");
    assert_eq!(view.state(), HelperState::Stopped);

    let started = node
        .status("chat", Req::Start(r("", "env")))
        .await
        .expect("start");
    assert_eq!(started.spec.expect("spec").app_id, "chat");
    let exited = node.wait_state("chat", "env", HelperState::Exited).await;
    assert_eq!(exited.reason, "exited with code 0");

    let mut lines = eventually("the environment", T, || async {
        let lines = node.log_texts("chat", "env").await;
        (lines.len() >= 7).then_some(lines)
    })
    .await;
    lines.sort();
    let dir = node.data_dir().join("helpers/chat/env");
    let token = lines
        .iter()
        .find_map(|l| l.strip_prefix("P2POS_TOKEN="))
        .expect("a token")
        .to_owned();
    assert!(token.starts_with("helper-") && token.len() == 71, "{token}");
    let expected = [
        "GREETING=hi".to_owned(),
        "P2POS_APP_ID=chat:env".to_owned(),
        format!(
            "P2POS_GATEWAY=unix:{}",
            node.data_dir().join("gateway.sock").display()
        ),
        "P2POS_HELPER=env".to_owned(),
        format!("P2POS_HELPER_DIR={}", dir.display()),
        "P2POS_HELPER_OWNER=chat".to_owned(),
        format!("P2POS_TOKEN={token}"),
    ];
    assert_eq!(lines, expected);
    let mode = std::fs::metadata(&dir).expect("dir").permissions().mode();
    assert_eq!(mode & 0o777, 0o700);

    // The admin's own spec is untouched; the app lists its instance and the admin's spec.
    let admin = node.get("", "", "env").await.expect("admin's");
    assert_eq!(admin.state(), HelperState::Stopped);
    let Resp::List(list) = node
        .call("chat", Req::List(ListHelpersRequest::default()))
        .await
        .expect("list")
    else {
        panic!("a list");
    };
    let names: Vec<_> = list
        .helpers
        .iter()
        .map(|h| h.spec.as_ref().expect("spec").app_id.clone())
        .collect();
    assert_eq!(names, ["", "chat"]);
    let Resp::List(list) = node
        .call("other", Req::List(ListHelpersRequest::default()))
        .await
        .expect("list")
    else {
        panic!("a list");
    };
    assert_eq!(
        list.helpers.len(),
        1,
        "another app sees only the admin's spec"
    );
}
