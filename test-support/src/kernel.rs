//! Kernel state: mounts, loop devices and container cgroups, as the kernel lists them; checks
//! that none is left under a directory, and a last-resort release of what is.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// `errno` of a write to a read-only filesystem.
pub const EROFS: i32 = 30;
/// How long kernel resources may take to disappear after the service released them.
pub const RELEASE_GRACE: Duration = Duration::from_secs(3);

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub id: u64,
    pub parent: u64,
    pub root: String,
    pub mount_point: String,
    /// Per-mount options, e.g. `ro`, `nodev`, `noexec`, `relatime`.
    pub options: Vec<String>,
    pub fs_type: String,
    pub source: String,
    pub super_options: Vec<String>,
}

impl MountEntry {
    pub fn has_option(&self, opt: &str) -> bool {
        self.options.iter().any(|o| o == opt)
    }
}

fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount table of this process's (and the service's) mount namespace.
pub fn mountinfo() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if l.len() < 6 || r.len() < 3 {
                return None;
            }
            Some(MountEntry {
                id: l[0].parse().ok()?,
                parent: l[1].parse().ok()?,
                root: unescape_mountinfo(l[3]),
                mount_point: unescape_mountinfo(l[4]),
                options: l[5].split(',').map(str::to_string).collect(),
                fs_type: r[0].to_string(),
                source: unescape_mountinfo(r[1]),
                super_options: r[2].split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

fn normalize(path: &str) -> &str {
    if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    }
}

/// The topmost mount at exactly `mount_point`, if any.
pub fn mount_entry(mount_point: &str) -> Option<MountEntry> {
    let mp = normalize(mount_point);
    mountinfo().into_iter().rev().find(|m| m.mount_point == mp)
}

pub fn is_mounted(mount_point: &str) -> bool {
    mount_entry(mount_point).is_some()
}

/// Where cgroup2 is mounted: /sys/fs/cgroup/unified on a hybrid host, /sys/fs/cgroup on one
/// with cgroup2 alone.
pub fn cgroup2_root() -> PathBuf {
    mountinfo()
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| PathBuf::from(m.mount_point))
        .expect("no cgroup2 mount on this host")
}

/// Mount points at or under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let prefix = format!("{}/", normalize(&dir));
    let mut points: Vec<String> = mountinfo()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|mp| *mp == dir || mp.starts_with(&prefix))
        .collect();
    points.dedup();
    points
}

fn loop_sys(device: &str) -> PathBuf {
    let name = device.rsplit('/').next().unwrap_or(device);
    Path::new("/sys/block").join(name).join("loop")
}

/// The backing file of a bound loop device (`/dev/loopN` or `loopN`), `None` when unbound.
pub fn loop_backing_file(device: &str) -> Option<String> {
    fs::read_to_string(loop_sys(device).join("backing_file"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
        .filter(|s| !s.is_empty())
}

/// The partscan flag of a bound loop device.
pub fn loop_partscan(device: &str) -> Option<bool> {
    fs::read_to_string(loop_sys(device).join("partscan"))
        .ok()
        .map(|s| s.trim() == "1")
}

/// Every bound loop device: (`/dev/loopN`, backing file).
pub fn loop_devices() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Some(backing) = loop_backing_file(&name) {
            out.push((format!("/dev/{name}"), backing));
        }
    }
    out.sort();
    out
}

/// Loop devices whose backing file lies under `dir`.
pub fn loops_under(dir: &Path) -> Vec<(String, String)> {
    let prefix = format!("{}/", dir.to_string_lossy().trim_end_matches('/'));
    loop_devices()
        .into_iter()
        .filter(|(_, backing)| backing.starts_with(&prefix))
        .collect()
}

/// Kernel resources under a directory: mounts and `(loop device, backing file)`.
#[derive(Debug, Clone, Default)]
pub struct Leaks {
    pub mounts: Vec<String>,
    pub loops: Vec<(String, String)>,
}

impl Leaks {
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty() && self.loops.is_empty()
    }
}

impl std::fmt::Display for Leaks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loops: Vec<String> = self
            .loops
            .iter()
            .map(|(device, backing)| format!("{device} ({backing})"))
            .collect();
        write!(
            f,
            "mounts [{}], loop devices [{}]",
            self.mounts.join(", "),
            loops.join(", ")
        )
    }
}

/// Mounts at or under `dir` and loop devices backed by a file in it.
pub fn leaks_under(dir: &Path) -> Leaks {
    Leaks {
        mounts: mounts_under(dir),
        loops: loops_under(dir),
    }
}

/// [`leaks_under`] but for a mount on `dir` itself.
pub fn leaks_below(dir: &Path) -> Leaks {
    let top = dir.to_string_lossy();
    let mut leaks = leaks_under(dir);
    leaks.mounts.retain(|m| normalize(m) != normalize(&top));
    leaks
}

/// Mount points deepest first.
fn deepest_first(mut points: Vec<String>) -> Vec<String> {
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points
}

