//! The container's own cgroups, `imageapi/<id>` in each hierarchy it needs.
//!
//! - cgroup2, wherever it is mounted (`/sys/fs/cgroup/unified` on a hybrid host): holds the whole
//!   container and freezes it through `cgroup.freeze` (kernel 5.2+).
//! - the v1 freezer, only when cgroup2 cannot freeze (not mounted, or too old a kernel): v1 is
//!   the fallback, not a second copy, since one freezer is enough.
//! - the v1 `name=systemd` hierarchy, for systemd containers on a hybrid host: systemd in the
//!   container needs a subtree of it that it may write to. On a host with cgroup2 alone
//!   ([`unified_only`]) a systemd container gets its cgroup2 cgroup on `/sys/fs/cgroup` instead.
//!
//! Cgroups are named `imageapi/<instance>-<id>`: the instance name (see [`ServiceCgroups`])
//! keeps apart the containers of several services (or engines) on one host. The `imageapi`
//! directories are shared by all of them: each service makes one when it first needs it and
//! removes it with its last container's cgroups, when it is empty (another service's cgroups in
//! it make the removal fail, which is fine).
//!
//! Hierarchies are found through `/proc/self/mountinfo`, never assumed. The init is cloned
//! straight into its cgroup2 cgroup, and the service writes its pid to the v1 `cgroup.procs`
//! before it goes on, so nothing of the container ever runs outside them; once the init has been reaped, [`Cgroup::remove`] deletes them, deepest first
//! (systemd makes sub-cgroups).

use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::fs::{Mode, OFlags};
use rustix::process::{kill_process, Pid, Signal};

use super::runtime::Runtime;
use crate::sys::mountinfo::{self, MountEntry};
use crate::sys::poll::poll;

/// How long [`Cgroup::freeze`] waits for every task to stop before giving up and thawing.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// The directory, below each hierarchy's root, that holds the containers' cgroups.
const PARENT_DIR: &str = "imageapi";

/// How often [`Cgroup::create`] makes the shared parent directory again when it vanishes under
/// it (each time, another service removed it as empty in between).
const MAX_CREATE_TRIES: usize = 8;

/// Errors from cgroup management.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The mount table could not be read.
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(#[source] io::Error),
    /// Neither cgroup2 nor the v1 freezer is mounted on this host.
    #[error("no cgroup hierarchy to put the container in: neither cgroup2 nor the v1 freezer is mounted")]
    NoHierarchy,
    /// A file operation on a cgroup failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `create`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Some task did not stop within the freeze timeout (for example, blocked in the kernel).
    #[error("{} did not freeze within {timeout:?}; thawed it again", path.display())]
    FreezeTimeout {
        /// The cgroup.
        path: PathBuf,
        /// How long it was given.
        timeout: Duration,
    },
}

/// Where one service (one [`super::Runtime`]) keeps its containers' cgroups: the host's
/// hierarchies, as mounted in the service's mount namespace (read once: the service does not
/// remount cgroups), and the instance name that prefixes its cgroups.
#[derive(Debug)]
pub(crate) struct ServiceCgroups {
    hierarchies: Hierarchies,
    instance: String,
}

/// The cgroup hierarchies of this host.
#[derive(Debug, Default)]
struct Hierarchies {
    unified: Option<PathBuf>,
    freezer: Option<PathBuf>,
    systemd: Option<PathBuf>,
}

impl ServiceCgroups {
    /// Finds the hierarchies in the mount table. `instance` keeps this service's cgroups apart
    /// from other services' on the host (and from an earlier run on another state dir): the
    /// state store's instance name, so that a restarted service finds its containers' cgroups
    /// again.
    pub(crate) fn read(instance: &str) -> Result<ServiceCgroups, CgroupError> {
        let mounts = mountinfo::read_own().map_err(CgroupError::Mountinfo)?;
        Ok(ServiceCgroups {
            hierarchies: find_hierarchies(&mounts),
            instance: instance.to_string(),
        })
    }

    /// The name of container `id`'s cgroup directory below `<hierarchy>/imageapi/`.
    pub(crate) fn dir_name(&self, id: i64) -> String {
        format!("{}-{id}", self.instance)
    }

