//! Fault injection points (docs: `tests/faults.rs`). With the `test-hooks` feature, a test
//! arms one point and the next pass through it fails with an I/O error; without the feature,
//! [`check`] is an inlined `Ok(())` and nothing can be armed.

use std::io;

/// Where an upload can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Point {
    /// Before a body chunk is written to the upload's temp file.
    BeforeTempWrite = 1,
    /// After a body chunk is in the temp file.
    AfterTempWrite,
    /// Before the temp file is fsynced.
    BeforeFsync,
    /// After the fsync of the temp file.
    AfterFsync,
    /// Before the staged blob is put in place under its SHA-256 (local: the rename; S3: the
    /// upload or the in-bucket copy).
    BeforeRename,
    /// After the blob is in place, before the metadata transaction.
    AfterRename,
    /// Before the metadata transaction that records the new version commits.
    BeforeMetadataCommit,
    /// Right after the metadata transaction commits.
    AfterMetadataCommit,
    /// After the metadata commit, before the change's event reaches live subscribers.
    BeforeEventPublish,
}

#[cfg(feature = "test-hooks")]
static ARMED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Arms `point` (or disarms with `None`) for the whole process.
#[cfg(feature = "test-hooks")]
pub fn arm(point: Option<Point>) {
    ARMED.store(
        point.map_or(0, |p| p as u8),
        std::sync::atomic::Ordering::SeqCst,
    );
}

/// Fails when `point` is armed.
#[inline]
pub fn check(point: Point) -> io::Result<()> {
    #[cfg(feature = "test-hooks")]
    if ARMED.load(std::sync::atomic::Ordering::SeqCst) == point as u8 {
        return Err(io::Error::other(format!("injected fault at {point:?}")));
    }
    let _ = point;
    Ok(())
}
