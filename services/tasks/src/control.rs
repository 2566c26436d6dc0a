//! The `p2pos.tasks.v1` operations: one exhaustive `match` over the protocol's requests, each
//! operation checking the caller's scope, converting at the edges and answering on the
//! request's own typed reply.

use actix::prelude::*;
use p2pos_proto::tasks::v1::{
    HelperRef, HelperSpec, HelperState, HelperStatus, ListHelpersReply, ListHelpersRequest,
    LogLine, LogsRequest, RemoveHelperReply, SignalHelperRequest,
};
use p2pos_protocols::{
    Apps, answer, apps,
    ids::AppId,
    tasks::{HelperOp, Request},
};
use tokio::sync::mpsc;

use crate::{
    Error,
    lifecycle::SessionWatch,
    logs, persist, program,
    scope::{Caller, Key},
    service::{MAX_LOG_READERS, TasksService},
    signal,
    spec::{self, Spec},
    table::{Entry, state_name},
};

/// An answer the actor may finish later.
pub(crate) type Reply<T> = ResponseActFuture<TasksService, Result<T, Error>>;

fn done<T: 'static>(result: Result<T, Error>) -> Reply<T> {
    Box::pin(actix::fut::ready(result))
}

/// Answers `reply` once the actor future `result` is done.
fn later<T: Send + 'static>(
    reply: p2pos_protocols::Reply<T>,
    result: Reply<T>,
    ctx: &mut Context<TasksService>,
) {
    ctx.spawn(result.map(move |r, _, _| answer(reply, r)));
}

fn not_found(key: &Key) -> Error {
    Error::NotFound {
        app_id: key.app.clone(),
        name: key.name.clone(),
    }
}

impl TasksService {
    /// One request of the protocol: bookkeeping here, on the actor; what takes time (a flush,
    /// a stop that waits for the process to exit) finishes in a future that answers the
    /// request's own reply.
    pub(crate) fn control(&mut self, request: Request, ctx: &mut Context<Self>) {
        match request {
            Request::HelperToken { token, reply } => {
                answer::<_, Error>(reply, Ok(self.tokens.get(&token).cloned()));
            }
            Request::HelperExists { app_id, reply } => {
                answer::<_, Error>(reply, Ok(self.helper_exists(&app_id)));
            }
            Request::Logs {
                caller_app,
                request,
                reply,
            } => answer(reply, self.logs(caller_app, request)),
            Request::Add {
                caller_app,
                spec,
                reply,
            } => {
                let added = match Caller::parse(caller_app) {
                    Ok(caller) => self.add(&caller, Some(spec)),
                    Err(e) => done(Err(e)),
                };
                later(reply, added, ctx);
            }
            Request::Remove {
                caller_app,
                helper,
                reply,
            } => {
                let removed = Caller::parse(caller_app)
                    .and_then(|caller| self.remove(&caller, &helper))
                    .map(|()| RemoveHelperReply {});
                later(reply, self.flushed(removed), ctx);
            }
            Request::List {
                caller_app,
                app_id,
                reply,
            } => {
                let listed = Caller::parse(caller_app)
                    .and_then(|caller| self.list(&caller, &ListHelpersRequest { app_id }));
                answer(reply, listed);
            }
            Request::Helper {
                caller_app,
                helper,
                op,
                reply,
            } => {
                let caller = match Caller::parse(caller_app) {
                    Ok(caller) => caller,
                    Err(e) => return answer(reply, Err::<HelperStatus, _>(e)),
                };
                let shown_to = caller.clone();
                let status = match op {
                    HelperOp::Get => done(
                        self.key_of(&caller, &helper.app_id, &helper.name)
                            .and_then(|k| self.view(&k)),
                    ),
                    HelperOp::Start => self.start_helper(caller, helper, ctx),
                    HelperOp::Stop => self.stop_helper(&caller, &helper, ctx),
                    HelperOp::Restart => self.restart_helper(caller, helper, ctx),
                    HelperOp::Signal(signal) => done(self.signal(
                        &caller,
                        SignalHelperRequest {
                            helper: Some(helper),
                            signal,
                        },
                    )),
                };
                let status =
                    Box::pin(status.map(move |r, act: &mut Self, _| {
                        r.map(|status| act.shown(&shown_to, status))
                    }));
                later(reply, status, ctx);
            }
        }
    }

    /// [`Caller::app`], and an app naming one of its helpers' app ids only while that helper
    /// exists.
    fn app_of(&self, caller: &Caller, app_id: &str) -> Result<String, Error> {
        let app = caller.app(app_id)?;
        match caller {
            Caller::App(own) if app != *own && !self.helper_exists(&app) => {
                Err(Error::NoSuchHelper {
                    caller: own.clone(),
                    app_id: app,
                })
            }
            _ => Ok(app),
        }
    }

    /// [`Caller::key`], the app checked as [`Self::app_of`] does.
    fn key_of(&self, caller: &Caller, app_id: &str, name: &str) -> Result<Key, Error> {
        let app = self.app_of(caller, app_id)?;
        spec::validate_name(name)?;
        Ok(Key {
            app,
            name: name.to_owned(),
        })
    }

