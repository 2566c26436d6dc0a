//! The harness of the in-process overlay tests: real kernels (temporary data directories,
//! 127.0.0.1, mDNS off) that run only the network, the overlay and a probe capturing the
//! service context, driven through the kernel's registry exactly as the gateway drives them.

// Each test file uses its own part of the harness.
#![allow(dead_code)]

pub(crate) mod services;

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use actix::prelude::*;
use p2pos_kernel::{
    ChildHandle, ChildSpec, Config, InjectPanic, Kernel, Protocol, RestartType, ServiceContext,
    ServiceError, StopService, Uses,
};
use p2pos_proto::{
    app::v1::{IncomingCall, IncomingChannel},
    overlay::v1::{
        DialRequest, GetTicketRequest, ListPeersRequest, OverlayRequest, OverlayStatusRequest,
        overlay_request::Kind as Req, overlay_response::Kind as Resp,
    },
};
use p2pos_protocols::network::{NETWORK, Network};
use p2pos_protocols::{
    Apps, Overlay,
    apps::{ChannelStream, Incoming, Request, Response, Session},
};

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

    pub(crate) async fn overlay(&self, kind: Req) -> Result<Resp, ServiceError> {
        let reply = self
            .ctx
            .registry
            .call::<Overlay>(OverlayRequest { kind: Some(kind) })
            .await?;
        Ok(reply.kind.expect("a response kind"))
    }

    pub(crate) async fn apps(&self, request: Request) -> Result<Response, ServiceError> {
        self.ctx.registry.call::<Apps>(request).await
    }

    /// Opens a session of app `chat`.
    pub(crate) async fn chat_session(&self) -> Session {
        self.session("chat").await
    }

    /// Opens a session of `app_id`.
    pub(crate) async fn session(&self, app_id: &str) -> Session {
        match self
            .apps(Request::OpenSession {
                app_id: app_id.into(),
            })
            .await
        {
            Ok(Response::Session(session)) => session,
            other => panic!("a session of {app_id}: {other:?}"),
        }
    }

    pub(crate) async fn ticket(&self) -> (String, Vec<String>) {
        match self.overlay(Req::GetTicket(GetTicketRequest {})).await {
            Ok(Resp::Ticket(t)) => (t.ticket, t.addresses),
            other => panic!("ticket: {other:?}"),
        }
    }

    pub(crate) async fn dial(&self, target: &str) -> Result<String, ServiceError> {
        match self
            .overlay(Req::Dial(DialRequest {
                target: target.into(),
                timeout_ms: 0,
            }))
            .await?
        {
            Resp::Dial(d) => Ok(d.peer_id),
            other => panic!("dial: {other:?}"),
        }
    }

    pub(crate) async fn peers(&self) -> Vec<p2pos_proto::overlay::v1::PeerInfo> {
        match self.overlay(Req::ListPeers(ListPeersRequest {})).await {
            Ok(Resp::ListPeers(p)) => p.peers,
            _ => Vec::new(),
        }
    }

    pub(crate) async fn routing_table_size(&self) -> u32 {
        match self.overlay(Req::Status(OverlayStatusRequest {})).await {
            Ok(Resp::Status(s)) => s.routing_table_size,
            _ => 0,
        }
    }
}

/// Polls `check` until it answers `Some`, failing after `deadline`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn channel(response: Result<Response, ServiceError>) -> ChannelStream {
    match response {
        Ok(Response::Channel(c)) => c,
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
