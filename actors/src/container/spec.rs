//! What the service hands to a container init, and what the init answers when it fails.
//!
//! The service executes its init program as the init (see [`super::init`]). Between the two
//! processes there are exactly four channels, on fixed descriptor numbers in the init:
//! - [`SPEC_FD`]: a memfd holding the [`InitSpec`] as JSON;
//! - [`REPORT_FD`]: the write end of a close-on-exec pipe. End of file without a byte means the
//!   payload was executed; otherwise the init wrote one [`Report`] and exits with 127;
//! - [`IMAGE_FD`]: a detached copy of the image's mount tree (`open_tree`), to attach as `/`;
//! - the init's stdout and stderr: the container's log file.

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `argv[1]` of a process that must run as a container init rather than as the service.
pub const INIT_MARKER: &str = "__imageapi_container_init";

/// Descriptor of the serialized [`InitSpec`] in the init.
pub(crate) const SPEC_FD: RawFd = 3;

/// Descriptor of the failure report pipe in the init.
pub(crate) const REPORT_FD: RawFd = 4;

/// Descriptor of the image's detached mount tree in the init.
pub(crate) const IMAGE_FD: RawFd = 5;

/// Where a command name without a `/` is looked for inside the image, in order.
pub(crate) const SEARCH_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Exit code of an init that could not execute its payload.
pub(crate) const FAILED_EXIT_CODE: i32 = 127;

/// The longest report written: below `PIPE_BUF`, so a report is one atomic write.
const REPORT_MAX: usize = 512;

/// Bytes before the step text in a report: the kind and the errno.
const REPORT_HEADER: usize = 5;

/// Everything the init needs to build the container, already checked by the service.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InitSpec {
    /// The payload's argument vector; `argv[0]` is resolved inside the new root.
    pub argv: Vec<String>,
    /// The payload's environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// The host name to set, when the init has a UTS namespace of its own.
    pub hostname: Option<String>,
    /// Whether to enter a cgroup namespace rooted at the container's cgroups.
    pub cgroup_namespace: bool,
    /// Whether the init runs in a user namespace of its own (some mounts then need fallbacks).
    pub user_namespace: bool,
    /// Whether to prepare the extra mounts systemd expects.
    pub systemd: bool,
    /// Whether the host has cgroup2 alone: systemd then gets the container's cgroup2 cgroup on
    /// `/sys/fs/cgroup` (unified mode) rather than a tmpfs holding one mount per hierarchy.
    pub unified_cgroups: bool,
    /// A pseudo-terminal slave of the host (`/dev/pts/N`) to bind onto `/dev/console`.
    pub console: Option<PathBuf>,
}

/// A failure of the init (or of the child before it), as sent back to the service.
#[derive(Debug)]
pub(crate) struct Report {
    /// Whether the image or the request is at fault (the payload cannot be executed), rather
    /// than the kernel.
    pub rejection: bool,
    /// The errno of the failed call.
    pub errno: i32,
    /// What the init was doing, e.g. `mount proc on /proc`.
    pub step: String,
}

/// Encodes a report into `buf` without allocating (the child calls it between clone and exec):
/// one kind byte, the errno in little endian, then the step text, truncated to fit.
pub(crate) fn encode_report<'a>(
    buf: &'a mut [u8; REPORT_MAX],
    rejection: bool,
    errno: i32,
    step: &str,
) -> &'a [u8] {
    buf[0] = u8::from(rejection);
    buf[1..REPORT_HEADER].copy_from_slice(&errno.to_le_bytes());
    let len = step.len().min(REPORT_MAX - REPORT_HEADER);
    buf[REPORT_HEADER..REPORT_HEADER + len].copy_from_slice(&step.as_bytes()[..len]);
    &buf[..REPORT_HEADER + len]
}

/// Writes a report to `fd` in one call, ignoring errors: the reader may be gone, and nothing
/// better can be done about it. Async-signal-safe.
pub(crate) fn send_report(fd: RawFd, rejection: bool, errno: i32, step: &str) {
    let mut buf = [0u8; REPORT_MAX];
    let bytes = encode_report(&mut buf, rejection, errno, step);
    crate::sys::fd::write_once(fd, bytes);
}

impl Report {
    /// A failure of the kernel (or of the environment) at `step`.
    pub fn kernel(step: impl Into<String>, error: impl Into<io::Error>) -> Report {
        Report::new(false, step, error.into())
    }

    /// A failure to execute the payload that the image is to blame for.
    pub fn rejection(step: impl Into<String>, error: impl Into<io::Error>) -> Report {
        Report::new(true, step, error.into())
    }

    fn new(rejection: bool, step: impl Into<String>, error: io::Error) -> Report {
        Report {
            rejection,
            errno: error.raw_os_error().unwrap_or(libc::EINVAL),
            step: step.into(),
        }
    }

    /// Writes the report to `fd` (see [`send_report`]).
    pub fn send(&self, fd: RawFd) {
        send_report(fd, self.rejection, self.errno, &self.step);
    }

    /// Decodes what the service read from the report pipe: `None` for no report at all.
    pub fn decode(bytes: &[u8]) -> Option<Report> {
        if bytes.is_empty() {
            return None;
        }
        let mut errno = [0u8; 4];
        let header = bytes.len().min(REPORT_HEADER);
        errno[..header - 1].copy_from_slice(&bytes[1..header]);
        Some(Report {
            rejection: bytes[0] != 0,
            errno: i32::from_le_bytes(errno),
            step: String::from_utf8_lossy(&bytes[header..]).into_owned(),
        })
    }

    /// The failed call's error, for display.
    pub fn error(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

/// Turns any kernel error into a [`Report`] naming the step, the way the init reports them.
pub(crate) trait Step<T> {
    /// Attaches the step, built only on failure.
    fn step(self, step: impl FnOnce() -> String) -> Result<T, Report>;
}

impl<T, E: Into<io::Error>> Step<T> for Result<T, E> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, Report> {
        self.map_err(|error| Report::kernel(step(), error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trip() {
        let mut buf = [0u8; REPORT_MAX];
        let bytes = encode_report(&mut buf, true, libc::ENOENT, "execute /sbin/init");
        let report = Report::decode(bytes).unwrap();
        assert!(report.rejection);
        assert_eq!(report.errno, libc::ENOENT);
        assert_eq!(report.step, "execute /sbin/init");
    }

    #[test]
    fn long_steps_are_truncated_and_empty_means_success() {
        let mut buf = [0u8; REPORT_MAX];
        let step = "x".repeat(2 * REPORT_MAX);
        let bytes = encode_report(&mut buf, false, libc::EPERM, &step);
        assert_eq!(bytes.len(), REPORT_MAX);
        assert_eq!(
            Report::decode(bytes).unwrap().step.len(),
            REPORT_MAX - REPORT_HEADER
        );
        assert!(Report::decode(&[]).is_none());
    }
}
