//! The live sessions of each app, as the overlay actor keeps them: where incoming channels and
//! calls are announced, and who watches for an app's last session to end.

use p2pos_protocols::apps::Incoming;
use tokio::sync::{mpsc, oneshot};

/// Announcements (incoming channels and calls) buffered per session.
pub(crate) const SESSION_BUFFER: usize = 64;
/// Most live sessions, all apps together.
pub(crate) const MAX_SESSIONS: usize = 1024;

/// One live session of an app.
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
        self.sessions
            .iter()
            .rev()
            .find(|s| !s.tx.is_closed())
            .map(|s| (s.id, &s.tx))
    }
}
