//! Running open-iscsi's `iscsiadm`: bounded in time, its output kept for the error, a CHAP
//! secret never shown.
//!
//! Children are waited for by pid (`std::process::Child`), and they stay in the service's
//! session, so the container reaper (which only reaps orphans from other sessions) never takes
//! their exit status.

use std::fmt;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::model::wire::Secret;

const ISCSIADM: &str = "iscsiadm";

/// iscsiadm's exit codes that this driver tells apart (open-iscsi's `include/iscsi_err.h`).
pub(super) mod code {
    /// A transport error (the connection broke during login).
    pub const TRANSPORT: i32 = 4;
    /// Generic login failure.
    pub const LOGIN: i32 = 5;
    /// The connection timer expired while connecting.
    pub const TRANSPORT_TIMEOUT: i32 = 8;
    /// An iSCSI PDU timed out (also: discovery could not connect).
    pub const PDU_TIMEOUT: i32 = 11;
    /// iscsid lacks the transport (`iscsi_tcp` not loaded in the kernel or iscsid).
    pub const TRANSPORT_NOT_FOUND: i32 = 12;
    /// Reading from or writing to iscsid failed.
    pub const ISCSID_COMM: i32 = 18;
    /// The target refused the login for good (unknown target name, not allowed).
    pub const FATAL_LOGIN: i32 = 19;
    /// iscsid is not running.
    pub const ISCSID_NOT_CONNECTED: i32 = 20;
    /// No record, session or target matched.
    pub const NO_OBJECTS: i32 = 21;
    /// The target refused the credentials.
    pub const AUTH_FAILED: i32 = 24;
}

/// One iscsiadm command line. A secret among its arguments is replaced by
/// [`Secret::REDACTED`] wherever the command or its output is shown.
#[derive(Clone, PartialEq)]
pub(super) struct Call {
    args: Vec<String>,
    secret: Option<Secret>,
}

impl Call {
    pub(super) fn new<S: AsRef<str>>(args: impl IntoIterator<Item = S>) -> Call {
        Call {
            args: args.into_iter().map(|a| a.as_ref().to_string()).collect(),
            secret: None,
        }
    }

    /// Appends `-n name -v value` for each setting (one `-o update` sets them all).
    pub(super) fn settings<'a>(
        mut self,
        settings: impl IntoIterator<Item = (&'a str, String)>,
    ) -> Call {
        for (name, value) in settings {
            self.args
                .extend(["-n".to_string(), name.to_string(), "-v".to_string(), value]);
        }
        self
    }

    /// Appends `-n name -v <secret>`; the secret is shown as [`Secret::REDACTED`].
    pub(super) fn secret_setting(mut self, name: &str, secret: &Secret) -> Call {
        self.args.extend([
            "-n".to_string(),
            name.to_string(),
            "-v".to_string(),
            secret.expose().to_string(),
        ]);
        self.secret = Some(secret.clone());
        self
    }

    /// The arguments as they go to the kernel's exec (the secret in clear).
    #[cfg(test)]
    pub(super) fn args(&self) -> &[String] {
        &self.args
    }

    /// `text` with the secret, if any, replaced.
    fn redact(&self, text: &str) -> String {
        match &self.secret {
            Some(secret) if !secret.expose().is_empty() => {
                text.replace(secret.expose(), Secret::REDACTED)
            }
            _ => text.to_string(),
        }
    }