    /// Whether the host has cgroup2 and no v1 `name=systemd` hierarchy (the layout of current
    /// distributions): systemd in a container then runs in unified mode, on cgroup2 alone.
    pub(crate) fn unified_only(&self) -> bool {
        self.hierarchies.unified.is_some() && self.hierarchies.systemd.is_none()
    }

    /// Makes `<root>/imageapi/<instance>-<id>`, replacing a stale one.
    fn make_dir(&self, root: &Path, id: i64) -> Result<PathBuf, CgroupError> {
        let parent = root.join(PARENT_DIR);
        let dir = parent.join(self.dir_name(id));
        let mut tries = 0;
        loop {
            tries += 1;
            match fs::create_dir_all(&parent) {
                Ok(()) => {}
                // Its mkdir found the parent there (EEXIST), and another service removed it,
                // empty, before create_dir_all looked whether it is a directory: make it again.
                Err(error)
                    if error.kind() == ErrorKind::AlreadyExists && tries < MAX_CREATE_TRIES =>
                {
                    continue
                }
                Err(source) => {
                    return Err(CgroupError::Io {
                        action: "create",
                        path: parent.clone(),
                        source,
                    })
                }
            }
            let created = match fs::create_dir(&dir) {
                Err(error) if error.kind() == ErrorKind::AlreadyExists => {
                    tracing::warn!(dir = %dir.display(), "replacing a stale cgroup");
                    remove_tree(&dir)?;
                    fs::create_dir(&dir)
                }
                other => other,
            };
            match created {
                Ok(()) => return Ok(dir),
                // The shared parent was empty, and another service (or engine) removed it
                // with its last container in between: make it again.
                Err(error) if error.kind() == ErrorKind::NotFound && tries < MAX_CREATE_TRIES => {}
                Err(source) => {
                    return Err(CgroupError::Io {
                        action: "create",
                        path: dir.clone(),
                        source,
                    })
                }
            }
        }
    }
}

/// One container's cgroups: a directory in each hierarchy it was put in.
#[derive(Debug, Clone, Default)]
pub struct Cgroup {
    unified: Option<PathBuf>,
    freezer: Option<PathBuf>,
    systemd: Option<PathBuf>,
}

impl Cgroup {
    /// Creates the cgroups of container `id` (see the module documentation for which). A stale
    /// empty cgroup of the same name, left by an earlier run, is replaced.
    pub(crate) fn create(
        service: &ServiceCgroups,
        id: i64,
        systemd: bool,
    ) -> Result<Cgroup, CgroupError> {
        let mut cgroup = Cgroup::default();
        match cgroup.populate(service, id, systemd) {
            Ok(()) => Ok(cgroup),
            Err(error) => {
                if let Err(cleanup) = cgroup.remove() {
                    tracing::warn!(id, %cleanup, "cannot remove a half-made cgroup");
                }
                Err(error)
            }
        }
    }

    fn populate(
        &mut self,
        service: &ServiceCgroups,
        id: i64,
        systemd: bool,
    ) -> Result<(), CgroupError> {
        let h = &service.hierarchies;
        if let Some(root) = &h.unified {
            self.unified = Some(service.make_dir(root, id)?);
        }
        let v2_freezes = self
            .unified
            .as_ref()
            .is_some_and(|dir| dir.join("cgroup.freeze").exists());
        if !v2_freezes {
            if let Some(root) = &h.freezer {
                self.freezer = Some(service.make_dir(root, id)?);
            }
        }
        if systemd {
            if let Some(root) = &h.systemd {
                self.systemd = Some(service.make_dir(root, id)?);
            }
        }
        if self.unified.is_none() && self.freezer.is_none() {
            return Err(CgroupError::NoHierarchy);
        }
        Ok(())
    }

