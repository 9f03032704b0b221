//! The journal's `fdatasync`, on a thread of its own behind the appends.
//!
//! A batch counts as stored once its line is written to the journal file: from then on it
//! survives a crash or a SIGKILL of the service, which is what the store is for (the objects it
//! describes live in the kernel, which outlives the service). Waiting for the disk too would
//! only guard against a crash of the kernel, and that takes every loop device, mount and init
//! the graph describes with it: the next start removes them all as gone (see
//! docs/persistence.md). So the answer does not wait for the sync (it cost a create 0.5 to
//! 2 ms on ext4, most of the difference to the kernel floor); the sync still follows each
//! append at once, so that the disk is seldom more than one sync behind.

use std::fs::File;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Syncs the file last handed to [`BackgroundSync::after_append`]; requests that arrive while
/// a sync runs are folded into one more.
pub(super) struct BackgroundSync {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// The journal to sync next; none when the last request was served.
    due: Option<Arc<File>>,
    /// The first failure since the store last asked.
    failed: Option<io::Error>,
    stop: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update of `State` is a plain assignment: a panicked holder leaves it usable.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl BackgroundSync {
    pub fn start() -> io::Result<BackgroundSync> {
        let shared = Arc::new(Shared::default());
        let syncing = shared.clone();
        let thread = std::thread::Builder::new()
            .name("imageapi-store-sync".into())
            .spawn(move || run(&syncing))?;
        Ok(BackgroundSync {
            shared,
            thread: Some(thread),
        })
    }

    /// Asks for `journal` to be synced, without waiting.
    pub fn after_append(&self, journal: &Arc<File>) {
        self.shared.state().due = Some(journal.clone());
        self.shared.wake.notify_one();
    }

    /// A sync that failed since the last call: the store then writes a whole new snapshot
    /// (which it syncs itself) rather than trusting the journal.
    pub fn take_failure(&self) -> Option<io::Error> {
        self.shared.state().failed.take()
    }
}

impl Drop for BackgroundSync {
    /// Serves the last request, then ends the thread.
    fn drop(&mut self) {
        self.shared.state().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared) {
    // Woken by an append, the sync would otherwise preempt the appending thread on its CPU
    // before that one answers (on two CPUs, some 25 us of a DELETE's answer).
    if let Err(err) = crate::sys::sched::batch_this_thread() {
        tracing::debug!(error = %err, "the store's sync thread keeps the normal policy");
    }
    let mut state = shared.state();
    loop {
        if let Some(journal) = state.due.take() {
            drop(state);
            let synced = journal.sync_data();
            state = shared.state();
            if let Err(err) = synced {
                state.failed.get_or_insert(err);
            }
        } else if state.stop {
            return;
        } else {
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(|poison| poison.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_asked_for_before_the_end_is_served_and_a_failure_is_told_once() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(File::create(dir.path().join("journal")).unwrap());
        let sync = BackgroundSync::start().unwrap();
        sync.after_append(&journal);
        // A descriptor that cannot be synced: a pipe's.
        let (read, _write) = nix::unistd::pipe().unwrap();
        sync.after_append(&Arc::new(File::from(read)));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let failure = loop {
            if let Some(failure) = sync.take_failure() {
                break failure;
            }
            assert!(std::time::Instant::now() < deadline, "no failure was told");
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(failure.raw_os_error(), Some(libc::EINVAL), "{failure}");
        assert!(sync.take_failure().is_none());
        sync.after_append(&journal);
        drop(sync);
        assert_eq!(
            Arc::strong_count(&journal),
            1,
            "the thread let go of the journal"
        );
    }
}
