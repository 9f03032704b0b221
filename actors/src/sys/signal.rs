//! Signal numbers and dispositions.

use rustix::process::Signal;

/// The signal of number `number`, named or real-time (systemd stops on SIGRTMIN+3); `None` for
/// a number that is neither, or one the C library reserves for itself.
pub(crate) fn signal_of(number: i32) -> Option<Signal> {
    if let Some(named) = Signal::from_named_raw(number) {
        return Some(named);
    }
    if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&number) {
        // SAFETY: the number is in the real-time range the C library leaves to applications,
        // so it is a valid signal and not one libc reserves.
        return Some(unsafe { Signal::from_raw_unchecked(number) });
    }
    None
}

/// Gives every signal its default disposition (SIGKILL and SIGSTOP cannot have another).
pub(crate) fn reset_all_to_default() {
    for signal in 1..=libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL installs no handler. Numbers the C library reserves for itself are
        // refused with EINVAL, which is fine to ignore.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
}
