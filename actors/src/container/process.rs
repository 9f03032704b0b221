//! A running container init, supervised through its pidfd.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustix::process::{pidfd_send_signal, waitid, WaitId, WaitIdOptions, WaitIdStatus};

use super::cgroup::{Cgroup, CgroupError};
use super::runtime::Runtime;
use crate::sys::clone::Child;
use crate::sys::poll::{poll, readable};
use crate::sys::proc::Stat;
use crate::sys::signal::signal_of;
use rustix::event::PollFlags;
use std::time::Duration;

/// How an init ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal of this number killed it.
    Signaled(i32),
    /// It ended, but how is unknown: an init adopted after a restart of the service is not the
    /// service's child, and only a parent learns its child's status.
    Unknown,
}

impl ExitStatus {
    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }

    fn from_wait(status: WaitIdStatus) -> io::Result<ExitStatus> {
        if let Some(code) = status.exit_status() {
            return Ok(ExitStatus::Exited(code));
        }
        status
            .terminating_signal()
            .map(ExitStatus::Signaled)
            .ok_or_else(|| io::Error::other(format!("unexpected wait status {status:?}")))
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exited with code {code}"),
            ExitStatus::Signaled(signal) => write!(f, "killed by signal {signal}"),
            ExitStatus::Unknown => f.write_str("ended with an unknown status"),
        }
    }
}

/// A container init started by [`super::launch()`]: PID 1 of its namespaces, a direct child of
/// the service. All methods take `&self`, so one task may [`wait`](Init::wait) while others
/// signal or freeze it (share it in an `Arc`).
///
/// Dropping an `Init` that has not been reaped kills the container (SIGKILL) and leaves the
/// reaping and the cgroup removal to the reaper.
#[derive(Debug)]
pub struct Init {
    /// The runtime whose reaper registered the init, and whose cgroups it runs in.
    runtime: Arc<Runtime>,
    id: i64,
    pid: i32,
    pidfd: OwnedFd,
    start_time: u64,
    cgroup: Cgroup,
    /// Set once reaped: the status can be collected only once from the kernel.
    status: Mutex<Option<ExitStatus>>,
    /// Set when the service stops and leaves the container running for its next start.
    left_running: AtomicBool,
    /// Taken up again after a restart: not the service's child, so its status cannot be reaped.
    adopted: bool,
}

impl Init {
    pub(crate) fn new(
        runtime: Arc<Runtime>,
        id: i64,
        child: Child,
        start_time: u64,
        cgroup: Cgroup,
    ) -> Init {
        Init {
            runtime,
            id,
            pid: child.pid,
            pidfd: child.pidfd,
            start_time,
            cgroup,
            status: Mutex::new(None),
            left_running: AtomicBool::new(false),
            adopted: false,
        }
    }

    /// Takes up again into `runtime`, after a restart of the service, the init `pid` that
    /// started at `start_time`; `None` when that process is gone (or the pid now names another
    /// one).
    pub fn adopt(
        runtime: &Arc<Runtime>,
        id: i64,
        pid: i32,
        start_time: u64,
    ) -> io::Result<Option<Init>> {
        let same_process = || {
            Stat::read(pid)
                .map(|stat| stat.start_time == start_time)
                .unwrap_or(false)
        };
        if !same_process() {
            return Ok(None);
        }
        let Some(raw) = rustix::process::Pid::from_raw(pid) else {
            return Ok(None);
        };
        let pidfd = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
            Ok(pidfd) => pidfd,
            Err(rustix::io::Errno::SRCH) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        // The pid could have been reused between the check and the open: check again, now
        // that the pidfd pins the process.
        if !same_process() {
            return Ok(None);
        }
        Ok(Some(Init {
            runtime: runtime.clone(),
            id,
            pid,
            pidfd,
            start_time,
            // By the container's id, not by the init's own cgroup: systemd moves itself into a
            // sub-cgroup (init.scope).
            cgroup: Cgroup::left_by(runtime, id),
            status: Mutex::new(None),
            left_running: AtomicBool::new(false),
            adopted: true,
        }))
    }

