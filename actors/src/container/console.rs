//! The console of a systemd container: a pseudo-terminal of the host, whose slave the init binds
//! onto the container's `/dev/console`, and whose output a thread of the service copies into
//! the container's log.
//!
//! systemd as PID 1 of a container writes its status lines (boot, shutdown) only to
//! `/dev/console`, never to its stdout, and runs a getty there that needs a terminal: a plain
//! file would lose the former and fail the latter. This is how LXC provides a console too: the
//! pseudo-terminal comes from the host's `devpts`, so the container's own `devpts` instance
//! does not show it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::mount::{umount2, MntFlags};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use nix::sched::{setns, unshare, CloneFlags};
use rustix::fs::CWD;
use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};

use super::process::Init;
use crate::sys::poll::poll_all;
use crate::sys::tty::set_window_size;
use rustix::event::{PollFd, PollFlags};

/// How long the relay sleeps when nothing holds the terminal open (the master then reports a
/// hang-up at once, so polling it again right away would spin).
const HANGUP_PAUSE: Duration = Duration::from_millis(50);

/// The console's size. Nothing displays it, so it is wide: systemd shortens its status lines
/// to the width of the console (80 columns when it has no size).
const SIZE: (u16, u16) = (50, 200);

/// A pseudo-terminal made for one container, not yet relayed.
pub(crate) struct Console {
    master: PtyMaster,
    /// Held open by the relay, so that the master does not report a hang-up in the moments no
    /// process of the container has the console open (before systemd opens it, between two
    /// gettys): its end is told by the init's exit instead.
    slave: OwnedFd,
    /// The slave's path on the host (`/dev/pts/N`), for the init to bind.
    path: PathBuf,
}

/// Gives the adopted init of systemd container `id` a new console, relayed to its log at
/// `log_path` like the first one was: the previous service's relay ended with it.
pub fn reattach_console(id: i64, init: &Init, log_path: &Path) -> io::Result<()> {
    let console = Console::open()?;
    console.reattach(init.pidfd())?;
    let log = OpenOptions::new().append(true).open(log_path)?;
    console.relay(id, init.pidfd(), &log)
}

impl Console {
    /// Opens a new pseudo-terminal pair on the host.
    pub fn open() -> io::Result<Console> {
        let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let master = posix_openpt(flags)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let path = PathBuf::from(ptsname_r(&master)?);
        let slave = nix::fcntl::open(&path, flags, nix::sys::stat::Mode::empty())?;
        // The relay drains the master without blocking once the init has exited.
        let status = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL)?;
        let status = OFlag::from_bits_retain(status) | OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(status))?;
        set_window_size(master.as_fd(), SIZE.0, SIZE.1)?;
        Ok(Console {
            master,
            slave,
            path,
        })
    }

    /// Binds this console's slave over `/dev/console` in the mount namespace of the process
    /// `pidfd` refers to: an init adopted after a restart, whose console died with the previous
    /// service (its master was a descriptor of that process). What opens `/dev/console` from
    /// then on (systemd for each status line, a getty when it starts again) gets this one.
    fn reattach(&self, pidfd: BorrowedFd<'_>) -> io::Result<()> {
        let flags = OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH;
        let slave = open_tree(&self.slave, "", flags)?;
        let pidfd = pidfd.try_clone_to_owned()?;
        // A thread of its own: entering another mount namespace needs a thread that shares
        // its root and working directory with no other, and it ends there.
        std::thread::Builder::new()
            .name("console-attach".into())
            .spawn(move || -> io::Result<()> {
                let step = |step: &'static str| {
                    move |error: nix::errno::Errno| io::Error::other(format!("{step}: {error}"))
                };
                unshare(CloneFlags::CLONE_FS).map_err(step("unshare the file system context"))?;
                setns(&pidfd, CloneFlags::CLONE_NEWNS)
                    .map_err(step("enter the init's mount namespace"))?;
                // The old terminal went with its master: the bind of its slave is left on a
                // deleted file, on which nothing can be mounted.
                match umount2("/dev/console", MntFlags::MNT_DETACH) {
                    Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
                    Err(error) => return Err(step("unmount the old /dev/console")(error)),
                }
                move_mount(
                    &slave,
                    "",
                    CWD,
                    "/dev/console",
                    MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
                )
                .map_err(|error| io::Error::other(format!("bind /dev/console: {error}")))?;
                Ok(())
            })?
            .join()
            .map_err(|_| io::Error::other("the console-attach thread panicked"))?
    }

    /// The slave's path on the host, for the init to bind onto `/dev/console`.
    pub fn path(&self) -> &PathBuf {
        &self.path
    }

    /// Copies what the container writes to its console into `log`, on a thread of its own,
    /// until the process `pidfd` refers to (the init) has exited and the output is drained.
    pub fn relay(self, id: i64, pidfd: BorrowedFd<'_>, log: &File) -> io::Result<()> {
        let exited = pidfd.try_clone_to_owned()?;
        let log = log.try_clone()?;
        std::thread::Builder::new()
            .name(format!("console-{id}"))
            .spawn(move || {
                if let Err(error) = self.copy(id, &exited, log) {
                    tracing::warn!(id, %error, "the console relay stopped");
                }
            })?;
        Ok(())
    }

    fn copy(self, id: i64, exited: &OwnedFd, log: File) -> io::Result<()> {
        let _slave = self.slave;
        let mut log = Log {
            file: log,
            id,
            failed: false,
        };
        let mut lines = Lines::default();
        let mut buf = [0u8; 4096];
        let mut master = &self.master;
        loop {
            let (readable, hung_up, init_gone) = wait(master.as_fd(), exited.as_fd())?;
            if readable || init_gone {
                // Everything there is, until the master would block (or reports the hang-up
                // of a terminal nobody holds any more).
                loop {
                    match master.read(&mut buf) {
                        Ok(0) => break,
                        Ok(len) => log.write(&lines.convert(&buf[..len])),
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        Err(error)
                            if error.kind() == io::ErrorKind::WouldBlock
                                || error.raw_os_error() == Some(libc::EIO) =>
                        {
                            break
                        }
                        Err(error) => return Err(error),
                    }
                }
            }
            if init_gone {
                log.write(&lines.finish());
                return Ok(());
            }
            if hung_up && !readable {
                std::thread::sleep(HANGUP_PAUSE);
            }
        }
    }
}

