//! Starting the init process: `clone3` into new namespaces from a multi-threaded service.
//!
//! The child of a multi-threaded process may only make async-signal-safe calls until it executes
//! a program (another thread may have held the allocator's lock at the moment of the clone), so
//! everything it needs is prepared beforehand in a [`ChildPlan`]. The child waits for the service
//! to finish placing it (cgroups, user namespace maps), moves its descriptors to fixed numbers
//! and executes the init program (`imageapi-init`), which does the real work
//! single-threaded.

use std::ffi::{c_char, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use linux_raw_sys::general::{clone_args, CLONE_INTO_CGROUP, CLONE_PIDFD};
use nix::fcntl::OFlag;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
use nix::unistd::pipe2;

use crate::container::spec::{
    send_report, FAILED_EXIT_CODE, IMAGE_FD, INIT_MARKER, REPORT_FD, SPEC_FD,
};

/// Descriptors the child moves to fixed numbers are first copied at or above this number, so
/// that no `dup2` of the child overwrites a descriptor it has yet to move.
const FIRST_HIGH_FD: RawFd = 10;

/// The program name the init shows in `ps` until it executes the payload.
const INIT_PROCESS_NAME: &str = "imageapi-init";

/// A freshly cloned child: its pid in the service's pid namespace and a pidfd for it.
pub(crate) struct Child {
    /// The pid, as the service sees it.
    pub pid: i32,
    /// A pidfd, obtained atomically by `CLONE_PIDFD`.
    pub pidfd: OwnedFd,
}

/// The service's ends of the pipes shared with a child.
pub(crate) struct ParentEnds {
    /// Writing one byte lets the child go on; closing it without a byte makes the child exit.
    pub go: OwnedFd,
    /// The init's failure report, or end of file once the payload is executing.
    pub report: File,
}

/// Everything the child needs between the clone and the exec, prepared so that it allocates
/// nothing and takes no lock.
pub(crate) struct ChildPlan {
    program: CString,
    /// Every descriptor the child keeps (it closes the others first thing), in order.
    kept: [RawFd; 7],
    _argv: [CString; 2],
    argv_ptrs: [*const c_char; 3],
    envp: [*const c_char; 1],
    stdin: OwnedFd,
    log: OwnedFd,
    spec: OwnedFd,
    image: OwnedFd,
    report: OwnedFd,
    go: OwnedFd,
}

// SAFETY: the raw pointers point into the `CString`s the plan owns, whose heap buffers stay
// where they are when the plan moves (to the launcher thread); nothing else shares them.
unsafe impl Send for ChildPlan {}

impl ChildPlan {
    /// Prepares the descriptors and strings for a child that will execute `program` (the service
    /// binary, as a descriptor) as an init reading its spec from `spec`, with `log` as its stdout
    /// and stderr and `image` (a detached mount tree) to attach as its root.
    pub fn new(
        program: BorrowedFd<'_>,
        log: &File,
        spec: OwnedFd,
        image: OwnedFd,
    ) -> io::Result<(ChildPlan, ParentEnds)> {
        let (go_read, go_write) = pipe2(OFlag::O_CLOEXEC)?;
        let (report_read, report_write) = pipe2(OFlag::O_CLOEXEC)?;
        let argv = [
            CString::new(INIT_PROCESS_NAME).map_err(io::Error::other)?,
            CString::new(INIT_MARKER).map_err(io::Error::other)?,
        ];
        let argv_ptrs = [argv[0].as_ptr(), argv[1].as_ptr(), std::ptr::null()];
        let path = format!("/proc/self/fd/{}", program.as_raw_fd());
        let mut plan = ChildPlan {
            program: CString::new(path).map_err(io::Error::other)?,
            kept: [program.as_raw_fd(); 7],
            argv_ptrs,
            _argv: argv,
            envp: [std::ptr::null()],
            stdin: high_copy(File::open("/dev/null")?.as_fd())?,
            log: high_copy(log.as_fd())?,
            spec: high_copy(spec.as_fd())?,
            image: high_copy(image.as_fd())?,
            report: high_copy(report_write.as_fd())?,
            go: high_copy(go_read.as_fd())?,
        };
        let copies = [
            &plan.stdin,
            &plan.log,
            &plan.spec,
            &plan.image,
            &plan.report,
            &plan.go,
        ];
        for (kept, fd) in plan.kept[1..].iter_mut().zip(copies) {
            *kept = fd.as_raw_fd();
        }
        plan.kept.sort_unstable();
        let ends = ParentEnds {
            go: go_write,
            report: File::from(report_read),
        };
        Ok((plan, ends))
    }

    /// Clones the child with `flags` (namespaces; `CLONE_PIDFD` is added) and returns it. The
    /// child blocks until the service writes to [`ParentEnds::go`]. With `cgroup` (an open
    /// cgroup2 directory) the child is born in that cgroup (`CLONE_INTO_CGROUP`): no migration,
    /// which would cost a few milliseconds of RCU grace period in the kernel.
    pub fn spawn(self, flags: u64, cgroup: Option<BorrowedFd<'_>>) -> io::Result<Child> {
        // Block every signal around the clone: a handler of the service (signal-hook's, say)
        // must not run in the child, and the init unblocks them itself before the payload.
        let mut saved = SigSet::empty();
        pthread_sigmask(
            SigmaskHow::SIG_SETMASK,
            Some(&SigSet::all()),
            Some(&mut saved),
        )?;
        let mut pidfd: libc::c_int = -1;
        let into_cgroup = cgroup.map_or(0, |_| CLONE_INTO_CGROUP);
        // An open descriptor is never negative.
        let cgroup = cgroup.map_or(0, |fd| u64::from(fd.as_raw_fd().unsigned_abs()));
        let mut args = clone_args {
            flags: flags | u64::from(CLONE_PIDFD) | into_cgroup,
            pidfd: (&raw mut pidfd) as u64,
            child_tid: 0,
            parent_tid: 0,
            exit_signal: libc::SIGCHLD as u64,
            stack: 0,
            stack_size: 0,
            tls: 0,
            set_tid: 0,
            set_tid_size: 0,
            cgroup,
        };
        // SAFETY: `args` is a valid clone_args of the size passed. Without CLONE_VM and with no
        // stack the child gets a copy of this thread's memory and returns here like fork(2);
        // it then only runs `run_child`, which makes async-signal-safe calls and never returns.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &raw mut args,
                std::mem::size_of::<clone_args>(),
            )
        };
        if ret == 0 {
            self.run_child();
        }
        let clone_error = io::Error::last_os_error();
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&saved), None)?;
        if ret < 0 {
            return Err(clone_error);
        }
        // SAFETY: on success the kernel stored a new pidfd, owned by nobody else, in `pidfd`.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        Ok(Child {
            pid: i32::try_from(ret).map_err(io::Error::other)?,
            pidfd,
        })
    }

    /// The child's side: wait for the go, set up descriptors, execute the init program.
    fn run_child(&self) -> ! {
        // A service killed before it lets the child go must not leave it waiting forever (other
        // children may hold this child's go pipe). So it dies with the thread that cloned it
        // (the launcher, which lives as long as the service), until the init, set up, clears
        // this (init.rs). (Its parent lives in another pid namespace, so getppid() cannot tell
        // whether the service died in the microseconds before this call; the cgroup clean-up
        // at the next start covers that.)
        // SAFETY: prctl(2) is async-signal-safe.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            // SAFETY: _exit(2) is async-signal-safe and skips the service's atexit handlers.
            unsafe { libc::_exit(FAILED_EXIT_CODE) };
        }
        self.close_all_but_kept();
        let mut byte = 0u8;
        loop {
            // SAFETY: reads one byte into a valid local; read(2) is async-signal-safe.
            let n = unsafe { libc::read(self.go.as_raw_fd(), (&raw mut byte).cast(), 1) };
            if n == 1 {
                break;
            }
            if n < 0 && last_errno() == libc::EINTR {
                continue;
            }
            // The service gave up on this child and closed its end.
            // SAFETY: _exit(2) is async-signal-safe and skips the service's atexit handlers.
            unsafe { libc::_exit(FAILED_EXIT_CODE) };
        }
        let moves = [
            (&self.stdin, libc::STDIN_FILENO, "redirect stdin"),
            (&self.log, libc::STDOUT_FILENO, "redirect stdout to the log"),
            (&self.log, libc::STDERR_FILENO, "redirect stderr to the log"),
            (&self.spec, SPEC_FD, "pass the spec"),
            (&self.image, IMAGE_FD, "pass the image"),
            (&self.report, REPORT_FD, "pass the report pipe"),
        ];
        for (from, to, step) in moves {
            // SAFETY: dup2(2) is async-signal-safe; `from` is open and at or above
            // FIRST_HIGH_FD, so it is never one of the targets. The copy is not close-on-exec.
            if unsafe { libc::dup2(from.as_raw_fd(), to) } < 0 {
                self.fail(step);
            }
        }
        // SAFETY: the program path, argv and envp are NUL-terminated strings and
        // NULL-terminated arrays that live in this (copied) memory; execve(2) is
        // async-signal-safe.
        unsafe {
            libc::execve(
                self.program.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.envp.as_ptr(),
            )
        };
        self.fail("execute the init program")
    }

    /// Closes every descriptor the child does not need, at once rather than at the exec: while
    /// it waits, a copy of the service's listening socket would keep a restarted service from
    /// taking the socket over, should the service die meanwhile.
    fn close_all_but_kept(&self) {
        let mut first: u32 = 0;
        for &fd in &self.kept {
            let fd = fd.unsigned_abs();
            if fd > first {
                // SAFETY: close_range(2) is async-signal-safe; the range holds no kept descriptor.
                unsafe { libc::close_range(first, fd - 1, 0) };
            }
            first = fd + 1;
        }
        // SAFETY: as above.
        unsafe { libc::close_range(first, u32::MAX, 0) };
    }

    /// Reports the current errno for `step` to the service and exits.
    fn fail(&self, step: &str) -> ! {
        send_report(self.report.as_raw_fd(), false, last_errno(), step);
        // SAFETY: as in `run_child`.
        unsafe { libc::_exit(FAILED_EXIT_CODE) }
    }
}

