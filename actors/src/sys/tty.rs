//! Terminal settings the console needs that the syscall crates in use do not wrap.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Sets the window size of terminal `fd` (TIOCSWINSZ), which programs read to lay out lines.
pub(crate) fn set_window_size(fd: BorrowedFd<'_>, rows: u16, columns: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid for the call, on a
    // descriptor borrowed for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &raw const size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
