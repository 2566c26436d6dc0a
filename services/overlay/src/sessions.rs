//! The live sessions of each app, as the sessions part keeps them and the registry reads them:
//! where incoming channels and calls are announced. A session may take only the channels in
//! one group.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use p2pos_protocols::{apps::Incoming, names::root_app};
use tokio::sync::mpsc;

/// Announcements (incoming channels and calls) buffered per session.
pub(crate) const SESSION_BUFFER: usize = 64;
/// Most live sessions, all apps together.
pub(crate) const MAX_SESSIONS: usize = 1024;
/// Most live sessions of one app and its helpers (`app:helper`) together: one app cannot take
/// every session of the node, nor multiply its share through helpers.
pub(crate) const MAX_SESSIONS_PER_APP: usize = 128;

/// One live session of an app.
#[derive(Clone)]
pub(crate) struct SessionSlot {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::Sender<Incoming>,
    /// Only channels in this group (its id) are announced to it; `None`: any.
    pub(crate) group: Option<String>,
}

/// Why no session takes a channel.
pub(crate) enum NoTaker {
    /// The app has no live session.
    NotListening,
    /// Its live sessions take only channels in a group, and not this one's.
    OutsideGroup,
}

fn newest(sessions: &[SessionSlot]) -> Option<(u64, &mpsc::Sender<Incoming>)> {
    sessions
        .iter()
        .rev()
        .find(|s| !s.tx.is_closed())
        .map(|s| (s.id, &s.tx))
}

/// The live sessions of each app, oldest first: kept by the sessions part (its only writer,
/// which updates it before it tells the registry that a session or an app is gone) and read by
/// the service registry (which apps have one, where to announce a call).
#[derive(Clone, Default)]
pub(crate) struct SessionDirectory(Arc<RwLock<HashMap<String, Vec<SessionSlot>>>>);

impl SessionDirectory {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Vec<SessionSlot>>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Vec<SessionSlot>>> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session of `app_id`.
    pub(crate) fn open(&self, app_id: &str, session: SessionSlot) {
        self.write()
            .entry(app_id.to_owned())
            .or_default()
            .push(session);
    }

    /// Session `id` of `app_id` ended; true if it was the app's last.
    pub(crate) fn end(&self, app_id: &str, id: u64) -> bool {
        let mut apps = self.write();
        let Some(sessions) = apps.get_mut(app_id) else {
            return false;
        };
        sessions.retain(|s| s.id != id);
        let last = sessions.is_empty();
        if last {
            apps.remove(app_id);
        }
        last
    }

    /// Live sessions, all apps together.
    pub(crate) fn live(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    /// Live sessions of `app_id`'s app: its own and its helpers'.
    pub(crate) fn live_of_app(&self, app_id: &str) -> usize {
        let root = root_app(app_id);
        self.read()
            .iter()
            .filter(|(app, _)| root_app(app) == root)
            .map(|(_, sessions)| sessions.len())
            .sum()
    }

    /// Whether `app_id` has a live session.
    pub(crate) fn has(&self, app_id: &str) -> bool {
        self.read().contains_key(app_id)
    }

    /// Live sessions per app (of `only`, if given).
    pub(crate) fn counts(&self, only: Option<&str>) -> BTreeMap<String, usize> {
        self.read()
            .iter()
            .filter(|(app, _)| only.is_none_or(|o| o == app.as_str()))
            .map(|(app, sessions)| (app.clone(), sessions.len()))
            .collect()
    }

    /// The newest live session of `app_id` that takes a channel in `group` (`None`: in no
    /// group) and where to announce to it: where an incoming channel goes.
    pub(crate) fn newest_taking(
        &self,
        app_id: &str,
        group: Option<&str>,
    ) -> Result<(u64, mpsc::Sender<Incoming>), NoTaker> {
        let apps = self.read();
        let live = apps
            .get(app_id)
            .into_iter()
            .flatten()
            .rev()
            .filter(|s| !s.tx.is_closed());
        let mut any = false;
        for session in live {
            any = true;
            if session.group.is_none() || session.group.as_deref() == group {
                return Ok((session.id, session.tx.clone()));
            }
        }
        Err(if any {
            NoTaker::OutsideGroup
        } else {
            NoTaker::NotListening
        })
    }

    /// The newest live session of `app_id` and where to announce to it: where incoming
    /// calls go.
    pub(crate) fn newest(&self, app_id: &str) -> Option<(u64, mpsc::Sender<Incoming>)> {
        let apps = self.read();
        newest(apps.get(app_id)?).map(|(id, tx)| (id, tx.clone()))
    }
}
