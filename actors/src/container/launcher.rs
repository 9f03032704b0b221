//! The thread every container init is cloned from, in a mount namespace of its own that holds
//! only what an init needs before its pivot: a tmpfs root with the host's `/proc`, `/dev` and
//! `/sys` (and their sub-mounts) bound in, and, read-only and without their sub-mounts, the
//! host directories the dynamic loader reads to execute the init program (a copy of
//! `imageapi-init`, which links a subset of the service's libraries): `/usr`, `/etc`, the `/lib*` ones, and those of every file the service has
//! mapped (its libraries, wherever the distribution keeps them). Top-level symbolic links of
//! the host (`/lib64 -> usr/lib64`) are copied as links.
//!
//! A new mount namespace starts as a copy of its parent's mount table, and the init then
//! detaches all of it. Cloned from the service's own namespace, every init would copy (and
//! detach) every other container's overlay under the mount dir, and every mount of the host:
//! the start of one more container would grow with the number already running. Cloned from
//! here it copies the same few dozen mounts each time. The image reaches the init as a
//! detached copy of its mount (`open_tree`), passed as a descriptor.
//!
//! The namespace is private: nothing mounted or unmounted on the host later propagates into it,
//! so the mounts it holds are fixed at start, and they are of the kind a host never unmounts.
//! None of the host's other mounts (a test's temporary mounts, the mount dir) is pinned by it.
//!
//! Each [`super::Runtime`] has its own launcher; the thread ends when the runtime is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::pivot_root;
use rustix::fs::{mkdirat, symlinkat, Mode, CWD};
use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};

/// Where the init attaches the image, in the launcher's root (and so in its own copy).
pub(crate) const IMAGE_DIR: &str = "/image";

/// The host's file systems the launcher's root gets, bound with their sub-mounts.
const HOST_TREES: [&str; 3] = ["proc", "dev", "sys"];

/// Top-level host directories the dynamic loader may read (`/etc` for `ld.so.cache`), besides
/// those of the files the service has mapped.
const LOADER_DIRS: [&str; 6] = ["usr", "etc", "lib", "lib64", "lib32", "libx32"];

type Job = Box<dyn FnOnce() + Send>;

/// The launcher thread of one runtime, started by its first job.
#[derive(Debug, Default)]
pub(crate) struct Launcher {
    /// The thread's queue, once it runs. A failed setup is tried again at the next launch.
    queue: Mutex<Option<mpsc::Sender<Job>>>,
}

/// Why a job could not run on the launcher thread.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    /// The launcher's namespace could not be built (tried again at the next launch).
    #[error("cannot set up the launcher's mount namespace: {0}")]
    Setup(String),
    /// The launcher thread is gone.
    #[error("the launcher thread has stopped")]
    Stopped,
}

impl Launcher {
    /// Runs `job` on the launcher thread (in its mount namespace) and returns its result. The
    /// first call starts the thread. Jobs run one at a time, in order.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LauncherError> {
        let (answer, answered) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = answer.send(job());
        });
        {
            let mut launcher = self
                .queue
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let queue = match launcher.as_ref() {
                Some(queue) => queue,
                None => launcher.insert(start().map_err(LauncherError::Setup)?),
            };
            if queue.send(job).is_err() {
                // Gone: the next launch starts a new one.
                *launcher = None;
                return Err(LauncherError::Stopped);
            }
        }
        answered.recv().map_err(|_| LauncherError::Stopped)
    }
}

/// Starts the launcher thread and waits until its namespace is ready.
fn start() -> Result<mpsc::Sender<Job>, String> {
    let (jobs, queue) = mpsc::channel::<Job>();
    let (ready, setup) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("imageapi-launch".into())
        .spawn(move || {
            let built = enter_launcher_namespace();
            let failed = built.is_err();
            let _ = ready.send(built);
            if failed {
                return;
            }
            // Runs as long as its runtime: the inits' parent-death signal is tied to this
            // thread until they have set up, and a launch holds the runtime until then.
            while let Ok(job) = queue.recv() {
                job();
            }
        })
        .map_err(|error| format!("cannot start the launcher thread: {error}"))?;
    match setup.recv() {
        Ok(Ok(())) => Ok(jobs),
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err("the launcher thread died while setting up".to_string()),
    }
}

