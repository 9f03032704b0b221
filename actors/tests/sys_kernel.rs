//! The sys layer against the real kernel: loop devices, filesystem, bind and overlay mounts, beneath-resolution
//! and block device checks. Runs as root; every test undoes what it did through Drop guards, even when it fails.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use actors::sys::beneath::{fd_path, open_beneath, BeneathError};
use actors::sys::blockdev::{check_block_device, BlockDeviceError};
use actors::sys::loopdev::{backing_file, AttachTurn, LoopDevice};
use actors::sys::mounts::{
    bind, is_mountpoint, mount_filesystem, overlay, parse_mount_options, unmount, MountOptions,
};
use actors::sys::SysError;
use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};
use rustix::fs::OFlags;
use tempfile::TempDir;

/// The tests' attaches take turns on this one, as an engine's do on its own.
static TURN: AttachTurn = AttachTurn::new();

/// A loop device that is detached when the test ends, however it ends.
struct Loop(Option<LoopDevice>);

impl Loop {
    fn attach(backing: &File, read_only: bool, partscan: bool) -> Loop {
        Loop(Some(
            LoopDevice::attach(backing, read_only, partscan, &TURN).expect("attach"),
        ))
    }

    fn dev(&self) -> &LoopDevice {
        self.0.as_ref().expect("attached")
    }

    fn detach(mut self) -> Result<(), SysError> {
        self.0.take().expect("attached").detach()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(dev) = self.0.take() {
            let _ = dev.detach();
        }
    }
}

/// Unmounts its path when the test ends if something is mounted there. Create it before mounting, so that a
/// mount made just before a panic is not missed.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mountpoint(&self.0).unwrap_or(false) && unmount(&self.0).is_err() {
            // Busy (an open file of a failed test, a submount): never leave it behind.
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("sys-kernel-")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

fn mkdir(path: PathBuf) -> PathBuf {
    fs::create_dir_all(&path).expect("mkdir");
    path
}

fn sized_file(path: &Path, size: u64) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .expect("create backing file");
    file.set_len(size).expect("size backing file");
    file
}

fn run(command: &mut Command) {
    let output = command.output().expect("spawn tool");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn sysfs(number: u32, attribute: &str) -> String {
    fs::read_to_string(format!("/sys/block/loop{number}/{attribute}"))
        .expect("read sysfs")
        .trim()
        .to_owned()
}

/// A device is only released at its last close, which may come from a prober after `detach` returned.
fn wait_released(number: u32, backing: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while backing_file(number).as_deref() == Some(backing) {
        assert!(
            Instant::now() < deadline,
            "loop{number} still bound to {backing:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Unmounts a mount this test no longer uses. A sibling test spawning a tool forks this process, and the child
/// holds copies of our (close-on-exec) fds until it execs: that can make a mount busy for a moment.
fn unmount_settled(target: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match unmount(target) {
            Ok(()) => return,
            Err(err) if err.errno == Errno::EBUSY && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(err) => panic!("{err}"),
        }
    }
}

/// The per-mount options and the filesystem type of the mount at `target`, from /proc/self/mountinfo.
fn mountinfo(target: &Path) -> Option<(Vec<String>, String)> {
    let table = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    table.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        if Path::new(fields[4]) != target {
            return None;
        }
        let separator = fields.iter().position(|field| *field == "-")?;
        Some((
            fields[5].split(',').map(str::to_owned).collect(),
            fields[separator + 1].to_owned(),
        ))
    })
}

fn options(words: &[&str]) -> MountOptions {
    parse_mount_options(&words.iter().map(|w| w.to_string()).collect::<Vec<_>>())
}

#[test]
fn attach_binds_the_file_and_detach_releases_it() {
    let dir = temp_dir();
    let image = dir.path().join("image");
    let file = sized_file(&image, 1 << 20);

    let dev = Loop::attach(&file, false, false);
    let number = dev.dev().number();
    assert_eq!(dev.dev().path(), Path::new(&format!("/dev/loop{number}")));
    assert_eq!(backing_file(number).as_deref(), Some(image.as_path()));
    assert_eq!(sysfs(number, "ro"), "0");
    assert_eq!(sysfs(number, "loop/partscan"), "0");
    // Attachments must outlive the service process.
    assert_eq!(sysfs(number, "loop/autoclear"), "0");
    check_block_device(dev.dev().path()).expect("a block device");

    dev.detach().expect("detach");
    wait_released(number, &image);
}

#[test]
fn read_only_attach_of_a_read_only_file() {
    let dir = temp_dir();
    let image = dir.path().join("image");
    drop(sized_file(&image, 1 << 20));
    let file = File::open(&image).expect("open O_RDONLY");

    let dev = Loop::attach(&file, true, true);
    let number = dev.dev().number();
    assert_eq!(sysfs(number, "ro"), "1");
    assert_eq!(sysfs(number, "loop/partscan"), "1");
    let write = OpenOptions::new()
        .write(true)
        .open(dev.dev().path())
        .and_then(|mut device| {
            device
                .write_all(&[0xa5; 512])
                .and_then(|()| device.sync_all())
        });
    assert!(write.is_err(), "wrote to a read-only loop device");
    assert_eq!(fs::read(&image).expect("read image"), vec![0; 1 << 20]);

    dev.detach().expect("detach");
    wait_released(number, &image);
}

#[test]
fn parallel_attaches_get_distinct_devices() {
    const THREADS: usize = 8;
    let dir = temp_dir();
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let image = dir.path().join(format!("image{i}"));
            let file = sized_file(&image, 1 << 20);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let dev = LoopDevice::attach(&file, false, false, &TURN).map(|dev| Loop(Some(dev)));
                (image, dev)
            })
        })
        .collect();
    // Join every thread before asserting, so that each device that was attached gets its guard.
    let results: Vec<(PathBuf, Result<Loop, SysError>)> = threads
        .into_iter()
        .map(|thread| thread.join().expect("attach thread"))
        .collect();
    let mut attached = Vec::new();
    for (image, dev) in results {
        attached.push((image, dev.expect("parallel attach")));
    }

    let numbers: BTreeSet<u32> = attached.iter().map(|(_, dev)| dev.dev().number()).collect();
    assert_eq!(
        numbers.len(),
        THREADS,
        "devices handed out twice: {numbers:?}"
    );
    for (image, dev) in &attached {
        assert_eq!(
            backing_file(dev.dev().number()).as_deref(),
            Some(image.as_path())
        );
    }
    for (image, dev) in attached {
        let number = dev.dev().number();
        dev.detach().expect("detach");
        wait_released(number, &image);
    }
}