/// A close-on-exec copy of `fd` at or above [`FIRST_HIGH_FD`].
fn high_copy(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, FIRST_HIGH_FD)?)
}

/// The calling thread's errno, read without allocating.
fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::process::{waitid, Pid, WaitId, WaitIdOptions};

    /// The descriptors process `pid` holds, by the inode they refer to (`socket:[N]`, ...).
    fn open_files(pid: i32) -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|entry| std::fs::read_link(entry.path()).ok())
            .map(|target| target.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_waiting_child_holds_only_its_own_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("api.sock")).unwrap();
        let socket = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
        let program = File::open("/bin/true").unwrap();
        let log = File::create(dir.path().join("log")).unwrap();
        let spec = File::open("/dev/null").unwrap();
        let image = File::open(dir.path()).unwrap();
        let (plan, ends) =
            ChildPlan::new(program.as_fd(), &log, spec.into(), image.into()).unwrap();
        let child = plan.spawn(0, None).unwrap();

        // The child closes the rest right after the clone, then waits for the go.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let held = loop {
            let held = open_files(child.pid);
            if held.len() <= 7 || std::time::Instant::now() > deadline {
                break held;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(held.len(), 7, "{held:?}");
        assert!(
            !held.contains(&socket.to_string_lossy().into_owned()),
            "the child holds the listening socket: {held:?}"
        );

        // No go: the child exits, and is reaped here.
        drop(ends);
        let pid = Pid::from_raw(child.pid).unwrap();
        waitid(WaitId::Pid(pid), WaitIdOptions::EXITED).unwrap();
    }
}
