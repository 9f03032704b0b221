//! The service's lifecycle lines in a container's log, written off the event loop.
//!
//! A file write can block (a slow or full disk), and the container actor lives on the engine's
//! event loop with every other actor. So the actor hands its lines to a task of its own, which
//! appends them one at a time on the blocking pool: in the order they were given, each after
//! the one before. The task ends once the actor is gone and every line it gave is written.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::blocking::off_event_loop;
use crate::model::wire::Id;

/// One line, and who waits for it to be written.
type Entry = (String, Option<oneshot::Sender<()>>);

/// Where a container actor's lifecycle lines go (see the module documentation).
pub(crate) struct ContainerLog {
    lines: mpsc::UnboundedSender<Entry>,
}

impl ContainerLog {
    /// Starts the writer of container `id`'s log at `path`, on the current event loop.
    pub(crate) fn start(id: Id, path: PathBuf) -> ContainerLog {
        let (lines, mut queue) = mpsc::unbounded_channel::<Entry>();
        actix_rt::spawn(async move {
            while let Some((line, written)) = queue.recv().await {
                let path = path.clone();
                let appended = off_event_loop(move || {
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .and_then(|mut log| writeln!(log, "[imageapi] container {id}: {line}"))
                })
                .await;
                match appended {
                    Some(Ok(())) => {}
                    Some(Err(error)) => warn!(id, %error, "cannot write the container log"),
                    None => warn!(id, "shutting down: a container log line is lost"),
                }
                if let Some(written) = written {
                    let _ = written.send(());
                }
            }
        });
        ContainerLog { lines }
    }

    /// Appends `line` after every line given before it; returns at once.
    pub(crate) fn line(&self, line: impl Into<String>) {
        let _ = self.lines.send((line.into(), None));
    }

    /// Appends `line` like [`ContainerLog::line`]; resolves once it is written (or could not
    /// be), so that what depends on it being in the log (a state change) can wait for it.
    pub(crate) fn written(&self, line: impl Into<String>) -> impl std::future::Future<Output = ()> {
        let (done, written) = oneshot::channel();
        let _ = self.lines.send((line.into(), Some(done)));
        async move {
            // An error means the writer is gone (the event loop stopped): nothing to wait for.
            let _ = written.await;
        }
    }
}