    /// What `caller` sees of a helper's status: an app does not see the environment of a spec
    /// the admin installed (a node-wide spec, or the app's own instance of one): it may hold
    /// the admin's settings and secrets.
    fn shown(&self, caller: &Caller, mut status: HelperStatus) -> HelperStatus {
        let Caller::App(_) = caller else {
            return status;
        };
        if let Some(spec) = status.spec.as_mut() {
            let key = Key {
                app: spec.app_id.clone(),
                name: spec.name.clone(),
            };
            let apps_own = !key.app.is_empty() && self.table.get(&key).is_some_and(|e| e.stored);
            if !apps_own {
                spec.env.clear();
            }
        }
        status
    }

    /// Answers `result` once the store is flushed.
    fn flushed<T: 'static>(&self, result: Result<T, Error>) -> Reply<T> {
        let value = match result {
            Ok(value) => value,
            Err(e) => return done(Err(e)),
        };
        let store = self.ctx.store.clone();
        Box::pin(
            async move { persist::flush(store).await.map(|()| value) }
                .into_actor(self)
                .map(|r, _, _| r.map_err(Error::from)),
        )
    }

    /// What a client sees of `key`: its entry, or an app's not-yet-started instance of an
    /// admin-installed spec.
    pub(crate) fn view(&self, key: &Key) -> Result<HelperStatus, Error> {
        if let Some(entry) = self.table.get(key) {
            return Ok(entry.status());
        }
        let spec = self.spec_to_start(key)?;
        Ok(HelperStatus {
            helper_app_id: spec.helper_app_id(),
            spec: Some(spec.to_proto()),
            state: HelperState::Stopped as i32,
            ..HelperStatus::default()
        })
    }

    fn add(&mut self, caller: &Caller, spec: Option<HelperSpec>) -> Reply<HelperStatus> {
        let added = self.add_now(caller, spec);
        self.flushed(added)
    }

    fn add_now(
        &mut self,
        caller: &Caller,
        spec: Option<HelperSpec>,
    ) -> Result<HelperStatus, Error> {
        let mut spec = spec.ok_or(Error::Missing("spec"))?;
        spec.app_id = self.app_of(caller, &spec.app_id)?;
        let spec = Spec::try_from(spec)?;
        program::resolve(
            &spec.program,
            spec.app_id.is_empty(),
            &self.config.plugin_dir(&self.ctx.config.data_dir),
        )?;
        spec.check_working_dir()?;
        spec::checked_helper_app_id(&spec.app_id, &spec.name)?;
        let key = Key::of(&spec);
        if !self.table.contains_key(&key) {
            self.check_room(&key.app)?;
        }
        persist::save(self.ctx.store.as_ref(), &spec)?;
        let entry = self
            .table
            .entry(key)
            .or_insert_with(|| Entry::new(spec.clone(), true));
        entry.spec = spec;
        entry.stored = true;
        Ok(entry.status())
    }

    fn remove(&mut self, caller: &Caller, r: &HelperRef) -> Result<(), Error> {
        let key = self.key_of(caller, &r.app_id, &r.name)?;
        let entry = self.table.get(&key).ok_or_else(|| not_found(&key))?;
        if entry.is_active() {
            return Err(Error::StillRunning {
                app_id: key.app,
                name: key.name,
                state: state_name(entry.state),
            });
        }
        if entry.stored {
            persist::remove(self.ctx.store.as_ref(), &key)?;
        }
        self.table.remove(&key);
        Ok(())
    }

    fn list(
        &self,
        caller: &Caller,
        request: &ListHelpersRequest,
    ) -> Result<ListHelpersReply, Error> {
        let only = match request.app_id.as_str() {
            "" => None,
            app => Some(self.app_of(caller, app)?),
        };
        let admin_spec_visible = matches!(caller, Caller::App(_));
        let helpers = self
            .table
            .iter()
            .filter(|(key, _)| {
                let own = match &only {
                    Some(app) => key.app == *app,
                    None => caller.covers(&key.app),
                };
                own || (admin_spec_visible && key.app.is_empty())
            })
            .map(|(_, entry)| self.shown(caller, entry.status()))
            .collect();
        Ok(ListHelpersReply { helpers })
    }

    fn start_helper(
        &mut self,
        caller: Caller,
        r: HelperRef,
        ctx: &mut Context<Self>,
    ) -> Reply<HelperStatus> {
        let key = match self.startable(&caller, &r) {
            Ok(key) => key,
            Err(e) => return done(Err(e)),
        };
        if let Some(entry) = self.table.get(&key)
            && entry.is_active()
        {
            return done(Ok(entry.status()));
        }
        let app = self.session_to_bind(&caller, &key);
        self.with_session(app, ctx, move |act, session, ctx| {
            done(act.launch(&key, session, ctx))
        })
    }

    /// The helper `r` names, if the caller may start it now.
    fn startable(&self, caller: &Caller, r: &HelperRef) -> Result<Key, Error> {
        if self.stopping {
            return Err(Error::ShuttingDown);
        }
        let key = self.key_of(caller, &r.app_id, &r.name)?;
        self.spec_to_start(&key)?;
        Ok(key)
    }

    /// The app whose session a new run of `key` lives by: the one its last run lived by (so a
    /// restart, by anyone, keeps it bound), else the app that starts it; none for a spec that
    /// outlives sessions, or an admin start of an unbound helper.
    fn session_to_bind(&self, caller: &Caller, key: &Key) -> Option<String> {
        let outlives = self
            .spec_to_start(key)
            .map(|spec| spec.outlive_session)
            .unwrap_or(false);
        if outlives {
            return None;
        }
        self.table
            .get(key)
            .and_then(|e| e.bound_app.clone())
            .or_else(|| caller.session_app().map(str::to_owned))
    }

    /// Runs `then` with a watch on `app`'s session (none without an app). The app needs a
    /// live session: without one, `then` does not run and the answer is the error.
    fn with_session(
        &mut self,
        app: Option<String>,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, Option<SessionWatch>, &mut Context<Self>) -> Reply<HelperStatus>
        + 'static,
    ) -> Reply<HelperStatus> {
        let Some(app) = app else {
            return then(self, None, ctx);
        };
        let app_id = match AppId::parse(&app) {
            Ok(app_id) => app_id,
            Err(e) => return done(Err(Error::InvalidAppId(e))),
        };
        let registry = self.ctx.registry.clone();
        Box::pin(
            async move {
                registry
                    .ask::<Apps, _>(|reply| apps::Request::WatchSession { app_id, reply })
                    .await
            }
            .into_actor(self)
            .then(move |watched, act, ctx| match watched {
                Ok(ended) => then(act, Some((app, ended)), ctx),
                Err(e) => done(Err(Error::Session(e))),
            }),
        )
    }

    fn stop_helper(
        &mut self,
        caller: &Caller,
        r: &HelperRef,
        ctx: &mut Context<Self>,
    ) -> Reply<HelperStatus> {
        let key = match self.key_of(caller, &r.app_id, &r.name) {
            Ok(key) => key,
            Err(e) => return done(Err(e)),
        };
        match self.begin_stop(&key, "stopped through the API".into(), ctx) {
            None => done(self.view(&key)),
            Some(stopped) => Box::pin(
                async move {
                    let _ = stopped.await;
                }
                .into_actor(self)
                .map(move |(), act, _| act.view(&key)),
            ),
        }
    }

    fn restart_helper(
        &mut self,
        caller: Caller,
        r: HelperRef,
        ctx: &mut Context<Self>,
    ) -> Reply<HelperStatus> {
        let key = match self.startable(&caller, &r) {
            Ok(key) => key,
            Err(e) => return done(Err(e)),
        };
        // The session the new run will live by is checked before the old run is stopped: a
        // restart that could not start again leaves it running.
        let app = self.session_to_bind(&caller, &key);
        self.with_session(app, ctx, move |act, session, ctx| {
            match act.begin_stop(&key, "restarting through the API".into(), ctx) {
                None => done(act.launch(&key, session, ctx)),
                Some(stopped) => Box::pin(
                    async move {
                        let _ = stopped.await;
                    }
                    .into_actor(act)
                    .map(move |(), act, ctx| act.launch(&key, session, ctx)),
                ),
            }
        })
    }

    fn signal(
        &mut self,
        caller: &Caller,
        request: SignalHelperRequest,
    ) -> Result<HelperStatus, Error> {
        let SignalHelperRequest { helper, signal } = request;
        let r = helper.ok_or(Error::Missing("helper"))?;
        let key = self.key_of(caller, &r.app_id, &r.name)?;
        let signal = signal::parse_sendable(&signal)?;
        let not_running = |state| Error::NotRunning {
            app_id: key.app.clone(),
            name: key.name.clone(),
            state: state_name(state),
        };
        let Some(entry) = self.table.get_mut(&key) else {
            self.view(&key)?;
            return Err(not_running(HelperState::Stopped));
        };
        let Some(run) = entry.run.as_mut() else {
            return Err(not_running(entry.state));
        };
        if !run.sent.contains(&(signal as i32)) {
            run.sent.push(signal as i32);
        }
        crate::process::signal_group(run.pid, signal);
        Ok(entry.status())
    }

    /// A `Logs` call.
    pub(crate) fn logs(
        &mut self,
        caller_app: String,
        request: LogsRequest,
    ) -> Result<mpsc::Receiver<LogLine>, Error> {
        let caller = Caller::parse(caller_app)?;
        let LogsRequest {
            helper,
            follow,
            tail,
        } = request;
        let r = helper.ok_or(Error::Missing("helper"))?;
        let key = self.key_of(&caller, &r.app_id, &r.name)?;
        let entry = self.table.get(&key).ok_or_else(|| not_found(&key))?;
        let permit = self
            .log_readers
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Limit {
                what: "log readers",
                limit: MAX_LOG_READERS,
            })?;
        Ok(logs::serve(&entry.log, tail, follow, permit))
    }
}
