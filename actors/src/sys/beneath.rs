//! Resolving paths inside a directory tree that someone else controls, such as an image's root filesystem.
//!
//! Joining the path and opening it would follow a `..` or a symlink in the image out to the host; openat2's
//! RESOLVE_BENEATH makes the kernel refuse instead, atomically, without a check-then-use race.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use rustix::fs::{open, openat2, Mode, OFlags, ResolveFlags};

use super::errno_of_rustix;

/// openat2 answers EAGAIN when a concurrent rename or mount might have changed the answer; a few retries
/// get past that, an endless stream of them is someone's attack.
const MAX_TRIES: usize = 16;

/// Why [`open_beneath`] opened nothing.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    /// `..` or a symlink would have taken the resolution out of the base directory.
    #[error("path {path:?} resolves outside its base")]
    Escapes {
        /// The path as the caller gave it.
        path: String,
    },
    /// The base or the path could not be opened (ENOENT, ENOTDIR, ELOOP for a /proc magic link, ...).
    #[error("path {path:?}: {errno}")]
    Open {
        /// The base directory or the relative path, whichever failed.
        path: String,
        /// What the kernel answered.
        errno: Errno,
    },
}

/// Opens `relative` beneath the directory `base`, refusing (`Escapes`) rather than following a `..` or a symlink,
/// relative or absolute, that would leave `base`; /proc-style magic links are refused too.
///
/// A leading '/' in `relative` means the base's root, and an empty path opens `base` itself. `flags` chooses the
/// access (O_PATH, O_RDONLY, O_RDWR, O_DIRECTORY, ...) to an existing file; O_CLOEXEC is always added.
pub fn open_beneath(base: &Path, relative: &str, flags: OFlags) -> Result<OwnedFd, BeneathError> {
    let base_fd = open(
        base,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| BeneathError::Open {
        path: base.display().to_string(),
        errno: errno_of_rustix(e),
    })?;
    let inside = match relative.trim_start_matches('/') {
        "" => ".",
        inside => inside,
    };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    match open_resolved(&base_fd, inside, flags | OFlags::CLOEXEC, resolve) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::XDEV) => Err(BeneathError::Escapes {
            path: relative.to_owned(),
        }),
        Err(e) => Err(BeneathError::Open {
            path: relative.to_owned(),
            errno: errno_of_rustix(e),
        }),
    }
}

/// openat2(2) of `path` below the directory `dir`, resolved as `resolve` says
/// (RESOLVE_BENEATH, RESOLVE_IN_ROOT, ...): the one openat2 of the crate, since it answers
/// EAGAIN when a concurrent rename or mount might have changed the answer, and every caller
/// needs the retries.
pub fn open_resolved(
    dir: impl AsFd,
    path: &str,
    flags: OFlags,
    resolve: ResolveFlags,
) -> rustix::io::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        tries += 1;
        match openat2(&dir, path, flags, Mode::empty(), resolve) {
            Err(rustix::io::Errno::AGAIN) if tries < MAX_TRIES => {}
            done => return done,
        }
    }
}

/// "/proc/self/fd/N" for an fd, to hand a resolved path to mount(2) or any path-taking call of this process.
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}
