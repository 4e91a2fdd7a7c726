//! The only place in VaultFS that locks paths (docs/CONCURRENCY.md, invariant 1).
//!
//! A request names its whole lock set up front ([`LockRequest`]). The manager sorts the set into
//! one canonical order (the `Ord` of [`LockKey`]) and acquires the keys in that order, so two
//! requests can never wait for each other in a cycle, whatever order their callers named the
//! keys in. Every acquisition has a deadline; on expiry the partial set is released and the
//! caller gets [`LockError::Timeout`] (503 `lock_timeout` with `Retry-After` at the edge).
//!
//! The returned [`LockSetGuard`] releases everything on drop, including when the request future
//! is dropped mid-acquisition because the client went away. Table entries exist only while
//! somebody holds or waits for the key, so memory stays flat however many distinct paths pass.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// A lockable name. The derived `Ord` is the canonical acquisition order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockKey {
    /// A file path (`a/b.txt`) or a directory prefix (`a/`, always ending in `/`).
    Path(String),
    /// A content-addressed blob, by SHA-256 hex: serializes blob creation against collection.
    Blob(String),
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockKey::Path(p) => write!(f, "path:{p}"),
            LockKey::Blob(h) => write!(f, "blob:{h}"),
        }
    }
}

/// How a key is held: any number of shared holders at once, or one exclusive holder alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// A read lock: held alongside other shared holders, never with an exclusive one.
    Shared,
    /// A write lock: held by this lock set alone.
    Exclusive,
}

/// A whole lock set, named at once.
#[derive(Debug, Clone, Default)]
pub struct LockRequest {
    keys: Vec<(LockKey, LockMode)>,
}

impl LockRequest {
    /// An empty lock set; add keys with the builder methods.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one key in `mode`, as is (no parent prefixes). Order and duplicates do not
    /// matter: [`LockRequest::canonical`] sorts and merges them.
    pub fn add(mut self, key: LockKey, mode: LockMode) -> Self {
        self.keys.push((key, mode));
        self
    }

    /// Exclusive on `path`, shared on each of its parent prefixes.
    pub fn write_path(mut self, path: &crate::paths::VPath) -> Self {
        for parent in path.parent_prefixes() {
            self.keys
                .push((LockKey::Path(parent.to_string()), LockMode::Shared));
        }
        self.keys.push((
            LockKey::Path(path.as_str().to_string()),
            LockMode::Exclusive,
        ));
        self
    }

    /// Shared on `path` and on each of its parent prefixes.
    pub fn read_path(mut self, path: &crate::paths::VPath) -> Self {
        for parent in path.parent_prefixes() {
            self.keys
                .push((LockKey::Path(parent.to_string()), LockMode::Shared));
        }
        self.keys
            .push((LockKey::Path(path.as_str().to_string()), LockMode::Shared));
        self
    }

    /// Exclusive on a blob: collection, which must see no upload referencing it.
    pub fn blob(self, sha256_hex: &str) -> Self {
        self.add(LockKey::Blob(sha256_hex.to_string()), LockMode::Exclusive)
    }

    /// Shared on a blob: uploads of identical content commit concurrently (the rename into
    /// the content address is atomic and the bytes are the same), but never during collection.
    pub fn blob_shared(self, sha256_hex: &str) -> Self {
        self.add(LockKey::Blob(sha256_hex.to_string()), LockMode::Shared)
    }

    /// Sorted, deduplicated; a key named both shared and exclusive is taken exclusive.
    pub fn canonical(mut self) -> Vec<(LockKey, LockMode)> {
        self.keys.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(LockKey, LockMode)> = Vec::with_capacity(self.keys.len());
        for (key, mode) in self.keys {
            match out.last_mut() {
                Some((last, last_mode)) if *last == key => {
                    if mode == LockMode::Exclusive {
                        *last_mode = LockMode::Exclusive;
                    }
                }
                _ => out.push((key, mode)),
            }
        }
        out
    }
}

/// Who is asking, for introspection.
#[derive(Debug, Clone)]
pub struct LockOwner {
    /// The request's id (as in logs), or a fixed name for internal work (`gc`, `fsck`).
    pub request_id: String,
    /// The operation taking the set (`copy`, `collect`, `fsck`, ...).
    pub operation: &'static str,
}

/// Why a lock set could not be acquired.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The deadline passed before the whole set was held; the keys already taken were
    /// released (503 `lock_timeout` with `Retry-After` at the edge).
    #[error("timed out after {waited:?} waiting for lock on {key}")]
    Timeout {
        /// The key being waited for when the deadline passed (`path:...` or `blob:...`).
        key: String,
        /// Time from the start of the acquisition to the failure.
        waited: Duration,
    },
}

/// Counters, read by the admin endpoint and the metrics exporter.
#[derive(Debug, Default)]
struct Stats {
    acquired: AtomicU64,
    contended: AtomicU64,
    timeouts: AtomicU64,
    wait_nanos_total: AtomicU64,
    wait_nanos_max: AtomicU64,
}

