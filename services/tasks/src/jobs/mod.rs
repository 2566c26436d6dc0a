//! Jobs: task control across peers (`p2pos.jobs.v1`). An app hands a WebAssembly program to
//! peers that lend their machines and gets its result back; this node is the submitter of its
//! apps' jobs and a runner of its peers'.
//!
//! The submitter (`submit`) finds runners through the resource manager (`Find`), leases what
//! a run needs there (`Lease`), sends the job over `/p2pos/jobs/1` (`remote`), places a run
//! again when its runner is lost, and accepts replicas' results only when their digests
//! agree. The runner (`host`) takes a job only under a lease the submitter holds here, runs
//! it in a sandbox process (`p2posd __p2pos-wasm-job DIR`: wasmtime, see `p2pos-sandbox`)
//! started by the jobs actor (`spawn`) in a cgroup with the lease's share, and kills it when
//! the submitter goes away.
//!
//! # Layout
//! - this file: the part's handle and the protocol's operations.
//! - `service`: the `jobs` actor: its child spec, life cycle and sandbox starts.
//! - `check`: specs checked against the bounds, defaults, and results' digests.
//! - `table`: the submitted jobs, their snapshots and owners.
//! - `submit`: driving one job: placement, runs, retries, agreement.
//! - `remote`: one run on one runner, the submitter's side of the wire.
//! - `host`: the runner's side of the wire.
//! - `spawn`: starting a sandbox process (on the actor's thread).

mod check;
mod host;
mod remote;
pub(crate) mod service;
mod spawn;
mod submit;
mod table;

use std::{path::Path, sync::Arc, time::Duration};

use actix::Recipient;
use libp2p::StreamProtocol;
use p2pos_kernel::{Registry, events::now_ms};
use p2pos_proto::jobs::v1::{Job, JobSpec, ListReply, State};
use p2pos_protocols::{
    answer,
    jobs::{CallerApp, Request},
    network::{Accepting, Limits, Network, accept::drop_stream},
};
use tokio::sync::mpsc;

use crate::Error;

/// `/p2pos/jobs/1`.
pub(crate) const PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pos/jobs/1");
/// Job streams served at once, from all peers and from one (each holds a lease here).
const INBOUND_TOTAL: usize = 64;
const INBOUND_PER_PEER: usize = 16;
/// Events a follower may be behind before it waits.
const FOLLOW_QUEUE: usize = 16;

/// The jobs part of the task-control service: cheap to clone.
#[derive(Clone)]
pub(crate) struct Jobs {
    /// What driving a job needs, the job table among it.
    deps: submit::Deps,
    host: host::Host,
    /// Serves `/p2pos/jobs/1` while it lives.
    _accepting: Arc<Accepting>,
}

