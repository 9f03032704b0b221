//! Launching a container init: checks, cgroups, clone, placement, and the init's verdict.
//!
//! [`launch`] runs on a blocking thread of the service:
//! 1. it checks what the client is to blame for (the command, the namespaces) before touching
//!    the kernel, so that those come back as rejections;
//! 2. it writes the init's spec to a memfd and creates the container's cgroups (the first
//!    launch also makes the sealed copy of the init program, see [`InitProgram`]);
//! 3. it takes a detached copy of the image's mount tree and, on the launcher thread (whose
//!    mount namespace holds no container's mounts: the `launcher` module), clones the child into
//!    the new namespaces and its cgroup2 cgroup (the `clone` module); the child waits;
//! 4. it writes the user namespace maps, puts the child in its v1 cgroups (it was born in its
//!    cgroup2 one), and lets it go: the child executes the init program ([`super::init`]);
//! 5. it reads the report pipe: end of file means the payload runs, a report means the init
//!    failed, and the failed child is reaped and its cgroups removed before returning.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use linux_raw_sys::general::{
    CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWTIME, CLONE_NEWUSER,
    CLONE_NEWUTS,
};
use rustix::event::PollFlags;
use rustix::fs::{accessat, fstat, memfd_create, Access, AtFlags, FileType, CWD};
use rustix::fs::{fcntl_add_seals, MemfdFlags, Mode, OFlags, ResolveFlags, SealFlags};
use rustix::io::Errno;
use rustix::mount::{open_tree, OpenTreeFlags};
use rustix::process::{pidfd_send_signal, waitid, Signal, WaitId, WaitIdOptions};

use super::cgroup::{Cgroup, CgroupError};
use super::console::Console;
use super::process::Init;
use super::runtime::Runtime;
use super::spec::{InitSpec, Report, SEARCH_PATH};
use super::timing::{Lap, LaunchTimes};
use crate::model::wire::Namespace;
use crate::sys::beneath::{fd_path, open_resolved};
use crate::sys::clone::{Child, ChildPlan, ParentEnds};
use crate::sys::poll::poll;
use crate::sys::proc::Stat;

/// How long the init may take to set up the container and execute the payload.
const INIT_SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest host name the kernel takes.
const HOSTNAME_MAX: usize = 64;

/// The user namespace map: identity over the whole id range. The container's root is the host's
/// root, but its capabilities only count inside its own namespaces.
const IDENTITY_MAP: &str = "0 0 4294967295";

/// What to run, where, and how isolated.
#[derive(Debug)]
pub struct InitConfig {
    /// The container id, for the cgroup names and messages.
    pub id: i64,
    /// An existing directory on the host (normally the container's mount point) that becomes
    /// `/`.
    pub rootfs: PathBuf,
    /// The init's command line, already split; `argv[0]` without a `/` is looked for in
    /// `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin` inside the image.
    pub argv: Vec<String>,
    /// The init's environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// The host name, set when `uts` is among the namespaces.
    pub hostname: String,
    /// The namespaces the init gets of its own. `mnt` and `pid` are always added: the runtime
    /// needs them. A systemd container with `user` needs `cgroup` too.
    pub namespaces: BTreeSet<Namespace>,
    /// Whether to prepare the mounts and cgroups systemd expects, and a console: a
    /// pseudo-terminal on `/dev/console` whose output goes to the log.
    pub systemd: bool,
    /// The console log: the init's stdout and stderr (stdin is `/dev/null`). Open it with
    /// `O_APPEND`, so that the service's own lines interleave safely.
    pub log: File,
}