/// A snapshot of the lock manager's counters (since start) and current table sizes, as
/// served by the admin endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct LockStats {
    /// Lock sets acquired in full.
    pub acquired: u64,
    /// Of those, the sets where at least one key had to be waited for.
    pub contended: u64,
    /// Acquisitions that hit their deadline ([`LockError::Timeout`]).
    pub timeouts: u64,
    /// Sum over acquired sets of the time from asking to holding the whole set, in seconds.
    pub wait_seconds_total: f64,
    /// Longest such wait of one acquired set, in seconds.
    pub wait_seconds_max: f64,
    /// Lock sets currently held or being acquired.
    pub held_or_waiting_sets: usize,
    /// Keys currently in the table (each held or waited for by at least one set).
    pub table_entries: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HolderState {
    Waiting,
    Held,
}

#[derive(Debug, Clone)]
struct HolderInfo {
    owner: LockOwner,
    keys: Vec<(LockKey, LockMode)>,
    state: HolderState,
    since: Instant,
}

/// One lock set as shown by `GET /api/v1/admin/locks`.
#[derive(Debug, Clone, Serialize)]
pub struct HolderView {
    pub(crate) request_id: String,
    pub(crate) operation: &'static str,
    pub(crate) state: HolderState,
    pub(crate) age_ms: u64,
    pub(crate) keys: Vec<KeyView>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct KeyView {
    pub(crate) key: String,
    pub(crate) mode: LockMode,
}

type KeyLock = Arc<RwLock<()>>;

struct Inner {
    /// Guards the key -> lock table. A plain `std` mutex: it is held only for map lookups and
    /// inserts, never across an `.await`, and never together with `holders`.
    table: Mutex<HashMap<LockKey, KeyLock>>,
    /// Guards the introspection registry (lock-set id -> holder). Held only for one map
    /// operation at a time, never across an `.await`, never together with `table`.
    holders: Mutex<HashMap<u64, HolderInfo>>,
    next_id: AtomicU64,
    default_timeout: Duration,
    stats: Stats,
}

/// Cheap to clone; all clones share one table.
#[derive(Clone)]
pub struct LockManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for LockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockManager")
            .field("default_timeout", &self.inner.default_timeout)
            .finish_non_exhaustive()
    }
}

/// Recovers the data of a poisoned mutex: every critical section here is a single map
/// operation that cannot leave the map half-updated, so the data stays valid after a panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

enum Held {
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Exclusive(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

/// Holds a whole lock set; releases it on drop.
pub struct LockSetGuard {
    inner: Arc<Inner>,
    id: u64,
    /// One `Arc` per key, cloned from the table under its mutex. Dropped under the same mutex,
    /// which is what lets the last user remove the table entry.
    entries: Vec<(LockKey, KeyLock)>,
    held: Vec<Held>,
}

impl fmt::Debug for LockSetGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockSetGuard")
            .field("id", &self.id)
            .field("keys", &self.entries.len())
            .field("held", &self.held.len())
            .finish()
    }
}

impl Drop for LockSetGuard {
    fn drop(&mut self) {
        // Release the locks first (outside the table mutex), then drop our references to the
        // key locks under the mutex and remove every entry nobody else references.
        self.held.clear();
        {
            let mut table = lock(&self.inner.table);
            for (key, key_lock) in self.entries.drain(..) {
                drop(key_lock);
                let unused = table
                    .get(&key)
                    .is_some_and(|entry| Arc::strong_count(entry) == 1);
                if unused {
                    table.remove(&key);
                }
            }
        }
        lock(&self.inner.holders).remove(&self.id);
    }
}

impl LockManager {
    /// An empty manager whose [`LockManager::acquire`] gives up after `default_timeout`
    /// (the `lock_timeout` setting).
    pub fn new(default_timeout: Duration) -> Self {
        LockManager {
            inner: Arc::new(Inner {
                table: Mutex::new(HashMap::new()),
                holders: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                default_timeout,
                stats: Stats::default(),
            }),
        }
    }

    /// Acquires the whole set in canonical order within the default timeout.
    pub async fn acquire(
        &self,
        request: LockRequest,
        owner: LockOwner,
    ) -> Result<LockSetGuard, LockError> {
        self.acquire_with_timeout(request, owner, self.inner.default_timeout)
            .await
    }

    /// Acquires the whole set in canonical order, or fails once `timeout` has passed.
    /// Cancel-safe: dropping the future releases whatever was already taken.
    pub async fn acquire_with_timeout(
        &self,
        request: LockRequest,
        owner: LockOwner,
        timeout: Duration,
    ) -> Result<LockSetGuard, LockError> {
        let started = Instant::now();
        let keys = request.canonical();
        let mut guard = self.register(&keys, owner);
        let waited = tokio::time::timeout(
            timeout,
            self.lock_all(&keys, &mut guard, || std::future::ready(())),
        )
        .await;
        match waited {
            Ok(contended) => {
                metrics::histogram!("vaultfs_lock_wait_seconds").record(started.elapsed());
                self.record_acquired(&guard, started, contended);
                Ok(guard)
            }
            Err(_elapsed) => {
                self.inner.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                let key = keys
                    .get(guard.held.len())
                    .map(|(k, _)| k.to_string())
                    .unwrap_or_default();
                Err(LockError::Timeout {
                    key,
                    waited: started.elapsed(),
                })
                // `guard` drops here and releases the keys taken so far.
            }
        }
    }

