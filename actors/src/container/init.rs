//! The container init: the init program (`imageapi-init`) executed by [`super::launch()`] as PID 1 of the new
//! namespaces. It is single-threaded and owns nothing of the service, so unlike the clone child
//! it may allocate and take its time: it reads its spec, joins a cgroup namespace, builds the
//! root (see the `rootfs` module), sets the host name, and executes the payload in its place.
//! Any failure is reported to the service (see the `spec` module) and ends it with code 127.

use std::convert::Infallible;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Read;

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::unistd::{execve, sethostname};
use rustix::fs::Mode;
use rustix::process::umask;

use super::rootfs;
use super::spec::{
    InitSpec, Report, Step, FAILED_EXIT_CODE, IMAGE_FD, INIT_MARKER, REPORT_FD, SEARCH_PATH,
    SPEC_FD,
};
use crate::sys::fd::{claim_inherited, close_inherited_from, set_cloexec};
use crate::sys::signal::reset_all_to_default;

/// Call it first thing in the init program's `main`, before any thread or runtime starts: when the
/// process was started as a container init (`argv[1]` is the private marker), it builds the
/// container and executes the payload, and never returns. Otherwise it returns at once.
pub fn run_if_init() {
    if std::env::args_os().nth(1).as_deref() != Some(OsStr::new(INIT_MARKER)) {
        return;
    }
    let report = match run() {
        Ok(never) => match never {},
        Err(report) => report,
    };
    report.send(REPORT_FD);
    std::process::exit(FAILED_EXIT_CODE);
}

fn run() -> Result<Infallible, Report> {
    // Only descriptors 0 to IMAGE_FD were handed over; anything above leaked from the service
    // without close-on-exec and must not reach the container.
    // Nothing in this process owns a descriptor above IMAGE_FD: the init has opened nothing yet.
    close_inherited_from(IMAGE_FD + 1);
    let spec = read_spec()?;
    // End of file on the report pipe is how the service learns that the payload runs.
    set_cloexec(REPORT_FD).step(|| "set up the report pipe".into())?;
    if spec.cgroup_namespace {
        // The service has put this process in its cgroups: the namespace is rooted there.
        unshare(CloneFlags::CLONE_NEWCGROUP).step(|| "enter a cgroup namespace".into())?;
    }
    // Device nodes and mount points get exactly the modes asked for.
    let umask_before = umask(Mode::empty());
    // The clone child put the image's mount tree on IMAGE_FD for this process.
    let image = claim_inherited(IMAGE_FD).ok_or_else(|| handed_over("the image"))?;
    rootfs::prepare(&spec, image)?;
    if let Some(hostname) = &spec.hostname {
        sethostname(hostname).step(|| format!("set the host name to {hostname}"))?;
    }
    umask(umask_before);
    reset_signals()?;
    execute(&spec)
}

/// Reads the spec from [`SPEC_FD`] and closes it.
fn read_spec() -> Result<InitSpec, Report> {
    // The clone child put the spec memfd on SPEC_FD for this process.
    let mut file = File::from(claim_inherited(SPEC_FD).ok_or_else(|| handed_over("the spec"))?);
    let mut json = Vec::new();
    file.read_to_end(&mut json)
        .step(|| "read the container spec".into())?;
    serde_json::from_slice(&json).step(|| "parse the container spec".into())
}

/// The report for a descriptor the clone child should have handed over and did not.
fn handed_over(what: &str) -> Report {
    Report::kernel(
        format!("take over {what}"),
        std::io::Error::from_raw_os_error(libc::EBADF),
    )
}

/// Gives the payload default signal handling: the service blocked every signal around the
/// clone, and the Rust runtime of this binary ignores SIGPIPE, which exec would pass on.
fn reset_signals() -> Result<(), Report> {
    reset_all_to_default();
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .step(|| "unblock signals".into())
}

/// Executes the payload in place of the init. A name without `/` is looked for in
/// [`SEARCH_PATH`], like `execvp` does.
fn execute(spec: &InitSpec) -> Result<Infallible, Report> {
    let cstrings = |strings: &[String]| -> Result<Vec<CString>, Report> {
        strings
            .iter()
            .map(|s| CString::new(s.as_str()).map_err(|e| Report::rejection("pass the command", e)))
            .collect()
    };
    let argv = cstrings(&spec.argv)?;
    let env = cstrings(&spec.env)?;
    // The clone child asked to die with the service while it was being set up (see
    // clone.rs); the container itself must outlive the service, so that ends here.
    nix::sys::prctl::set_pdeathsig(None)
        .map_err(|e| Report::kernel("clear the parent-death signal", e))?;
    let name = spec.argv[0].as_str();
    let candidates: Vec<String> = if name.contains('/') {
        vec![name.to_owned()]
    } else {
        SEARCH_PATH
            .iter()
            .map(|dir| format!("{dir}/{name}"))
            .collect()
    };
    let mut refused = Errno::ENOENT;
    for candidate in candidates {
        let path = CString::new(candidate).map_err(|e| Report::rejection("pass the command", e))?;
        match execve(&path, &argv, &env) {
            Err(Errno::ENOENT | Errno::ENOTDIR) => {}
            Err(Errno::EACCES) => refused = Errno::EACCES,
            Err(error) => return Err(exec_failure(name, error)),
            Ok(never) => match never {},
        }
    }
    Err(exec_failure(name, refused))
}

/// Whether the image is to blame for a failed exec (missing file, interpreter or permission,
/// unknown format), rather than the kernel.
fn exec_failure(name: &str, error: Errno) -> Report {
    let step = format!("execute {name}");
    match error {
        Errno::ENOENT
        | Errno::ENOTDIR
        | Errno::EACCES
        | Errno::ENOEXEC
        | Errno::ELOOP
        | Errno::EISDIR
        | Errno::ENAMETOOLONG
        | Errno::ELIBBAD
        | Errno::E2BIG => Report::rejection(step, error),
        _ => Report::kernel(step, error),
    }
}
