//! The live sessions of each app, as the overlay actor keeps them: where incoming channels and
//! calls are announced, and who watches for an app's last session to end.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use p2pos_protocols::apps::Incoming;
use tokio::sync::{mpsc, oneshot};

/// Announcements (incoming channels and calls) buffered per session.
pub(crate) const SESSION_BUFFER: usize = 64;
/// Most live sessions, all apps together.
pub(crate) const MAX_SESSIONS: usize = 1024;

/// One live session of an app.
#[derive(Clone)]
pub(crate) struct SessionSlot {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::Sender<Incoming>,
}

/// The live sessions of one app, oldest first.
#[derive(Default)]
pub(crate) struct AppState {
    pub(crate) sessions: Vec<SessionSlot>,
    /// Dropped when the last session ends (see `WatchSession`).
    pub(crate) watchers: Vec<oneshot::Sender<()>>,
}

impl AppState {
    /// Where to announce incoming channels and calls: the newest session still open, and its
    /// id.
    pub(crate) fn newest(&self) -> Option<(u64, &mpsc::Sender<Incoming>)> {
        newest(&self.sessions)
    }
}

fn newest(sessions: &[SessionSlot]) -> Option<(u64, &mpsc::Sender<Incoming>)> {
    sessions
        .iter()
        .rev()
        .find(|s| !s.tx.is_closed())
        .map(|s| (s.id, &s.tx))
}

/// The sessions part's directory of live sessions, for the service registry to read: which
/// apps have one, and where to announce a call. Only the sessions part writes it, and it does
/// so before it tells the registry that a session or an app is gone.
#[derive(Clone, Default)]
pub(crate) struct SessionDirectory(Arc<RwLock<HashMap<String, Vec<SessionSlot>>>>);

impl SessionDirectory {
    /// Records the live sessions of `app_id` (none: the app has gone).
    pub(crate) fn set(&self, app_id: &str, app: Option<&AppState>) {
        let mut apps = self.0.write().unwrap_or_else(|e| e.into_inner());
        match app {
            Some(app) if !app.sessions.is_empty() => {
                apps.insert(app_id.to_owned(), app.sessions.clone());
            }
            _ => {
                apps.remove(app_id);
            }
        }
    }

    /// The newest live session of `app_id` and where to announce to it.
    pub(crate) fn newest(&self, app_id: &str) -> Option<(u64, mpsc::Sender<Incoming>)> {
        let apps = self.0.read().unwrap_or_else(|e| e.into_inner());
        let sessions = apps.get(app_id)?;
        newest(sessions).map(|(id, tx)| (id, tx.clone()))
    }
}
