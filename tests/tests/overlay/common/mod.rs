//! The harness of the in-process overlay tests: real kernels (temporary data directories,
//! 127.0.0.1, mDNS off) that run only the network, the overlay, port forwarding and a probe
//! capturing the service context, driven through the kernel's registry exactly as the gateway drives them.

// Each test file uses its own part of the harness.
#![allow(dead_code)]

pub(crate) mod services;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use actix::prelude::*;
use bytes::Bytes;
use p2pos_kernel::{
    ChildHandle, ChildSpec, Config, InjectPanic, Kernel, Protocol, Registry, RestartType,
    ServiceContext, ServiceError, StopService, Uses,
};
use p2pos_proto::{
    app::v1::{IncomingCall, IncomingChannel, ListAppsReply, ReceivedMessage, SendReply},
    overlay::v1::{DialRequest, FindPeerReply, PingReply},
};
use p2pos_protocols::{
    Apps, Overlay, Reply,
    apps::{ChannelStream, Incoming, Request, Session},
    ids::{AppId, PeerRef},
    network::{NETWORK, Network},
    overlay,
};
use tokio::sync::mpsc;

/// How long any one step of a test may take.
pub(crate) const T: Duration = Duration::from_secs(30);

/// A trivial actor standing in for a service, so that the kernel hands us its context.
pub(crate) struct Probe {
    _guard: p2pos_kernel::DeathGuard,
}

impl Actor for Probe {
    type Context = Context<Self>;
}

