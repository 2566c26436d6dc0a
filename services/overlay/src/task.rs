//! Tasks: those that end with their owner — an [`AbortOnDrop`] aborts its tokio task when
//! dropped, so a panicking or restarted actor never leaves a delivery or feeder task behind —
//! and those that answer one request ([`spawn_answer`]).

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

impl AbortOnDrop {
    /// Whether the task has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The answer to one request, computed off the actor (on any of the runtime's threads).
pub(crate) type Fut<T> = futures::future::BoxFuture<'static, Result<T, crate::Error>>;

/// An answer known at once.
pub(crate) fn ready<T: Send + 'static>(result: Result<T, crate::Error>) -> Fut<T> {
    Box::pin(futures::future::ready(result))
}

/// Answers `reply` with what `answer` comes to, from a task on the runtime's threads: the actor
/// that made `answer` has done its bookkeeping and goes on at once. A caller that gave up is
/// not an error; the task ends when `answer` does (every one is bounded by its own timeouts).
pub(crate) fn spawn_answer<T: Send + 'static>(reply: p2pos_protocols::Reply<T>, answer: Fut<T>) {
    tokio::spawn(async move {
        p2pos_protocols::answer(reply, answer.await);
    });
}