/// Asserts that no mount lies under `dir` and no loop device is backed by a file in it
/// (allowing [`RELEASE_GRACE`] for the kernel to finish releasing).
pub fn assert_no_leaks(dir: &Path) {
    let mut leaks = leaks_under(dir);
    if !leaks.is_empty() {
        wait_for(RELEASE_GRACE, || {
            leaks = leaks_under(dir);
            leaks.is_empty()
        });
    }
    assert!(leaks.is_empty(), "kernel resources left: {leaks}");
}

/// Kills what still runs in the container cgroups of the service whose state dir is under
/// `dir` (a test that failed before deleting its containers), and removes those cgroups.
fn kill_containers_of(dir: &Path) {
    let Ok(store) = fs::read(dir.join("state/state.json")) else {
        return;
    };
    let Some(instance) = serde_json::from_slice::<Value>(&store)
        .ok()
        .and_then(|v| v["instance"].as_str().map(str::to_string))
    else {
        return;
    };
    let prefix = format!("{instance}-");
    for cgroup in container_cgroups() {
        if !cgroup
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        {
            continue;
        }
        let _ = fs::write(cgroup.join("freezer.state"), "THAWED");
        let _ = fs::write(cgroup.join("cgroup.kill"), "1");
        let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|p| p.parse::<libc::pid_t>().ok()) {
            // SAFETY: kill(2) on a pid read from the test's own container cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        wait_for(Duration::from_secs(3), || {
            remove_cgroup_tree(&cgroup);
            !cgroup.exists()
        });
    }
}

/// Every container cgroup directory (`<hierarchy>/imageapi/*`) on the host, in every cgroup
/// and cgroup2 hierarchy mounted.
pub fn container_cgroups() -> BTreeSet<PathBuf> {
    mountinfo()
        .into_iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
        .filter_map(|m| fs::read_dir(Path::new(&m.mount_point).join("imageapi")).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .filter(|path| path.is_dir())
        .collect()
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Last resort: releases every mount under `dir` and every loop device backed by a file in it.
///
/// Mounts are unmounted deepest first and loop devices detached in rounds, so that a loop device
/// backed by a file inside a mount (loopback base mount) is detached before that mount, while its
/// backing path still names a file under `dir`. Whatever is still busy after that is unmounted
/// lazily. Container inits of the service whose state dir is `dir/state` are killed first.
pub fn force_cleanup(dir: &Path) {
    kill_containers_of(dir);
    release(dir, leaks_under);
}

/// Like [`force_cleanup`] for what lies strictly below `dir` (a mount on `dir` itself stays),
/// without looking for containers.
pub fn release_below(dir: &Path) {
    release(dir, leaks_below);
}

fn release(dir: &Path, leaks_of: fn(&Path) -> Leaks) {
    let umount = |point: &str, flags: libc::c_int| -> std::io::Result<()> {
        let c = std::ffi::CString::new(point).unwrap();
        // SAFETY: umount2 with a valid NUL-terminated path; no memory is shared.
        let rc = unsafe { libc::umount2(c.as_ptr(), flags) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    for _round in 0..10 {
        let leaks = leaks_of(dir);
        if leaks.is_empty() {
            return;
        }
        for point in &deepest_first(leaks.mounts) {
            let _ = umount(point, 0);
        }
        for (device, _) in leaks_of(dir).loops {
            // Detaches an unused device now; a busy one is marked to detach on its last close.
            let _ = Command::new("losetup").arg("-d").arg(&device).output();
        }
        if leaks_of(dir).is_empty() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    for point in deepest_first(leaks_of(dir).mounts) {
        if let Err(e) = umount(&point, libc::MNT_DETACH) {
            eprintln!("cleanup: umount {point}: {e}");
        }
    }
    thread::sleep(Duration::from_millis(200));
    for (device, backing) in leaks_of(dir).loops {
        let out = Command::new("losetup").arg("-d").arg(&device).output();
        if let Ok(out) = out {
            if !out.status.success() {
                eprintln!(
                    "cleanup: losetup -d {device} ({backing}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// Polls `f` every 50 ms until it is true or `timeout` passed; returns its last value.
pub fn wait_for(timeout: Duration, f: impl FnMut() -> bool) -> bool {
    wait_for_every(timeout, Duration::from_millis(50), f)
}

/// Polls `f` every `poll` until it is true or `timeout` passed; returns its last value.
pub fn wait_for_every(timeout: Duration, poll: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(poll);
    }
}

/// Asserts that `mount_point` is not mounted (allowing [`RELEASE_GRACE`]).
pub fn assert_unmounted(mount_point: &str) {
    assert!(
        wait_for(RELEASE_GRACE, || !is_mounted(mount_point)),
        "{mount_point} is still mounted: {:?}",
        mount_entry(mount_point)
    );
}

/// Asserts that `device` is no longer bound (allowing [`RELEASE_GRACE`]), or bound to a file
/// other than `backing` (the device number may have been reused by another test).
pub fn assert_detached(device: &str, backing: &Path) {
    let backing = backing.to_string_lossy().into_owned();
    assert!(
        wait_for(RELEASE_GRACE, || loop_backing_file(device).as_deref()
            != Some(backing.as_str())),
        "{device} is still bound to {backing}"
    );
}
