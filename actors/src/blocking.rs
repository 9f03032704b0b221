//! Where the engine's blocking work runs, and how a lost actor reads as an error.

use std::future::Future;

use crate::error::Error;

/// Runs a kernel step on the blocking pool, never on an event loop.
pub(crate) async fn blocking<T: Send + 'static>(
    step: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    off_event_loop(step)
        .await
        .unwrap_or(Err(Error::ShuttingDown))
}

/// Runs blocking work on the blocking pool, handed over at the call (not at the first poll), so
/// that the pool's thread wakes while the caller goes on. `None` when the runtime shut down
/// before it ran; a panic in the work is a bug and goes on as a panic, as it would have inline.
pub(crate) fn off_event_loop<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = Option<T>> {
    let handle = actix_rt::task::spawn_blocking(work);
    async move {
        match handle.await {
            Ok(done) => Some(done),
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => None,
        }
    }
}

/// An actor that can no longer answer: the service is shutting down.
pub(crate) fn mailbox_gone(_: actix::MailboxError) -> Error {
    Error::ShuttingDown
}
