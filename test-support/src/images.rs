//! Images: trees with a static busybox, made into squashfs or ext4 files.

use std::fs;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::Service;

/// Static busybox put inside the images (Debian/Ubuntu package busybox-static).
pub const BUSYBOX: &str = "/usr/bin/busybox";

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `files` (relative path, content) under `root`, making parent dirs.
pub fn write_tree(root: &Path, files: &[(&str, &str)]) {
    for (rel, content) in files {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
    }
}

/// Content of `hello.txt` in the image named `name`.
pub fn hello_text(name: &str) -> String {
    format!("hello from {name}\n")
}

/// Content of `dir/nested.txt` in every standard image.
pub const NESTED_TEXT: &str = "nested file\n";

/// The standard image tree: `hello.txt`, `dir/nested.txt`, an absolute symlink `escape -> /etc`,
/// `up -> ../../..`, `bin/busybox` and `bin/sh -> busybox`.
pub fn standard_tree(root: &Path, name: &str) {
    fs::create_dir_all(root.join("bin")).unwrap();
    write_tree(
        root,
        &[
            ("hello.txt", &hello_text(name)),
            ("dir/nested.txt", NESTED_TEXT),
        ],
    );
    symlink("/etc", root.join("escape")).unwrap();
    symlink("../../..", root.join("up")).unwrap();
    install_busybox(root, &["sh"]).expect("copy busybox");
}

/// `root/bin/busybox`, a copy of [`BUSYBOX`], and `root/bin/<applet> -> busybox` for each of
/// `applets`; `root/bin` must exist.
pub fn install_busybox(root: &Path, applets: &[&str]) -> io::Result<()> {
    let bin = root.join("bin");
    fs::copy(BUSYBOX, bin.join("busybox"))?;
    for applet in applets {
        symlink("busybox", bin.join(applet))?;
    }
    Ok(())
}

/// Whether a 64-bit little-endian ELF file asks for a program interpreter (PT_INTERP), as a
/// dynamically linked busybox would, which cannot run alone in an image. Other formats are not
/// checked.
pub fn is_dynamic_elf(path: &Path) -> io::Result<bool> {
    let data = fs::read(path)?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Ok(false);
    }
    let u16_at = |at: usize| u16::from_le_bytes([data[at], data[at + 1]]) as usize;
    let mut phoff = [0u8; 8];
    phoff.copy_from_slice(&data[0x20..0x28]);
    let phoff = u64::from_le_bytes(phoff) as usize;
    let (entry_size, count) = (u16_at(0x36), u16_at(0x38));
    Ok((0..count).any(|i| {
        let at = i
            .checked_mul(entry_size)
            .and_then(|offset| offset.checked_add(phoff));
        at.and_then(|at| data.get(at..at.checked_add(4)?)) == Some(&3u32.to_le_bytes()[..])
    }))
}

/// `mksquashfs src out -noappend -no-progress -quiet`, stdin closed; callers add their flags.
pub fn mksquashfs_command(src: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(src)
        .arg(out)
        .args(["-noappend", "-no-progress", "-quiet"])
        .stdin(Stdio::null());
    cmd
}

pub fn mksquashfs(src: &Path, out: &Path) {
    run(mksquashfs_command(src, out).arg("-no-xattrs"));
}

pub fn mkext4(src: &Path, out: &Path, size_mib: u64) {
    let f = fs::File::create(out).unwrap();
    f.set_len(size_mib * 1024 * 1024).unwrap();
    drop(f);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(src)
        .arg(out));
}

/// `dir/<name>.squashfs`: the standard tree plus `extra` files.
pub fn squashfs_with(dir: &Path, name: &str, extra: &[(&str, &str)]) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    standard_tree(&src, name);
    write_tree(&src, extra);
    let out = dir.join(format!("{name}.squashfs"));
    mksquashfs(&src, &out);
    out
}

/// `dir/<name>.squashfs`: the standard tree plus the directories a container init mounts on
/// (`proc`, `sys`, `dev`, `tmp`), for read-only container roots.
pub fn busybox_image(svc: &Service, name: &str) -> PathBuf {
    squashfs_with(
        svc.dir(),
        name,
        &[
            ("proc/.keep", ""),
            ("sys/.keep", ""),
            ("dev/.keep", ""),
            ("tmp/.keep", ""),
        ],
    )
}

/// `dir/<name>.squashfs` with the standard tree.
pub fn squashfs_image(dir: &Path, name: &str) -> PathBuf {
    squashfs_with(dir, name, &[])
}

/// `dir/<name>.ext4` (16 MiB) with the standard tree.
pub fn ext4_image(dir: &Path, name: &str) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    standard_tree(&src, name);
    let out = dir.join(format!("{name}.ext4"));
    mkext4(&src, &out, 16);
    out
}

/// Name of the image file inside [`outer_squashfs_image`].
pub const INNER_IMAGE: &str = "inner.squashfs";

/// `dir/<name>.squashfs`: the standard tree plus `inner.squashfs`, itself a standard image
/// named `inner` (its `hello.txt` says [`hello_text`]`("inner")`).
pub fn outer_squashfs_image(dir: &Path, name: &str) -> PathBuf {
    let inner_src = dir.join(format!("{name}-inner.src"));
    standard_tree(&inner_src, "inner");
    let inner = dir.join(format!("{name}-inner.squashfs"));
    mksquashfs(&inner_src, &inner);
    let src = dir.join(format!("{name}.src"));
    standard_tree(&src, name);
    fs::copy(&inner, src.join(INNER_IMAGE)).unwrap();
    let out = dir.join(format!("{name}.squashfs"));
    mksquashfs(&src, &out);
    out
}

/// Runs `cmd` with its output collected, killing it after `timeout`; (success, stdout and
/// stderr).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join("out");
    let out = File::create(&out_path).expect("output file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut text = String::new();
    File::open(&out_path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .expect("read the output");
    match status {
        Some(status) => (status.success(), text),
        None => (
            false,
            format!("{text}\n(killed after {timeout:?}: {cmd:?})"),
        ),
    }
}

/// A container's init pid, from the service's `started ... as pid N` line in its log. The line
/// is written beside the create's answer, not before it: waits for it up to 5 s.
pub fn init_pid(log: &Path) -> u32 {
    let read = || {
        let text = fs::read_to_string(log).unwrap_or_default();
        let pid = text
            .lines()
            .find_map(|line| line.split_once("] as pid ").map(|(_, pid)| pid))
            .and_then(|pid| pid.trim().parse().ok());
        (pid, text)
    };
    let mut found = None;
    crate::wait_for(Duration::from_secs(5), || {
        found = read().0;
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no init pid in the log:\n{}", read().1))
}
