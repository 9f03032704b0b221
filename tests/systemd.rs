//! End-to-end test of a `systemd: true` container: a real Debian bookworm image with systemd as
//! its init boots to `running` with no failed unit, keeps to its own cgroups, and shuts down
//! cleanly on `PATCH state=exited`.
//!
//! The image comes from `test_support::debian_systemd_image`: built once with debootstrap and
//! kept as `target/test-images/debian-bookworm-systemd-v1.squashfs` for later runs. The test
//! fails, rather than skips, when debootstrap is missing or cannot download.
//!
//! There is no exec API: the test looks into the container from the host with `nsenter` into the
//! namespaces of its init, whose pid the service writes into the container's log.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// How long systemd may take to finish booting.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// A clean shutdown takes about a second; the service would kill systemd after 30 s.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(15);

#[test]
fn debian_with_systemd_boots_keeps_to_its_cgroups_and_shuts_down_cleanly() {
    let started = Instant::now();
    let image = debian_systemd_image(&test_images_dir());
    let built = started.elapsed();
    println!("image {} ready after {built:.1?}", image.display());

    let hierarchies = Hierarchies::find();
    let host_before = hierarchies.snapshot();

    let svc = Service::start();
    let booting = Instant::now();
    let (created, container) = SystemdContainer::create(&svc, "deb", &image);
    assert_eq!(created["stop_signal"], "SIGRTMIN+3", "{created}");
    let id = id_of(&created);
    let pid = container.pid;

    // Boots to `running`: every unit started, none failed.
    let state = container.wait_until_booted(BOOT_TIMEOUT);
    let boot_time = booting.elapsed();
    if state != "running" {
        panic!(
            "systemd reports {state:?}, not \"running\"\nfailed units:\n{}\njournal:\n{}\nconsole:\n{}",
            container.run(&["systemctl", "--failed", "--no-pager", "--full"]),
            container.run(&["journalctl", "-b", "--no-pager", "-p", "warning"]),
            container.console()
        );
    }
    println!("systemd reached running {boot_time:.1?} after the create");
    let failed = container.run(&[
        "systemctl",
        "list-units",
        "--failed",
        "--plain",
        "--no-legend",
    ]);
    assert_eq!(failed.trim(), "", "failed units");

    // It knows it runs in a container, under its own name.
    let virt = container.run(&["systemd-detect-virt", "--container"]);
    assert_eq!(virt.trim(), "container-other", "systemd-detect-virt");
    let marker = container.run(&["cat", "/run/systemd/container"]);
    assert_eq!(marker.trim(), "imageapi", "/run/systemd/container");
    assert_eq!(container.run(&["hostname"]).trim(), "deb");

    // Its own cgroup is the root of what it sees, through a cgroup namespace...
    let inside = container.run(&["cat", "/proc/1/cgroup"]);
    assert!(
        inside.lines().any(|line| line == "0::/init.scope"),
        "{inside}"
    );
    assert!(!inside.contains("imageapi"), "{inside}");
    // ...while from the host it lives in the container's cgroup, below the service's
    // `imageapi` directory (named after the container's id), the same in every hierarchy.
    let outside = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let own = outside
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .and_then(|path| path.strip_suffix("/init.scope"))
        .unwrap_or_else(|| panic!("systemd is not in an init.scope cgroup: {outside}"))
        .to_string();
    let name = own.strip_prefix("/imageapi/").unwrap_or_default();
    assert!(
        !name.contains('/') && name.ends_with(&id.to_string()),
        "{own} is not container {id}'s cgroup"
    );
    if hierarchies.systemd.is_some() {
        assert!(
            outside.contains(&format!(":name=systemd:{own}/init.scope\n")),
            "{outside}"
        );
    }
    let container_dirs = hierarchies.container_dirs(&own);

    // It got only its own cgroup hierarchies, each rooted at its cgroup, in a read-only tmpfs:
    // it could mount no other.
    let mounts = container.run(&["cat", "/proc/self/mountinfo"]);
    let cgroup_mounts: Vec<(String, String, String, String)> = mounts
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let fs_type = right.split(' ').next()?;
            let point = left[4];
            (point == "/sys/fs/cgroup" || point.starts_with("/sys/fs/cgroup/")).then(|| {
                (
                    point.to_string(),
                    fs_type.to_string(),
                    left[3].to_string(),
                    left[5].to_string(),
                )
            })
        })
        .collect();
    let points: Vec<&str> = cgroup_mounts.iter().map(|m| m.0.as_str()).collect();
    // On a host with cgroup2 alone, its own cgroup2 cgroup is /sys/fs/cgroup (unified mode).
    let mut expected = if hierarchies.unified_only() {
        vec!["/sys/fs/cgroup"]
    } else {
        vec!["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
    };
    if hierarchies.systemd.is_some() {
        expected.push("/sys/fs/cgroup/systemd");
    }
    let mut sorted = points.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "{mounts}");
    for (point, fs_type, root, options) in &cgroup_mounts {
        if fs_type == "tmpfs" {
            assert!(options.split(',').any(|o| o == "ro"), "{point}: {options}");
        } else {
            assert_eq!(root, "/", "{point} is not rooted at the container's cgroup");
        }
    }

    // /proc/sys is read-only. The probe is harmless even if it were not: the host name belongs
    // to the container's own UTS namespace.
    let probe = container.run_status(&["sh", "-c", "echo deb > /proc/sys/kernel/hostname"]);
    assert!(!probe.0, "/proc/sys is writable: {}", probe.1);
    assert!(probe.1.contains("Read-only file system"), "{}", probe.1);

    // Nothing of it outside its own cgroups on the host while it runs.
    let host_running = hierarchies.snapshot();
    assert_eq!(host_running, host_before, "the host's cgroup trees changed");
    for dir in &container_dirs {
        assert!(dir.is_dir(), "{} missing", dir.display());
        let units = dir.join("system.slice");
        assert!(
            units.is_dir(),
            "systemd's units are not in {}",
            dir.display()
        );
    }

    // The console is relayed into the log.
    let console = container.console();
    assert!(
        console.contains("Welcome to Debian GNU/Linux 12 (bookworm)!"),
        "{console}"
    );

    // A clean shutdown on SIGRTMIN+3, well before the 30 s after which the service kills.
    let stopping = Instant::now();
    let stop = svc.request("PATCH", "/container?name=deb&state=exited", None);
    assert_eq!(stop.status, 200, "{stop}");
    assert_eq!(stop.json()["state"], "stopping", "{stop}");
    let exited = wait_for(SHUTDOWN_LIMIT, || {
        svc.get("/container?name=deb").json()[0]["state"] == "exited"
    });
    let shutdown_time = stopping.elapsed();
    assert!(
        exited,
        "not exited {SHUTDOWN_LIMIT:?} after the stop:\n{}",
        container.console()
    );
    println!("exited {shutdown_time:.1?} after the stop");
    let after = svc.get_one("container", id);
    // In a pid namespace, the kernel ends an init that halts with SIGINT (pid_namespaces(7)).
    let code = after["exit_code"].as_i64();
    assert!(
        matches!(code, Some(0 | 130)),
        "exit code {code:?}\n{}",
        container.console()
    );
    // The relay may still be copying the last lines when the exit is reported.
    let shutdown_lines = [
        "Reached target shutdown.target - System Shutdown.",
        "Sending SIGTERM to remaining processes...",
        "Halting system.",
    ];
    let mut log = String::new();
    wait_for(RELEASE_GRACE, || {
        log = container.console();
        shutdown_lines.iter().all(|line| log.contains(line))
    });
    for line in shutdown_lines {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
    assert!(!log.contains("stop timed out"), "{log}");
    let relays = wait_for(RELEASE_GRACE, || no_thread_named(svc.pid(), "console-"));
    assert!(relays, "the console relay thread is still running");

    // Nothing of it left in the host's cgroup trees.
    let deleted = svc.delete("/container?name=deb");
    assert_eq!(deleted.status, 200, "{deleted}");
    for dir in hierarchies.all_dirs(&own) {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    // The service's own `imageapi` directory in each hierarchy went with its last container
    // (the systemd hierarchy's only ever held this one). Other services may share it: it may
    // stay only while it holds some cgroup, and one that is empty a moment may be another's
    // in the making, so it is looked at again before it counts as left behind.
    for parent in hierarchies.parent_dirs() {
        let gone_or_used = wait_for(Duration::from_secs(2), || {
            fs::read_dir(&parent).map_or(true, |entries| {
                entries
                    .flatten()
                    .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            })
        });
        assert!(gone_or_used, "{} left behind empty", parent.display());
    }
    assert_eq!(
        hierarchies.snapshot(),
        host_before,
        "the host's cgroup trees changed"
    );
    assert!(
        !service_has_ptys(svc.pid()),
        "the service still holds the console's pseudo-terminal"
    );
    svc.assert_empty();
    println!(
        "total {:.1?} (image {built:.1?}, boot {boot_time:.1?}, shutdown {shutdown_time:.1?})",
        started.elapsed()
    );
}

/// Whether no thread of process `pid` has a name starting with `prefix`.
fn no_thread_named(pid: u32, prefix: &str) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    !tasks.flatten().any(|task| {
        fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.starts_with(prefix))
    })
}

