//! The state store: the registry's object graph, with the kernel facts of each object, as a
//! JSON snapshot under the state dir plus a journal of the changes made since.
//!
//! - `state.json` holds the whole graph. It is only ever replaced atomically (write a new file,
//!   sync it, rename it over the old one), so a reader sees the old or the new one, never a mix.
//! - `journal` starts with the generation of the snapshot it follows; each later line is one
//!   batch of changes (the nodes changed or removed, with their facts), which counts as stored
//!   once it is written; a thread syncs it to disk right behind (see the `sync` module). So a
//!   change costs what it changed, not the size of the graph. Once the journal outgrows the snapshot, the next write is a new snapshot with the
//!   next generation, then a fresh journal: a crash between the two leaves a journal of an older
//!   generation, which is ignored (the snapshot already holds its changes).
//!
//! Batches are written in the order the registry took their changes (see [`Ticket`]), by its
//! writer or, for a removal, by the thread that released the objects.
//!
//! Why files and not an embedded database: the graph of a node is small (a few hundred objects
//! at most), it has exactly one source of changes (the registry), and it is read whole at
//! start. Two files written this way are crash-safe, need no new dependency and stay readable
//! by an operator.

mod legacy;
mod sync;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::driver::Kinds;
use crate::model::wire::Id;
use crate::registry::graph::{Counters, Graph, Node};
use crate::registry::record::{Record, StoredRecord};
use sync::BackgroundSync;

/// The format this service writes. A store of a newer format is refused (never guessed at).
/// Format 2 added the journal and the snapshot's `generation`; format 3 keeps each object as its
/// kind's own typed record (kind, spec and kernel facts together) instead of its wire form and a
/// separate map of facts.
pub const FORMAT: u32 = 3;

const STATE_FILE: &str = "state.json";
const JOURNAL_FILE: &str = "journal";
const LOCK_FILE: &str = "lock";

/// A journal is replaced by a new snapshot once it is longer than this or than twice the last
/// snapshot, whichever is more: rewriting the snapshot then costs at most half a byte per
/// journal byte, and a start replays a bounded journal.
const JOURNAL_FLOOR: u64 = 1 << 20;

/// Everything the service must find again after a restart.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Names this service's cgroups and tags, so two services on one host never mix them up.
    pub instance: String,
    /// Which journal continues this snapshot (format 1 had none: 0).
    pub generation: u64,
    pub graph: Graph<Record>,
}

/// A format 3 snapshot as read back, before its records are decoded by their kinds.
#[derive(Debug, Deserialize)]
struct StoredSnapshot {
    instance: String,
    generation: u64,
    graph: Graph<StoredRecord>,
}

/// The first line of a journal.
#[derive(Debug, Serialize, Deserialize)]
struct JournalHeader {
    generation: u64,
}

/// A snapshot as written, borrowed from the registry.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    format: u32,
    instance: &'a str,
    generation: u64,
    graph: &'a Graph<Record>,
}

/// One line of a journal: a batch of changes, as written.
#[derive(Serialize)]
struct ChangesRef<'a> {
    counters: Counters,
    put: Vec<&'a Node<Record>>,
    gone: Vec<Id>,
}

/// Serializes what `plan` writes: the whole graph as a snapshot, or the `changed` nodes (those
/// the graph no longer has as removed) as one journal line.
pub fn serialize(
    plan: Plan,
    instance: &str,
    graph: &Graph<Record>,
    changed: &BTreeSet<Id>,
) -> serde_json::Result<Vec<u8>> {
    match plan {
        Plan::Snapshot { generation } => serde_json::to_vec(&SnapshotRef {
            format: FORMAT,
            instance,
            generation,
            graph,
        }),
        Plan::Journal => {
            let mut changes = ChangesRef {
                counters: graph.counters(),
                put: Vec::new(),
                gone: Vec::new(),
            };
            for &id in changed {
                match graph.get_any(id) {
                    Some(node) => changes.put.push(node),
                    None => changes.gone.push(id),
                }
            }
            serde_json::to_vec(&changes)
        }
    }
}

