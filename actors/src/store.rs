//! The state store: the registry's whole object graph, with the kernel facts of each object, in
//! one JSON file under the state dir that is replaced atomically on every change.
//!
//! Why a file and not an embedded database: the graph of a node is small (a few hundred objects
//! at most), it has exactly one writer (the registry), and it is read whole at start. Writing a
//! new file, syncing it and renaming it over the old one is crash-safe (a reader sees the old or
//! the new graph, never a mix), needs no new dependency and leaves a file an operator can read.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::wire::Id;
use crate::registry::graph::Graph;
use crate::registry::record::Record;

/// The format this service writes. A store of a newer format is refused (never guessed at).
pub const FORMAT: u32 = 1;

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";

/// What the kernel said about an object when it was made: how to recognise it after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Facts {
    /// `/dev/loop<number>` bound to `backing_file` (as sysfs shows it).
    Loop { number: u32, backing_file: PathBuf },
    /// A filesystem mounted on `mountpoint`; of `fs_type` where the service chose the type (a
    /// bind shows its source's type).
    Mount {
        mountpoint: PathBuf,
        fs_type: Option<String>,
    },
    /// A container init: its pid and its start time (clock ticks after boot, from
    /// `/proc/<pid>/stat`), which together tell it from a later process with the same pid.
    Init { pid: i32, start_time: u64 },
}

/// Everything the service must find again after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    /// Names this service's cgroups and tags, so two services on one host never mix them up.
    pub instance: String,
    pub graph: Graph<Record>,
    pub facts: BTreeMap<Id, Facts>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use the state dir {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another imageapi-server already uses the state dir {0}")]
    Locked(PathBuf),
    #[error("cannot read the state store {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the state store {path} is corrupt ({reason}). Nothing was changed on the node. \
         Keep the file for inspection; to start over, move it away and clean up what it \
         listed (see docs/persistence.md)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the state store {path} has format {found}, newer than this service's {FORMAT}: \
         run the newer service, or see docs/persistence.md"
    )]
    TooNew { path: PathBuf, found: u32 },
    #[error("cannot write the state store {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The state dir, locked for this process.
pub struct Store {
    dir: PathBuf,
    /// Held (flock) for the life of the process: a second service on the same dir is refused.
    _lock: File,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let dir_error = |source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(dir_error)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(dir_error)?;
        rustix::fs::flock(
            lock.as_fd(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .map_err(|_| StoreError::Locked(dir.to_path_buf()))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The stored snapshot; `None` for a state dir that never held one.
    pub fn load(&self) -> Result<Option<Snapshot>, StoreError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|err| StoreError::Corrupt {
                path: path.clone(),
                reason: err.to_string(),
            })?;
        let format = value.get("format").and_then(|f| f.as_u64()).unwrap_or(0) as u32;
        if format > FORMAT {
            return Err(StoreError::TooNew {
                path,
                found: format,
            });
        }
        let snapshot = upgrade(value).map_err(|reason| StoreError::Corrupt {
            path: path.clone(),
            reason,
        })?;
        Ok(Some(snapshot))
    }

    /// Replaces the stored snapshot: write a new file, sync it, rename it over the old one,
    /// sync the directory. Blocking: runs on the blocking pool.
    pub fn save(&self, serialized: &[u8]) -> Result<(), StoreError> {
        let path = self.path();
        let write_error = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        let mut staged = tempfile::NamedTempFile::new_in(&self.dir).map_err(write_error)?;
        staged.write_all(serialized).map_err(write_error)?;
        staged.as_file().sync_all().map_err(write_error)?;
        staged
            .persist(&path)
            .map_err(|err| write_error(err.error))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(write_error)
    }
}

/// Reads a stored snapshot of this or an older format. Format 1 is the first; later formats add
/// their upgrade steps here, so a node's graph survives an upgrade of the service.
fn upgrade(value: serde_json::Value) -> Result<Snapshot, String> {
    match value.get("format").and_then(|f| f.as_u64()) {
        Some(1) => serde_json::from_value(value).map_err(|err| err.to_string()),
        other => Err(format!("unknown format {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            format: FORMAT,
            instance: "test".to_string(),
            graph: Graph::new(),
            facts: BTreeMap::from([(
                1,
                Facts::Loop {
                    number: 3,
                    backing_file: PathBuf::from("/img"),
                },
            )]),
        }
    }

    #[test]
    fn saves_and_loads_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.load().unwrap().is_none());
        store
            .save(&serde_json::to_vec(&snapshot()).unwrap())
            .unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(loaded.facts, snapshot().facts);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            leftovers.len(),
            2,
            "only the store and its lock: {leftovers:?}"
        );
    }

    /// A store written by the first format's service, kept as it was: every later service must
    /// still load it (through `upgrade`), so a node's graph survives an upgrade of the service.
    #[test]
    fn a_format_1_store_still_loads() {
        let stored = include_str!("../tests/data/state-format-1.json");
        let snapshot = upgrade(serde_json::from_str(stored).unwrap()).unwrap();
        assert_eq!(snapshot.graph.iter().count(), 4);
        assert_eq!(snapshot.graph.next_id(), 5);
        assert!(snapshot
            .facts
            .values()
            .any(|facts| matches!(facts, Facts::Loop { .. })));
        let container = snapshot.graph.by_name("web").unwrap();
        assert_eq!(container.deps.len(), 1);
    }

    #[test]
    fn a_second_service_on_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Locked(_))
        ));
    }

    #[test]
    fn corrupt_and_newer_stores_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(store.path(), b"{\"format\": 1, \"graph\": ").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
        assert_eq!(
            fs::read(store.path()).unwrap(),
            b"{\"format\": 1, \"graph\": "
        );
        fs::write(store.path(), b"{\"format\": 99}").unwrap();
        assert!(matches!(
            store.load(),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
