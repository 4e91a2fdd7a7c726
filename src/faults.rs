//! Fault injection points (docs: `tests/faults.rs`). With the `test-hooks` feature, a test
//! arms one point and the next pass through it fails with an I/O error; without the feature,
//! [`check`] is an inlined `Ok(())` and nothing can be armed.

use std::io;

/// Where an upload can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Point {
    BeforeTempWrite = 1,
    AfterTempWrite,
    BeforeFsync,
    AfterFsync,
    BeforeRename,
    AfterRename,
    BeforeMetadataCommit,
    AfterMetadataCommit,
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
