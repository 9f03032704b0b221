//! Sleeping on descriptors: with a deadline on one or more of them, or in the tokio reactor.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Waits until `fd` reports one of `events` or `timeout` passes; true if it did.
/// Interruptions by signals resume with the time left.
pub(crate) fn poll(fd: BorrowedFd<'_>, events: PollFlags, timeout: Duration) -> io::Result<bool> {
    let mut fds = [PollFd::from_borrowed_fd(fd, events)];
    Ok(poll_all(&mut fds, Some(timeout))? > 0)
}

/// Waits until one of `fds` reports one of its events, or `timeout` passes (never, without
/// one); answers how many did, with each one's events in its `revents`. Interruptions by
/// signals resume with the time left.
pub(crate) fn poll_all(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    loop {
        let left = deadline.map(|deadline| {
            let left = deadline.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            }
        });
        match rustix::event::poll(fds, left.as_ref()) {
            Ok(ready) => return Ok(ready),
            Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
}

/// Resolves once `fd` is readable (a pidfd: once its process has exited), sleeping in the
/// tokio reactor of the current runtime (which must have I/O enabled). Takes the descriptor
/// (a duplicate, say) so that it stays open while registered.
pub(crate) async fn readable(fd: OwnedFd) -> io::Result<()> {
    // SAFETY: the AsyncFd owns `fd`, which stays open and refers to the same file until the
    // AsyncFd is dropped at the end of this function.
    let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(|error| error.into_parts().1)?;
    registered.readable().await?.retain_ready();
    Ok(())
}
