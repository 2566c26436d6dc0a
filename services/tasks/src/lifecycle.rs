//! A helper's life cycle inside the actor: starting its process (checks, token, spawn),
//! binding it to its app's session, handling its exit (restart with back-off, intensity,
//! final states), and stopping it (stop signal, SIGKILL after the timeout).

use p2pos_protocols::names::root_app;
use std::mem;

use actix::prelude::*;
use nix::sys::signal::Signal;
use p2pos_kernel::events::now_ms;
use p2pos_proto::tasks::v1::{HelperState, HelperStatus};
use tokio::{sync::oneshot, time::Instant};
use tracing::warn;

use crate::{
    Error,
    fs_confine::{FsRules, HelperPaths},
    limits,
    process::{self, Launch},
    program,
    restart::{self, Exit},
    scope::Key,
    service::{
        Exited, MAX_RUNNING, MAX_RUNNING_PER_APP, MAX_SPECS, MAX_SPECS_PER_APP, TasksService,
    },
    spec::{self, Spec},
    table::{Entry, Run},
};

/// The watch on the session of the app that starts a helper: the app, and what completes
/// when its last session ends.
pub(crate) type SessionWatch = (String, oneshot::Receiver<()>);

impl TasksService {
    /// The spec `key` would start with: its own, or for an app's instance of an
    /// admin-installed spec, a fresh copy of that spec.
    pub(crate) fn spec_to_start(&self, key: &Key) -> Result<Spec, Error> {
        let node_wide = || {
            (!key.app.is_empty())
                .then(|| self.table.get(&key.node_wide()))
                .flatten()
                .map(|admin| admin.spec.for_app(&key.app))
        };
        match self.table.get(key) {
            Some(entry) if entry.stored => Ok(entry.spec.clone()),
            Some(entry) => Ok(node_wide().unwrap_or_else(|| entry.spec.clone())),
            None => node_wide().ok_or_else(|| Error::NotFound {
                app_id: key.app.clone(),
                name: key.name.clone(),
            }),
        }
    }

    /// Refuses a new entry for `app` past the limits. An app's share counts its helpers'
    /// entries too (`app:helper`), so nesting does not multiply it.
    pub(crate) fn check_room(&self, app: &str) -> Result<(), Error> {
        let root = root_app(app);
        if self
            .table
            .keys()
            .filter(|k| root_app(&k.app) == root)
            .count()
            >= MAX_SPECS_PER_APP
        {
            return Err(Error::Limit {
                what: "helper specs of one app",
                limit: MAX_SPECS_PER_APP,
            });
        }
        if self.table.len() >= MAX_SPECS {
            return Err(Error::Limit {
                what: "helper specs",
                limit: MAX_SPECS,
            });
        }
        Ok(())
    }

    /// Whether `app_id` is the app id of a helper that exists: `<owner>:<name>` where the
    /// owner has, or may start, helper `name`, and so on up to the app.
    pub(crate) fn helper_exists(&self, app_id: &str) -> bool {
        let Some((owner, name)) = app_id.rsplit_once(p2pos_protocols::names::HELPER_SEPARATOR)
        else {
            return false;
        };
        let key = Key {
            app: owner.to_owned(),
            name: name.to_owned(),
        };
        let owner_exists = || {
            !owner.contains(p2pos_protocols::names::HELPER_SEPARATOR) || self.helper_exists(owner)
        };
        !owner.is_empty() && self.spec_to_start(&key).is_ok() && owner_exists()
    }