/// The container's log, as the relay writes it.
struct Log {
    file: File,
    id: i64,
    /// Whether a write failed already (it is reported once).
    failed: bool,
}

impl Log {
    /// Appends `bytes`. A failure (a full disk) loses them, but the relay goes on reading: the
    /// container would block on a console nobody reads, and stop on one that is closed.
    fn write(&mut self, bytes: &[u8]) {
        if let Err(error) = self.file.write_all(bytes) {
            if !std::mem::replace(&mut self.failed, true) {
                tracing::warn!(id = self.id, %error, "cannot write the console to the log");
            }
        }
    }
}

/// Sleeps until the master has output or hangs up, or the init exits: (readable, hung up,
/// exited).
fn wait(master: BorrowedFd<'_>, exited: BorrowedFd<'_>) -> io::Result<(bool, bool, bool)> {
    let mut fds = [
        PollFd::from_borrowed_fd(master, PollFlags::IN),
        PollFd::from_borrowed_fd(exited, PollFlags::IN),
    ];
    poll_all(&mut fds, None)?;
    let output = fds[0].revents();
    Ok((
        output.contains(PollFlags::IN),
        output.intersects(PollFlags::HUP | PollFlags::ERR),
        !fds[1].revents().is_empty(),
    ))
}

/// Turns the terminal's line ends into the log file's `\n`: the terminal's output processing
/// makes `\r\n` of `\n`, and systemd writes `\r\n` itself, which becomes `\r\r\n`. A `\r` not
/// followed by `\n` (a line overwritten in place) is kept.
#[derive(Default)]
struct Lines {
    /// `\r`s that ended the last chunk: whether a `\n` follows them is not known yet.
    carriage_returns: usize,
}

impl Lines {
    fn convert(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + self.carriage_returns);
        for &byte in chunk {
            match byte {
                b'\r' => self.carriage_returns += 1,
                b'\n' => {
                    self.carriage_returns = 0;
                    out.push(byte);
                }
                _ => {
                    out.extend(std::iter::repeat_n(b'\r', self.carriage_returns));
                    self.carriage_returns = 0;
                    out.push(byte);
                }
            }
        }
        out
    }

    /// What is still held back at the end.
    fn finish(&mut self) -> Vec<u8> {
        vec![b'\r'; std::mem::take(&mut self.carriage_returns)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_become_newlines_across_chunks() {
        let mut lines = Lines::default();
        let mut out = lines.convert(b"one\r\ntwo\r");
        out.extend(lines.convert(b"\r\nthree\rfour\r"));
        out.extend(lines.convert(b"five\r\r"));
        out.extend(lines.convert(b"\nsix"));
        out.extend(lines.finish());
        assert_eq!(out, b"one\ntwo\nthree\rfour\rfive\nsix");
        let mut lines = Lines::default();
        let mut out = lines.convert(b"end\r");
        out.extend(lines.finish());
        assert_eq!(out, b"end\r");
    }
}
