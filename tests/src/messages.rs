//! Store-and-forward messages through a node's gRPC API: sending, the apps' counts, receiving
//! and acknowledging; and nodes started with a configuration of the test's own.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use p2pos_client::Client;
use p2pos_proto::app::v1::{
    AckRequest, DeliveryState, ListAppsRequest, ReceiveRequest, ReceivedMessage, SendRequest,
};

use crate::Node;

/// How long a message may take to arrive.
pub const ARRIVAL: Duration = Duration::from_secs(60);

/// A node started with `config` as its `p2posd.toml`, and the directory holding the file (it
/// is read again at every restart: keep it as long as the node).
pub fn node_with_config(config: &str) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p2posd.toml");
    std::fs::write(&path, config).expect("config");
    let node = Node::start(&["--config", path.to_str().expect("utf-8 path")]);
    (node, dir)
}

/// Sends `payload` from `client`'s node to app `app` on `peer`; answers the delivery state.
pub async fn send(
    client: &Client,
    app: &str,
    peer: &str,
    payload: impl Into<Bytes>,
) -> DeliveryState {
    client
        .apps()
        .send(SendRequest {
            app_id: app.into(),
            peer: peer.to_owned(),
            payload: payload.into(),
            idempotency_key: Default::default(),
        })
        .await
        .expect("send")
        .into_inner()
        .state()
}

/// The inbox and outbox counts of `app` on `client`'s node (0 for an app it does not list).
pub async fn counts(client: &Client, app: &str) -> (u64, u64) {
    let apps = client
        .apps()
        .list_apps(ListAppsRequest {})
        .await
        .expect("list_apps")
        .into_inner();
    apps.apps
        .iter()
        .find(|a| a.app_id == app)
        .map_or((0, 0), |a| (a.inbox, a.outbox))
}

/// A `Receive` stream of `app`.
pub async fn receive(client: &Client, app: &str) -> tonic::Streaming<ReceivedMessage> {
    client
        .apps()
        .receive(ReceiveRequest { app_id: app.into() })
        .await
        .expect("receive")
        .into_inner()
}

/// The next message on `stream`, within [`ARRIVAL`]; fails the test saying `what` otherwise.
pub async fn next_message(
    stream: &mut tonic::Streaming<ReceivedMessage>,
    what: &str,
) -> ReceivedMessage {
    tokio::time::timeout(ARRIVAL, stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what} did not arrive"))
        .expect("stream open")
        .expect("message")
}

/// Acknowledges every message of `app` up to `msg`.
pub async fn ack(client: &Client, app: &str, msg: &ReceivedMessage) {
    client
        .apps()
        .ack(AckRequest {
            app_id: app.into(),
            inbox_id: msg.inbox_id,
        })
        .await
        .expect("ack");
}
