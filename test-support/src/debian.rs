//! The Debian bookworm image with systemd that the systemd tests boot (the host suite's
//! `tests/systemd.rs` and the guest suite's Kraken request on rbd): built with debootstrap the
//! first time (about a minute, from deb.debian.org) and kept in the test image cache for later
//! runs. Building fails, rather than skips, when debootstrap is missing or cannot download.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{force_cleanup, mounts_under, run, run_with_timeout};

/// Bump when the image recipe changes: a new name makes the cache build anew.
pub const IMAGE_NAME: &str = "debian-bookworm-systemd-v1";
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// How long debootstrap may take (it downloads about 60 MB).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The image's path in the cache `dir` (e.g. `target/test-images`), built there first if it is
/// not yet. Cache users take turns on a lock file, so parallel tests build it once.
pub fn debian_systemd_image(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).expect("create target/test-images");
    let image = dir.join(format!("{IMAGE_NAME}.squashfs"));
    let lock = File::create(dir.join(format!("{IMAGE_NAME}.lock"))).expect("lock file");
    // SAFETY: flock(2) on a descriptor owned by `lock` for the whole call.
    let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        locked,
        0,
        "lock the image cache: {}",
        std::io::Error::last_os_error()
    );
    if !image.exists() {
        build_image(dir, &image);
    }
    // The lock goes with `lock`.
    image
}

/// Removes a build tree, after unmounting anything an interrupted debootstrap left in it.
fn remove_build(build: &Path) {
    if !build.exists() {
        return;
    }
    force_cleanup(build);
    let left = mounts_under(build);
    assert!(left.is_empty(), "cannot unmount {left:?}");
    fs::remove_dir_all(build).unwrap_or_else(|e| panic!("remove {}: {e}", build.display()));
}

/// Removes the build tree when dropped, also when the build fails.
struct BuildTree(PathBuf);

impl Drop for BuildTree {
    fn drop(&mut self) {
        remove_build(&self.0);
    }
}

fn build_image(dir: &Path, image: &Path) {
    let started = Instant::now();
    let debootstrap = ["/usr/sbin/debootstrap", "/sbin/debootstrap"]
        .into_iter()
        .map(Path::new)
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "debootstrap is not installed: the systemd test builds its Debian image with it \
                 (apt-get install debootstrap)"
            )
        });
    let build = dir.join(format!("{IMAGE_NAME}.build"));
    remove_build(&build);
    let tree = BuildTree(build.clone());
    let log = dir.join(format!("{IMAGE_NAME}.debootstrap.log"));
    println!(
        "building {} with debootstrap (log: {})",
        image.display(),
        log.display()
    );
    let mut cmd = Command::new(debootstrap);
    cmd.args([
        "--variant=minbase",
        "--include=systemd,systemd-sysv,dbus",
        SUITE,
    ])
    .arg(&build)
    .arg(MIRROR);
    let (ok, output) = run_with_timeout(&mut cmd, BUILD_TIMEOUT);
    fs::write(&log, &output).expect("write the debootstrap log");
    if !ok {
        let tail: Vec<&str> = output.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "debootstrap of Debian {SUITE} from {MIRROR} failed (can this machine download from \
             it?); the end of {}:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    customize(&tree.0);
    let partial = dir.join(format!("{IMAGE_NAME}.squashfs.partial"));
    run(Command::new("mksquashfs").arg(&tree.0).arg(&partial).args([
        "-noappend",
        "-no-progress",
        "-quiet",
        "-no-xattrs",
    ]));
    fs::rename(&partial, image).expect("move the image into place");
    drop(tree);
    println!("built {} in {:.1?}", image.display(), started.elapsed());
}

/// What the test changes in debootstrap's tree, and why:
/// - `/etc/hostname` is the build host's name, copied by debootstrap: without it systemd keeps
///   the host name the container was given (its name);
/// - apt's package cache and downloaded packages are only needed to install packages.
fn customize(root: &Path) {
    let _ = fs::remove_file(root.join("etc/hostname"));
    for dir in ["var/cache/apt/archives", "var/cache/apt"] {
        let Ok(entries) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".deb") || name.ends_with(".bin") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}
