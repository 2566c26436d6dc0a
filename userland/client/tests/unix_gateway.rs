//! The SDK against a fake node on a Unix socket: the target comes from a data directory, and the
//! token in `gateway.token` reaches the node as `authorization: Bearer <token>`.
#![allow(clippy::unwrap_used, missing_docs)]

use p2pos_client::{Client, Target, TargetOptions};
use p2pos_proto::node::v1::node_server::{Node, NodeServer};
use p2pos_proto::node::v1::{
    CreateAppTokenReply, CreateAppTokenRequest, GetInfoRequest, InjectPanicReply,
    InjectPanicRequest, NodeInfo, ShutdownReply, ShutdownRequest,
};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// Answers `GetInfo` with the caller's `authorization` header as its scope.
struct EchoAuth;

#[tonic::async_trait]
impl Node for EchoAuth {
    async fn get_info(
        &self,
        request: Request<GetInfoRequest>,
    ) -> Result<Response<NodeInfo>, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Ok(Response::new(NodeInfo {
            caller_scope: auth,
            ..NodeInfo::default()
        }))
    }
    async fn shutdown(
        &self,
        _: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownReply>, Status> {
        Err(Status::unimplemented("fake"))
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

#[tokio::test]
async fn data_dir_socket_and_token_reach_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::UnixListener::bind(dir.path().join("gateway.sock")).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeServer::new(EchoAuth))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    std::fs::write(dir.path().join("gateway.token"), "s3cret\n").unwrap();

    let target = Target::resolve(TargetOptions {
        data_dir: Some(dir.path().to_path_buf()),
        ..TargetOptions::default()
    })
    .unwrap();
    let client = Client::connect(&target).await.unwrap();
    let info = client
        .node()
        .get_info(GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.caller_scope, "Bearer s3cret");

    // Without a token file nothing is sent (the Unix socket does not need one).
    std::fs::remove_file(dir.path().join("gateway.token")).unwrap();
    let target = Target::resolve(TargetOptions {
        data_dir: Some(dir.path().to_path_buf()),
        ..TargetOptions::default()
    })
    .unwrap();
    let client = Client::connect(&target).await.unwrap();
    let info = client
        .node()
        .get_info(GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.caller_scope, "");
}