/// Moves the calling thread into a new, private mount namespace whose root is a tmpfs holding
/// the host's `/proc`, `/dev` and `/sys`, the loader's directories and [`IMAGE_DIR`].
fn enter_launcher_namespace() -> Result<(), String> {
    // The new namespace is this thread's alone: unsharing it also unshares the thread's root
    // and working directory from the rest of the service.
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare the mount namespace: {e}"))?;
    let flags = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
    mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
        .map_err(|e| format!("make / private: {e}"))?;
    // Copies of the host's trees, taken before the tmpfs covers their paths.
    let clone = OpenTreeFlags::OPEN_TREE_CLONE
        | OpenTreeFlags::OPEN_TREE_CLOEXEC
        | OpenTreeFlags::AT_RECURSIVE;
    let trees: Vec<(&str, OwnedFd)> = HOST_TREES
        .iter()
        .map(|tree| {
            open_tree(CWD, format!("/{tree}"), clone)
                .map(|fd| (*tree, fd))
                .map_err(|e| format!("copy the host's /{tree}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let loader = loader_entries()?;
    // The new root needs a directory to be mounted on before the pivot. /proc is one every
    // host has, and its tree is copied already; covering it here hides nothing from the host.
    let no_devices = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let staging = "/proc";
    mount(
        Some("tmpfs"),
        staging,
        Some("tmpfs"),
        no_devices,
        Some("mode=755,size=64k"),
    )
    .map_err(|e| format!("mount the launcher's tmpfs root: {e}"))?;
    nix::unistd::chdir(staging).map_err(|e| format!("enter the tmpfs root: {e}"))?;
    let dir_mode = Mode::from_raw_mode(0o755);
    for (tree, fd) in &trees {
        mkdirat(CWD, *tree, dir_mode).map_err(|e| format!("create /{tree}: {e}"))?;
        move_mount(fd, "", CWD, *tree, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
            .map_err(|e| format!("attach the host's /{tree}: {e}"))?;
    }
    for (name, entry) in &loader {
        match entry {
            LoaderEntry::Link(target) => symlinkat(target, CWD, name.as_str())
                .map_err(|e| format!("copy the link /{name}: {e}"))?,
            LoaderEntry::Dir(fd) => {
                mkdirat(CWD, name.as_str(), dir_mode)
                    .map_err(|e| format!("create /{name}: {e}"))?;
                move_mount(
                    fd,
                    "",
                    CWD,
                    name.as_str(),
                    MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
                )
                .map_err(|e| format!("attach the host's /{name}: {e}"))?;
                let read_only = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
                mount(
                    None::<&str>,
                    name.as_str(),
                    None::<&str>,
                    read_only,
                    None::<&str>,
                )
                .map_err(|e| format!("make /{name} read-only: {e}"))?;
            }
        }
    }
    mkdirat(CWD, &IMAGE_DIR[1..], dir_mode).map_err(|e| format!("create {IMAGE_DIR}: {e}"))?;
    // Drop the old root and every host mount under it from this namespace.
    pivot_root(".", ".").map_err(|e| format!("pivot to the tmpfs root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach the host's mounts: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("enter the new root: {e}"))?;
    Ok(())
}

/// A top-level entry of the host's root the loader may need.
enum LoaderEntry {
    /// A symbolic link, with its target.
    Link(PathBuf),
    /// A directory, as a copy of it without the mounts below it.
    Dir(OwnedFd),
}

/// The top-level entries of the host's root the dynamic loader may read to execute the service
/// binary again: [`LOADER_DIRS`] and the first component of every file the service has mapped.
fn loader_entries() -> Result<BTreeMap<String, LoaderEntry>, String> {
    let maps =
        fs::read_to_string("/proc/self/maps").map_err(|e| format!("read /proc/self/maps: {e}"))?;
    // The init program is a copy of the binary in memory: the binary's own directory (a build
    // tree, say) is not needed.
    let binary = fs::read_link("/proc/self/exe").ok();
    let mapped = maps.lines().filter_map(|line| {
        let path = line.split_whitespace().nth(5)?;
        if binary.as_deref() == Some(Path::new(path)) {
            return None;
        }
        let first = path.strip_prefix('/')?.split('/').next()?;
        Some(first.to_string())
    });
    let mut entries = BTreeMap::new();
    let names: BTreeSet<String> = LOADER_DIRS
        .iter()
        .map(|d| d.to_string())
        .chain(mapped)
        .collect();
    for name in names {
        if HOST_TREES.contains(&name.as_str()) {
            continue;
        }
        let path = Path::new("/").join(&name);
        let Ok(metadata) = fs::symlink_metadata(&path) else {
            continue;
        };
        let entry = if metadata.is_symlink() {
            let target = fs::read_link(&path)
                .map_err(|e| format!("read the link {}: {e}", path.display()))?;
            LoaderEntry::Link(target)
        } else if metadata.is_dir() {
            let flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
            let fd = open_tree(CWD, &path, flags)
                .map_err(|e| format!("copy the host's {}: {e}", path.display()))?;
            LoaderEntry::Dir(fd)
        } else {
            continue;
        };
        entries.insert(name, entry);
    }
    Ok(entries)
}

impl From<LauncherError> for io::Error {
    fn from(error: LauncherError) -> Self {
        io::Error::other(error)
    }
}
