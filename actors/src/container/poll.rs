//! Sleeping on one descriptor with a deadline.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

/// Waits until `fd` reports one of `events` (`libc::POLLIN`, `libc::POLLPRI`, ...) or `timeout`
/// passes; true if it did. Interruptions by signals resume with the time left.
pub(crate) fn poll(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    timeout: Duration,
) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up, so that a sub-millisecond rest does not become a busy zero timeout.
        let millis =
            libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
        let mut pollfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: `pollfd` is one valid pollfd for a descriptor borrowed for the whole call, and
        // the count passed is 1.
        match unsafe { libc::poll(&raw mut pollfd, 1, millis) } {
            0 => return Ok(false),
            n if n > 0 => return Ok(true),
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
}