fn existing_loop_nodes() -> BTreeSet<u32> {
    fs::read_dir("/dev")
        .expect("read /dev")
        .filter_map(|entry| {
            entry
                .ok()?
                .file_name()
                .to_str()?
                .strip_prefix("loop")?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn attach_succeeds_when_every_existing_device_is_busy() {
    let dir = temp_dir();
    let existing = existing_loop_nodes();
    let mut held = Vec::new();
    // Other processes may take devices too; this only bounds the loop.
    for i in 0..existing.len() + 32 {
        let file = sized_file(&dir.path().join(format!("image{i}")), 1 << 16);
        let dev = Loop::attach(&file, false, false);
        let number = dev.dev().number();
        held.push(dev);
        if !existing.contains(&number) {
            check_block_device(Path::new(&format!("/dev/loop{number}"))).expect("new node");
            return;
        }
    }
    panic!(
        "never got past the {} existing loop devices",
        existing.len()
    );
}

#[test]
fn attach_creates_a_missing_device_node() {
    // A /dev without devtmpfs, as in a container, in a mount namespace of a thread of its own: the other tests
    // (and the libtest main thread) keep the host's /dev.
    let dir = temp_dir();
    let image = dir.path().join("image");
    let file = sized_file(&image, 1 << 20);
    let outcome = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare");
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make / private");
        nix::mount::mount(
            Some("tmpfs"),
            "/dev",
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("empty /dev");
        let control = fs::read_to_string("/sys/class/misc/loop-control/dev").expect("loop-control");
        let (major, minor) = control.trim().split_once(':').expect("major:minor");
        nix::sys::stat::mknod(
            "/dev/loop-control",
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(major.parse().unwrap(), minor.parse().unwrap()),
        )
        .expect("mknod loop-control");

        let dev = Loop::attach(&file, false, false);
        let number = dev.dev().number();
        let node = check_block_device(dev.dev().path());
        let bound = backing_file(number);
        dev.detach().expect("detach");
        // The namespace, and its /dev, go away with this thread.
        (number, node, bound)
    })
    .join()
    .expect("namespace thread");
    let (number, node, bound) = outcome;
    node.expect("created node is a block device");
    assert_eq!(bound.as_deref(), Some(image.as_path()));
    wait_released(number, &image);
}

#[test]
fn mount_ext4_with_flags_from_options() {
    let dir = temp_dir();
    let content = mkdir(dir.path().join("content"));
    fs::write(content.join("hello"), "ext4\n").expect("write content");
    let image = dir.path().join("ext4.img");
    drop(sized_file(&image, 16 << 20));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&image));
    let target = mkdir(dir.path().join("mnt"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .expect("open image");
    let dev = Loop::attach(&file, false, false);
    let mounted = Mounted(target.clone());

    let opts = options(&["ro", "noexec", "errors=remount-ro"]);
    mount_filesystem(dev.dev().path(), &target, "ext4", &opts).expect("mount ext4");
    assert!(is_mountpoint(&target).expect("statx"));
    let (flags, fs_type) = mountinfo(&target).expect("in mountinfo");
    assert_eq!(fs_type, "ext4");
    assert!(flags.contains(&"ro".to_owned()), "{flags:?}");
    assert!(flags.contains(&"noexec".to_owned()), "{flags:?}");
    assert_eq!(fs::read_to_string(target.join("hello")).unwrap(), "ext4\n");

    unmount_settled(&target);
    assert!(!is_mountpoint(&target).expect("statx"));
    drop(mounted);
    dev.detach().expect("detach");
}

#[test]
fn mount_squashfs_from_a_read_only_loop() {
    let dir = temp_dir();
    let content = mkdir(dir.path().join("content"));
    fs::write(content.join("hello"), "squashfs\n").expect("write content");
    let image = dir.path().join("image.sqfs");
    run(Command::new("mksquashfs").arg(&content).arg(&image).args([
        "-quiet",
        "-noappend",
        "-no-progress",
    ]));
    let target = mkdir(dir.path().join("mnt"));
    let file = File::open(&image).expect("open image");
    let dev = Loop::attach(&file, true, false);
    let _mounted = Mounted(target.clone());

    mount_filesystem(dev.dev().path(), &target, "squashfs", &options(&["ro"])).expect("mount");
    assert_eq!(
        fs::read_to_string(target.join("hello")).unwrap(),
        "squashfs\n"
    );
    assert_eq!(mountinfo(&target).expect("in mountinfo").1, "squashfs");
}

#[test]
fn mount_erofs_straight_from_its_file() {
    let dir = temp_dir();
    let content = mkdir(dir.path().join("content"));
    fs::write(content.join("hello"), "erofs\n").expect("write content");
    let image = dir.path().join("image.erofs");
    run(Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&image)
        .arg(&content));
    let target = mkdir(dir.path().join("mnt"));
    let _mounted = Mounted(target.clone());

    mount_filesystem(&image, &target, "erofs", &options(&["ro"])).expect("mount");
    assert_eq!(fs::read_to_string(target.join("hello")).unwrap(), "erofs\n");
}

#[test]
fn failed_mount_names_the_operation() {
    let dir = temp_dir();
    let target = mkdir(dir.path().join("mnt"));
    let _mounted = Mounted(target.clone());
    let err = mount_filesystem(&dir.path().join("missing"), &target, "ext4", &options(&[]))
        .expect_err("no such device");
    assert_eq!(err.errno, Errno::ENOENT);
    assert!(err.to_string().starts_with("mount ext4 /tmp/"), "{err}");
    assert!(
        err.to_string()
            .ends_with("ENOENT: No such file or directory"),
        "{err}"
    );
}

#[test]
fn read_only_bind_refuses_writes() {
    let dir = temp_dir();
    let source = mkdir(dir.path().join("source"));
    fs::write(source.join("file"), "data").expect("write source");
    let target = mkdir(dir.path().join("target"));
    let _mounted = Mounted(target.clone());

    bind(&source, &target, false, true).expect("bind ro");
    assert_eq!(fs::read_to_string(target.join("file")).unwrap(), "data");
    let err = fs::write(target.join("new"), "x").expect_err("write through ro bind");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    fs::write(source.join("new"), "x").expect("source stays writable");
    assert!(mountinfo(&target)
        .expect("mounted")
        .0
        .contains(&"ro".to_owned()));
}

#[test]
fn recursive_read_only_bind_covers_submounts_and_keeps_flags() {
    let dir = temp_dir();
    let source = mkdir(dir.path().join("source"));
    let _source_mounted = Mounted(source.clone());
    mount_filesystem(
        Path::new("tmpfs"),
        &source,
        "tmpfs",
        &options(&["nosuid,nodev", "size=1m"]),
    )
    .expect("tmpfs source");
    let sub = mkdir(source.join("sub"));
    let _sub_mounted = Mounted(sub.clone());
    mount_filesystem(Path::new("tmpfs"), &sub, "tmpfs", &options(&["size=1m"])).expect("tmpfs sub");
    let target = mkdir(dir.path().join("target"));
    let _mounted = Mounted(target.clone());

    bind(&source, &target, true, true).expect("bind -r ro");
    let (flags, _) = mountinfo(&target).expect("mounted");
    for flag in ["ro", "nosuid", "nodev"] {
        assert!(
            flags.contains(&flag.to_owned()),
            "{flag} missing in {flags:?}"
        );
    }
    let err = fs::write(target.join("sub/new"), "x").expect_err("write in ro submount");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    fs::write(sub.join("new"), "x").expect("source submount stays writable");
}

#[test]
fn bind_on_the_same_filesystem_is_a_mountpoint() {
    let dir = temp_dir();
    let source = mkdir(dir.path().join("source"));
    let target = mkdir(dir.path().join("target"));
    assert!(!is_mountpoint(&target).expect("statx"));
    let _mounted = Mounted(target.clone());

    bind(&source, &target, false, false).expect("bind");
    assert!(is_mountpoint(&target).expect("statx"));
    fs::write(target.join("new"), "x").expect("rw bind");
    assert!(source.join("new").exists());
    unmount_settled(&target);
    assert!(!is_mountpoint(&target).expect("statx"));
    assert!(is_mountpoint(Path::new("/")).expect("statx /"));
}

#[test]
fn bind_from_a_beneath_resolved_fd() {
    let dir = temp_dir();
    let base = mkdir(dir.path().join("base"));
    mkdir(base.join("sub"));
    fs::write(base.join("sub/file"), "inside").expect("write");
    let target = mkdir(dir.path().join("target"));
    let _mounted = Mounted(target.clone());

    let fd = open_beneath(&base, "/sub", OFlags::PATH | OFlags::DIRECTORY).expect("resolve");
    bind(&fd_path(fd.as_fd()), &target, false, false).expect("bind fd path");
    assert_eq!(fs::read_to_string(target.join("file")).unwrap(), "inside");
}

#[test]
fn unmount_reports_busy_and_non_mounts() {
    let dir = temp_dir();
    let source = mkdir(dir.path().join("source"));
    fs::write(source.join("file"), "data").expect("write");
    let target = mkdir(dir.path().join("target"));
    let mounted = Mounted(target.clone());

    bind(&source, &target, false, false).expect("bind");
    let open = File::open(target.join("file")).expect("open inside");
    assert_eq!(unmount(&target).expect_err("busy").errno, Errno::EBUSY);
    assert!(is_mountpoint(&target).expect("statx"), "no lazy detach");
    drop(open);
    unmount_settled(&target);
    drop(mounted);

    let err = unmount(&target).expect_err("not a mountpoint");
    assert_eq!(err.errno, Errno::EINVAL);
    assert_eq!(
        err.to_string(),
        format!("umount {}: EINVAL: Invalid argument", target.display())
    );
}

/// Lower dirs for an overlay test: each has a file `layer` naming it and a file of its own.
fn make_lowers(dir: &Path, names: &[String]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|name| {
            let lower = mkdir(dir.join(name));
            fs::write(lower.join("layer"), name).expect("write layer");
            fs::write(lower.join(format!("own-{}", name.len())), name).expect("write own");
            lower
        })
        .collect()
}

