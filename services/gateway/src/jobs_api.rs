//! `p2pos.jobs.v1.Jobs`: WebAssembly jobs submitted to peers that lend. Any scope: a job
//! belongs to the calling app (the admin's to none), and an app sees only its own jobs; the
//! runs this node does for peers are the admin's to see.

use futures::StreamExt;
use p2pos_kernel::ServiceContext;
use p2pos_proto::jobs::v1::{
    Job, JobEvent, JobRef, ListReply, ListRequest, SubmitRequest, jobs_server::Jobs as JobsRpc,
};
use p2pos_protocols::{Jobs, Reply, jobs};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{BoxStream, auth::caller, cut_on_stop};

/// The largest `Submit` (a 16 MiB module, 16 MiB of files, 4 MiB of input and the rest) and
/// the largest job with its result.
pub const MAX_JOB_MESSAGE: usize = 40 << 20;

/// The adapter.
pub struct JobsApi {
    ctx: ServiceContext,
    stop: CancellationToken,
}

impl JobsApi {
    /// For this node.
    pub fn new(ctx: ServiceContext, stop: CancellationToken) -> Self {
        Self { ctx, stop }
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> jobs::Request) -> Result<T, Status> {
        Ok(self.ctx.registry.ask::<Jobs, T>(make).await?)
    }

    fn events(&self, rx: tokio::sync::mpsc::Receiver<Job>) -> BoxStream<JobEvent> {
        let events: BoxStream<JobEvent> =
            Box::pin(ReceiverStream::new(rx).map(|job| Ok(JobEvent { job: Some(job) })));
        cut_on_stop(events, self.stop.clone())
    }
}

#[tonic::async_trait]
impl JobsRpc for JobsApi {
    type SubmitStream = BoxStream<JobEvent>;
    type WatchStream = BoxStream<JobEvent>;

    async fn submit(
        &self,
        req: Request<SubmitRequest>,
    ) -> Result<Response<Self::SubmitStream>, Status> {
        let scope = caller(&req)?;
        let SubmitRequest { spec, detach } = req.into_inner();
        let spec = spec.ok_or_else(|| Status::invalid_argument("the request has no spec"))?;
        let rx = self
            .ask(|reply| jobs::Request::Submit {
                caller_app: scope.app(),
                spec: Box::new(spec),
                detach,
                reply,
            })
            .await?;
        Ok(Response::new(self.events(rx)))
    }

    async fn watch(&self, req: Request<JobRef>) -> Result<Response<Self::WatchStream>, Status> {
        let scope = caller(&req)?;
        let JobRef { job_id } = req.into_inner();
        let rx = self
            .ask(|reply| jobs::Request::Watch {
                caller_app: scope.app(),
                job_id,
                reply,
            })
            .await?;
        Ok(Response::new(self.events(rx)))
    }

    async fn get(&self, req: Request<JobRef>) -> Result<Response<Job>, Status> {
        let scope = caller(&req)?;
        let JobRef { job_id } = req.into_inner();
        let job = self
            .ask(|reply| jobs::Request::Get {
                caller_app: scope.app(),
                job_id,
                reply,
            })
            .await?;
        Ok(Response::new(job))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        let scope = caller(&req)?;
        let ListRequest {} = req.into_inner();
        let listed = self
            .ask(|reply| jobs::Request::List {
                caller_app: scope.app(),
                reply,
            })
            .await?;
        Ok(Response::new(listed))
    }

    async fn cancel(&self, req: Request<JobRef>) -> Result<Response<Job>, Status> {
        let scope = caller(&req)?;
        let JobRef { job_id } = req.into_inner();
        let job = self
            .ask(|reply| jobs::Request::Cancel {
                caller_app: scope.app(),
                job_id,
                reply,
            })
            .await?;
        Ok(Response::new(job))
    }
}
