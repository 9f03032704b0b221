//! Building the container's filesystem view, in the init, inside its new mount namespace:
//! the image at `/` with `/proc`, `/sys` (read-only), a minimal `/dev` (with a console, when the
//! service made one) and, for systemd, the tmpfs and cgroup mounts it expects; then
//! `pivot_root`, so that no host mount is left.
//!
//! Paths inside the image are resolved with `openat2(RESOLVE_IN_ROOT)`: a symlink in the image
//! (`/var/lib -> /somewhere`) is followed inside the image, never onto the host, and mounts go
//! onto the resolved directory through its `/proc/self/fd` link.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::pivot_root;
use rustix::fs::CWD;
use rustix::fs::{
    makedev, mkdirat, mknodat, openat, symlinkat, FileType, Mode, OFlags, ResolveFlags,
};
use rustix::io::Errno;
use rustix::mount::{move_mount, MoveMountFlags};

use super::launcher::IMAGE_DIR;
use super::spec::{InitSpec, Report, Step};
use crate::sys::beneath::fd_path;
use crate::sys::beneath::open_resolved;
use crate::sys::proc::{own_cgroups, Membership};

/// Size limit of the `/dev` and `/dev/shm` tmpfs.
const DEV_SIZE: &str = "size=65536k";

/// The device nodes of `/dev`: name, major, minor.
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The links of `/dev`: name, target.
const DEV_LINKS: [(&str, &str); 5] = [
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// The tmpfs mounts a systemd container gets: path in the image, mode.
const SYSTEMD_TMPFS: [(&str, &str); 3] = [
    ("run", "mode=755"),
    ("tmp", "mode=1777"),
    ("var/lib/journal", "mode=755"),
];

/// Builds the container's mounts from `spec` and makes `image` (a detached copy of the image's
/// mount tree) the root. Runs in a copy of the launcher's mount namespace (see
/// [`super::launcher`]). Needs a umask of 0.
pub(crate) fn prepare(spec: &InitSpec, image: OwnedFd) -> Result<(), Report> {
    move_mount(
        &image,
        "",
        CWD,
        IMAGE_DIR,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .step(|| format!("attach the image on {IMAGE_DIR}"))?;
    drop(image);
    // The copy is a peer of the host's mount of the image when that one is shared. Slave, not
    // private, as runc does: nothing done here propagates back to the host, and host unmounts
    // below the image still propagate in.
    mount(
        None::<&str>,
        IMAGE_DIR,
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .step(|| "make the image a slave mount".into())?;
    let root = Root::open(Path::new(IMAGE_DIR))?;
    let no_exec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    root.mount("proc", "proc", no_exec, None)?;
    mount_sys(&root, spec.user_namespace)?;
    mount_dev(&root, spec.user_namespace)?;
    if let Some(console) = &spec.console {
        bind_console(&root, console)?;
    }
    if spec.systemd {
        mount_systemd(&root, spec.unified_cgroups)?;
    }
    pivot(&root)
}

/// The image, as the init sees it before the pivot.
struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Opens the image's root directory (once attached, so the descriptor is its mount's root).
    fn open(rootfs: &Path) -> Result<Root, Report> {
        let fd = rustix::fs::open(rootfs, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .step(|| format!("open {}", rootfs.display()))?;
        Ok(Root { fd })
    }

    /// Opens directory `path` of the image (relative to its root), creating it and its missing
    /// parents (mode 0755) inside the image.
    fn dir(&self, path: &str) -> Result<OwnedFd, Report> {
        match self.resolve(path) {
            Err(Errno::NOENT) => {}
            other => return other.step(|| format!("open /{path}")),
        }
        let (parent, name) = match path.rsplit_once('/') {
            Some((parent, name)) => (self.dir(parent)?, name),
            None => (self.resolve(".").step(|| "open /".into())?, path),
        };
        match mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(error) => return Err(Report::kernel(format!("create /{path}"), error)),
        }
        self.resolve(path).step(|| format!("open /{path}"))
    }

    fn resolve(&self, path: &str) -> rustix::io::Result<OwnedFd> {
        open_resolved(
            &self.fd,
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// Mounts a fresh `fstype` file system on directory `path` of the image.
    fn mount(
        &self,
        path: &str,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Report> {
        let target = self.dir(path)?;
        mount(
            Some(fstype),
            &fd_path(target.as_fd()),
            Some(fstype),
            flags,
            data,
        )
        .step(|| format!("mount {fstype} on /{path}"))
    }

    /// Makes the mount at `path` read-only, keeping the flags the kernel may have locked.
    fn remount_read_only(&self, path: &str, locked: MsFlags) -> Result<(), Report> {
        // Opened anew: only a lookup made after the mount lands on the mount's root.
        let target = self.dir(path)?;
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked;
        mount(
            None::<&str>,
            &fd_path(target.as_fd()),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .step(|| format!("make /{path} read-only"))
    }
}

/// Mounts a read-only sysfs on `/sys`. Only the owner of a network namespace may mount sysfs,
/// so a container with a user namespace but no network namespace of its own gets the host's
/// `/sys` bound read-only instead (its sub-mounts stay as the host has them).
fn mount_sys(root: &Root, user_namespace: bool) -> Result<(), Report> {
    let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match root.mount("sys", "sysfs", locked | MsFlags::MS_RDONLY, None) {
        Err(report) if user_namespace && report.errno == libc::EPERM => {
            let target = root.dir("sys")?;
            mount(
                Some("/sys"),
                &fd_path(target.as_fd()),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .step(|| "bind the host's /sys on /sys".into())?;
            root.remount_read_only("sys", locked)
        }
        other => other,
    }
}

/// Builds `/dev`: a tmpfs with the basic device nodes, a private devpts instance, shm, mqueue
/// and the usual links.
fn mount_dev(root: &Root, user_namespace: bool) -> Result<(), Report> {
    let data = format!("mode=755,{DEV_SIZE}");
    root.mount(
        "dev",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some(&data),
    )?;
    // The fresh tmpfs holds nothing the image controls, so plain paths below it are safe.
    let dev = root.dir("dev")?;
    let dev_path = fd_path(dev.as_fd());
    for (name, major, minor) in DEVICES {
        make_device(&dev, &dev_path, name, makedev(major, minor), user_namespace)?;
    }
    let sub_mounts = [
        (
            "pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5".to_owned(),
            0o755,
        ),
        (
            "shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            format!("mode=1777,{DEV_SIZE}"),
            0o1777,
        ),
        (
            "mqueue",
            "mqueue",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            String::new(),
            0o755,
        ),
    ];
    for (name, fstype, flags, data, mode) in sub_mounts {
        mkdirat(&dev, name, Mode::from_raw_mode(mode)).step(|| format!("create /dev/{name}"))?;
        let mounted = mount(
            Some(fstype),
            &dev_path.join(name),
            Some(fstype),
            flags,
            Some(data.as_str()),
        );
        match mounted {
            // Only the owner of an IPC namespace may mount mqueue: a container with a user
            // namespace but the host's IPC namespace goes without.
            Err(nix::Error::EPERM) if user_namespace && name == "mqueue" => {}
            other => other.step(|| format!("mount {fstype} on /dev/{name}"))?,
        }
    }
    for (name, target) in DEV_LINKS {
        symlinkat(target, &dev, name).step(|| format!("link /dev/{name} to {target}"))?;
    }
    Ok(())
}

/// Makes device node `/dev/<name>`. In a user namespace mknod(2) is refused, so the host's
/// node is bound onto an empty file instead.
fn make_device(
    dev: &OwnedFd,
    dev_path: &Path,
    name: &str,
    number: u64,
    user_namespace: bool,
) -> Result<(), Report> {
    let mode = Mode::from_raw_mode(0o666);
    match mknodat(dev, name, FileType::CharacterDevice, mode, number) {
        Err(Errno::PERM) if user_namespace => {
            let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC;
            openat(dev.as_fd(), name, flags, mode).step(|| format!("create /dev/{name}"))?;
            let host = format!("/dev/{name}");
            mount(
                Some(host.as_str()),
                &dev_path.join(name),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .step(|| format!("bind the host's {host}"))
        }
        other => other.step(|| format!("create device /dev/{name}")),
    }
}

/// Binds the host's pseudo-terminal slave `console` onto `/dev/console`, an empty file made for
/// it in the container's `/dev` tmpfs.
fn bind_console(root: &Root, console: &Path) -> Result<(), Report> {
    let dev = root.dir("dev")?;
    let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC;
    openat(&dev, "console", flags, Mode::from_raw_mode(0o600))
        .step(|| "create /dev/console".into())?;
    mount(
        Some(console),
        &fd_path(dev.as_fd()).join("console"),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .step(|| format!("bind the console {} on /dev/console", console.display()))
}

/// The mounts systemd expects in a container: tmpfs on `/run`, `/tmp` and `/var/lib/journal`,
/// the container's own cgroups on `/sys/fs/cgroup` in the host's layout (hybrid, or cgroup2
/// alone), and a read-only `/proc/sys`.
fn mount_systemd(root: &Root, unified_cgroups: bool) -> Result<(), Report> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    for (path, mode) in SYSTEMD_TMPFS {
        root.mount(path, "tmpfs", flags, Some(mode))?;
    }
    let no_exec = flags | MsFlags::MS_NOEXEC;
    if unified_cgroups {
        mount_unified_cgroup(root, no_exec)?;
    } else {
        mount_hybrid_cgroups(root, no_exec)?;
    }
    let target = root.dir("proc/sys")?;
    mount(
        Some(&fd_path(target.as_fd())),
        &fd_path(target.as_fd()),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .step(|| "bind /proc/sys onto itself".into())?;
    root.remount_read_only("proc/sys", no_exec)
}

/// The container's own cgroup2 cgroup, writable, on `/sys/fs/cgroup`: systemd's unified mode,
/// for hosts without v1 hierarchies.
fn mount_unified_cgroup(root: &Root, flags: MsFlags) -> Result<(), Report> {
    let own = own_cgroup("")?;
    let cgroups_dir = root.dir("sys/fs/cgroup")?;
    // Aside in the container's fresh /run (the image itself may be read-only).
    let run = root.dir("run")?;
    let cgroup2 = Hierarchy {
        fstype: "cgroup2",
        data: None,
        flags,
    };
    cgroup2.mount_own(
        &own,
        (&fd_path(cgroups_dir.as_fd()), "/sys/fs/cgroup"),
        (&fd_path(run.as_fd()).join(".cgroup2"), "/run/.cgroup2"),
    )
}

/// A cgroup file system to mount for the container.
struct Hierarchy {
    fstype: &'static str,
    data: Option<&'static str>,
    flags: MsFlags,
}

impl Hierarchy {
    /// Mounts the hierarchy on `target` (a path, and its name inside the image) showing only
    /// the container's cgroup `own` (its path in `/proc/self/cgroup`). In a cgroup namespace
    /// (`own` is `/`) the mount shows it as its root. Without one the whole hierarchy is
    /// mounted on `aside`, the container's subtree bound onto `target` and the rest dropped,
    /// so that no unmount can reveal it.
    fn mount_own(
        &self,
        own: &str,
        target: (&Path, &str),
        aside: (&Path, &str),
    ) -> Result<(), Report> {
        let (fstype, data, flags) = (self.fstype, self.data, self.flags);
        let ((target, target_name), (aside, aside_name)) = (target, aside);
        if own == "/" {
            return mount(Some(fstype), target, Some(fstype), flags, data)
                .step(|| format!("mount {fstype} on {target_name}"));
        }
        fs::create_dir(aside).step(|| format!("create {aside_name}"))?;
        mount(Some(fstype), aside, Some(fstype), flags, data)
            .step(|| format!("mount {fstype} on {aside_name}"))?;
        let subtree = aside.join(own.trim_start_matches('/'));
        mount(
            Some(&subtree),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .step(|| format!("bind the container's cgroup on {target_name}"))?;
        umount2(aside, MntFlags::MNT_DETACH).step(|| format!("unmount {aside_name}"))?;
        fs::remove_dir(aside).step(|| format!("remove {aside_name}"))
    }
}

/// The container's cgroup in the hierarchy `kind` names in `/proc/self/cgroup` (`""` for
/// cgroup2, `name=systemd`, ...).
fn own_cgroup(kind: &str) -> Result<String, Report> {
    own_cgroups()
        .step(|| "read /proc/self/cgroup".into())?
        .into_iter()
        .find_map(|membership| (membership.hierarchy == kind).then_some(membership.path))
        .ok_or_else(|| Report::kernel(format!("find the {kind:?} cgroup"), Errno::NOENT))
}

/// A read-only tmpfs on `/sys/fs/cgroup` holding the container's own cgroup in cgroup2
/// (`unified`) and in the v1 `name=systemd` hierarchy (`systemd`): systemd's hybrid mode, as
/// on the host.
fn mount_hybrid_cgroups(root: &Root, no_exec: MsFlags) -> Result<(), Report> {
    root.mount("sys/fs/cgroup", "tmpfs", no_exec, Some("mode=755"))?;
    let cgroups_dir = root.dir("sys/fs/cgroup")?;
    let cgroups = fd_path(cgroups_dir.as_fd());
    let memberships = own_cgroups().step(|| "read /proc/self/cgroup".into())?;
    for Membership { hierarchy, path } in &memberships {
        let (dir, fstype, data) = match hierarchy.as_str() {
            "" => ("unified", "cgroup2", None),
            "name=systemd" => ("systemd", "cgroup", Some("none,name=systemd")),
            _ => continue,
        };
        let target = cgroups.join(dir);
        let target_name = format!("/sys/fs/cgroup/{dir}");
        fs::create_dir(&target).step(|| format!("create {target_name}"))?;
        let hierarchy = Hierarchy {
            fstype,
            data,
            flags: no_exec,
        };
        hierarchy.mount_own(
            path,
            (&target, &target_name),
            (
                &cgroups.join(format!(".{dir}")),
                &format!("/sys/fs/cgroup/.{dir}"),
            ),
        )?;
    }
    // On a hybrid layout systemd mounts every v1 controller it finds in /proc/cgroups that has no
    // mount yet, which would give it the host's whole hierarchies (or create new ones, taking
    // those controllers from the host's cgroup2). With the tmpfs read-only it cannot make the
    // mount points, and goes on with the hierarchies it was given (systemd itself, and
    // systemd-nspawn, leave it read-only the same way). systemd 252 still says in its first
    // console lines that it could not link the names of the controllers it mounts in pairs
    // (`cpu` and `cpuacct` to `cpu,cpuacct`): harmless, nothing is mounted there.
    root.remount_read_only("sys/fs/cgroup", no_exec)
}

/// Makes the image the root and drops the host's mounts: `pivot_root(".", ".")` stacks the old
/// root on top of the new one, where a lazy unmount of "." removes it (pivot_root(2)).
fn pivot(root: &Root) -> Result<(), Report> {
    rustix::process::fchdir(&root.fd).step(|| "enter the new root".into())?;
    pivot_root(".", ".").step(|| "pivot_root".into())?;
    umount2(".", MntFlags::MNT_DETACH).step(|| "detach the host's mounts".into())?;
    rustix::process::chdir("/").step(|| "enter /".into())
}