    /// Runs it; fails if it does not exit 0 within `timeout` (it is then killed). Answers its
    /// standard output. Blocking.
    pub(super) fn run(&self, timeout: Duration) -> Result<String, Failure> {
        debug!(command = %self, "running iscsiadm");
        let mut child = Command::new(ISCSIADM)
            .args(&self.args)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A group of its own, so that nothing it does to its group reaches the service;
            // still the service's session (see the module documentation).
            .process_group(0)
            .spawn()
            .map_err(|err| Failure::NotInstalled(err.to_string()))?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = wait_bounded(&mut child, timeout);
        let (stdout, stderr) = (self.redact(&stdout.join()), self.redact(&stderr.join()));
        match status {
            None => Err(Failure::TimedOut {
                after: timeout,
                message: last_line(&stderr),
            }),
            Some(status) if status.success() => Ok(stdout),
            Some(status) => Err(Failure::Exit {
                code: status.code(),
                message: message(&stderr, &stdout),
            }),
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ISCSIADM)?;
        for arg in &self.args {
            write!(f, " {}", self.redact(arg))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Why an iscsiadm run failed.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Failure {
    /// It could not be started (open-iscsi is not installed).
    NotInstalled(String),
    /// It did not finish in time and was killed.
    TimedOut { after: Duration, message: String },
    /// It exited with `code` (`None`: killed by a signal).
    Exit { code: Option<i32>, message: String },
}

impl Failure {
    pub(super) fn code(&self) -> Option<i32> {
        match self {
            Failure::Exit { code, .. } => *code,
            _ => None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NotInstalled(err) => write!(f, "cannot run {ISCSIADM}: {err}"),
            Failure::TimedOut { after, message } if message.is_empty() => {
                write!(f, "no answer within {} s", after.as_secs())
            }
            Failure::TimedOut { after, message } => {
                write!(f, "no answer within {} s ({message})", after.as_secs())
            }
            Failure::Exit {
                code: Some(code),
                message,
            } => write!(f, "{message} (iscsiadm exit code {code})"),
            Failure::Exit {
                code: None,
                message,
            } => write!(f, "{message} (iscsiadm killed by a signal)"),
        }
    }
}

/// A thread reading a pipe to its end, so that a chatty child never blocks on a full pipe.
struct Drain(Option<mpsc::Receiver<String>>);

/// How long the output may still take once iscsiadm has exited: a process it started (as its
/// `iscsid.startup` command) may hold the pipe open for good.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

impl Drain {
    fn join(self) -> String {
        self.0
            .and_then(|output| output.recv_timeout(DRAIN_GRACE).ok())
            .unwrap_or_default()
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> Drain {
    Drain(pipe.map(|mut pipe| {
        let (send, output) = mpsc::channel();
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = send.send(String::from_utf8_lossy(&bytes).into_owned());
        });
        output
    }))
}

/// Waits for `child` until `timeout`; kills and reaps it then. `None` if it had to be killed.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// iscsiadm's own explanation: its `iscsiadm: ...` lines on stderr (each once: it repeats a
/// refused connection for every retry), else its last line.
fn message(stderr: &str, stdout: &str) -> String {
    let mut lines: Vec<&str> = Vec::new();
    for line in stderr
        .lines()
        .filter_map(|line| line.trim().strip_prefix("iscsiadm: "))
        .filter(|line| !line.starts_with("Could not log into all portals"))
    {
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    if !lines.is_empty() {
        return lines.join("; ");
    }
    let last = last_line(stderr);
    if last.is_empty() {
        last_line(stdout)
    } else {
        last
    }
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_name_value_pairs() {
        let call = Call::new(["-m", "node", "-o", "update"]).settings([
            ("node.session.cmds_max", "64".to_string()),
            ("node.session.queue_depth", "8".to_string()),
        ]);
        assert_eq!(
            call.args(),
            [
                "-m",
                "node",
                "-o",
                "update",
                "-n",
                "node.session.cmds_max",
                "-v",
                "64",
                "-n",
                "node.session.queue_depth",
                "-v",
                "8"
            ]
        );
    }

    #[test]
    fn a_secret_goes_to_exec_but_is_never_shown() {
        let secret = Secret::new("s3cretpassw0rd");
        let call = Call::new(["-m", "node"]).secret_setting("node.session.auth.password", &secret);
        assert_eq!(call.args().last().unwrap(), "s3cretpassw0rd");
        let shown = format!("{call} {call:?}");
        assert!(!shown.contains("s3cretpassw0rd"), "{shown}");
        assert!(shown.contains("-v <redacted>"), "{shown}");
        assert_eq!(
            call.redact("bad value s3cretpassw0rd here"),
            "bad value <redacted> here"
        );
    }

    #[test]
    fn the_message_is_iscsiadms_own_lines() {
        let stderr =
            "iscsiadm: Could not login to [iface: x, target: t, portal: 127.0.0.1,3999].\n\
                      iscsiadm: initiator reported error (8 - connection timed out)\n\
                      iscsiadm: Could not log into all portals\n";
        let stdout = "Logging in to [iface: x, target: t, portal: 127.0.0.1,3999]\n";
        assert_eq!(
            message(stderr, stdout),
            "Could not login to [iface: x, target: t, portal: 127.0.0.1,3999].; \
             initiator reported error (8 - connection timed out)"
        );
        assert_eq!(message("", "last\n\n"), "last");
        let retried = "iscsiadm: cannot make connection to 127.0.0.1: Connection refused\n\
                       iscsiadm: cannot make connection to 127.0.0.1: Connection refused\n\
                       iscsiadm: Could not perform SendTargets discovery: iSCSI PDU timed out\n";
        assert_eq!(
            message(retried, ""),
            "cannot make connection to 127.0.0.1: Connection refused; \
             Could not perform SendTargets discovery: iSCSI PDU timed out"
        );
    }

    #[test]
    fn a_command_that_does_not_finish_is_killed_in_time() {
        let mut child = Command::new("sleep").arg("10").spawn().unwrap();
        let start = Instant::now();
        assert_eq!(wait_bounded(&mut child, Duration::from_millis(100)), None);
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