    /// The directories of this container's cgroups, one per hierarchy.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        [&self.unified, &self.freezer, &self.systemd]
            .into_iter()
            .filter_map(|dir| dir.as_deref())
    }

    /// Opens the cgroup2 directory, for a child to be cloned straight into it.
    pub(crate) fn open_unified(&self) -> Result<Option<OwnedFd>, CgroupError> {
        let Some(dir) = &self.unified else {
            return Ok(None);
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(dir, flags, Mode::empty()).map_err(|e| CgroupError::Io {
            action: "open",
            path: dir.clone(),
            source: e.into(),
        })?;
        Ok(Some(fd))
    }

    /// Moves process `pid` (as the service sees it) into the container's v1 cgroups. Its
    /// cgroup2 membership is given at birth (see [`Cgroup::open_unified`]).
    pub(crate) fn join_v1(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in [&self.freezer, &self.systemd].into_iter().flatten() {
            write(&dir.join("cgroup.procs"), &pid.to_string(), "join")?;
        }
        Ok(())
    }

    /// Freezes every task of the container and waits until all of them are stopped.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        match (&self.freezer, &self.unified) {
            (Some(dir), _) => freeze_v1(dir),
            (None, Some(dir)) => freeze_v2(dir),
            (None, None) => Err(CgroupError::NoHierarchy),
        }
    }

    /// Lets a frozen container run again. A v1-frozen task does not even die of SIGKILL until
    /// it is thawed.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        match (&self.freezer, &self.unified) {
            (Some(dir), _) => write(&dir.join("freezer.state"), "THAWED", "thaw"),
            (None, Some(dir)) => write(&dir.join("cgroup.freeze"), "0", "thaw"),
            (None, None) => Err(CgroupError::NoHierarchy),
        }
    }

    /// Removes the cgroups, sub-cgroups first. They must be empty: call it once the init has
    /// been reaped (the kernel empties a pid namespace before its init is reported exited).
    /// Directories already gone are fine. The shared `imageapi` parent goes too when nothing
    /// is left in it.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut first_error = None;
        for dir in self.dirs() {
            match remove_tree(dir) {
                Ok(()) => remove_parent_if_empty(dir),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Finds the first cgroup2 mount and the first v1 mounts carrying the freezer controller and
/// the `name=systemd` hierarchy.
fn find_hierarchies(mounts: &[MountEntry]) -> Hierarchies {
    let mut found = Hierarchies::default();
    for mount in mounts {
        let dir = || Some(mount.mount_point.clone());
        let has = |option: &str| mount.super_options.iter().any(|o| o == option);
        match mount.fs_type.as_str() {
            "cgroup2" if found.unified.is_none() => found.unified = dir(),
            "cgroup" => {
                if has("freezer") && found.freezer.is_none() {
                    found.freezer = dir();
                }
                if has("name=systemd") && found.systemd.is_none() {
                    found.systemd = dir();
                }
            }
            _ => {}
        }
    }
    found
}

/// The `cgroup.procs` files of cgroup `dir` and of every cgroup below it.
fn walk_procs(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.join("cgroup.procs")];
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(walk_procs(&entry.path()));
        }
    }
    found
}

/// Removes the shared parent of cgroup `dir` if no cgroup is left in it. Another service's (or
/// engine's) cgroups in it make rmdir(2) fail with EBUSY or ENOTEMPTY: then it stays, for the
/// last of them to remove.
fn remove_parent_if_empty(dir: &Path) {
    if let Some(parent) = dir.parent() {
        let _ = fs::remove_dir(parent);
    }
}

/// Removes a cgroup and its sub-cgroups, deepest first. Cgroup directories only hold
/// directories and kernel files, and rmdir(2) takes a cgroup with its files.
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let io_error = |action, source| CgroupError::Io {
        action,
        path: dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
        other => other.map_err(|source| io_error("list", source))?,
    };
    for entry in entries {
        let entry = entry.map_err(|source| io_error("list", source))?;
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        other => other.map_err(|source| io_error("remove", source)),
    }
}

/// Writes `value` to a cgroup file in one write, as cgroup files expect.
fn write(path: &Path, value: &str, action: &'static str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Io {
        action,
        path: path.to_owned(),
        source,
    })
}

