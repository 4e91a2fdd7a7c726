//! The in-process state of a session: one writer's turn, its takeover, the running SHA-256.

use std::sync::{Arc, Mutex, MutexGuard};

use sha2::Sha256;
use tokio_util::sync::CancellationToken;

/// The in-process state of one session.
#[derive(Debug)]
pub(super) struct Live {
    /// One writer at a time: held by the request appending to the session.
    pub(super) turn: Arc<tokio::sync::Semaphore>,
    /// Guards the cancellation token of the request that writes (or last wrote) the
    /// session: a newer request cancels it to take the session over.
    writer: Mutex<CancellationToken>,
    /// Guards the SHA-256 of the session's first `.0` bytes, when this process saw them all
    /// arrive (None after a restart or a failed write).
    hasher: Mutex<Option<(u64, Sha256)>>,
}

impl Live {
    pub(super) fn new() -> Self {
        Live {
            turn: Arc::new(tokio::sync::Semaphore::new(1)),
            writer: Mutex::new(CancellationToken::new()),
            hasher: Mutex::new(None),
        }
    }

    /// The hasher, if it covers exactly the first `offset` bytes.
    pub(super) fn take_hasher(&self, offset: u64) -> Option<Sha256> {
        match lock(&self.hasher).take() {
            Some((at, h)) if at == offset => Some(h),
            _ => None,
        }
    }

    pub(super) fn put_hasher(&self, offset: u64, hasher: Option<Sha256>) {
        *lock(&self.hasher) = hasher.map(|h| (offset, h));
    }

    pub(super) fn hasher_at(&self, offset: u64) -> Option<Sha256> {
        match &*lock(&self.hasher) {
            Some((at, h)) if *at == offset => Some(h.clone()),
            _ => None,
        }
    }

    /// Makes `token` the session's writer and cancels the one before it.
    pub(super) fn take_over(&self, token: CancellationToken) {
        let old = std::mem::replace(&mut *lock(&self.writer), token);
        old.cancel();
    }

    pub(super) fn cancel(&self) {
        lock(&self.writer).cancel();
    }
}

/// A poisoned lock only means a panic elsewhere; the data (a token, a hasher) is still
/// usable.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
