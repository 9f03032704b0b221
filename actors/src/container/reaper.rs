//! The service as a child subreaper: orphans of its helpers end up as its children, and this
//! module reaps them so they do not stay zombies.
//!
//! Reaping must never steal the exit status of a child somebody else waits for: the container
//! inits (waited for by [`super::Init::wait`]) and the helpers the service runs with
//! `std::process` or `tokio::process` (which wait by pid). Nothing in the kernel tells an
//! adopted orphan from a child the service forked itself, so the rule is:
//!
//! - a supervised init is registered here, under the same lock the reaper holds while it
//!   scans, from the instant it is cloned until its owner has reaped it: never touched;
//! - an init whose [`super::Init`] was dropped unreaped is handed over ("abandoned") and reaped
//!   here, with its cgroups removed;
//! - any other child is reaped only if it is in a session other than the service's. Children
//!   forked by the service (`Command`) inherit its session; orphans that come up to a subreaper
//!   are, in practice, daemons that called `setsid` to detach from the helper that started
//!   them. So: a helper the service spawns must not be started with `setsid` (its status could
//!   be taken), and an orphan that never left the service's session stays a zombie until the
//!   service exits.
//!
//! Children and the subreaper flag belong to the process, while a [`Reaper`] belongs to one
//! [`super::Runtime`] (one engine): each has its own map of the inits it supervises, its own
//! SIGCHLD handler (through a signal-hook socket, no polling) and its own thread, which lists
//! the process's children from `/proc/self/task/*/children`. So that one runtime's reaper never
//! takes the status of another's init, every scan looks the pids up in the maps of all the
//! live runtimes of the process ([`LIVE`]), holding all of them locked; any runtime's scan may
//! reap an abandoned init, whoever abandoned it. A dropped runtime's thread goes on until the
//! inits abandoned to it are reaped, then stops and leaves [`LIVE`]; the process stays a child
//! subreaper (the flag cannot be shared out), so orphans that come up after the last runtime is
//! gone stay zombies until another one starts or the process exits.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::process::{getpid, set_child_subreaper, waitid, Pid, WaitId, WaitIdOptions};

use super::cgroup::Cgroup;
use crate::sys::proc::{own_children, Stat};

