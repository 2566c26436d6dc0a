//! Tasks that answer one request ([`spawn_answer`]). (Tasks that end with their owner are
//! tokio-util's `AbortOnDropHandle`s, so a panicking or restarted actor never leaves a delivery
//! or feeder task behind.)

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