    /// The container id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The init's pid in the service's pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// When the init started, in clock ticks after boot (`/proc/<pid>/stat` field 22): with the
    /// pid, it identifies the process across pid reuse.
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// The container's cgroups.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// The init's pidfd.
    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Sends signal number `signal` to the init through its pidfd (so never to a recycled pid).
    /// Real-time signals are fine: systemd stops on SIGRTMIN+3. An init only receives the
    /// signals it has a handler for, SIGKILL aside (pid_namespaces(7)).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        let signal = signal_of(signal).ok_or(io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(pidfd_send_signal(&self.pidfd, signal)?)
    }

    /// Kills the container: SIGKILL to the init (the kernel then kills the whole pid namespace),
    /// and a thaw, since v1-frozen tasks cannot die until thawed.
    pub fn kill(&self) -> io::Result<()> {
        self.signal(libc::SIGKILL)?;
        if let Err(error) = self.cgroup.thaw() {
            tracing::warn!(id = self.id, %error, "cannot thaw a killed container");
        }
        Ok(())
    }

    /// Freezes every process of the container (see [`Cgroup::freeze`]).
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.cgroup.freeze()
    }

    /// Thaws the container.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.cgroup.thaw()
    }

    /// Waits until the init exits, reaps it and removes the container's cgroups. Sleeps on the
    /// pidfd in the tokio reactor (no polling); must run inside a tokio runtime with I/O
    /// enabled. Later calls return the same status.
    pub async fn wait(&self) -> io::Result<ExitStatus> {
        loop {
            self.exited().await?;
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
        }
    }

    /// Resolves once the init has exited (its pidfd is readable), without reaping it: then
    /// [`Init::try_wait`], which reaps it and removes its cgroups, has its status.
    pub async fn exited(&self) -> io::Result<()> {
        // A pidfd becomes readable when its process exits, and stays so.
        readable(self.pidfd.try_clone()?).await
    }

    /// Reaps the init if it has exited, removing the container's cgroups; `None` while it runs.
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        let mut reaped = self
            .status
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if reaped.is_some() {
            return Ok(*reaped);
        }
        if self.adopted {
            if !poll(self.pidfd.as_fd(), PollFlags::IN, Duration::ZERO)? {
                return Ok(None);
            }
            *reaped = Some(ExitStatus::Unknown);
            if let Err(error) = self.cgroup.remove() {
                tracing::warn!(id = self.id, %error, "cannot remove the container's cgroups");
            }
            return Ok(*reaped);
        }
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
        let raw = self.runtime.reaper().reap_supervised(self.pid, || {
            Ok(waitid(WaitId::PidFd(self.pidfd.as_fd()), options)?)
        })?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let status = ExitStatus::from_wait(raw)?;
        *reaped = Some(status);
        // The kernel empties a pid namespace before it reports its init exited: the cgroups
        // hold nothing any more.
        if let Err(error) = self.cgroup.remove() {
            tracing::warn!(id = self.id, %error, "cannot remove the container's cgroups");
        }
        Ok(Some(status))
    }
}

impl Init {
    /// Gives up supervision without stopping the container: dropping this `Init` then leaves
    /// the init running (for a service that stops and will adopt it again at its next start).
    pub fn leave_running(&self) {
        self.left_running.store(true, Ordering::Relaxed);
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        if self.left_running.load(Ordering::Relaxed) {
            return;
        }
        let status = self.status.get_mut();
        let reaped = status
            .unwrap_or_else(|poison| poison.into_inner())
            .is_some();
        if reaped {
            return;
        }
        // Killed first, handed over second: once abandoned, the reaper may remove the cgroups
        // that kill() still thaws.
        if let Err(error) = self.kill() {
            tracing::warn!(id = self.id, %error, "cannot kill a dropped container");
        }
        if self.adopted {
            // Not our child: its parent reaps it; the cgroups go with the next start's check.
            return;
        }
        self.runtime.reaper().abandon(self.pid, self.cgroup.clone());
    }
}