/// One line of a journal, as read back.
#[derive(Debug, Deserialize)]
struct Changes {
    counters: Counters,
    put: Vec<Node<StoredRecord>>,
    gone: Vec<Id>,
}

/// How the next write goes to disk, as the store decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Append the changes since the last write to the journal.
    Journal,
    /// Write the whole graph as the snapshot of this generation, then start its journal.
    Snapshot { generation: u64 },
}

/// A batch's place in the journal: batches are written in the order their changes were taken
/// from the graph, whichever thread writes them. Taken with the changes, on the registry's
/// thread; every ticket is written, parked or abandoned, or the writes after it would wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// Which batch is written next, and those taken but left for another thread to write.
#[derive(Default)]
struct Order {
    /// The ticket of the next batch to write.
    next: u64,
    /// Batches waiting for the thread they were left to, or for any write after them.
    parked: BTreeMap<u64, (Plan, Vec<u8>)>,
    /// Tickets whose batch will never come (its write was cancelled).
    abandoned: BTreeSet<u64>,
}

/// What the store knows of the files it writes.
struct Written {
    /// The journal, open for appending; none until the first snapshot of this run (which is
    /// written whole, as the graph checked at start may differ from the stored one).
    journal: Option<Arc<File>>,
    generation: u64,
    journal_len: u64,
    snapshot_len: u64,
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
    written: Mutex<Written>,
    sync: BackgroundSync,
    tickets: AtomicU64,
    order: Mutex<Order>,
    /// Wakes a write waiting for an earlier batch that another thread is writing.
    turn: Condvar,
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
        let sync = BackgroundSync::start().map_err(dir_error)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            _lock: lock,
            written: Mutex::new(Written {
                journal: None,
                generation: 0,
                journal_len: 0,
                snapshot_len: 0,
            }),
            sync,
            tickets: AtomicU64::new(0),
            order: Mutex::new(Order::default()),
            turn: Condvar::new(),
        })
    }

    /// The snapshot file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    fn written(&self) -> MutexGuard<'_, Written> {
        // Every update of `Written` is a plain assignment: a panicked holder leaves it usable.
        self.written
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The stored graph: the snapshot with its journal replayed, its records read by `kinds`;
    /// `None` for a state dir that never held one.
    pub fn load(&self, kinds: &Kinds) -> Result<Option<Snapshot>, StoreError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|err| corrupt(err.to_string()))?;
        let format = value.get("format").and_then(|f| f.as_u64()).unwrap_or(0) as u32;
        if format > FORMAT {
            return Err(StoreError::TooNew {
                path,
                found: format,
            });
        }
        let snapshot = match format {
            // Its journal, if any, was written by the same format.
            1 | 2 => {
                let mut old: legacy::Snapshot =
                    serde_json::from_value(value).map_err(|err| corrupt(err.to_string()))?;
                self.replay_journal(old.generation, |line| old.apply(line))?;
                old.upgrade(kinds).map_err(corrupt)?
            }
            FORMAT => {
                let mut stored: StoredSnapshot =
                    serde_json::from_value(value).map_err(|err| corrupt(err.to_string()))?;
                self.replay_journal(stored.generation, |line| {
                    let changes: Changes = serde_json::from_slice(line)?;
                    stored
                        .graph
                        .replay(changes.counters, changes.put, changes.gone);
                    Ok(())
                })?;
                let graph = stored
                    .graph
                    .try_map(|_, record| Record::from_stored(kinds, record))
                    .map_err(|err| corrupt(err.to_string()))?;
                Snapshot {
                    instance: stored.instance,
                    generation: stored.generation,
                    graph,
                }
            }
            other => return Err(corrupt(format!("unknown format {other}"))),
        };
        self.written().generation = snapshot.generation;
        Ok(Some(snapshot))
    }

    /// Applies each change of the journal that continues the snapshot of `generation`, if
    /// there is one of that generation.
    ///
    /// Only the last line can be cut short by a crash of the service (lines are written whole,
    /// one after the other), and it was never reported as stored: a last line without its
    /// newline or that does not parse is dropped. A bad line with more after it is corruption.
    /// A crash of the kernel can also lose the tail its sync had not reached, which some
    /// filesystems show as zeros: the journal ends at a line that starts with one.
    fn replay_journal(
        &self,
        generation: u64,
        mut apply: impl FnMut(&[u8]) -> serde_json::Result<()>,
    ) -> Result<(), StoreError> {
        let path = self.journal_path();
        let text = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        let mut lines = text.split_inclusive(|&b| b == b'\n');
        let Some(header) = lines.next().filter(|line| line.ends_with(b"\n")) else {
            // The crash came while a new journal was being started: nothing follows the header.
            return Ok(());
        };
        let header: JournalHeader = serde_json::from_slice(header)
            .map_err(|err| corrupt(format!("journal header: {err}")))?;
        if header.generation != generation {
            return Ok(());
        }
        let mut lines = lines.enumerate().peekable();
        while let Some((at, line)) = lines.next() {
            let last = lines.peek().is_none();
            if !line.ends_with(b"\n") || line.first() == Some(&0) {
                // Only the last line can lack its newline; cut short, it was never stored.
                break;
            }
            match apply(line) {
                Ok(()) => {}
                Err(err) if !last => {
                    return Err(corrupt(format!("journal line {}: {err}", at + 2)));
                }
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// How the next write must go: a new snapshot at the first write of a run, after a failed
    /// write or sync, and once the journal has outgrown the snapshot; else an append to the
    /// journal.
    pub fn plan(&self) -> Plan {
        let mut written = self.written();
        if let Some(err) = self.sync.take_failure() {
            warn!(error = %err, journal = %self.journal_path().display(), "cannot sync the state store's journal: writing a new snapshot");
            written.journal = None;
        }
        let limit = JOURNAL_FLOOR.max(2 * written.snapshot_len);
        if written.journal.is_none() || written.journal_len > limit {
            Plan::Snapshot {
                generation: written.generation + 1,
            }
        } else {
            Plan::Journal
        }
    }

    /// The ticket of a batch of changes just taken from the graph (see [`Ticket`]).
    pub fn ticket(&self) -> Ticket {
        Ticket(self.tickets.fetch_add(1, Ordering::Relaxed))
    }

    /// Writes what the registry serialized for `plan`, once every batch taken before it is
    /// written: a journal line, or a new snapshot and a fresh journal. Blocking: runs on the
    /// blocking pool. After an error the next plan is a new snapshot, so nothing a failed write
    /// held is lost.
    pub fn write(&self, ticket: Ticket, plan: Plan, serialized: &[u8]) -> Result<(), StoreError> {
        let mut order = self.turn_of(ticket.0);
        let result = self.write_now(plan, serialized);
        self.pass_turn(&mut order);
        result
    }

    /// Leaves a batch for a later [`Store::write_parked`] of its ticket, or for any write after
    /// it, whichever comes first.
    pub fn park(&self, ticket: Ticket, plan: Plan, serialized: Vec<u8>) {
        self.order().parked.insert(ticket.0, (plan, serialized));
        self.turn.notify_all();
    }

    /// Writes the parked batch of `ticket` (and, first, any batch before it) unless a later
    /// write has already; a failure is logged, and the next write is a whole snapshot.
    /// Blocking.
    pub fn write_parked(&self, ticket: Ticket) {
        // The turn after it comes once it is written, by this call or by a write that came first.
        drop(self.turn_of(ticket.0 + 1));
    }

    /// A batch whose write was cancelled: the writes after it go on, and the next one is a
    /// whole snapshot, so that its changes are not lost.
    pub fn abandon(&self, ticket: Ticket) {
        self.order().abandoned.insert(ticket.0);
        self.start_over();
        self.turn.notify_all();
    }

    fn order(&self) -> MutexGuard<'_, Order> {
        // Every update of `Order` is a plain insert, remove or increment.
        self.order
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Waits until every batch before `ticket` is written, writing the parked ones (and
    /// skipping the abandoned ones) itself, whoever they were left for.
    fn turn_of(&self, ticket: u64) -> MutexGuard<'_, Order> {
        let mut order = self.order();
        loop {
            while order.next < ticket {
                let next = order.next;
                if let Some((plan, serialized)) = order.parked.remove(&next) {
                    if let Err(err) = self.write_now(plan, &serialized) {
                        warn!(error = %err, "state store write failed");
                    }
                } else if !order.abandoned.remove(&next) {
                    break;
                }
                self.pass_turn(&mut order);
            }
            if order.next >= ticket {
                return order;
            }
            // An earlier batch is being written by another thread.
            order = self
                .turn
                .wait(order)
                .unwrap_or_else(|poison| poison.into_inner());
        }
    }

    fn pass_turn(&self, order: &mut Order) {
        order.next += 1;
        self.turn.notify_all();
    }

    fn write_now(&self, plan: Plan, serialized: &[u8]) -> Result<(), StoreError> {
        let mut written = self.written();
        let result = match plan {
            Plan::Journal => self.append(&mut written, serialized),
            Plan::Snapshot { generation } => self.replace(&mut written, serialized, generation),
        };
        if result.is_err() {
            written.journal = None;
        }
        result
    }

    /// Makes the next write a whole new snapshot (after changes were taken but not written).
    pub fn start_over(&self) {
        self.written().journal = None;
    }

    fn append(&self, written: &mut Written, line: &[u8]) -> Result<(), StoreError> {
        let write_error = |source| StoreError::Write {
            path: self.journal_path(),
            source,
        };
        let journal = written.journal.as_ref().ok_or_else(|| {
            write_error(std::io::Error::other(
                "no journal is open: the next write must be a snapshot",
            ))
        })?;
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
        (&**journal).write_all(&bytes).map_err(write_error)?;
        self.sync.after_append(journal);
        written.journal_len += bytes.len() as u64;
        Ok(())
    }

    fn replace(
        &self,
        written: &mut Written,
        snapshot: &[u8],
        generation: u64,
    ) -> Result<(), StoreError> {
        written.journal = None;
        self.replace_file(&self.path(), snapshot)?;
        let mut header =
            serde_json::to_vec(&JournalHeader { generation }).expect("a journal header serializes");
        header.push(b'\n');
        self.replace_file(&self.journal_path(), &header)?;
        let journal = OpenOptions::new()
            .append(true)
            .open(self.journal_path())
            .map_err(|source| StoreError::Write {
                path: self.journal_path(),
                source,
            })?;
        *written = Written {
            journal: Some(Arc::new(journal)),
            generation,
            journal_len: header.len() as u64,
            snapshot_len: snapshot.len() as u64,
        };
        Ok(())
    }

    /// Replaces `path` atomically: a new file, synced, renamed over the old one, directory synced.
    fn replace_file(&self, path: &Path, content: &[u8]) -> Result<(), StoreError> {
        let write_error = |source| StoreError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut staged = tempfile::NamedTempFile::new_in(&self.dir).map_err(write_error)?;
        staged.write_all(content).map_err(write_error)?;
        staged.as_file().sync_all().map_err(write_error)?;
        staged.persist(path).map_err(|err| write_error(err.error))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attach::loopback::{LoopbackFacts, LoopbackSpec};
    use crate::driver::Erased;
    use crate::model::wire::{AttachKind, Base, MountKind};
    use crate::mount::attach::AttachFsSpec;
    use crate::mount::MountFacts;
    use crate::registry::graph::ObjectKind;
    use crate::registry::record::ObjectRecord;

    fn kinds() -> Kinds {
        Kinds::standard(&Default::default())
    }

    fn record(object: ObjectKind, kind: &str, spec: Erased, facts: Erased) -> Record {
        let kind = kinds().get(object, kind).unwrap().clone();
        assert_eq!(kind.object(), object);
        let record = ObjectRecord {
            kind,
            spec,
            facts: Some(facts),
        };
        match object {
            ObjectKind::Attach => Record::Attach(record),
            _ => Record::Mount(record),
        }
    }

    /// A graph as the registry keeps it, with the changes not yet written.
    struct Objects {
        graph: Graph<Record>,
    }

    impl Objects {
        fn new() -> Self {
            Objects {
                graph: Graph::new(),
            }
        }

        /// A committed loop attachment with its mount; returns the mount's id.
        fn create(&mut self, number: u32) -> Id {
            let txn = self.graph.begin();
            let spec = LoopbackSpec {
                path: format!("/images/{number}.squashfs"),
                base: Base::Root,
                read_partitions: false,
            };
            let facts = LoopbackFacts {
                number,
                device_file: PathBuf::from(format!("/dev/loop{number}")),
                backing_file: PathBuf::from(format!("/images/{number}.squashfs")),
            };
            let attach = record(
                ObjectKind::Attach,
                AttachKind::Loopback.as_str(),
                Erased::of(spec),
                Erased::of(facts),
            );
            let attach = self
                .graph
                .reserve(txn, ObjectKind::Attach, None, attach, &[]);
            let attach = attach.unwrap();
            let spec = AttachFsSpec {
                fs_type: "squashfs".to_string(),
                options: vec!["ro".to_string()],
            };
            let facts = MountFacts {
                mountpoint: PathBuf::from(format!("/run/m/{attach}")),
                fs_type: Some("squashfs".to_string()),
            };
            let mount = record(
                ObjectKind::Mount,
                MountKind::Attach.as_str(),
                Erased::of(spec),
                Erased::of(facts),
            );
            let mount = self
                .graph
                .reserve(txn, ObjectKind::Mount, None, mount, &[attach]);
            let mount = mount.unwrap();
            self.graph.commit(txn);
            mount
        }

        fn delete(&mut self, id: Id) {
            self.graph.delete(id, false).unwrap();
        }

        /// Writes what changed since the last write, as the registry's writer does.
        fn write(&mut self, store: &Store) -> Plan {
            let plan = store.plan();
            let changed = self.graph.take_changed();
            let bytes = serialize(plan, "test", &self.graph, &changed).unwrap();
            store.write(store.ticket(), plan, &bytes).unwrap();
            plan
        }

        fn assert_loads_from(&self, dir: &Path) {
            let store = open_released(dir);
            let loaded = store.load(&kinds()).unwrap().unwrap();
            assert_eq!(loaded.graph, self.graph);
            assert_eq!(loaded.instance, "test");
        }
    }

    /// Opens the store of `dir` that this process just closed. Its lock can outlive the close
    /// for a moment: a child another test forks meanwhile holds the descriptor until it execs.
    fn open_released(dir: &Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Store::open(dir) {
                Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                opened => return opened.unwrap(),
            }
        }
    }

    /// The changes since the last take, serialized for `plan`, with their place in the order.
    fn take(objects: &mut Objects, store: &Store, plan: Plan) -> (Ticket, Vec<u8>) {
        let changed = objects.graph.take_changed();
        let bytes = serialize(plan, "test", &objects.graph, &changed).unwrap();
        (store.ticket(), bytes)
    }

    /// A store with one create written, and a second create made but not written; the second
    /// one's mount.
    fn written_and_made() -> (tempfile::TempDir, Arc<Store>, Objects, Id) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut objects = Objects::new();
        objects.create(0);
        objects.write(&store);
        let mount = objects.create(1);
        (dir, store, objects, mount)
    }

    #[test]
    fn a_parked_batch_is_written_before_any_later_one_and_once() {
        let (dir, store, mut objects, mount) = written_and_made();
        let (created, line) = take(&mut objects, &store, Plan::Journal);
        store.park(created, Plan::Journal, line);
        // Replayed the other way round, the create would bring back what the delete removed.
        objects.delete(mount);
        assert_eq!(objects.write(&store), Plan::Journal);
        store.write_parked(created);
        drop(store);
        objects.assert_loads_from(dir.path());
    }

    #[test]
    fn a_write_waits_for_an_earlier_batch_another_thread_writes() {
        let (dir, store, mut objects, mount) = written_and_made();
        let (created, create_line) = take(&mut objects, &store, Plan::Journal);
        objects.delete(mount);
        let (deleted, delete_line) = take(&mut objects, &store, Plan::Journal);
        let later = {
            let store = store.clone();
            std::thread::spawn(move || store.write(deleted, Plan::Journal, &delete_line))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !later.is_finished(),
            "the later batch did not wait for the earlier one"
        );
        store.write(created, Plan::Journal, &create_line).unwrap();
        later.join().unwrap().unwrap();
        drop(store);
        objects.assert_loads_from(dir.path());
    }

    #[test]
    fn an_abandoned_batch_holds_up_nothing_and_the_next_write_is_whole() {
        let (dir, store, mut objects, _) = written_and_made();
        let (lost, _) = take(&mut objects, &store, Plan::Journal);
        store.abandon(lost);
        assert!(matches!(objects.write(&store), Plan::Snapshot { .. }));
        drop(store);
        objects.assert_loads_from(dir.path());
    }

    /// A store with one create in its snapshot and a second one in its journal.
    fn stored_twice() -> (tempfile::TempDir, Store, Objects) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut objects = Objects::new();
        objects.create(0);
        objects.write(&store);
        objects.create(1);
        objects.write(&store);
        (dir, store, objects)
    }

    fn journal_lines(dir: &Path) -> usize {
        fs::read_to_string(dir.join(JOURNAL_FILE))
            .unwrap()
            .lines()
            .count()
    }

    #[test]
    fn saves_and_loads_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.load(&kinds()).unwrap().is_none());
        let mut objects = Objects::new();
        objects.create(3);
        assert_eq!(objects.write(&store), Plan::Snapshot { generation: 1 });
        drop(store);
        objects.assert_loads_from(dir.path());
        let mut files: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["journal", "lock", "state.json"],
            "nothing staged is left"
        );
    }

    #[test]
    fn changes_go_to_the_journal_and_replay_onto_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut objects = Objects::new();
        let first = objects.create(0);
        objects.write(&store);
        let second = objects.create(1);
        assert_eq!(objects.write(&store), Plan::Journal);
        objects.delete(first);
        objects.graph.begin();
        assert_eq!(objects.write(&store), Plan::Journal);
        // A changed record, and one that lost its facts.
        if let Some(Record::Mount(mount)) = objects.graph.record_mut(second) {
            mount.facts = Some(Erased::of(MountFacts {
                mountpoint: PathBuf::from("/run/m/elsewhere"),
                fs_type: None,
            }));
        }
        if let Some(Record::Attach(attach)) = objects.graph.record_mut(second - 1) {
            attach.facts = None;
        }
        objects.write(&store);
        assert_eq!(journal_lines(dir.path()), 4, "a header and three batches");
        drop(store);
        objects.assert_loads_from(dir.path());

        // A start writes a new snapshot first, with the next generation and an empty journal.
        let store = Store::open(dir.path()).unwrap();
        store.load(&kinds()).unwrap();
        assert_eq!(objects.write(&store), Plan::Snapshot { generation: 2 });
        assert_eq!(journal_lines(dir.path()), 1);
        drop(store);
        objects.assert_loads_from(dir.path());
    }

    #[test]
    fn a_cut_last_line_is_dropped_and_a_bad_line_before_others_is_corrupt() {
        let (dir, store, objects) = stored_twice();
        let journal = dir.path().join(JOURNAL_FILE);
        let stored = fs::read(&journal).unwrap();
        drop(store);

        // A crash in the middle of an append: the last line never was reported stored.
        let mut cut = stored.clone();
        cut.extend_from_slice(b"{\"counters\":{\"next_id\":9");
        fs::write(&journal, &cut).unwrap();
        objects.assert_loads_from(dir.path());
        cut.extend_from_slice(b"\0\0\n");
        fs::write(&journal, &cut).unwrap();
        objects.assert_loads_from(dir.path());

        // A kernel crash before the sync: a lost block reads as zeros, and whatever follows
        // it (here a whole line) is not trusted either.
        let mut lost = stored.clone();
        lost.extend_from_slice(&[0; 512]);
        lost.extend_from_slice(b"\n{\"counters\":{\"next_id\":9}}\n");
        fs::write(&journal, &lost).unwrap();
        objects.assert_loads_from(dir.path());

        // The same damage with a line after it is not a crash's doing.
        let mut lines = stored.split_inclusive(|&b| b == b'\n');
        let mut damaged = lines.next().unwrap().to_vec();
        damaged.extend_from_slice(b"{\"counters\":\n");
        damaged.extend(lines.flatten());
        fs::write(&journal, &damaged).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let refused = store.load(&kinds()).unwrap_err().to_string();
        assert!(refused.contains("journal line 2"), "{refused}");
        assert_eq!(fs::read(&journal).unwrap(), damaged, "left for inspection");
    }

    #[test]
    fn a_journal_older_than_the_snapshot_is_ignored() {
        let (dir, store, objects) = stored_twice();
        // A crash after the next snapshot was renamed into place, before its journal was: the
        // journal still holds generation 1's changes, which the snapshot of generation 2 has.
        let newer = serialize(
            Plan::Snapshot { generation: 2 },
            "test",
            &objects.graph,
            &BTreeSet::new(),
        )
        .unwrap();
        store.replace_file(&store.path(), &newer).unwrap();
        assert_eq!(journal_lines(dir.path()), 2);
        drop(store);
        objects.assert_loads_from(dir.path());
    }

    #[test]
    fn a_long_journal_is_folded_into_a_new_snapshot() {
        let (_dir, store, _) = stored_twice();
        let filler = vec![b' '; JOURNAL_FLOOR as usize / 2];
        for _ in 0..2 {
            assert_eq!(store.plan(), Plan::Journal);
            store.write(store.ticket(), Plan::Journal, &filler).unwrap();
        }
        assert_eq!(store.plan(), Plan::Snapshot { generation: 2 });
    }

    /// Loads a store an older service wrote, checks it, writes it as the current format and
    /// loads that again: a node's graph survives an upgrade of the service.
    fn upgrades(files: &[(&str, &str)], objects: usize, next_id: Id, container: &str) {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            fs::write(dir.path().join(name), content).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let snapshot = store.load(&kinds()).unwrap().unwrap();
        assert_eq!(snapshot.graph.iter().count(), objects);
        assert_eq!(snapshot.graph.next_id(), next_id);
        let loop_facts = snapshot.graph.iter().find_map(|node| match &node.record {
            Record::Attach(object) if object.kind.name() == "loopback" => object.facts.clone(),
            _ => None,
        });
        assert!(loop_facts.is_some(), "a loop device's facts are kept");
        let container = snapshot.graph.by_name(container).unwrap();
        assert_eq!(container.deps.len(), 1);

        // The first write of the upgraded service stores it as the current format.
        let plan = store.plan();
        assert!(matches!(plan, Plan::Snapshot { .. }));
        let bytes = serialize(plan, &snapshot.instance, &snapshot.graph, &BTreeSet::new()).unwrap();
        store.write(store.ticket(), plan, &bytes).unwrap();
        drop(store);
        let written: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(written["format"], FORMAT);
        let again = Store::open(dir.path())
            .unwrap()
            .load(&kinds())
            .unwrap()
            .unwrap();
        assert_eq!(again.graph, snapshot.graph);
        assert_eq!(again.instance, snapshot.instance);
    }

    /// A store written by the first format's service, kept as it was.
    #[test]
    fn a_format_1_store_still_loads() {
        let stored = include_str!("../../tests/data/state-format-1.json");
        upgrades(&[(STATE_FILE, stored)], 4, 5, "web");
    }

    /// A snapshot and journal written by the format 2 service (nested container on an overlay
    /// of a squashfs loopback, a bind, a second container and a loopback inside the bind).
    #[test]
    fn a_format_2_store_with_its_journal_still_loads() {
        let snapshot = include_str!("../../tests/data/state-format-2/state.json");
        let journal = include_str!("../../tests/data/state-format-2/journal");
        upgrades(
            &[(STATE_FILE, snapshot), (JOURNAL_FILE, journal)],
            7,
            8,
            "fx",
        );
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
        assert!(matches!(
            store.load(&kinds()),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(
            fs::read(store.path()).unwrap(),
            b"{\"format\": 1, \"graph\": "
        );
        fs::write(store.path(), b"{\"format\": 99}").unwrap();
        assert!(matches!(
            store.load(&kinds()),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