/// Whether process `pid` holds a pseudo-terminal (master or slave) open.
fn service_has_ptys(pid: u32) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy().into_owned();
            target == "/dev/ptmx" || target.starts_with("/dev/pts/")
        })
    })
}

// ---------------------------------------------------------------------------------------------
// The host's cgroup trees
// ---------------------------------------------------------------------------------------------

/// The host's cgroup mounts: cgroup2, and the v1 hierarchies by their mount points.
struct Hierarchies {
    unified: PathBuf,
    systemd: Option<PathBuf>,
    v1: Vec<PathBuf>,
}

impl Hierarchies {
    fn find() -> Hierarchies {
        let mut unified = None;
        let mut systemd = None;
        let mut v1 = Vec::new();
        for entry in mountinfo() {
            match entry.fs_type.as_str() {
                "cgroup2" if unified.is_none() => unified = Some(PathBuf::from(&entry.mount_point)),
                "cgroup" => {
                    let point = PathBuf::from(&entry.mount_point);
                    if entry.super_options.iter().any(|o| o == "name=systemd") {
                        systemd.get_or_insert(point.clone());
                    }
                    v1.push(point);
                }
                _ => {}
            }
        }
        Hierarchies {
            unified: unified.expect("no cgroup2 mount on this host"),
            systemd,
            v1,
        }
    }