/// Why a container could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The configuration cannot work: empty command, NUL bytes, a host name too long.
    #[error("invalid container configuration: {0}")]
    Invalid(String),
    /// The command is not in the image.
    #[error("init {path} not found in the image")]
    InitNotFound {
        /// The command, as given.
        path: String,
    },
    /// The command is in the image but is not a regular file.
    #[error("init {path} is not a regular file")]
    InitNotRegular {
        /// The command, as given.
        path: String,
    },
    /// The command is in the image but may not be executed.
    #[error("init {path} is not executable")]
    InitNotExecutable {
        /// The command, as given.
        path: String,
    },
    /// This kernel lacks a namespace type that was asked for.
    #[error("this kernel has no {0} namespaces")]
    NamespaceUnsupported(&'static str),
    /// A kernel operation of the service failed.
    #[error("cannot {step}: {source}")]
    Kernel {
        /// What the service was doing.
        step: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The init failed before it could execute the payload.
    #[error("container init cannot {step}: {source}")]
    Init {
        /// What the init was doing, e.g. `mount proc on /proc`.
        step: String,
        /// Whether the image is to blame (the payload could not be executed).
        rejection: bool,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The container's cgroups could not be made.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

impl LaunchError {
    /// Whether the client is to blame (the command or image is unusable, or a namespace cannot
    /// be had here), as opposed to a failure of the kernel or the host.
    pub fn is_rejection(&self) -> bool {
        match self {
            LaunchError::Invalid(_)
            | LaunchError::InitNotFound { .. }
            | LaunchError::InitNotRegular { .. }
            | LaunchError::InitNotExecutable { .. }
            | LaunchError::NamespaceUnsupported(_) => true,
            LaunchError::Init { rejection, .. } => *rejection,
            LaunchError::Kernel { .. } | LaunchError::Cgroup(_) => false,
        }
    }
}

/// A closure that wraps an I/O error as a [`LaunchError::Kernel`] at `step`.
fn kernel<E: Into<io::Error>>(step: impl Into<String>) -> impl FnOnce(E) -> LaunchError {
    let step = step.into();
    move |source| LaunchError::Kernel {
        step,
        source: source.into(),
    }
}

/// Checks, before launch, that `argv0` names a regular, executable file inside `rootfs`.
/// Symlinks resolve inside the image (`/sbin/init -> /lib/systemd/systemd`), never onto the
/// host; a name without `/` is looked for in the standard `PATH` directories of the image.
pub fn check_init(rootfs: &Path, argv0: &str) -> Result<(), LaunchError> {
    if argv0.is_empty() {
        return Err(LaunchError::Invalid("the command is empty".into()));
    }
    let root = rustix::fs::open(rootfs, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
        .map_err(kernel(format!("open the image root {}", rootfs.display())))?;
    if argv0.contains('/') {
        return check_file(&root, argv0, argv0);
    }
    let mut refused = None;
    for dir in SEARCH_PATH {
        match check_file(&root, &format!("{dir}/{argv0}"), argv0) {
            Ok(()) => return Ok(()),
            Err(LaunchError::InitNotFound { .. }) => {}
            Err(error) => {
                refused.get_or_insert(error);
            }
        }
    }
    Err(refused.unwrap_or_else(|| LaunchError::InitNotFound {
        path: argv0.to_owned(),
    }))
}

/// Checks one path of the image; `shown` is the command as the client gave it.
fn check_file(root: &OwnedFd, path: &str, shown: &str) -> Result<(), LaunchError> {
    let flags = OFlags::PATH | OFlags::CLOEXEC;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let file = match open_resolved(root, path, flags, resolve) {
        Ok(file) => file,
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {
            return Err(LaunchError::InitNotFound {
                path: shown.to_owned(),
            })
        }
        Err(error) => return Err(kernel(format!("look up {path} in the image"))(error)),
    };
    let stat = fstat(&file).map_err(kernel(format!("stat {path} in the image")))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(LaunchError::InitNotRegular {
            path: shown.to_owned(),
        });
    }
    // access(2) also accounts for a noexec mount, which the mode bits do not show. It takes
    // the file through its /proc/self/fd link (no AT_EMPTY_PATH in rustix's accessat).
    accessat(
        CWD,
        fd_path(file.as_fd()),
        Access::EXEC_OK,
        AtFlags::empty(),
    )
    .map_err(|_| LaunchError::InitNotExecutable {
        path: shown.to_owned(),
    })
}

/// Starts the init of a container of `runtime`. Blocking: call it on a blocking thread. Returns
/// once the init has executed the payload (its status then comes from [`Init::wait`]), or with
/// the reason it could not; nothing is left behind on failure.
pub fn launch(runtime: &Arc<Runtime>, config: InitConfig) -> Result<Init, LaunchError> {
    launch_timed(runtime, config).map(|(init, _)| init)
}

/// [`launch()`], answering also how long each of its steps took.
pub fn launch_timed(
    runtime: &Arc<Runtime>,
    config: InitConfig,
) -> Result<(Init, LaunchTimes), LaunchError> {
    let mut lap = Lap::start();
    let mut times = LaunchTimes::default();
    let mut namespaces = config.namespaces.clone();
    namespaces.extend([Namespace::Mnt, Namespace::Pid]);
    for namespace in &namespaces {
        let name = namespace_name(*namespace);
        if !Path::new("/proc/self/ns").join(name).exists() {
            return Err(LaunchError::NamespaceUnsupported(name));
        }
    }
    // systemd writes its boot and shutdown lines to /dev/console only.
    let console = if config.systemd {
        Some(Console::open().map_err(kernel("open a console pseudo-terminal"))?)
    } else {
        None
    };
    let console_path = console.as_ref().map(|console| console.path().clone());
    let spec = spec(runtime, &config, &namespaces, console_path)?;
    check_init(&config.rootfs, &spec.argv[0])?;
    let spec_fd = write_spec(&spec)?;
    let flags = namespaces
        .iter()
        .fold(0, |flags, ns| flags | clone_flag(*ns));
    times.prepare = lap.lap();
    let program = runtime.init_program().sealed()?;
    times.program = lap.lap();
    let image = open_tree(CWD, &config.rootfs, image_tree_flags()).map_err(kernel(format!(
        "copy the mount of {}",
        config.rootfs.display()
    )))?;
    times.image = lap.lap();
    // Last of the fallible steps before the clone: the cgroups are removed if anything after
    // fails.
    let cgroup = Cgroup::create(runtime.cgroups(), config.id, config.systemd)?;
    times.cgroup = lap.lap();
    let started = ChildPlan::new(program, &config.log, spec_fd, image)
        .map_err(kernel("prepare the init's descriptors"))
        .and_then(|(plan, ends)| start(runtime, plan, ends, flags, &spec, &cgroup, &mut times));
    match started {
        Ok((child, start_time)) => {
            times.log(config.id);
            if let Some(console) = console {
                // The container runs either way; only its console lines would be missing.
                if let Err(error) = console.relay(config.id, child.pidfd.as_fd(), &config.log) {
                    tracing::warn!(id = config.id, %error, "cannot relay the console to the log");
                }
            }
            let init = Init::new(runtime.clone(), config.id, child, start_time, cgroup);
            Ok((init, times))
        }
        Err(error) => {
            if let Err(cleanup) = cgroup.remove() {
                tracing::warn!(id = config.id, %cleanup, "cannot remove the cgroups of a failed launch");
            }
            Err(error)
        }
    }
}

/// The program every init of a [`Runtime`] runs: a binary whose `main` starts with
/// [`super::run_if_init`] (the service's `imageapi-init`, or a test binary), executed from a
/// sealed in-memory copy made at the first launch. While the init runs it,
/// `/proc/<init>/exe` points to the program, and a container process that got hold of it (say,
/// through a payload script starting `#!/proc/self/exe`) could otherwise write to the binary on
/// the host (CVE-2019-5736). A sealed memfd cannot be written.
///
/// A small program of its own rather than the service binary: the kernel maps and the loader
/// relocates the whole binary at each exec, and the service's is twenty times the size.
#[derive(Debug)]
pub struct InitProgram {
    path: PathBuf,
    sealed: OnceLock<OwnedFd>,
}

impl InitProgram {
    pub fn new(path: PathBuf) -> InitProgram {
        InitProgram {
            path,
            sealed: OnceLock::new(),
        }
    }

    /// The sealed copy, made at the first call.
    pub(crate) fn sealed(&self) -> Result<BorrowedFd<'_>, LaunchError> {
        if let Some(fd) = self.sealed.get() {
            return Ok(fd.as_fd());
        }
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        // MFD_EXEC keeps the copy executable where vm.memfd_noexec asks for it; older kernels
        // (before 6.3) do not know the flag, and all their memfds are executable.
        let memfd = match memfd_create("imageapi-init", flags | MemfdFlags::EXEC) {
            Err(Errno::INVAL) => memfd_create("imageapi-init", flags),
            other => other,
        }
        .map_err(kernel("create the init program's memfd"))?;
        let mut copy = File::from(memfd);
        File::open(&self.path)
            .and_then(|mut binary| io::copy(&mut binary, &mut copy))
            .map_err(kernel(format!(
                "copy the init program {}",
                self.path.display()
            )))?;
        let seals = SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE;
        fcntl_add_seals(&copy, seals).map_err(kernel("seal the init program"))?;
        Ok(self.sealed.get_or_init(|| copy.into()).as_fd())
    }
}

/// A recursive copy of a mount tree, as a descriptor (not inherited by other children).
fn image_tree_flags() -> OpenTreeFlags {
    OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_RECURSIVE
}

/// Builds and checks the spec the init gets.
fn spec(
    runtime: &Runtime,
    config: &InitConfig,
    namespaces: &BTreeSet<Namespace>,
    console: Option<PathBuf>,
) -> Result<InitSpec, LaunchError> {
    if config.argv.is_empty() {
        return Err(LaunchError::Invalid("the command is empty".into()));
    }
    let mut strings = config
        .argv
        .iter()
        .chain(&config.env)
        .chain([&config.hostname]);
    if strings.any(|s| s.contains('\0')) {
        return Err(LaunchError::Invalid(
            "the command, environment and host name must not contain NUL bytes".into(),
        ));
    }
    let uts = namespaces.contains(&Namespace::Uts);
    if uts && config.hostname.len() > HOSTNAME_MAX {
        return Err(LaunchError::Invalid(format!(
            "the host name is longer than {HOSTNAME_MAX} bytes"
        )));
    }
    let user = namespaces.contains(&Namespace::User);
    let cgroup = namespaces.contains(&Namespace::Cgroup);
    if config.systemd && user && !cgroup {
        // Only the owner of a cgroup namespace may mount cgroup file systems for systemd.
        return Err(LaunchError::Invalid(
            "a systemd container with a user namespace needs a cgroup namespace too".into(),
        ));
    }
    Ok(InitSpec {
        argv: config.argv.clone(),
        env: config.env.clone(),
        hostname: uts.then(|| config.hostname.clone()),
        cgroup_namespace: cgroup,
        user_namespace: user,
        systemd: config.systemd,
        unified_cgroups: config.systemd && runtime.cgroups().unified_only(),
        console,
    })
}

/// The spec as JSON in a memfd, rewound for the init to read.
fn write_spec(spec: &InitSpec) -> Result<OwnedFd, LaunchError> {
    let json = serde_json::to_vec(spec)
        .map_err(|e| LaunchError::Invalid(format!("the spec cannot be encoded: {e}")))?;
    let memfd = memfd_create("imageapi-init-spec", MemfdFlags::CLOEXEC)
        .map_err(kernel("create the spec memfd"))?;
    let mut file = File::from(memfd);
    file.write_all(&json)
        .and_then(|()| file.rewind())
        .map_err(kernel("write the spec memfd"))?;
    Ok(file.into())
}

/// Clones the child, places it and lets it go; returns it with its start time once the payload
/// runs, and the times of the steps in `times`. On failure the child is killed (if needed) and
/// reaped.
fn start(
    runtime: &Arc<Runtime>,
    plan: ChildPlan,
    ends: ParentEnds,
    flags: u64,
    spec: &InitSpec,
    cgroup: &Cgroup,
    times: &mut LaunchTimes,
) -> Result<(Child, u64), LaunchError> {
    let mut lap = Lap::start();
    let unified = cgroup.open_unified()?;
    times.cgroup += lap.lap();
    // The job holds the runtime: its reaper registers the child.
    let owner = runtime.clone();
    let (child, clone) = runtime
        .launcher()
        .run(move || {
            let mut lap = Lap::start();
            let child = owner.reaper().spawn_supervised(
                || plan.spawn(flags, unified.as_ref().map(AsFd::as_fd)),
                |child| child.pid,
            );
            child.map(|child| (child, lap.lap()))
        })
        .map_err(io::Error::from)
        .and_then(|cloned| cloned)
        .map_err(kernel("clone the init"))?;
    times.clone = clone;
    times.hop = lap.lap().saturating_sub(clone);
    match place_and_release(&child, ends, spec, cgroup, times) {
        Ok(start_time) => Ok((child, start_time)),
        Err(error) => {
            reap_failed(runtime, &child);
            Err(error)
        }
    }
}

/// Reads the start time, writes the id maps, joins the v1 cgroups, lets the child go and waits
/// for the init's verdict.
fn place_and_release(
    child: &Child,
    ends: ParentEnds,
    spec: &InitSpec,
    cgroup: &Cgroup,
    times: &mut LaunchTimes,
) -> Result<u64, LaunchError> {
    let mut lap = Lap::start();
    let pid = child.pid;
    // The child waits for us and we hold its pidfd unreaped: the pid cannot be reused yet.
    let start_time = Stat::read(pid)
        .map_err(kernel(format!("read /proc/{pid}/stat")))?
        .start_time;
    if spec.user_namespace {
        for map in ["uid_map", "gid_map"] {
            fs::write(format!("/proc/{pid}/{map}"), IDENTITY_MAP)
                .map_err(kernel(format!("write the init's {map}")))?;
        }
    }
    cgroup.join_v1(pid)?;
    times.place = lap.lap();
    let ParentEnds { go, mut report } = ends;
    File::from(go)
        .write_all(&[1])
        .map_err(kernel("let the init go"))?;
    // Setting up takes milliseconds; an init stuck for longer (say, on a dead NFS server) is
    // killed rather than left to hold a thread of the service.
    let answered = poll(report.as_fd(), PollFlags::IN, INIT_SETUP_TIMEOUT)
        .map_err(kernel("wait for the init's report"))?;
    if !answered {
        return Err(kernel("wait for the init to set up")(io::Error::from(
            io::ErrorKind::TimedOut,
        )));
    }
    let mut answer = Vec::new();
    report
        .read_to_end(&mut answer)
        .map_err(kernel("read the init's report"))?;
    times.setup = lap.lap();
    match Report::decode(&answer) {
        None => Ok(start_time),
        Some(report) => Err(LaunchError::Init {
            source: report.error(),
            rejection: report.rejection,
            step: report.step,
        }),
    }
}

/// Kills a child that will not become a running container (it may already have exited on its
/// own), reaps it and forgets it.
fn reap_failed(runtime: &Runtime, child: &Child) {
    if let Err(error) = pidfd_send_signal(&child.pidfd, Signal::KILL) {
        tracing::debug!(pid = child.pid, %error, "failed child already gone");
    }
    let pidfd = || WaitId::PidFd(child.pidfd.as_fd());
    // Wait for the exit without reaping first, so as not to hold the reaper's lock meanwhile.
    let exited = waitid(pidfd(), WaitIdOptions::EXITED | WaitIdOptions::NOWAIT)
        .map_err(io::Error::from)
        .and_then(|_| {
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
            runtime
                .reaper()
                .reap_supervised(child.pid, || Ok(waitid(pidfd(), options)?))
        });
    if let Err(error) = exited {
        tracing::warn!(pid = child.pid, %error, "cannot reap a failed init");
    }
}

/// The `clone3` flag of a namespace. The cgroup namespace is entered by the init itself, once
/// it runs in its cgroups, so that the namespace is rooted there.
fn clone_flag(namespace: Namespace) -> u64 {
    u64::from(match namespace {
        Namespace::Mnt => CLONE_NEWNS,
        Namespace::Pid => CLONE_NEWPID,
        Namespace::Uts => CLONE_NEWUTS,
        Namespace::Ipc => CLONE_NEWIPC,
        Namespace::Net => CLONE_NEWNET,
        Namespace::User => CLONE_NEWUSER,
        Namespace::Time => CLONE_NEWTIME,
        Namespace::Cgroup => 0,
    })
}

/// The namespace's name in `/proc/<pid>/ns` (and on the wire).
fn namespace_name(namespace: Namespace) -> &'static str {
    match namespace {
        Namespace::Cgroup => "cgroup",
        Namespace::Ipc => "ipc",
        Namespace::Net => "net",
        Namespace::Mnt => "mnt",
        Namespace::Pid => "pid",
        Namespace::Time => "time",
        Namespace::User => "user",
        Namespace::Uts => "uts",
    }
}
