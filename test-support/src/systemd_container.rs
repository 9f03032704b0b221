//! Looking into a running container whose init is systemd, from the host: commands run with
//! `nsenter` in every namespace of its init (the service has no exec API), the wait for the
//! boot to settle, and its console log without terminal colours.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::run_with_timeout;

/// How long one command run inside the container may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A container whose init is systemd.
pub struct SystemdContainer {
    /// The init, as the host sees it.
    pub pid: u32,
    /// The container's log (its console).
    pub log: PathBuf,
}

impl SystemdContainer {
    /// Runs `args` in all the namespaces of the init; (success, stdout and stderr).
    pub fn run_status(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid.to_string())
            .arg("-a")
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("SYSTEMD_COLORS", "0");
        run_with_timeout(&mut cmd, COMMAND_TIMEOUT)
    }

    /// Runs `args` inside and returns what they wrote, whether or not they succeeded.
    pub fn run(&self, args: &[&str]) -> String {
        self.run_status(args).1
    }

    /// Runs `args` inside and returns what they wrote; panics, with their output, on failure.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.run_status(args);
        assert!(ok, "{args:?} failed inside the container:\n{out}");
        out
    }

    /// Waits up to `timeout` until systemd has finished booting; its state then (`running`,
    /// `degraded`, ...).
    pub fn wait_until_booted(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, answer) = self.run_status(&["systemctl", "is-system-running", "--wait"]);
            let state = answer.trim().to_string();
            // Before systemd listens, systemctl cannot connect and says `offline`.
            let settled = !matches!(state.as_str(), "" | "offline" | "initializing" | "starting")
                && !state.contains("Failed to connect");
            if settled {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "systemd did not finish booting within {timeout:?} (last: {state:?})\n{}",
                self.console()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The container's log with terminal colours removed.
    pub fn console(&self) -> String {
        strip_ansi(&fs::read_to_string(&self.log).unwrap_or_default())
    }
}

/// Removes the escape sequences systemd colours its status lines with.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, up to the final byte (@ to ~).
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