#[test]
fn overlay_of_two_lowers_with_awkward_names() {
    let dir = temp_dir();
    let names = ["top:with,separators\\".to_owned(), "bottom".to_owned()];
    let lowers = make_lowers(dir.path(), &names);
    fs::write(lowers[1].join("only-bottom"), "b").expect("write");
    let upper = mkdir(dir.path().join("up:per,\\"));
    let work = mkdir(dir.path().join("wo\\rk:,"));
    let target = mkdir(dir.path().join("merged"));
    let _mounted = Mounted(target.clone());

    overlay(&lowers, &upper, &work, &target).expect("overlay");
    assert_eq!(mountinfo(&target).expect("mounted").1, "overlay");
    assert_eq!(fs::read_to_string(target.join("layer")).unwrap(), names[0]);
    assert_eq!(fs::read_to_string(target.join("only-bottom")).unwrap(), "b");
    fs::write(target.join("new"), "written").expect("write merged");
    assert_eq!(fs::read_to_string(upper.join("new")).unwrap(), "written");
    assert!(!lowers.iter().any(|lower| lower.join("new").exists()));
}

#[test]
fn overlay_beyond_a_page_of_options() {
    let dir = temp_dir();
    // 40 layers of ~120-byte paths make ~5 KiB of lowerdir, more than mount(2) takes.
    let names: Vec<String> = (0..40)
        .map(|i| format!("layer-{i:02}-{}", "x".repeat(90 + i % 2)))
        .chain(["last:with,separators\\".to_owned()])
        .collect();
    let lowers = make_lowers(dir.path(), &names);
    let total: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(total > 4096, "only {total} bytes");
    let upper = mkdir(dir.path().join("up:per,\\"));
    let work = mkdir(dir.path().join("wo\\rk:,"));
    let target = mkdir(dir.path().join("merged"));
    let _mounted = Mounted(target.clone());

    overlay(&lowers, &upper, &work, &target).expect("overlay via fsconfig");
    assert_eq!(fs::read_to_string(target.join("layer")).unwrap(), names[0]);
    for name in &names {
        assert!(
            target.join(format!("own-{}", name.len())).exists(),
            "{name}"
        );
    }
    fs::write(target.join("new"), "written").expect("write merged");
    assert_eq!(fs::read_to_string(upper.join("new")).unwrap(), "written");
}

