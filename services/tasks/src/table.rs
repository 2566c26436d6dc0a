//! The helper table the actor owns: one [`Entry`] per helper (a stored spec, or an app's
//! in-memory instance of an admin-installed spec) with its state, current process, restart
//! window and log, and how an entry is shown to clients and on the event bus.

use actix::SpawnHandle;
use p2pos_kernel::EventBus;
use p2pos_proto::{
    monitor::v1::{HelperChanged, event::Kind},
    tasks::v1::{ExitStatus, HelperState, HelperStatus},
};
use std::sync::Arc;

use tokio::{sync::oneshot, task::AbortHandle};

use crate::{
    cgroup::Group,
    limits::Limits,
    logs::{LogRing, SharedLog},
    restart::Window,
    scope::Key,
    spec::Spec,
};

/// Most output readers kept per helper (two per process).
const MAX_READERS: usize = 16;

/// The process of a running helper.
pub(crate) struct Run {
    /// Unique among the service's runs: an exit report names it.
    pub(crate) id: u64,
    /// Its pid, also its process group.
    pub(crate) pid: u32,
    /// The stop signal and timeout it was started with.
    pub(crate) spec: Spec,
    /// Signals sent through the API (an exit by one of them is not a failure).
    pub(crate) sent: Vec<i32>,
    /// The SIGKILL due after the stop timeout.
    pub(crate) kill_timer: Option<SpawnHandle>,
    /// Its cgroup, if it has one.
    pub(crate) group: Option<Arc<Group>>,
}

/// One helper.
pub(crate) struct Entry {
    /// The spec (its `app_id` is the entry's app).
    pub(crate) spec: Spec,
    /// Stored by `AddHelper`; false for an app's instance of an admin-installed spec.
    pub(crate) stored: bool,
    pub(crate) state: HelperState,
    pub(crate) reason: String,
    /// Restarts since the last start through the API.
    pub(crate) restarts: u32,
    pub(crate) window: Window,
    pub(crate) last_exit: Option<ExitStatus>,
    pub(crate) started_at_ms: u64,
    /// Its token while it runs or waits to be restarted.
    pub(crate) token: Option<String>,
    pub(crate) run: Option<Run>,
    /// The pending restart, in back-off.
    pub(crate) backoff: Option<SpawnHandle>,
    /// The watch on the session of the app that started it.
    pub(crate) session: Option<SpawnHandle>,
    /// The app whose session its last start was bound to; a restart, by anyone, binds the new
    /// run to it again.
    pub(crate) bound_app: Option<String>,
    /// Why it is stopping, to become its reason once it has stopped.
    pub(crate) stop_reason: String,
    /// Calls waiting for it to stop.
    pub(crate) stop_waiters: Vec<oneshot::Sender<()>>,
    /// The output readers of its processes (they may outlive a process briefly).
    pub(crate) readers: Vec<AbortHandle>,
    pub(crate) log: SharedLog,
    /// The limits of the current (or last) run.
    pub(crate) limits: Limits,
    /// How they are enforced ("cgroup v1", "rlimits"); "" before its first run.
    pub(crate) enforcement: &'static str,
}

impl Entry {
    /// A stopped helper.
    pub(crate) fn new(spec: Spec, stored: bool) -> Entry {
        Entry {
            spec,
            stored,
            state: HelperState::Stopped,
            reason: String::new(),
            restarts: 0,
            window: Window::default(),
            last_exit: None,
            started_at_ms: 0,
            token: None,
            run: None,
            backoff: None,
            session: None,
            bound_app: None,
            stop_reason: String::new(),
            stop_waiters: Vec::new(),
            readers: Vec::new(),
            log: LogRing::shared(),
            limits: Limits::default(),
            enforcement: "",
        }
    }

    /// Whether it runs, is stopping or waits to be restarted.
    pub(crate) fn is_active(&self) -> bool {
        matches!(
            self.state,
            HelperState::Running | HelperState::Stopping | HelperState::Backoff
        )
    }

    /// The spec its current run started with (else its own): what its limits reserve.
    pub(crate) fn running_spec(&self) -> &Spec {
        self.run.as_ref().map_or(&self.spec, |r| &r.spec)
    }

    /// Its pid while a process runs, else 0.
    pub(crate) fn pid(&self) -> u32 {
        self.run.as_ref().map_or(0, |r| r.pid)
    }

    /// As clients see it.
    pub(crate) fn status(&self) -> HelperStatus {
        HelperStatus {
            spec: Some(self.spec.to_proto()),
            state: self.state as i32,
            pid: self.pid(),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            reason: self.reason.clone(),
            started_at_ms: self.started_at_ms,
            helper_app_id: self.spec.helper_app_id(),
            limits: (!self.enforcement.is_empty()).then(|| self.limits.to_proto()),
            enforcement: self.enforcement.to_owned(),
            cgroup: self
                .run
                .as_ref()
                .and_then(|r| r.group.as_ref())
                .map(|g| g.path().display().to_string())
                .unwrap_or_default(),
        }
    }

    /// Moves to `state` for `reason` and tells the event bus.
    pub(crate) fn set_state(
        &mut self,
        key: &Key,
        events: &EventBus,
        state: HelperState,
        reason: impl Into<String>,
    ) {
        self.state = state;
        self.reason = reason.into();
        tracing::info!(helper = %key, state = state_name(state), pid = self.pid(), reason = %self.reason, "helper state");
        events.publish(Kind::Helper(HelperChanged {
            app_id: key.app.clone(),
            name: key.name.clone(),
            state: state_name(state).to_owned(),
            pid: self.pid(),
            restarts: self.restarts,
            reason: self.reason.clone(),
        }));
    }

    /// Forgets the output readers that are done. A reader still running belongs to a process
    /// whose pipe is held open by a process that left its group; past [`MAX_READERS`] of
    /// them, the oldest are stopped.
    pub(crate) fn prune_readers(&mut self) {
        self.readers.retain(|r| !r.is_finished());
        let excess = self.readers.len().saturating_sub(MAX_READERS);
        for reader in self.readers.drain(..excess) {
            reader.abort();
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
        if let Ok(mut log) = self.log.lock() {
            log.close();
        }
    }
}

/// The state's name in events: "running", "stopping", ...
pub(crate) fn state_name(state: HelperState) -> &'static str {
    match state {
        HelperState::Unspecified => "unspecified",
        HelperState::Stopped => "stopped",
        HelperState::Running => "running",
        HelperState::Stopping => "stopping",
        HelperState::Backoff => "backoff",
        HelperState::Exited => "exited",
        HelperState::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use p2pos_proto::tasks::v1::HelperSpec;

    use super::*;

    #[tokio::test]
    async fn a_state_change_is_published() {
        let spec = Spec::try_from(HelperSpec {
            name: "voice".into(),
            app_id: "chat".into(),
            program: "voice".into(),
            ..HelperSpec::default()
        })
        .unwrap();
        let mut entry = Entry::new(spec, true);
        assert!(!entry.is_active());
        let status = entry.status();
        assert_eq!(status.helper_app_id, "chat:voice");
        assert_eq!(status.state, HelperState::Stopped as i32);
        let events = EventBus::new();
        let mut rx = events.subscribe();
        let key = Key {
            app: "chat".into(),
            name: "voice".into(),
        };
        entry.set_state(&key, &events, HelperState::Failed, "why");
        let Some(Kind::Helper(changed)) = rx.recv().await.unwrap().kind else {
            panic!("a helper event");
        };
        assert_eq!(changed.state, "failed");
        assert_eq!(changed.app_id, "chat");
        assert_eq!(changed.reason, "why");
    }
}
