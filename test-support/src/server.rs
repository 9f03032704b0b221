//! `imageapi-server` as a child process: its command line with private dirs, waiting until it
//! answers, stopping it with SIGTERM, and what `/proc` says about it.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::{try_http_request, Transport, BASE};

/// File name of the service binary.
pub const SERVER_BIN: &str = "imageapi-server";

/// `--scheme unix --socket-path <socket> --mount-dir <mounts> --log-dir <logs> --state-dir
/// <state>`: a service on a unix socket with private dirs.
pub fn private_dirs_args(
    socket: &Path,
    mount_dir: &Path,
    log_dir: &Path,
    state_dir: &Path,
) -> Vec<OsString> {
    vec![
        "--scheme".into(),
        "unix".into(),
        "--socket-path".into(),
        socket.into(),
        "--mount-dir".into(),
        mount_dir.into(),
        "--log-dir".into(),
        log_dir.into(),
        "--state-dir".into(),
        state_dir.into(),
    ]
}

/// [`SERVER_BIN`] in the directory of the running executable (`target/<profile>/` for a binary
/// of the workspace).
pub fn server_next_to_current_exe() -> io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name(SERVER_BIN))
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Why [`ServerProcess::wait_ready`] gave up.
#[derive(Debug)]
pub enum NotReady {
    /// The service exited first.
    Exited(ExitStatus),
    /// It did not answer `GET /attach` with 200 in time; what it last said, or why not.
    TimedOut(String),
    /// The caller's check said stop.
    Stopped(String),
}

/// A running service process. Nothing happens on drop: the owner stops it.
pub struct ServerProcess {
    child: Child,
    exit: Option<ExitStatus>,
}

impl ServerProcess {
    pub fn spawn(cmd: &mut Command) -> io::Result<ServerProcess> {
        Ok(ServerProcess {
            child: cmd.spawn()?,
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it exited, if it was seen to exit.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// How it exited, reaping it if it just did; `None` while it runs.
    pub fn try_exit(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait()?;
        }
        Ok(self.exit)
    }

    /// SIGKILL (a crash) and reap.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_exit()? {
            return Ok(status);
        }
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Polls every `poll` until `GET /attach` on `socket` answers 200, for at most `timeout`.
    /// `check` runs first in every round and stops the wait when it fails.
    pub fn wait_ready(
        &mut self,
        socket: &Path,
        timeout: Duration,
        poll: Duration,
        mut check: impl FnMut() -> Result<(), String>,
    ) -> Result<(), NotReady> {
        let deadline = Instant::now() + timeout;
        let transport = Transport::Unix(socket.to_owned());
        let mut last = String::from("socket not there yet");
        loop {
            check().map_err(NotReady::Stopped)?;
            match self.try_exit() {
                Ok(Some(status)) => return Err(NotReady::Exited(status)),
                Ok(None) => {}
                Err(e) => return Err(NotReady::Stopped(format!("waiting for the service: {e}"))),
            }
            if UnixStream::connect(socket).is_ok() {
                match try_http_request(&transport, "GET", &format!("{BASE}/attach"), None, None) {
                    Ok(resp) if resp.status == 200 => return Ok(()),
                    Ok(resp) => last = resp.to_string(),
                    Err(e) => last = e,
                }
            }
            if Instant::now() > deadline {
                return Err(NotReady::TimedOut(last));
            }
            thread::sleep(poll);
        }
    }

    /// SIGTERM, then waits for the exit; SIGKILL and an error after `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        if let Some(status) = self.try_exit().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid; the child is not reaped yet (try_exit above),
        // so the pid cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let status = self.kill().map_err(|e| e.to_string())?;
                return Err(format!(
                    "{SERVER_BIN} did not exit within {timeout:?} of SIGTERM (killed: {status})"
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its resident memory (VmRSS) in kB.
    pub fn rss_kb(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// Its direct children (container inits and anything not reaped yet).
    pub fn children(&self) -> usize {
        let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
            .map(|c| c.split_whitespace().count())
            .sum()
    }
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
