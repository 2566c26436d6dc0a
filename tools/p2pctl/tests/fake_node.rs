//! Runs the real `p2pctl` binary against a fake node (Node and Overlay services on a Unix socket
//! in a temporary data directory) and checks what scripts rely on: the id and ticket alone on a
//! line, the JSON shapes, and `error: ...` with a non-zero exit.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use p2pos_proto::node::v1::node_server::{Node, NodeServer};
use p2pos_proto::node::v1::{
    CreateAppTokenReply, CreateAppTokenRequest, GetInfoRequest, InjectPanicReply,
    InjectPanicRequest, NodeInfo, ShutdownReply, ShutdownRequest,
};
use p2pos_proto::overlay::v1::overlay_server::{Overlay, OverlayServer};
use p2pos_proto::overlay::v1::{
    DialReply, DialRequest, FindPeerReply, FindPeerRequest, GetTicketRequest, ListPeersReply,
    ListPeersRequest, PeerInfo, PingReply, PingRequest, Ticket,
};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

const ME: &str = "12D3KooWMe";
const BOB: &str = "12D3KooWBob";

struct FakeNode;

#[tonic::async_trait]
impl Node for FakeNode {
    async fn get_info(&self, _: Request<GetInfoRequest>) -> Result<Response<NodeInfo>, Status> {
        Ok(Response::new(NodeInfo {
            peer_id: ME.into(),
            version: "0.1.0".into(),
            api_versions: vec!["p2pos.node.v1".into()],
            caller_scope: "admin".into(),
            data_dir: "/d".into(),
        }))
    }
    async fn shutdown(
        &self,
        _: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownReply>, Status> {
        Ok(Response::new(ShutdownReply {}))
    }
    async fn create_app_token(
        &self,
        _: Request<CreateAppTokenRequest>,
    ) -> Result<Response<CreateAppTokenReply>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn inject_panic(
        &self,
        _: Request<InjectPanicRequest>,
    ) -> Result<Response<InjectPanicReply>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

struct FakeOverlay;

#[tonic::async_trait]
impl Overlay for FakeOverlay {
    async fn get_ticket(&self, _: Request<GetTicketRequest>) -> Result<Response<Ticket>, Status> {
        Ok(Response::new(Ticket {
            ticket: "p2posabc".into(),
            peer_id: ME.into(),
            addresses: vec![],
        }))
    }
    async fn dial(&self, request: Request<DialRequest>) -> Result<Response<DialReply>, Status> {
        if request.into_inner().target == BOB {
            Ok(Response::new(DialReply {
                peer_id: BOB.into(),
                address: "/ip4/127.0.0.1/tcp/1".into(),
            }))
        } else {
            Err(Status::not_found("no addresses for the peer"))
        }
    }
    async fn list_peers(
        &self,
        _: Request<ListPeersRequest>,
    ) -> Result<Response<ListPeersReply>, Status> {
        Ok(Response::new(ListPeersReply {
            peers: vec![PeerInfo {
                peer_id: BOB.into(),
                addresses: vec!["/ip4/127.0.0.1/tcp/1".into()],
                transport: "tcp".into(),
                rtt_us: 1500,
                agent_version: "p2posd/0.1.0".into(),
                connections: 1,
            }],
        }))
    }
    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        Ok(Response::new(PingReply { rtt_us: 1234 }))
    }
    async fn find_peer(
        &self,
        _: Request<FindPeerRequest>,
    ) -> Result<Response<FindPeerReply>, Status> {
        Err(Status::not_found("nobody knows"))
    }
}

fn serve(dir: &Path) {
    let listener = tokio::net::UnixListener::bind(dir.join("gateway.sock")).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeServer::new(FakeNode))
            .add_service(OverlayServer::new(FakeOverlay))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
}

/// Runs p2pctl on a blocking thread (the fake node lives on this runtime).
async fn p2pctl(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_p2pctl"));
    command
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("P2POS_GATEWAY")
        .env_remove("P2POS_TOKEN")
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn read_commands_print_what_scripts_expect() {
    let dir = tempfile::tempdir().unwrap();
    serve(dir.path());

    assert_eq!(
        stdout(&p2pctl(dir.path(), &["id"]).await),
        format!("{ME}\n")
    );
    assert_eq!(stdout(&p2pctl(dir.path(), &["ticket"]).await), "p2posabc\n");

    let peers: serde_json::Value =
        serde_json::from_str(&stdout(&p2pctl(dir.path(), &["peers", "--json"]).await)).unwrap();
    assert_eq!(peers[0]["peer_id"], BOB);
    assert_eq!(peers[0]["rtt_us"], 1500);
    assert_eq!(peers[0]["connections"], 1);

    let table = stdout(&p2pctl(dir.path(), &["peers"]).await);
    assert!(table.starts_with("PEER ID"), "{table}");
    assert!(table.contains("1.5 ms"), "{table}");

    assert_eq!(
        stdout(&p2pctl(dir.path(), &["dial", BOB]).await),
        format!("connected to {BOB} via /ip4/127.0.0.1/tcp/1\n")
    );
    assert_eq!(
        stdout(&p2pctl(dir.path(), &["ping", BOB]).await),
        "rtt 1.234 ms\n"
    );
    assert_eq!(
        stdout(&p2pctl(dir.path(), &["shutdown"]).await),
        "node is shutting down\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_one_error_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    serve(dir.path());
    let out = p2pctl(dir.path(), &["dial", "12D3KooWNobody"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "error: cannot dial: no addresses for the peer (not found)\n"
    );

    // A service the fake node does not serve.
    let out = p2pctl(dir.path(), &["apps"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("error: cannot list apps: "), "{err}");
    assert_eq!(err.lines().count(), 1);

    let gone = tempfile::tempdir().unwrap();
    let out = p2pctl(gone.path(), &["status"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: cannot reach the node at unix:"),
        "{err}"
    );
}