/// Errors starting the reaper.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    /// `prctl(PR_SET_CHILD_SUBREAPER)` failed.
    #[error("cannot become a child subreaper: {0}")]
    Subreaper(#[source] io::Error),
    /// The SIGCHLD handler or its socket could not be set up.
    #[error("cannot watch SIGCHLD: {0}")]
    Signal(#[source] io::Error),
    /// The reaper thread could not be started.
    #[error("cannot start the reaper thread: {0}")]
    Thread(#[source] io::Error),
}

/// Who waits for a registered child.
enum Owner {
    /// Its [`super::Init`] does.
    Supervised,
    /// Nobody any more: the reaper reaps it, then removes these cgroups.
    Abandoned(Cgroup),
}

/// What one runtime's reaper shares with its thread and with the other runtimes' scans.
struct Owners {
    /// The registered children, by pid.
    children: Mutex<BTreeMap<i32, Owner>>,
    /// The write end of the thread's wake-up socket.
    waker: UnixStream,
    /// Set when the runtime is dropped: the thread stops once no child is registered.
    retired: AtomicBool,
}

impl Owners {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<i32, Owner>> {
        // The map stays consistent even if a holder panicked: every update is a single call.
        self.children
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The owners of every live runtime's reaper, in the order their scans lock them (one order for
/// all, so that two scans never deadlock).
static LIVE: Mutex<Vec<Arc<Owners>>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<Arc<Owners>>> {
    LIVE.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// One runtime's reaper (see the module documentation). Dropping it retires it.
pub(crate) struct Reaper {
    owners: Arc<Owners>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

impl Reaper {
    /// Makes the process a child subreaper (again: the flag is the process's) and starts this
    /// reaper's thread.
    pub(crate) fn start() -> Result<Reaper, ReaperError> {
        set_child_subreaper(Some(getpid())).map_err(|e| ReaperError::Subreaper(e.into()))?;
        let (mut wakeups, waker) = UnixStream::pair().map_err(ReaperError::Signal)?;
        // Wake-ups must never block their sender: a full socket holds enough of them.
        waker.set_nonblocking(true).map_err(ReaperError::Signal)?;
        let for_signals = waker.try_clone().map_err(ReaperError::Signal)?;
        let owners = Arc::new(Owners {
            children: Mutex::new(BTreeMap::new()),
            waker,
            retired: AtomicBool::new(false),
        });
        let handler = signal_hook::low_level::pipe::register(libc::SIGCHLD, for_signals)
            .map_err(ReaperError::Signal)?;
        live().push(owners.clone());
        let ours = owners.clone();
        let thread = std::thread::Builder::new()
            .name("imageapi-reaper".into())
            .spawn(move || {
                let mut buf = [0u8; 64];
                // Each read returns once at least one SIGCHLD (or wake-up) arrived since the last.
                loop {
                    match wakeups.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {
                            reap();
                            if ours.retired.load(Ordering::Acquire) && ours.lock().is_empty() {
                                break;
                            }
                        }
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        Err(error) => {
                            tracing::error!(%error, "the reaper cannot read its wake-ups");
                            break;
                        }
                    }
                }
                signal_hook::low_level::unregister(handler);
                live().retain(|owners| !Arc::ptr_eq(owners, &ours));
                if !ours.retired.load(Ordering::Acquire) {
                    tracing::error!("the reaper stopped; orphans will not be reaped");
                }
            });
        if let Err(error) = thread {
            signal_hook::low_level::unregister(handler);
            live().retain(|live| !Arc::ptr_eq(live, &owners));
            return Err(ReaperError::Thread(error));
        }
        // Children may have exited before the handler was installed.
        wake(&owners.waker);
        Ok(Reaper { owners })
    }

    /// Runs `clone` (which starts a supervised init and returns its pid) with this reaper's
    /// map locked, and registers the pid before any reaper can look at the children again.
    pub(crate) fn spawn_supervised<T>(
        &self,
        clone: impl FnOnce() -> io::Result<T>,
        pid: impl Fn(&T) -> i32,
    ) -> io::Result<T> {
        let mut children = self.owners.lock();
        let child = clone()?;
        children.insert(pid(&child), Owner::Supervised);
        Ok(child)
    }

    /// Runs `reap` (which reaps supervised init `pid` if it has exited) with the map locked, and
    /// forgets the pid if it did: the pid is free once reaped, and a new init may get it at once.
    pub(crate) fn reap_supervised<T>(
        &self,
        pid: i32,
        reap: impl FnOnce() -> io::Result<Option<T>>,
    ) -> io::Result<Option<T>> {
        let mut children = self.owners.lock();
        let reaped = reap()?;
        if reaped.is_some() {
            children.remove(&pid);
        }
        Ok(reaped)
    }

    /// Hands an unreaped init over to the reaper, which removes `cgroup` once it has reaped it.
    pub(crate) fn abandon(&self, pid: i32, cgroup: Cgroup) {
        self.owners.lock().insert(pid, Owner::Abandoned(cgroup));
        wake(&self.owners.waker);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.owners.retired.store(true, Ordering::Release);
        wake(&self.owners.waker);
    }
}

/// Makes the reaper thread scan again.
fn wake(mut waker: &UnixStream) {
    // A full socket (WouldBlock) already holds pending wake-ups, so nothing is lost.
    let _ = waker.write(&[0]);
}

/// Reaps every exited child the rules of the module documentation allow, until a scan finds
/// none (the children lists may skip entries while children exit during the read).
fn reap() {
    let live = live();
    let mut maps: Vec<_> = live.iter().map(|owners| owners.lock()).collect();
    // nix, not rustix: a session whose leader is outside the service's pid namespace (as under
    // a container runtime) has id 0, which rustix's non-zero `Pid` cannot hold. Its members
    // read 0 in /proc too, so 0 still tells the service's session from others.
    let ours = nix::unistd::getsid(None).ok().map(nix::unistd::Pid::as_raw);
    loop {
        let mut reaped = 0;
        for pid in own_children() {
            let owner = maps.iter().find_map(|children| children.get(&pid));
            let reapable = match owner {
                Some(Owner::Supervised) => false,
                Some(Owner::Abandoned(_)) => true,
                None => ours.is_some_and(|ours| Stat::read(pid).is_ok_and(|s| s.session != ours)),
            };
            if !reapable || !reap_one(pid) {
                continue;
            }
            reaped += 1;
            let abandoned = maps.iter_mut().find_map(|children| children.remove(&pid));
            if let Some(Owner::Abandoned(cgroup)) = abandoned {
                if let Err(error) = cgroup.remove() {
                    tracing::warn!(pid, %error, "cannot remove an abandoned init's cgroups");
                }
            }
        }
        if reaped == 0 {
            return;
        }
    }
}

/// Reaps `pid` if it has exited; true if it did.
fn reap_one(pid: i32) -> bool {
    let Some(pid) = Pid::from_raw(pid) else {
        return false;
    };
    match waitid(
        WaitId::Pid(pid),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    ) {
        Ok(Some(status)) => {
            tracing::debug!(
                pid = pid.as_raw_nonzero().get(),
                ?status,
                "reaped an orphan"
            );
            true
        }
        Ok(None) | Err(_) => false,
    }
}