impl Jobs {
    /// Starts serving peers' jobs; `spawner` starts sandboxes on the actor's thread.
    pub(crate) fn start(
        net: Network,
        registry: Registry,
        spawner: Recipient<spawn::SpawnJob>,
        data_dir: &Path,
    ) -> Result<Jobs, Error> {
        let host = host::Host::new(registry.clone(), spawner, data_dir);
        let serving = host.clone();
        let accepting = net
            .accept(
                PROTOCOL,
                Limits {
                    total: INBOUND_TOTAL,
                    per_peer: INBOUND_PER_PEER,
                    max_frame: remote::MAX_FRAME,
                    // A run is silent while it lasts; its own waits are bounded.
                    idle: Duration::MAX,
                },
                move |peer, stream| serving.clone().serve(peer, stream),
                drop_stream,
            )
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Jobs {
            deps: submit::Deps {
                net,
                registry,
                placing: Arc::new(tokio::sync::Semaphore::new(submit::PLACING_AT_ONCE)),
                table: table::Table::default(),
            },
            host,
            _accepting: Arc::new(accepting),
        })
    }

    /// Answers one request.
    pub(crate) fn control(&self, request: Request) {
        match request {
            Request::Submit {
                caller_app,
                spec,
                detach,
                reply,
            } => answer(reply, self.submit(caller_app, *spec, detach)),
            Request::Watch {
                caller_app,
                job_id,
                reply,
            } => answer(
                reply,
                self.deps
                    .table
                    .get(caller_app.as_deref(), &job_id)
                    .map(|entry| follow(entry, None)),
            ),
            Request::Get {
                caller_app,
                job_id,
                reply,
            } => answer(
                reply,
                self.deps
                    .table
                    .get(caller_app.as_deref(), &job_id)
                    .map(|e| e.job.borrow().clone()),
            ),
            Request::List { caller_app, reply } => {
                let jobs = self
                    .deps
                    .table
                    .list(caller_app.as_deref())
                    .iter()
                    .map(|e| Job {
                        result: None,
                        ..e.job.borrow().clone()
                    })
                    .collect();
                let hosted = match caller_app {
                    None => self.host.hosted(),
                    Some(_) => Vec::new(),
                };
                answer::<_, Error>(reply, Ok(ListReply { jobs, hosted }));
            }
            Request::Cancel {
                caller_app,
                job_id,
                reply,
            } => answer(
                reply,
                self.deps
                    .table
                    .get(caller_app.as_deref(), &job_id)
                    .map(|e| {
                        e.cancel.cancel();
                        // Cancelled from now on (its driving task stops its runs and gives its
                        // leases back; its last snapshot says the same).
                        e.job.send_if_modified(|j| {
                            if table::ended(j.state) {
                                return false;
                            }
                            j.state = State::Cancelled as i32;
                            "cancelled".clone_into(&mut j.message);
                            true
                        });
                        e.job.borrow().clone()
                    }),
            ),
        }
    }

    fn submit(
        &self,
        caller_app: CallerApp,
        spec: JobSpec,
        detach: bool,
    ) -> Result<mpsc::Receiver<Job>, Error> {
        let spec = check::check(spec).map_err(Error::InvalidJob)?;
        let job = Job {
            job_id: format!("{:016x}", rand::random::<u64>()),
            name: spec.name.clone(),
            app_id: caller_app.clone().unwrap_or_default(),
            state: State::Queued as i32,
            message: "looking for a runner".into(),
            replicas: spec.replicas,
            submitted_at_ms: now_ms(),
            deterministic: spec.deterministic,
            limits: spec.limits,
            ..Job::default()
        };
        let bytes = spec.module.len()
            + spec.stdin.len()
            + spec.files.iter().map(|f| f.data.len()).sum::<usize>();
        let entry = self.deps.table.insert(caller_app.clone(), job, bytes)?;
        let events = follow(entry.clone(), (!detach).then(|| entry.cancel.clone()));
        tokio::spawn(submit::drive(
            self.deps.clone(),
            entry.job.clone(),
            Arc::new(spec),
            caller_app,
            entry.cancel.clone(),
        ));
        Ok(events)
    }

    /// Cancels every job (the service stops).
    pub(crate) fn cancel_all(&self) {
        for entry in self.deps.table.all() {
            entry.cancel.cancel();
        }
    }
}

/// The job's snapshots from now until it ends, in a bounded channel; when the receiver goes
/// before the job ends, `cancel_on_drop` (if any) is cancelled.
fn follow(
    entry: table::Entry,
    cancel_on_drop: Option<tokio_util::sync::CancellationToken>,
) -> mpsc::Receiver<Job> {
    let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
    let mut snapshots = entry.job.subscribe();
    tokio::spawn(async move {
        loop {
            let job = snapshots.borrow_and_update().clone();
            let over = table::ended(job.state);
            if tx.send(job).await.is_err() {
                break;
            }
            if over {
                return;
            }
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return },
                () = tx.closed() => break,
            }
        }
        if let Some(cancel) = cancel_on_drop {
            cancel.cancel();
        }
    });
    rx
}