#[test]
fn open_beneath_stays_inside_its_base() {
    let dir = temp_dir();
    let base = mkdir(dir.path().join("base"));
    mkdir(base.join("sub"));
    mkdir(base.join("a"));
    fs::write(base.join("sub/file"), "inside").expect("write");
    fs::write(dir.path().join("x"), "outside").expect("write");
    symlink("/etc", base.join("etc-link")).expect("symlink");
    symlink("../x", base.join("out-link")).expect("symlink");
    symlink("sub/file", base.join("in-link")).expect("symlink");
    symlink("file", base.join("sub/sibling-link")).expect("symlink");
    symlink("../sub/file", base.join("sub/up-and-in-link")).expect("symlink");

    for escaping in [
        "../x",
        "a/../../x",
        "sub/../../x",
        "etc-link",
        "etc-link/passwd",
        "out-link",
        "/../x",
    ] {
        match open_beneath(&base, escaping, OFlags::RDONLY) {
            Err(BeneathError::Escapes { path }) => assert_eq!(path, escaping),
            other => panic!("{escaping}: {other:?}"),
        }
    }
    for inside in [
        "sub/file",
        "/sub/file",
        "in-link",
        "sub/sibling-link",
        "sub/up-and-in-link",
    ] {
        let fd =
            open_beneath(&base, inside, OFlags::RDONLY).unwrap_or_else(|e| panic!("{inside}: {e}"));
        let text = fs::read_to_string(fd_path(fd.as_fd())).expect("read through fd");
        assert_eq!(text, "inside", "{inside}");
    }
    let root = open_beneath(&base, "/", OFlags::PATH | OFlags::DIRECTORY).expect("the base itself");
    assert_eq!(fs::read_link(fd_path(root.as_fd())).unwrap(), base);

    match open_beneath(&base, "sub/missing", OFlags::RDONLY) {
        Err(BeneathError::Open { errno, .. }) => assert_eq!(errno, Errno::ENOENT),
        other => panic!("missing: {other:?}"),
    }
    match open_beneath(Path::new("/proc/self"), "exe", OFlags::RDONLY) {
        Err(BeneathError::Open { errno, .. }) => assert_eq!(errno, Errno::ELOOP),
        other => panic!("magic link: {other:?}"),
    }
    match open_beneath(&dir.path().join("no-base"), "x", OFlags::RDONLY) {
        Err(BeneathError::Open { errno, .. }) => assert_eq!(errno, Errno::ENOENT),
        other => panic!("missing base: {other:?}"),
    }
}

