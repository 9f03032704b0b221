//! Looking into a running container whose init is systemd, from the host: commands run with
//! `nsenter` in every namespace of its init (the service has no exec API), the wait for the
//! boot to settle, and its console log without terminal colours.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{init_pid, overlay, run_with_timeout, squashfs_mount, str_of, Service};

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
    /// Creates container `name` on `svc`, running systemd from the squashfs `image` (the
    /// Debian image of [`crate::debian_systemd_image`]) on an overlay; the create's answer and
    /// the container. The image is linked (or copied) into the service's dir first, so that
    /// the fixture's leak checks see its loop device. The default namespaces (the reference's
    /// set) have no cgroup namespace, which systemd needs to see its own cgroup as the root:
    /// it is asked for.
    pub fn create(svc: &Service, name: &str, image: &Path) -> (Value, SystemdContainer) {
        let local_image = svc.dir().join(format!("{name}.squashfs"));
        if fs::hard_link(image, &local_image).is_err() {
            fs::copy(image, &local_image).expect("copy the image");
        }
        let created = svc.create(
            "container",
            &json!({
                "name": name,
                "command": "/lib/systemd/systemd",
                "systemd": true,
                "namespaces": ["cgroup", "ipc", "mnt", "pid", "uts"],
                "mount": overlay(vec![squashfs_mount(&local_image)]),
                "state": "running",
            }),
        );
        assert_eq!(created["state"], "running", "{created}");
        let log = PathBuf::from(str_of(&created, "/logfile"));
        let container = SystemdContainer {
            pid: init_pid(&log),
            log,
        };
        (created, container)
    }

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
