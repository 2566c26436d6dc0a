//! Tasks that end with their owner: an [`AbortOnDrop`] aborts its tokio task when dropped, so a
//! panicking or restarted actor never leaves a swarm, accept loop or delivery task behind.

use tokio::task::{AbortHandle, JoinHandle};

/// Aborts a tokio task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(AbortHandle);

impl AbortOnDrop {
    /// Spawns `fut` on tokio and ties it to the returned guard.
    pub(crate) fn spawn<F>(fut: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Self::new(&tokio::spawn(fut))
    }

    /// Ties the task behind `handle` to the returned guard.
    pub(crate) fn new<T>(handle: &JoinHandle<T>) -> Self {
        Self(handle.abort_handle())
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
