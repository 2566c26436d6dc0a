//! Tasks that end with their owner: an [`AbortOnDrop`] aborts its tokio task when dropped, so a
//! forward's listener stops when the forward is closed or the service goes.

use tokio::task::AbortHandle;

/// Aborts a tokio task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(AbortHandle);

impl AbortOnDrop {
    /// Spawns `fut` on tokio and ties it to the returned guard.
    pub(crate) fn spawn<F>(fut: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Self(tokio::spawn(fut).abort_handle())
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
