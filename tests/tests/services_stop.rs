//! Providers that stop: how soon calls move on to another provider (or fail clearly), and what
//! `FindService` says about them. Real daemons on loopback; the figures are printed
//! (`--nocapture`) and bounded by what a user would call "at once".

use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pos_client::Client;
use p2pos_proto::service::v1::{CallRequest, FindServiceRequest, ListServicesRequest};
use p2pos_tests::{Node, p2pctl, provide, star, wait_for};
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(30);
const ECHO: &str = "echo/1";

async fn provide_echo(client: Client) -> JoinHandle<()> {
    provide(
        client,
        "echo-app",
        ECHO,
        "echoes",
        |payload| Some(Ok(payload)),
        |_| {},
    )
    .await
}

fn call(payload: &str) -> CallRequest {
    CallRequest {
        app_id: "caller".into(),
        service: ECHO.into(),
        payload: Bytes::from(payload.to_owned()),
        peer: String::new(),
        timeout_ms: 0,
        ..CallRequest::default()
    }
}

async fn find(client: &Client) -> Vec<p2pos_proto::service::v1::ServiceInfo> {
    client
        .services()
        .find_service(FindServiceRequest {
            service: ECHO.into(),
            limit: 0,
            ..FindServiceRequest::default()
        })
        .await
        .map(|r| r.into_inner().providers)
        .unwrap_or_default()
}

/// Stops `node`'s process (SIGSTOP); it is killed when dropped.
fn freeze(node: Option<&Node>) {
    let pid = node.and_then(Node::pid).expect("running");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
}

/// Three providers, on B, C and D; A calls. The one that answers A first stops: its app (the
/// node stays up); then the node of the next one stops answering; then the last one's. Each
/// time A's next calls are timed (figures printed with `--nocapture`).
/// Times are bounded loosely: the point is "at once" against the 5 to 15 s spent before on
/// a provider that no longer answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_provider_is_skipped_at_once() {
    let (nodes, clients, ids) = star(4).await;
    let nodes: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    let a = &clients[0];
    let mut providers = [
        None,
        Some(provide_echo(clients[1].clone()).await),
        Some(provide_echo(clients[2].clone()).await),
        Some(provide_echo(clients[3].clone()).await),
    ];
    wait_for("three providers in the DHT", T, || async move {
        (find(a).await.len() == 3).then_some(())
    })
    .await;
    let answered_by = |reply: tonic::Response<p2pos_proto::service::v1::CallReply>| {
        let peer = reply.into_inner().peer_id;
        ids.iter().position(|id| *id == peer).expect("a known peer")
    };
    let first = wait_for("a provider to answer", T, || async move {
        a.services().call(call("one")).await.ok()
    })
    .await;
    let first = answered_by(first);

    // 1. Its app stops; its node says so (the registration is gone there).
    if let Some(task) = providers[first].take() {
        task.abort();
    }
    let on_first = &clients[first];
    wait_for("the stopped app's node to drop it", T, || async move {
        let list = on_first
            .services()
            .list_services(ListServicesRequest {})
            .await
            .ok()?
            .into_inner();
        list.services.is_empty().then_some(())
    })
    .await;
    let started = Instant::now();
    let reply = a
        .services()
        .call(call("two"))
        .await
        .expect("another answers");
    let app_stopped = started.elapsed();
    let second = answered_by(reply);
    assert_ne!(second, first);
    // A called it, so its node told A it stopped: A's look-ups leave it out (its DHT record
    // lives on for minutes).
    let gone = &ids[first];
    wait_for(
        "A's look-up to leave the stopped provider out",
        T,
        || async move {
            let found = find(a).await;
            (found.len() == 2 && found.iter().all(|p| p.peer_id != *gone)).then_some(())
        },
    )
    .await;
    let left_out = started.elapsed();
    eprintln!(
        "FIGURE app stopped: next call answered by another provider in {app_stopped:?}; \
         find leaves the stopped provider out after {left_out:?}"
    );
    assert!(app_stopped < Duration::from_secs(2), "{app_stopped:?}");

    // 2. The node of the provider that answered now stops answering (SIGSTOP: a computer
    // that went to sleep or lost its network, its connections left open).
    freeze(nodes[second].as_ref());
    let started = Instant::now();
    let reply = a
        .services()
        .call(call("three"))
        .await
        .expect("the last answers");
    let node_frozen = started.elapsed();
    let third = answered_by(reply);
    assert!(third != first && third != second);
    let started = Instant::now();
    let reply = a
        .services()
        .call(call("four"))
        .await
        .expect("the last answers");
    let next_call = started.elapsed();
    assert_eq!(answered_by(reply), third);
    eprintln!(
        "FIGURE node frozen: next call answered by the last provider in {node_frozen:?}, \
         the call after in {next_call:?}"
    );
    // Not tried again: it failed less than 30 s ago.
    assert!(next_call < Duration::from_secs(2), "{next_call:?}");
    // 3. The last one's node stops answering too: a clear error.
    freeze(nodes[third].as_ref());
    let started = Instant::now();
    let err = a
        .services()
        .call(call("five"))
        .await
        .expect_err("none left");
    let none_left = started.elapsed();
    let started = Instant::now();
    let again = a.services().call(call("six")).await.expect_err("none left");
    let none_again = started.elapsed();
    eprintln!(
        "FIGURE none left: a clear error ({:?}) in {none_left:?}, the call after ({:?}) in \
         {none_again:?}",
        err.code(),
        again.code()
    );
    for err in [err, again] {
        assert!(
            matches!(err.code(), tonic::Code::Unavailable | tonic::Code::NotFound),
            "{err:?}"
        );
    }
    // Neither frozen node is tried again; what remains is one DHT look-up (at most 5 s).
    assert!(none_again < Duration::from_secs(8), "{none_again:?}");
    // A's look-ups mark the provider it failed to reach (less than 30 s ago); p2pctl shows it.
    let (ok, out, err) = p2pctl(
        nodes[0].as_ref().expect("A"),
        &["services", "find", ECHO, "--json"],
    );
    assert!(ok, "{err}");
    let entry = out
        .split('}')
        .find(|entry| entry.contains(&ids[third]))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(entry.contains(r#""reachability":"unreachable""#), "{out}");
}
