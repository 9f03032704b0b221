//! Descriptors a process is handed at fixed numbers (the container init's, by its clone
//! child), and the async-signal-safe write the init's report takes.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Which of the descriptors 0 to 63 have been claimed, one bit each.
static CLAIMED: AtomicU64 = AtomicU64::new(0);

/// Takes ownership of descriptor `fd`, which this process was handed at that number (the
/// clone child puts the init's spec and image there). `None` if it is not open, is above 63, or
/// was claimed already: each is owned once.
pub(crate) fn claim_inherited(fd: RawFd) -> Option<OwnedFd> {
    let bit = 1u64.checked_shl(u32::try_from(fd).ok()?)?;
    if CLAIMED.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
        return None;
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; a closed one answers EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the descriptor is open, and claimed here once: nothing else of the process owns
    // it (it was handed over at this number, not opened by the process).
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Closes every descriptor from `first` up. Only for the start of a process that was handed
/// descriptors below `first` and has opened none of its own yet: any other descriptor there
/// leaked to it (without close-on-exec) and is owned by nobody.
pub(crate) fn close_inherited_from(first: RawFd) {
    let first = first.unsigned_abs();
    // SAFETY: close_range(2) only closes descriptors; by this function's contract, nothing of
    // the process owns one at or above `first`.
    unsafe { libc::close_range(first, u32::MAX, 0) };
}

/// Makes descriptor `fd` close-on-exec.
pub(crate) fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD only changes the descriptor's flags; a closed one answers EBADF.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `bytes` to `fd` in one write(2), ignoring errors. Async-signal-safe: the clone
/// child reports through it.
pub(crate) fn write_once(fd: RawFd, bytes: &[u8]) {
    // SAFETY: `bytes` is a valid buffer of `bytes.len()` bytes for the duration of the call;
    // write(2) on a bad descriptor only fails.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}