    /// Starts `key` through the API (its count of restarts reset), bound to `session` if
    /// given. Already active: its state. Fails without spawning anything on a bad spec.
    pub(crate) fn launch(
        &mut self,
        key: &Key,
        session: Option<SessionWatch>,
        ctx: &mut Context<Self>,
    ) -> Result<HelperStatus, Error> {
        if self.stopping {
            return Err(Error::ShuttingDown);
        }
        let spec = self.spec_to_start(key)?;
        if let Some(entry) = self.table.get(key)
            && entry.is_active()
        {
            return Ok(entry.status());
        }
        if self.table.values().filter(|e| e.is_active()).count() >= MAX_RUNNING {
            return Err(Error::Limit {
                what: "running helpers",
                limit: MAX_RUNNING,
            });
        }
        let root = root_app(&key.app);
        let running_here = self
            .table
            .iter()
            .filter(|(k, e)| e.is_active() && root_app(&k.app) == root)
            .count();
        if running_here >= MAX_RUNNING_PER_APP {
            return Err(Error::Limit {
                what: "running helpers of one app",
                limit: MAX_RUNNING_PER_APP,
            });
        }
        // The limits its app's active helpers set, with its own, fit in the app's quota.
        let reserved: Vec<_> = self
            .table
            .iter()
            .filter(|(k, e)| e.is_active() && root_app(&k.app) == root && *k != key)
            .map(|(_, e)| e.running_spec().limits)
            .collect();
        limits::admit(
            group_name(root),
            &key.name,
            self.quota,
            &reserved,
            spec.limits,
        )?;
        match self.table.get_mut(key) {
            Some(entry) => entry.spec = spec,
            None => {
                self.check_room(&key.app)?;
                self.table.insert(key.clone(), Entry::new(spec, false));
            }
        }
        if let Some(entry) = self.table.get_mut(key) {
            entry.restarts = 0;
            entry.window.reset();
        }
        if let Err(e) = self.spawn_run(key, ctx) {
            if let Error::Spawn { .. } = e {
                self.finish(key, HelperState::Failed, e.to_string(), ctx);
            }
            return Err(e);
        }
        if let Some((app, ended)) = session {
            let k = key.clone();
            let bound = app.clone();
            let watch = ctx.spawn(
                async move {
                    let _ = ended.await;
                }
                .into_actor(self)
                .map(move |(), act, ctx| act.session_ended(&k, &bound, ctx)),
            );
            if let Some(entry) = self.table.get_mut(key) {
                entry.session = Some(watch);
                entry.bound_app = Some(app);
            }
        } else if let Some(entry) = self.table.get_mut(key) {
            entry.bound_app = None;
        }
        self.view(key)
    }

    /// Spawns the process of `key` from its current spec (program and directories checked
    /// again, a token made if it has none) and moves it to RUNNING. On an error nothing runs
    /// and its state is unchanged.
    fn spawn_run(&mut self, key: &Key, ctx: &mut Context<Self>) -> Result<(), Error> {
        let plugin_dir = self.config.plugin_dir(&self.ctx.config.data_dir);
        let gateway = self.ctx.config.gateway_socket();
        let entry = self
            .table
            .get_mut(key)
            .ok_or_else(|| Error::Internal(format!("helper {key} vanished")))?;
        let spec = entry.spec.clone();
        // An app's instance of an admin-installed spec runs the admin's program.
        let absolute_allowed = spec.app_id.is_empty() || !entry.stored;
        let program = program::resolve(&spec.program, absolute_allowed, &plugin_dir)?;
        spec.check_working_dir()?;
        let app_id = spec::checked_helper_app_id(&spec.app_id, &spec.name)?;
        let dir = process::helper_dir(&self.ctx.config.data_dir, &spec.app_id, &spec.name);
        process::create_dir(&dir)?;
        let token = match &entry.token {
            Some(token) => token.clone(),
            None => {
                let token = process::new_token();
                self.tokens.insert(token.clone(), app_id.clone());
                entry.token = Some(token.clone());
                token
            }
        };
        entry.prune_readers();
        let run = self.next_run;
        let limits = spec.limits.or(self.quota);
        let shim = self.config.helper_shim.as_deref();
        let confinement = self.enforcer.confine(
            group_name(root_app(&key.app)),
            &format!("{}-{run}", spec.name),
            self.quota,
            limits,
            shim.is_some(),
        );
        let fs = FsRules::for_helper(&HelperPaths {
            data_dir: &self.ctx.config.data_dir,
            helper_dir: &dir,
            program: &program,
            plugin_dir: &plugin_dir,
            admin_working_dir: spec.working_dir.as_deref().filter(|_| absolute_allowed),
            read_paths: &spec.read_paths,
        });
        let launch = Launch {
            program: &program,
            spec: &spec,
            gateway: &gateway,
            token: &token,
            app_id: &app_id,
            dir: &dir,
            shim,
            group: confinement.group.clone(),
            rlimits: confinement.rlimits,
            fs,
        };
        let spawned = match process::spawn(&launch, &entry.log) {
            Ok(spawned) => spawned,
            Err(source) => {
                if let Some(group) = confinement.group {
                    group.kill_and_remove_blocking();
                }
                return Err(Error::Spawn {
                    name: spec.name.clone(),
                    source,
                });
            }
        };
        self.next_run += 1;
        let addr = ctx.address();
        let k = key.clone();
        let pid = spawned.pid;
        entry
            .readers
            .extend(spawned.readers.iter().map(|r| r.abort_handle()));
        process::wait(spawned, confinement.group.clone(), move |ended| {
            addr.do_send(Exited { key: k, run, ended });
        });
        entry.run = Some(Run {
            id: run,
            pid,
            spec,
            sent: Vec::new(),
            kill_timer: None,
            group: confinement.group,
        });
        entry.limits = limits;
        entry.enforcement = confinement.enforcement;
        entry.started_at_ms = now_ms();
        entry.set_state(key, &self.ctx.events, HelperState::Running, "");
        Ok(())
    }

