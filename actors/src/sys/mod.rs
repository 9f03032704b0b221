//! Kernel-facing code: small, safe wrappers over the syscalls the engine needs. The only module
//! of the crate allowed `unsafe` (each block says why it is sound).

pub mod beneath;
pub mod blockdev;
pub(crate) mod clone;
pub(crate) mod fd;
pub mod kmod;
pub mod loopdev;
pub mod malloc;
pub mod mountinfo;
pub mod mounts;
pub(crate) mod poll;
pub(crate) mod proc;
pub mod rbd;
pub mod rlimit;
pub(crate) mod sched;
pub(crate) mod signal;
pub(crate) mod tty;

use nix::errno::Errno;

/// A syscall that failed: which operation (e.g. "LOOP_CONFIGURE /dev/loop3", "mount overlay on /x") and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {errno}")]
pub struct SysError {
    /// The operation and its object, as a person would write it.
    pub op: String,
    /// What the kernel answered.
    #[source]
    pub errno: Errno,
}

/// For `map_err`: tags an errno with the operation that produced it.
pub(crate) fn sys_err(op: impl Into<String>) -> impl FnOnce(Errno) -> SysError {
    move |errno| SysError {
        op: op.into(),
        errno,
    }
}

/// rustix and std report the same kernel errno in their own types; the sys layer speaks nix's.
pub(crate) fn errno_of_rustix(err: rustix::io::Errno) -> Errno {
    Errno::from_raw(err.raw_os_error())
}

/// See [`errno_of_rustix`]; an io::Error that carries no errno cannot come from a syscall, so EIO is a fair stand-in.
pub(crate) fn errno_of_io(err: &std::io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}