/// v2: set `cgroup.freeze`, then sleep on `cgroup.events` (the kernel notifies pollers of its
/// changes with POLLPRI) until it says `frozen 1`.
fn freeze_v2(dir: &Path) -> Result<(), CgroupError> {
    write(&dir.join("cgroup.freeze"), "1", "freeze")?;
    let path = dir.join("cgroup.events");
    let io_error = |source| CgroupError::Io {
        action: "watch",
        path: path.clone(),
        source,
    };
    let events = File::open(&path).map_err(io_error)?;
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    loop {
        // Reading also arms the notification: poll wakes for changes after the last read.
        let mut buf = [0u8; 256];
        let len = events.read_at(&mut buf, 0).map_err(io_error)?;
        if String::from_utf8_lossy(&buf[..len])
            .lines()
            .any(|line| line == "frozen 1")
        {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let changed =
            !left.is_zero() && poll(events.as_fd(), PollFlags::PRI, left).map_err(io_error)?;
        if !changed {
            write(&dir.join("cgroup.freeze"), "0", "thaw")?;
            return Err(CgroupError::FreezeTimeout {
                path: dir.to_owned(),
                timeout: FREEZE_TIMEOUT,
            });
        }
    }
}

/// v1: write `FROZEN` until `freezer.state` reads `FROZEN` rather than `FREEZING`. The v1
/// freezer has no change notification, so this re-checks every millisecond (and re-writing
/// `FROZEN` retries the tasks that were busy).
fn freeze_v1(dir: &Path) -> Result<(), CgroupError> {
    let state = dir.join("freezer.state");
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    loop {
        write(&state, "FROZEN", "freeze")?;
        let now = fs::read_to_string(&state).map_err(|source| CgroupError::Io {
            action: "read",
            path: state.clone(),
            source,
        })?;
        if now.trim() == "FROZEN" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            write(&state, "THAWED", "thaw")?;
            return Err(CgroupError::FreezeTimeout {
                path: dir.to_owned(),
                timeout: FREEZE_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Cgroup {
    /// The cgroups container `id` of `runtime` has on the host now, whatever is in them:
    /// after a crash, for the processes no adopted init accounts for.
    pub(crate) fn left_by(runtime: &Runtime, id: i64) -> Cgroup {
        let service = runtime.cgroups();
        let h = &service.hierarchies;
        let existing = |root: &Option<PathBuf>| {
            root.as_ref()
                .map(|root| root.join(PARENT_DIR).join(service.dir_name(id)))
                .filter(|dir| dir.is_dir())
        };
        Cgroup {
            unified: existing(&h.unified),
            freezer: existing(&h.freezer),
            systemd: existing(&h.systemd),
        }
    }

    /// The ids of `runtime`'s containers that have a cgroup on the host now.
    pub(crate) fn ids_on_host(runtime: &Runtime) -> Vec<i64> {
        let service = runtime.cgroups();
        let h = &service.hierarchies;
        let prefix = format!("{}-", service.instance);
        let mut ids: Vec<i64> = [&h.unified, &h.freezer, &h.systemd]
            .into_iter()
            .flatten()
            .filter_map(|root| fs::read_dir(root.join(PARENT_DIR)).ok())
            .flat_map(|entries| entries.flatten())
            .filter_map(|entry| {
                let name = entry.file_name();
                name.to_str()?.strip_prefix(&prefix)?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Kills every process in the cgroups (thawing a frozen v1 cgroup so they can die), waits
    /// a moment for them to be gone, and removes the cgroups.
    pub(crate) fn kill_and_remove(&self) -> Result<(), CgroupError> {
        let _ = self.thaw();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            self.kill_all();
            match self.remove() {
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                done => return done,
            }
        }
    }

    /// Sends SIGKILL to every process in the cgroups and their sub-cgroups (systemd's
    /// init.scope and units): through cgroup2's `cgroup.kill` where the kernel has it (5.14+),
    /// else to each pid listed, again on every call, so that late forks are caught too.
    fn kill_all(&self) {
        if let Some(dir) = &self.unified {
            if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                return;
            }
        }
        for dir in self.dirs() {
            for procs in walk_procs(dir) {
                let procs = fs::read_to_string(procs).unwrap_or_default();
                let pids = procs.lines().filter_map(|pid| pid.parse::<i32>().ok());
                for pid in pids.filter_map(Pid::from_raw) {
                    // At worst the process has exited meanwhile: ESRCH.
                    let _ = kill_process(pid, Signal::KILL);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[test]
    fn finds_hybrid_hierarchies() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/uni\\040fied rw,relatime shared:5 - cgroup2 cgroup2 rw
";
        let found = find_hierarchies(&mountinfo::parse(mountinfo));
        assert_eq!(
            found.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/uni fied"))
        );
        assert_eq!(
            found.freezer.as_deref(),
            Some(Path::new("/sys/fs/cgroup/freezer"))
        );
        assert_eq!(
            found.systemd.as_deref(),
            Some(Path::new("/sys/fs/cgroup/systemd"))
        );
    }

    #[test]
    fn finds_pure_v2() {
        let found = find_hierarchies(&mountinfo::parse(
            "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        ));
        assert_eq!(found.unified.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert!(found.freezer.is_none() && found.systemd.is_none());
    }

    /// Another service makes and removes the shared parent as its containers come and go: a
    /// create never fails for that, whichever syscalls of the two interleave.
    #[test]
    fn make_dir_survives_the_parent_coming_and_going() {
        let root = std::env::temp_dir().join(format!("cgroup-race-{}", std::process::id()));
        fs::create_dir(&root).unwrap();
        let service = ServiceCgroups {
            hierarchies: Hierarchies::default(),
            instance: "race".into(),
        };
        let parent = root.join(PARENT_DIR);
        let done = AtomicBool::new(false);
        let creates = AtomicUsize::new(0);
        let failures = std::thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    let seen = creates.load(Ordering::Relaxed);
                    let _ = fs::create_dir(&parent);
                    let _ = fs::remove_dir(&parent);
                    // Its containers take a while to come and go: the parent goes again only
                    // once this service has begun another create. So a create meets at most
                    // one removal, wherever it falls among its syscalls, however loaded the
                    // machine. (A removal every 200 µs on a timer saw a loaded CI machine's
                    // create lose all its tries in a row: no real service removes its parent
                    // that often. The create without its retries still fails this test.)
                    while creates.load(Ordering::Relaxed) == seen && !done.load(Ordering::Relaxed) {
                        std::thread::sleep(std::time::Duration::from_micros(20));
                    }
                }
            });
            let failures: Vec<String> = (0..20_000)
                .filter_map(|id| {
                    creates.fetch_add(1, Ordering::Relaxed);
                    match service.make_dir(&root, id) {
                        Ok(dir) => fs::remove_dir(dir).err().map(|e| e.to_string()),
                        Err(e) => Some(e.to_string()),
                    }
                })
                .collect();
            done.store(true, Ordering::Relaxed);
            failures
        });
        let _ = fs::remove_dir(&parent);
        fs::remove_dir(&root).unwrap();
        assert!(
            failures.is_empty(),
            "{} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
    }

    /// A process in a sub-cgroup (where systemd puts itself) is killed, and every cgroup of the
    /// container removed.
    #[test]
    fn kill_and_remove_reaches_sub_cgroups() {
        let id = 999_000_000 + i64::from(std::process::id());
        let service = ServiceCgroups::read(&format!("unit{}", std::process::id())).unwrap();
        let cgroup = Cgroup::create(&service, id, false).unwrap();
        let top = cgroup.dirs().next().unwrap().to_path_buf();
        let scope = top.join("init.scope");
        fs::create_dir(&scope).unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        fs::write(scope.join("cgroup.procs"), sleeper.id().to_string()).unwrap();

        let killed = cgroup.kill_and_remove();
        let exited = sleeper.try_wait().unwrap();
        if exited.is_none() {
            let _ = sleeper.kill();
            let _ = sleeper.wait();
            let _ = remove_tree(&top);
        }
        assert!(killed.is_ok(), "{killed:?}");
        let status = exited.expect("the process in the sub-cgroup was not killed");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(!top.exists(), "{} left behind", top.display());
    }
}