    /// Moves `key` to a final state (STOPPED, EXITED, FAILED): revokes its token, drops its
    /// pending restart and session watch, and answers the calls waiting for it to stop.
    pub(crate) fn finish(
        &mut self,
        key: &Key,
        state: HelperState,
        reason: String,
        ctx: &mut Context<Self>,
    ) {
        let Some(entry) = self.table.get_mut(key) else {
            return;
        };
        if let Some(token) = entry.token.take() {
            self.tokens.remove(&token);
        }
        for handle in [entry.backoff.take(), entry.session.take()]
            .into_iter()
            .flatten()
        {
            ctx.cancel_future(handle);
        }
        entry.set_state(key, &self.ctx.events, state, reason);
        for waiter in entry.stop_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    /// A process has exited: the end of a stop, or an exit on its own that its restart
    /// policy and intensity judge.
    pub(crate) fn on_exit(&mut self, msg: Exited, ctx: &mut Context<Self>) {
        let Exited { key, run, ended } = msg;
        let Some(entry) = self.table.get_mut(&key) else {
            return;
        };
        if entry.run.as_ref().is_none_or(|r| r.id != run) {
            return; // a process of an earlier run
        }
        let Some(run) = entry.run.take() else {
            return;
        };
        if let Some(timer) = run.kill_timer {
            ctx.cancel_future(timer);
        }
        let mut exit = Exit::new(ended.status, &run.sent);
        if ended.oom_kills > 0 {
            exit = exit.over_memory(entry.limits.memory);
        }
        entry.last_exit = Some(exit.status.clone());
        match entry.state {
            HelperState::Stopping => {
                let reason = mem::take(&mut entry.stop_reason);
                self.finish(&key, HelperState::Stopped, reason, ctx);
            }
            HelperState::Running if !restart::restarts(run.spec.restart, &exit) => {
                self.finish(&key, HelperState::Exited, exit.reason, ctx);
            }
            HelperState::Running => {
                let period = run.spec.restart_period;
                match entry
                    .window
                    .admit(Instant::now(), run.spec.max_restarts, period)
                {
                    Err(restarts) => {
                        let why = restart::giving_up(restarts, period, &exit.reason);
                        self.finish(&key, HelperState::Failed, why, ctx);
                    }
                    Ok(within) => {
                        let delay = restart::backoff(within);
                        let reason =
                            format!("{}; restarting in {} ms", exit.reason, delay.as_millis());
                        entry.set_state(&key, &self.ctx.events, HelperState::Backoff, reason);
                        let k = key.clone();
                        entry.backoff =
                            Some(ctx.run_later(delay, move |act, ctx| act.respawn(&k, ctx)));
                    }
                }
            }
            other => {
                warn!(helper = %key, state = ?other, "exit of a helper in an unexpected state")
            }
        }
        let root = root_app(&key.app);
        if !self
            .table
            .iter()
            .any(|(k, e)| e.run.is_some() && root_app(&k.app) == root)
        {
            self.enforcer.release_app(group_name(root));
        }
    }

    /// The back-off of `key` has passed: start it again.
    fn respawn(&mut self, key: &Key, ctx: &mut Context<Self>) {
        let Some(entry) = self.table.get_mut(key) else {
            return;
        };
        entry.backoff = None;
        if entry.state != HelperState::Backoff || self.stopping {
            return;
        }
        entry.restarts += 1;
        if let Err(e) = self.spawn_run(key, ctx) {
            self.finish(key, HelperState::Failed, e.to_string(), ctx);
        }
    }

    /// Starts stopping `key` for `reason`: its stop signal now, SIGKILL after its timeout.
    /// Returns what completes once it has stopped, or `None` if it is already not running
    /// (a helper in back-off is stopped at once).
    pub(crate) fn begin_stop(
        &mut self,
        key: &Key,
        reason: String,
        ctx: &mut Context<Self>,
    ) -> Option<oneshot::Receiver<()>> {
        let entry = self.table.get_mut(key)?;
        match entry.state {
            HelperState::Running => {
                let run = entry.run.as_mut()?;
                let (pid, id) = (run.pid, run.id);
                let (signal, mut timeout) = (run.spec.stop_signal, run.spec.stop_timeout);
                if self.stopping {
                    // The kernel gives a stopping service a few seconds; the node must not
                    // wait for the slowest helper's grace period.
                    timeout = timeout.min(NODE_STOP_GRACE);
                }
                process::signal_group(pid, signal);
                // A stopped (SIGSTOP) helper would only see the signal once continued.
                if signal != Signal::SIGCONT && signal != Signal::SIGKILL {
                    process::signal_group(pid, Signal::SIGCONT);
                }
                let k = key.clone();
                run.kill_timer = Some(ctx.run_later(timeout, move |act, _| {
                    act.kill_after_timeout(&k, id);
                }));
                let shown = format!(
                    "{} sent ({reason}); SIGKILL after {} ms",
                    signal.as_str(),
                    timeout.as_millis()
                );
                entry.stop_reason = reason;
                entry.set_state(key, &self.ctx.events, HelperState::Stopping, shown);
            }
            HelperState::Stopping => {}
            HelperState::Backoff => {
                self.finish(key, HelperState::Stopped, reason, ctx);
                return None;
            }
            _ => return None,
        }
        let (tx, rx) = oneshot::channel();
        entry.stop_waiters.push(tx);
        Some(rx)
    }

    fn kill_after_timeout(&mut self, key: &Key, id: u64) {
        let Some(entry) = self.table.get_mut(key) else {
            return;
        };
        if entry.state != HelperState::Stopping {
            return;
        }
        if let Some(run) = entry.run.as_mut().filter(|r| r.id == id) {
            run.kill_timer = None;
            warn!(helper = %key, pid = run.pid, "the helper did not stop in time; sending SIGKILL");
            process::signal_group(run.pid, Signal::SIGKILL);
        }
    }

    /// The last session of the app that started `key` has ended.
    fn session_ended(&mut self, key: &Key, app: &str, ctx: &mut Context<Self>) {
        let Some(entry) = self.table.get_mut(key) else {
            return;
        };
        entry.session = None;
        if entry.is_active() {
            // Nobody waits for this stop; it completes on its own.
            let _ = self.begin_stop(key, format!("the session of app {app} ended"), ctx);
        }
    }
}

/// How long each helper gets after its stop signal when the node stops (the kernel waits 5 s
/// for a service to stop).
const NODE_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(4);

/// The name of the cgroup of the helpers of `root` (a root app, or "" for the node's).
fn group_name(root: &str) -> &str {
    if root.is_empty() {
        p2pos_protocols::names::NODE_HELPER_OWNER
    } else {
        root
    }
}