impl Handler<StopService> for Probe {
    type Result = ();
    fn handle(&mut self, _: StopService, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<InjectPanic> for Probe {
    type Result = ();
    fn handle(&mut self, _: InjectPanic, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

pub(crate) struct Node {
    pub(crate) ctx: ServiceContext,
    _dir: tempfile::TempDir,
}

impl Node {
    pub(crate) async fn boot() -> Node {
        Node::boot_with(p2pos_overlay::Config::default().max_channels).await
    }

    pub(crate) async fn boot_with(max_channels: u32) -> Node {
        Node::boot_config(|_| {}, |overlay| overlay.max_channels = max_channels).await
    }

    /// Boots a node whose network and overlay configurations `network` and `overlay` change
    /// first.
    pub(crate) async fn boot_config(
        network: impl FnOnce(&mut p2pos_network::Config),
        overlay: impl FnOnce(&mut p2pos_overlay::Config),
    ) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            data_dir: dir.path().join("node"),
            allow_fault_injection: true,
            ..Config::default()
        };
        let mut network_config = p2pos_network::Config {
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            mdns: false,
            ..p2pos_network::Config::default()
        };
        network(&mut network_config);
        let mut overlay_config = p2pos_overlay::Config::default();
        overlay(&mut overlay_config);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let slot = Arc::new(Mutex::new(Some(tx)));
        let probe = ChildSpec {
            name: "probe",
            restart: RestartType::Temporary,
            uses: Uses {
                // The probe uses the network as any new service would.
                needs: &[NETWORK],
                calls: &[
                    <Overlay as Protocol>::NAME,
                    <Apps as Protocol>::NAME,
                    <p2pos_protocols::Services as Protocol>::NAME,
                    <p2pos_protocols::Forwarding as Protocol>::NAME,
                ],
                ..Uses::default()
            },
            start: Box::new(move |ctx, guard| {
                if let Some(tx) = slot.lock().expect("lock").take() {
                    let _ = tx.send(ctx);
                }
                let addr = Probe { _guard: guard }.start();
                Ok(ChildHandle {
                    stop: addr.clone().recipient(),
                    panic: addr.recipient(),
                })
            }),
        };
        let children = vec![
            p2pos_network::child_spec(network_config),
            p2pos_overlay::child_spec(overlay_config),
            p2pos_forward::child_spec(),
            probe,
        ];
        Kernel::boot(config, children).expect("boot");
        let ctx = tokio::time::timeout(T, rx)
            .await
            .expect("kernel started")
            .expect("context");
        Node { ctx, _dir: dir }
    }

    /// The network handle, as the node's services get it.
    pub(crate) fn network(&self) -> Network {
        self.ctx.registry.take(NETWORK).expect("the network handle")
    }

    pub(crate) fn peer_id(&self) -> String {
        self.ctx.peer_id.to_string()
    }

    /// Asks the network (`p2pos.overlay.v1`).
    pub(crate) async fn overlay<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> overlay::Request,
    ) -> Result<T, ServiceError> {
        self.ctx.registry.ask::<Overlay, T>(make).await
    }

    /// Asks the overlay's apps protocol.
    pub(crate) async fn apps<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<T, ServiceError> {
        self.ctx.registry.ask::<Apps, T>(make).await
    }

    /// Opens a session of app `chat`.
    pub(crate) async fn chat_session(&self) -> Session {
        self.session("chat").await
    }

    /// Opens a session of `app_id`.
    pub(crate) async fn session(&self, app_id: &str) -> Session {
        let app = app(app_id);
        match self
            .apps(|reply| Request::OpenSession {
                app_id: app,
                reply,
                group: None,
            })
            .await
        {
            Ok(session) => session,
            other => panic!("a session of {app_id}: {other:?}"),
        }
    }

    /// Opens a channel to app `app_id` on `peer` (a peer id, ticket or multiaddr).
    pub(crate) async fn open_channel(
        &self,
        app_id: &str,
        peer: &str,
    ) -> Result<ChannelStream, ServiceError> {
        open_channel(&self.ctx.registry, app_id, peer).await
    }

    /// Accepts the channel `channel_id` announced to a session of `app_id`.
    pub(crate) async fn accept_channel(
        &self,
        app_id: &str,
        channel_id: u64,
    ) -> Result<ChannelStream, ServiceError> {
        let app_id = app(app_id);
        self.apps(|reply| Request::AcceptChannel {
            app_id,
            channel_id,
            reply,
        })
        .await
    }

    /// Sends one message from app `app_id` to `peer`.
    pub(crate) async fn send(
        &self,
        app_id: &str,
        peer: &str,
        payload: Bytes,
    ) -> Result<SendReply, ServiceError> {
        let (app_id, peer) = (app(app_id), peer_ref(peer)?);
        self.apps(|reply| Request::Send {
            app_id,
            peer,
            payload,
            idempotency_key: None,
            reply,
        })
        .await
    }

    /// Follows the inbox of `app_id`.
    pub(crate) async fn receive(
        &self,
        app_id: &str,
    ) -> Result<mpsc::Receiver<ReceivedMessage>, ServiceError> {
        let app_id = app(app_id);
        self.apps(|reply| Request::Receive { app_id, reply }).await
    }

    /// Acknowledges every message of `app_id` up to `inbox_id`.
    pub(crate) async fn ack(&self, app_id: &str, inbox_id: u64) -> Result<(), ServiceError> {
        let app_id = app(app_id);
        self.apps(|reply| Request::Ack {
            app_id,
            inbox_id,
            reply,
        })
        .await
    }

    /// Messages stored in the inbox of `app_id`.
    pub(crate) async fn inbox(&self, app_id: &str) -> u64 {
        let apps = self.list_apps().await.expect("list apps");
        apps.apps
            .iter()
            .find(|app| app.app_id == app_id)
            .map_or(0, |app| app.inbox)
    }

    /// Lists every app.
    pub(crate) async fn list_apps(&self) -> Result<ListAppsReply, ServiceError> {
        self.apps(|reply| Request::ListApps { only: None, reply })
            .await
    }

    /// This node's ticket and addresses.
    pub(crate) async fn try_ticket(&self) -> Result<(String, Vec<String>), ServiceError> {
        let t = self
            .overlay(|reply| overlay::Request::GetTicket { reply })
            .await?;
        Ok((t.ticket, t.addresses))
    }

    pub(crate) async fn ticket(&self) -> (String, Vec<String>) {
        self.try_ticket().await.expect("ticket")
    }

    pub(crate) async fn dial(&self, target: &str) -> Result<String, ServiceError> {
        let request = DialRequest {
            target: target.into(),
            timeout_ms: 0,
        };
        let dialed = self
            .overlay(|reply| overlay::Request::Dial { request, reply })
            .await?;
        Ok(dialed.peer_id)
    }

    /// Pings a peer named by its peer id.
    pub(crate) async fn ping(&self, peer: &str) -> Result<PingReply, ServiceError> {
        let peer = peer_ref(peer)?;
        self.overlay(|reply| overlay::Request::Ping { peer, reply })
            .await
    }

    /// Looks a peer up in the DHT.
    pub(crate) async fn find_peer(&self, peer: &str) -> Result<FindPeerReply, ServiceError> {
        let peer = peer_ref(peer)?;
        self.overlay(|reply| overlay::Request::FindPeer { peer, reply })
            .await
    }

    pub(crate) async fn peers(&self) -> Vec<p2pos_proto::overlay::v1::PeerInfo> {
        self.overlay(|reply| overlay::Request::ListPeers { reply })
            .await
            .map(|p| p.peers)
            .unwrap_or_default()
    }

    pub(crate) async fn routing_table_size(&self) -> u32 {
        self.overlay(|reply| overlay::Request::Status { reply })
            .await
            .map_or(0, |s| s.routing_table_size)
    }
}

/// `input` as an app id (the tests name valid ones).
pub(crate) fn app(input: &str) -> AppId {
    AppId::parse(input).expect("a valid app id")
}

/// `input` as a peer, as the gateway parses it.
pub(crate) fn peer_ref(input: &str) -> Result<PeerRef, ServiceError> {
    PeerRef::parse(input).map_err(ServiceError::from)
}

/// Opens a channel to app `app_id` on `peer` through `registry`.
pub(crate) async fn open_channel(
    registry: &Registry,
    app_id: &str,
    peer: &str,
) -> Result<ChannelStream, ServiceError> {
    let (app_id, peer) = (app(app_id), peer_ref(peer)?);
    registry
        .ask::<Apps, _>(|reply| Request::OpenChannel {
            app_id,
            peer,
            reply,
            group: None,
        })
        .await
}

pub(crate) fn channel(response: Result<ChannelStream, ServiceError>) -> ChannelStream {
    match response {
        Ok(c) => c,
        other => panic!("expected a channel, got {other:?}"),
    }
}

/// The next event of `session`, within [`T`].
pub(crate) async fn next_incoming(session: &mut Session) -> Incoming {
    tokio::time::timeout(T, session.incoming.recv())
        .await
        .expect("an announcement in time")
        .expect("the session is open")
}

/// The next event of `session`, which must be a channel.
pub(crate) async fn next_channel(session: &mut Session) -> IncomingChannel {
    match next_incoming(session).await {
        Incoming::Channel(channel) => channel,
        other => panic!("expected a channel, got {other:?}"),
    }
}

/// The next event of `session`, which must be a call.
pub(crate) async fn next_call(session: &mut Session) -> IncomingCall {
    match next_incoming(session).await {
        Incoming::Call(call) => call,
        other => panic!("expected a call, got {other:?}"),
    }
}