#[test]
fn check_block_device_tells_what_it_found() {
    let dir = temp_dir();
    let regular = dir.path().join("regular");
    let file = sized_file(&regular, 1 << 20);

    match check_block_device(Path::new("/dev/loop-control")) {
        Err(BlockDeviceError::NotBlockDevice { found, .. }) => {
            assert_eq!(found, "character device")
        }
        other => panic!("loop-control: {other:?}"),
    }
    match check_block_device(&regular) {
        Err(BlockDeviceError::NotBlockDevice { found, .. }) => assert_eq!(found, "regular file"),
        other => panic!("regular: {other:?}"),
    }
    match check_block_device(dir.path()) {
        Err(BlockDeviceError::NotBlockDevice { found, .. }) => assert_eq!(found, "directory"),
        other => panic!("directory: {other:?}"),
    }
    let missing = dir.path().join("missing");
    match check_block_device(&missing) {
        Err(BlockDeviceError::Missing { path }) => assert_eq!(path, missing),
        other => panic!("missing: {other:?}"),
    }

    let dev = Loop::attach(&file, false, false);
    check_block_device(dev.dev().path()).expect("loop device");
    let link = dir.path().join("by-id-link");
    symlink(dev.dev().path(), &link).expect("symlink");
    check_block_device(&link).expect("symlink to a loop device");
    let number = dev.dev().number();
    dev.detach().expect("detach");
    wait_released(number, &regular);
}