    /// Whether the host has cgroup2 alone, on /sys/fs/cgroup (tests/run.sh runs this test that
    /// way too).
    fn unified_only(&self) -> bool {
        self.systemd.is_none() && self.unified == Path::new("/sys/fs/cgroup")
    }

    /// The container's cgroup `own` (a path below a hierarchy's root) in the hierarchies a
    /// systemd container is put in.
    fn container_dirs(&self, own: &str) -> Vec<PathBuf> {
        let own = own.trim_start_matches('/');
        let mut dirs = vec![self.unified.join(own)];
        dirs.extend(self.systemd.iter().map(|d| d.join(own)));
        dirs
    }

    /// The `imageapi` directory (the containers' parent) of every hierarchy.
    fn parent_dirs(&self) -> Vec<PathBuf> {
        std::iter::once(&self.unified)
            .chain(&self.v1)
            .map(|root| root.join("imageapi"))
            .collect()
    }

    /// Where the container's cgroup `own` would be in any hierarchy of the host (the v1
    /// freezer, say, when cgroup2 cannot freeze).
    fn all_dirs(&self, own: &str) -> Vec<PathBuf> {
        let own = own.trim_start_matches('/');
        std::iter::once(&self.unified)
            .chain(&self.v1)
            .map(|root| root.join(own))
            .collect()
    }

    /// What a container must not change: the top level of every hierarchy (where systemd
    /// would put its slices without a cgroup namespace) and the kernel's list of hierarchies
    /// (where its own v1 mounts would take controllers from cgroup2).
    fn snapshot(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for root in std::iter::once(&self.unified).chain(&self.v1) {
            let Ok(entries) = fs::read_dir(root) else {
                continue;
            };
            for entry in entries.flatten() {
                // The containers' own parent: checked on its own, and other services may make it.
                if entry.file_name() == "imageapi" {
                    continue;
                }
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    lines.push(entry.path().display().to_string());
                }
            }
        }
        let controllers = fs::read_to_string("/proc/cgroups").unwrap_or_default();
        for line in controllers.lines().filter(|l| !l.starts_with('#')) {
            // name, hierarchy, number of cgroups (which changes with any cgroup), enabled.
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [name, hierarchy, _, enabled] = fields[..] {
                lines.push(format!(
                    "controller {name} hierarchy {hierarchy} enabled {enabled}"
                ));
            }
        }
        lines.sort();
        lines
    }
}

// ---------------------------------------------------------------------------------------------
// The image
// ---------------------------------------------------------------------------------------------
