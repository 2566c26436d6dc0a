//! `p2pos.monitor.v1.Monitor`: status (through the monitor actor) and the event stream
//! (straight from the kernel's event bus); the doctor, logs, metrics and configuration (admin
//! only, through the monitor actor; checks in [`crate::monitor_diag`]).

use std::pin::Pin;

use futures::{Stream, StreamExt};
use p2pos_kernel::{ServiceContext, events::now_ms};
use p2pos_proto::monitor::v1::{DashboardLoginReply, DashboardLoginRequest};
use p2pos_proto::monitor::v1::{
    DoctorReport, DoctorRequest, Event, EventsRequest, GetStatusRequest, Lagged, NodeStatus, event,
    monitor_server::Monitor,
};
use p2pos_proto::monitor::v1::{
    GetConfigReply, GetConfigRequest, GetLogsReply, GetLogsRequest, GetMetricsReply,
    GetMetricsRequest,
};
use p2pos_protocols::{
    Monitor as MonitorProtocol,
    monitor::{self, Diagnose},
};
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
use tonic::{Request, Response, Status};

use tokio_util::sync::CancellationToken;

use crate::{
    auth::{Scope, caller},
    cut_on_stop,
};

/// The adapter.
pub struct MonitorApi {
    ctx: ServiceContext,
    stop: CancellationToken,
}

impl MonitorApi {
    /// For this node.
    pub fn new(ctx: ServiceContext, stop: CancellationToken) -> Self {
        Self { ctx, stop }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl Monitor for MonitorApi {
    async fn get_status(
        &self,
        req: Request<GetStatusRequest>,
    ) -> Result<Response<NodeStatus>, Status> {
        caller(&req)?;
        let GetStatusRequest {} = req.into_inner();
        let status = self
            .ctx
            .registry
            .ask::<MonitorProtocol, _>(|reply| monitor::Request::GetStatus { reply })
            .await?;
        Ok(Response::new(status))
    }

    async fn doctor(&self, req: Request<DoctorRequest>) -> Result<Response<DoctorReport>, Status> {
        caller(&req)?.require_admin()?;
        let DoctorRequest { peer, group } = req.into_inner();
        let target = match (peer.trim(), group.trim()) {
            ("", "") => Diagnose::Node,
            (peer, "") => Diagnose::Peer(peer.to_owned()),
            ("", group) => Diagnose::Group(group.to_owned()),
            _ => {
                return Err(Status::invalid_argument(
                    "name a peer or a group to diagnose, not both",
                ));
            }
        };
        let report = self
            .ctx
            .registry
            .ask::<MonitorProtocol, _>(|reply| monitor::Request::Doctor { target, reply })
            .await?;
        Ok(Response::new(report))
    }

    type EventsStream = EventStream;

    async fn events(
        &self,
        req: Request<EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let scope = caller(&req)?;
        let stream = BroadcastStream::new(self.ctx.events.subscribe()).filter_map(move |item| {
            let out = match item {
                Ok(event) => visible(&scope, &event).then_some(Ok(event)),
                Err(BroadcastStreamRecvError::Lagged(missed)) => Some(Ok(Event {
                    at_ms: now_ms(),
                    kind: Some(event::Kind::Lagged(Lagged { missed })),
                })),
            };
            futures::future::ready(out)
        });
        Ok(Response::new(cut_on_stop(
            Box::pin(stream),
            self.stop.clone(),
        )))
    }

    async fn get_logs(
        &self,
        req: Request<GetLogsRequest>,
    ) -> Result<Response<GetLogsReply>, Status> {
        caller(&req)?.require_admin()?;
        let (min_level, limit) = crate::monitor_diag::logs_request(req.into_inner())?;
        let reply = self
            .ctx
            .registry
            .ask::<MonitorProtocol, _>(|reply| monitor::Request::GetLogs {
                min_level,
                limit,
                reply,
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn get_metrics(
        &self,
        req: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsReply>, Status> {
        caller(&req)?.require_admin()?;
        let GetMetricsRequest {} = req.into_inner();
        let reply = self
            .ctx
            .registry
            .ask::<MonitorProtocol, _>(|reply| monitor::Request::GetMetrics { reply })
            .await?;
        Ok(Response::new(reply))
    }

    async fn get_config(
        &self,
        req: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigReply>, Status> {
        caller(&req)?.require_admin()?;
        let GetConfigRequest {} = req.into_inner();
        let reply = self
            .ctx
            .registry
            .ask::<MonitorProtocol, _>(|reply| monitor::Request::GetConfig { reply })
            .await?;
        Ok(Response::new(reply))
    }

    async fn dashboard_login(
        &self,
        req: Request<DashboardLoginRequest>,
    ) -> Result<Response<DashboardLoginReply>, Status> {
        caller(&req)?.require_admin()?;
        let DashboardLoginRequest {} = req.into_inner();
        let reply = self
            .ctx
            .registry
            .ask::<MonitorProtocol, _>(|reply| monitor::Request::DashboardLogin { reply })
            .await?;
        Ok(Response::new(reply))
    }
}

/// An app-scoped follower sees node-wide events and those of its own app only.
fn visible(scope: &Scope, event: &Event) -> bool {
    let app = match &event.kind {
        Some(event::Kind::ChannelOpened(e)) => &e.app_id,
        Some(event::Kind::ChannelClosed(e)) => &e.app_id,
        Some(event::Kind::MessageDelivered(e)) => &e.app_id,
        Some(event::Kind::MessageFailed(e)) => &e.app_id,
        Some(event::Kind::MessageWaiting(e)) => &e.app_id,
        Some(event::Kind::Helper(e)) => &e.app_id,
        Some(
            event::Kind::PeerConnected(_)
            | event::Kind::PeerGone(_)
            | event::Kind::ServiceRestarted(_)
            | event::Kind::ServiceState(_)
            | event::Kind::RelayReserved(_)
            | event::Kind::ConnectionUpgraded(_)
            | event::Kind::Lagged(_),
        )
        | None => return true,
    };
    scope.covers(app)
}
