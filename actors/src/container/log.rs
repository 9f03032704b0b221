//! The service's lifecycle lines in a container's log, written off the event loop.
//!
//! A file write can block (a slow or full disk), and the container actor lives on the engine's
//! event loop with every other actor. So the actor queues its lines, and a writer task appends
//! them one at a time on the blocking pool: in the order they were given, each after the one
//! before. The writer runs only while lines wait: a container writes a few lines in its life,
//! and an idle one holds its queue alone, not a task and a channel (a thousand containers
//! would keep a thousand of both for nothing). The writer ends once every line given is
//! written, also after the actor is gone. The last line, `deleted`, is appended by the release
//! walk's blocking thread when no line waits (see [`ContainerLog::last_line`]).

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use tracing::warn;

use crate::blocking::off_event_loop;
use crate::model::wire::Id;

/// One line, and who waits for it to be written.
type Entry = (String, Option<oneshot::Sender<()>>);

struct Queue {
    id: Id,
    path: PathBuf,
    lines: VecDeque<Entry>,
    /// A writer task is draining `lines`.
    writing: bool,
}

/// Where a container actor's lifecycle lines go (see the module documentation).
pub(crate) struct ContainerLog {
    queue: Arc<Mutex<Queue>>,
}

impl ContainerLog {
    /// The lifecycle log of container `id` at `path`; lines are written by tasks of the
    /// current event loop.
    pub(crate) fn start(id: Id, path: PathBuf) -> ContainerLog {
        ContainerLog {
            queue: Arc::new(Mutex::new(Queue {
                id,
                path,
                lines: VecDeque::new(),
                writing: false,
            })),
        }
    }

    /// Appends `line` after every line given before it; returns at once.
    pub(crate) fn line(&self, line: impl Into<String>) {
        self.push((line.into(), None));
    }

    /// Appends `line` like [`ContainerLog::line`]; resolves once it is written (or could not
    /// be), so that what depends on it being in the log (a state change) can wait for it.
    pub(crate) fn written(&self, line: impl Into<String>) -> impl std::future::Future<Output = ()> {
        let (done, written) = oneshot::channel();
        self.push((line.into(), Some(done)));
        async move {
            // An error means the writer is gone (the event loop stopped): nothing to wait for.
            let _ = written.await;
        }
    }

    /// The container's last line, as it goes: when no line waits for the writer, an append for
    /// the caller to run on its blocking thread (the release of a container then wakes no
    /// thread of its own); else queued behind the waiting lines.
    pub(crate) fn last_line(
        &self,
        line: impl Into<String>,
    ) -> Option<impl FnOnce() + Send + 'static> {
        let line = line.into();
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.writing {
            queue.lines.push_back((line, None));
            return None;
        }
        // No writer will start: the actor that gives lines is going.
        queue.writing = true;
        let (id, path) = (queue.id, queue.path.clone());
        Some(move || {
            if let Err(error) = append(id, &path, &line) {
                warn!(id, %error, "cannot write the container log");
            }
        })
    }

    fn push(&self, entry: Entry) {
        let start_writer = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.lines.push_back(entry);
            !std::mem::replace(&mut queue.writing, true)
        };
        if start_writer {
            actix_rt::spawn(write_all(self.queue.clone()));
        }
    }
}

/// Appends one lifecycle line of container `id` to its log at `path`, in one write.
fn append(id: Id, path: &Path, line: &str) -> std::io::Result<()> {
    let line = format!("[imageapi] container {id}: {line}\n");
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(line.as_bytes())
}

/// Writes the queued lines in order until none is left.
async fn write_all(queue: Arc<Mutex<Queue>>) {
    loop {
        let (id, path, (line, written)) = {
            let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            match queue.lines.pop_front() {
                Some(entry) => (queue.id, queue.path.clone(), entry),
                None => {
                    queue.writing = false;
                    return;
                }
            }
        };
        let appended = off_event_loop(move || append(id, &path, &line)).await;
        match appended {
            Some(Ok(())) => {}
            Some(Err(error)) => warn!(id, %error, "cannot write the container log"),
            None => warn!(id, "shutting down: a container log line is lost"),
        }
        if let Some(written) = written {
            let _ = written.send(());
        }
    }
}