    /// Registers a lock set (introspection entry, table references) without taking anything.
    /// `keys` must already be in canonical order; only the model test passes anything else.
    fn register(&self, keys: &[(LockKey, LockMode)], owner: LockOwner) -> LockSetGuard {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.holders).insert(
            id,
            HolderInfo {
                owner,
                keys: keys.to_vec(),
                state: HolderState::Waiting,
                since: Instant::now(),
            },
        );
        let mut guard = LockSetGuard {
            inner: Arc::clone(&self.inner),
            id,
            entries: Vec::with_capacity(keys.len()),
            held: Vec::with_capacity(keys.len()),
        };
        let mut table = lock(&self.inner.table);
        for (key, _) in keys {
            let key_lock = table
                .entry(key.clone())
                .or_insert_with(|| Arc::new(RwLock::new(())));
            guard.entries.push((key.clone(), Arc::clone(key_lock)));
        }
        guard
    }

    /// Takes every key of `keys` (in the order given) into `guard`, calling `between` before
    /// each key (the model test yields to its scheduler there). Returns whether any key had to
    /// be waited for. Has no deadline of its own: the caller bounds it.
    async fn lock_all<Y, F>(
        &self,
        keys: &[(LockKey, LockMode)],
        guard: &mut LockSetGuard,
        mut between: Y,
    ) -> bool
    where
        Y: FnMut() -> F,
        F: std::future::Future<Output = ()>,
    {
        let mut contended = false;
        for (index, (_, mode)) in keys.iter().enumerate().skip(guard.held.len()) {
            between().await;
            let key_lock = Arc::clone(&guard.entries[index].1);
            // Fast path first: an uncontended key never parks.
            let fast = match mode {
                LockMode::Shared => key_lock.clone().try_read_owned().ok().map(Held::Shared),
                LockMode::Exclusive => key_lock.clone().try_write_owned().ok().map(Held::Exclusive),
            };
            let held = match fast {
                Some(held) => held,
                None => {
                    contended = true;
                    match mode {
                        LockMode::Shared => Held::Shared(key_lock.read_owned().await),
                        LockMode::Exclusive => Held::Exclusive(key_lock.write_owned().await),
                    }
                }
            };
            guard.held.push(held);
        }
        contended
    }

    fn record_acquired(&self, guard: &LockSetGuard, started: Instant, contended: bool) {
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let stats = &self.inner.stats;
        stats.acquired.fetch_add(1, Ordering::Relaxed);
        if contended {
            stats.contended.fetch_add(1, Ordering::Relaxed);
        }
        stats.wait_nanos_total.fetch_add(nanos, Ordering::Relaxed);
        stats.wait_nanos_max.fetch_max(nanos, Ordering::Relaxed);
        if let Some(info) = lock(&self.inner.holders).get_mut(&guard.id) {
            info.state = HolderState::Held;
            info.since = Instant::now();
        }
    }

    /// Every lock set currently held or waited for.
    pub fn holders(&self) -> Vec<HolderView> {
        let holders = lock(&self.inner.holders);
        let mut out: Vec<HolderView> = holders
            .values()
            .map(|h| HolderView {
                request_id: h.owner.request_id.clone(),
                operation: h.owner.operation,
                state: h.state,
                age_ms: u64::try_from(h.since.elapsed().as_millis()).unwrap_or(u64::MAX),
                keys: h
                    .keys
                    .iter()
                    .map(|(k, m)| KeyView {
                        key: k.to_string(),
                        mode: *m,
                    })
                    .collect(),
            })
            .collect();
        out.sort_by_key(|h| std::cmp::Reverse(h.age_ms));
        out
    }

    /// The counters since start and the current number of lock sets and table entries.
    pub fn stats(&self) -> LockStats {
        let s = &self.inner.stats;
        let held_or_waiting_sets = lock(&self.inner.holders).len();
        let table_entries = lock(&self.inner.table).len();
        LockStats {
            acquired: s.acquired.load(Ordering::Relaxed),
            contended: s.contended.load(Ordering::Relaxed),
            timeouts: s.timeouts.load(Ordering::Relaxed),
            wait_seconds_total: s.wait_nanos_total.load(Ordering::Relaxed) as f64 / 1e9,
            wait_seconds_max: s.wait_nanos_max.load(Ordering::Relaxed) as f64 / 1e9,
            held_or_waiting_sets,
            table_entries,
        }
    }
}

#[cfg(test)]
mod tests;
