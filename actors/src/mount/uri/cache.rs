//! The download cache of `uri` mounts: one file an entry, keyed by digest (or by URL, kept
//! current with the server's validator), shared by every mount of it.
//!
//! Whoever works on a key takes its [`Turn`]: a second mount of the same image waits for the
//! first one's download and then reuses it. A download goes to a partial file that only a
//! verified, complete download renames into place, so a crash or a failure never leaves a
//! half entry. Entries in use (a [`Lease`]) are never evicted; past the limit, the least
//! recently used unused ones go. The index is the entries' metadata files: entries survive a
//! restart, and are hashed again before their first reuse in a run.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::fetch::{sha256_of, Validator};

/// What the cache keeps of an entry, next to it as `<key>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub url: String,
    /// Of the entry's content: checked before the entry's first reuse in a run.
    pub sha256: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// Seconds since the epoch: the order of eviction.
    pub last_used: u64,
}

impl Meta {
    pub fn validator(&self) -> Validator {
        Validator {
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    /// A [`Turn`] works on the key: others wait.
    busy: bool,
    /// Leases: mounts that use the entry.
    users: usize,
    /// Hashed (or written) by this run.
    verified: bool,
    /// `None`: no entry on disk.
    meta: Option<Meta>,
}

#[derive(Default)]
struct State {
    loaded: bool,
    slots: HashMap<String, Slot>,
}

/// The cache under one directory, with its size limit in bytes.
pub struct Cache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
    changed: Condvar,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl Cache {
    /// A cache under `dir`, which is made (and read) at its first use.
    pub fn new(dir: PathBuf, limit: u64) -> Cache {
        Cache {
            dir,
            limit,
            state: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    fn entries(&self) -> PathBuf {
        self.dir.join("entries")
    }

    fn partials(&self) -> PathBuf {
        self.dir.join("partial")
    }

    /// The file of entry `key`.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.entries().join(key)
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.entries().join(format!("{key}.json"))
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        // The state stays consistent at every await point of a panicking holder: take it as is.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.loaded {
            self.read_index(&mut state)?;
            state.loaded = true;
        }
        Ok(state)
    }

    /// Reads the index from disk; partial downloads of an earlier run are removed, as are
    /// entries without metadata and metadata without its entry.
    fn read_index(&self, state: &mut State) -> io::Result<()> {
        fs::create_dir_all(self.entries())?;
        let _ = fs::remove_dir_all(self.partials());
        fs::create_dir_all(self.partials())?;
        let mut data = Vec::new();
        for entry in fs::read_dir(self.entries())?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match name.strip_suffix(".json") {
                Some(key) => {
                    let meta = fs::read(entry.path())
                        .ok()
                        .and_then(|bytes| serde_json::from_slice::<Meta>(&bytes).ok());
                    match meta {
                        Some(meta) if self.path_of(key).is_file() => {
                            state.slots.entry(key.to_string()).or_default().meta = Some(meta);
                        }
                        _ => {
                            warn!(
                                key,
                                "cache entry without its file or readable metadata: removed"
                            );
                            let _ = fs::remove_file(entry.path());
                        }
                    }
                }
                None => data.push(name),
            }
        }
        for key in data {
            if !self.meta_path(&key).is_file() {
                warn!(key, "cache file without metadata: removed");
                let _ = fs::remove_file(self.path_of(&key));
            }
        }
        Ok(())
    }

    /// Reads the index now rather than at its first use.
    pub fn load(&self) -> io::Result<()> {
        self.lock().map(drop)
    }

    /// Waits until no one else works on `key`, then works on it.
    pub fn turn(self: &Arc<Self>, key: &str) -> io::Result<Turn> {
        let mut state = self.lock()?;
        while state.slots.get(key).is_some_and(|slot| slot.busy) {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.slots.entry(key.to_string()).or_default().busy = true;
        Ok(Turn {
            cache: self.clone(),
            key: key.to_string(),
            partial: self
                .partials()
                .join(format!("{key}.{}", uuid::Uuid::new_v4().simple())),
        })
    }

    /// Holds `key` for a mount adopted after a restart (its entry may be gone: the mount still
    /// holds the file it opened).
    pub fn hold(self: &Arc<Self>, key: &str) -> io::Result<Lease> {
        let mut state = self.lock()?;
        state.slots.entry(key.to_string()).or_default().users += 1;
        Ok(Lease {
            cache: self.clone(),
            key: key.to_string(),
        })
    }

    /// Removes unused entries, least recently used first, until the cache fits its limit.
    fn evict(&self, state: &mut State) {
        let mut total: u64 = state
            .slots
            .values()
            .filter_map(|slot| slot.meta.as_ref())
            .map(|meta| meta.size)
            .sum();
        if total <= self.limit {
            return;
        }
        let mut unused: Vec<(u64, String)> = state
            .slots
            .iter()
            .filter(|(_, slot)| slot.users == 0 && !slot.busy)
            .filter_map(|(key, slot)| Some((slot.meta.as_ref()?.last_used, key.clone())))
            .collect();
        unused.sort();
        for (_, key) in unused {
            if total <= self.limit {
                break;
            }
            let Some(slot) = state.slots.get_mut(&key) else {
                continue;
            };
            let size = slot.meta.take().map_or(0, |meta| meta.size);
            self.remove_files(&key);
            total -= size;
            info!(key, size, "cache entry evicted");
        }
    }

    fn remove_files(&self, key: &str) {
        let _ = fs::remove_file(self.meta_path(key));
        let _ = fs::remove_file(self.path_of(key));
    }

    fn write_meta(&self, key: &str, meta: &Meta) -> io::Result<()> {
        let path = self.meta_path(key);
        let staged = self.partials().join(format!("{key}.json"));
        fs::write(&staged, serde_json::to_vec(meta)?)?;
        fs::rename(&staged, &path)
    }
}

/// Work on one key of the cache; others wait until it is dropped. A partial download that
/// was not committed is removed with it.
pub struct Turn {
    cache: Arc<Cache>,
    key: String,
    partial: PathBuf,
}

impl Turn {
    /// The entry on disk, if any.
    pub fn existing(&self) -> Option<Meta> {
        let state = self.cache.lock().ok()?;
        state.slots.get(&self.key)?.meta.clone()
    }

    /// Whether the entry's content still has its recorded hash (hashed once a run); a damaged
    /// entry is removed.
    pub fn intact(&self) -> bool {
        let Some(meta) = self.existing() else {
            return false;
        };
        let verified = self
            .cache
            .lock()
            .ok()
            .and_then(|state| state.slots.get(&self.key).map(|slot| slot.verified))
            .unwrap_or(false);
        if verified {
            return true;
        }
        let path = self.cache.path_of(&self.key);
        let hashed = sha256_of(&path);
        let Ok(mut state) = self.cache.lock() else {
            return false;
        };
        let slot = state.slots.entry(self.key.clone()).or_default();
        match hashed {
            Ok(sha256) if sha256 == meta.sha256 => {
                slot.verified = true;
                debug!(key = self.key, "cache entry verified");
                true
            }
            found => {
                warn!(
                    key = self.key,
                    ?found,
                    expected = meta.sha256,
                    "cache entry damaged: removed"
                );
                slot.meta = None;
                slot.verified = false;
                self.cache.remove_files(&self.key);
                false
            }
        }
    }

    /// Where the download goes until it is committed.
    pub fn partial(&self) -> &Path {
        &self.partial
    }

    /// Uses the entry as it is.
    pub fn reuse(self) -> io::Result<Lease> {
        let mut state = self.cache.lock()?;
        let slot = state.slots.entry(self.key.clone()).or_default();
        slot.users += 1;
        if let Some(meta) = &mut slot.meta {
            meta.last_used = now();
            let meta = meta.clone();
            if let Err(err) = self.cache.write_meta(&self.key, &meta) {
                warn!(key = self.key, error = %err, "cannot record the cache entry's use");
            }
        }
        Ok(self.lease())
    }

    /// Makes the verified partial download the entry (replacing an older one, whose users keep
    /// the file they opened), and uses it.
    pub fn commit(self, mut meta: Meta) -> io::Result<Lease> {
        meta.last_used = now();
        self.cache.write_meta(&self.key, &meta)?;
        fs::rename(&self.partial, self.cache.path_of(&self.key))?;
        let mut state = self.cache.lock()?;
        let slot = state.slots.entry(self.key.clone()).or_default();
        slot.meta = Some(meta);
        slot.verified = true;
        slot.users += 1;
        Ok(self.lease())
    }

    fn lease(&self) -> Lease {
        Lease {
            cache: self.cache.clone(),
            key: self.key.clone(),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.partial);
        let mut state = self
            .cache
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = state.slots.get_mut(&self.key) {
            slot.busy = false;
        }
        self.cache.evict(&mut state);
        self.cache.changed.notify_all();
    }
}

/// A mount's use of an entry: while it lives, the entry is not evicted.
pub struct Lease {
    cache: Arc<Cache>,
    key: String,
}

impl Lease {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The entry's file.
    pub fn path(&self) -> PathBuf {
        self.cache.path_of(&self.key)
    }

    /// Gives the entry up and removes it, unless another mount uses it: its content was
    /// refused.
    pub fn discard(self) {
        let mut state = self
            .cache
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = state.slots.get_mut(&self.key) {
            if slot.users == 1 && !slot.busy && slot.meta.take().is_some() {
                slot.verified = false;
                self.cache.remove_files(&self.key);
                info!(
                    key = self.key,
                    "cache entry removed: its content was refused"
                );
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self
            .cache
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = state.slots.get_mut(&self.key) {
            slot.users = slot.users.saturating_sub(1);
            if let Some(meta) = &mut slot.meta {
                meta.last_used = now();
            }
        }
        self.cache.evict(&mut state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64) -> Meta {
        Meta {
            url: "http://x/".into(),
            sha256: String::new(),
            size,
            etag: None,
            last_modified: None,
            last_used: 0,
        }
    }

    fn put(cache: &Arc<Cache>, key: &str, bytes: &[u8]) -> Lease {
        let turn = cache.turn(key).unwrap();
        fs::write(turn.partial(), bytes).unwrap();
        let mut meta = meta(bytes.len() as u64);
        meta.sha256 = super::super::fetch::hex(&<sha2::Sha256 as sha2::Digest>::digest(bytes));
        turn.commit(meta).unwrap()
    }

    #[test]
    fn entries_in_use_stay_and_unused_ones_go_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::new(dir.path().to_path_buf(), 10));
        let a = put(&cache, "a", b"aaaaaa");
        let b = put(&cache, "b", b"bbbbbb");
        // Over the limit, but both are in use.
        assert!(cache.path_of("a").is_file() && cache.path_of("b").is_file());
        drop(a);
        assert!(!cache.path_of("a").exists(), "the unused entry goes");
        assert!(cache.path_of("b").is_file());
        drop(b);
        assert!(cache.path_of("b").is_file(), "alone it fits");
    }

    #[test]
    fn entries_survive_a_restart_and_are_checked_before_reuse() {
        let dir = tempfile::tempdir().unwrap();
        {
            let cache = Arc::new(Cache::new(dir.path().to_path_buf(), 1 << 20));
            drop(put(&cache, "a", b"image"));
            drop(put(&cache, "b", b"other"));
            fs::write(dir.path().join("partial/c.123"), b"half").unwrap();
        }
        fs::write(dir.path().join("entries/b"), b"damaged").unwrap();
        let cache = Arc::new(Cache::new(dir.path().to_path_buf(), 1 << 20));
        let a = cache.turn("a").unwrap();
        assert!(a.existing().is_some() && a.intact());
        let b = cache.turn("b").unwrap();
        assert!(!b.intact());
        assert!(b.existing().is_none() && !cache.path_of("b").exists());
        assert_eq!(fs::read_dir(dir.path().join("partial")).unwrap().count(), 0);
    }

    #[test]
    fn a_second_turn_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::new(dir.path().to_path_buf(), 1 << 20));
        let first = cache.turn("a").unwrap();
        let waiter = {
            let cache = cache.clone();
            std::thread::spawn(move || cache.turn("a").unwrap().existing().is_some())
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!waiter.is_finished());
        fs::write(first.partial(), b"x").unwrap();
        let lease = first.commit(meta(1)).unwrap();
        assert!(
            waiter.join().unwrap(),
            "the second sees the first one's entry"
        );
        drop(lease);
    }

    #[test]
    fn a_discarded_entry_goes_unless_another_uses_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::new(dir.path().to_path_buf(), 1 << 20));
        let first = put(&cache, "a", b"image");
        let second = cache.turn("a").unwrap().reuse().unwrap();
        first.discard();
        assert!(cache.path_of("a").is_file(), "still in use");
        second.discard();
        assert!(!cache.path_of("a").exists());
        assert!(cache.turn("a").unwrap().existing().is_none());
    }

    #[test]
    fn an_uncommitted_partial_goes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::new(dir.path().to_path_buf(), 1 << 20));
        let turn = cache.turn("a").unwrap();
        fs::write(turn.partial(), b"half").unwrap();
        let partial = turn.partial().to_path_buf();
        drop(turn);
        assert!(!partial.exists() && !cache.path_of("a").exists());
    }
}
