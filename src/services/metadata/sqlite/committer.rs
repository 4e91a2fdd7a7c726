//! The SQLite group committer, on a thread of its own with a synchronous connection.
//!
//! Why: sqlx runs each SQLite connection on a worker thread and hands every statement to it
//! and its answer back, so a write of five statements cost about ten thread wake-ups, one
//! after the other, and the whole batch waited for them in series (issue 18 target 1's
//! profile: `finish_task_switch` the top entry, about 25 context switches per small upload).
//! Here the committer owns a `rusqlite` connection to the same database (the same SQLite
//! library sqlx links) and runs a whole batch of writes without handing anything to another
//! thread: one wake-up per batch.
//!
//! The rules are the same code as on every backend: [`rules::apply`] over the `SqlTx` that
//! `sql_rows!` expands, here over [`super::sync_sql`], whose futures finish when first polled.
//! [`ready`] polls each write's future once and treats `Pending` as an error, so a blocking
//! call can never be hidden behind an `.await` on a runtime worker: none runs on this thread.
//!
//! Transactions are as before: one `BEGIN IMMEDIATE` per batch, a savepoint per write (a
//! failing write rolls back alone), one `COMMIT` (one WAL fsync, `synchronous=FULL`); every
//! writer is answered only after its batch has committed.

use std::future::Future;
use std::path::Path;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::mpsc;

use super::sync_sql;
use super::Job;
use crate::services::metadata::rules::{self, WriteDone};
use crate::services::metadata::MetadataError;

/// Most writes committed in one transaction (one WAL fsync).
const MAX_BATCH: usize = 256;
/// Prepared statements kept per connection (the rules use a few dozen).
const STATEMENT_CACHE: usize = 128;

/// The row code of `sql/rows.rs`, expanded over [`sync_sql`]. The store's lookups it also
/// defines are unused here (the readers stay on sqlx).
#[allow(dead_code)]
mod rows {
    use super::super::dialect;
    use super::sync_sql;
    use crate::services::metadata::rules::Tx;
    use crate::services::metadata::{
        rfc3339, Event, EventKind, EventNote, FileMeta, MetadataError, S3ObjectRow, TokenRecord,
        TrashEntry,
    };

    pub(super) fn map_err(e: sync_sql::Error) -> MetadataError {
        super::map_err(e)
    }

    sql_rows! {
        sqlx: sync_sql,
        db: sync_sql::SyncSqlite,
        conn: rusqlite::Connection,
        row: sync_sql::Row,
        store: (),
        reads: readers,
        writes: writer,
        extra: {}
    }

    pub(super) fn tx(conn: &mut rusqlite::Connection) -> impl Tx + '_ {
        SqlTx::new(conn)
    }
}

pub(super) fn map_err(e: sync_sql::Error) -> MetadataError {
    match &e {
        sync_sql::Error::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => match f.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => MetadataError::Busy,
            ErrorCode::DiskFull => MetadataError::StorageFull,
            _ => MetadataError::Backend(e.to_string()),
        },
        _ => MetadataError::Backend(e.to_string()),
    }
}

fn sqlite_err(e: rusqlite::Error) -> MetadataError {
    map_err(sync_sql::Error::Sqlite(e))
}

/// Opens the committer's connection to `db_path` (migrated already, in WAL mode) and starts
/// its thread, which ends when every sender of `queue` is gone.
pub(super) async fn start(
    db_path: &Path,
    busy_timeout: Duration,
    queue: mpsc::Receiver<Job>,
) -> Result<(), MetadataError> {
    let path = db_path.to_path_buf();
    let conn = crate::blocking::run(move || {
        open(&path, busy_timeout).map_err(|e| std::io::Error::other(e.to_string()))
    })
    .await
    .map_err(|e| MetadataError::Backend(format!("opening the metadata committer: {e}")))?;
    std::thread::Builder::new()
        .name("vaultfs-commit".into())
        .spawn(move || committer(conn, queue))
        .map_err(|e| MetadataError::Backend(format!("starting the metadata committer: {e}")))?;
    Ok(())
}

fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    // WAL is a property of the database file (set when sqlx created it); these two are
    // per connection.
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Group commit: takes whatever writes are queued (up to [`MAX_BATCH`]) and commits them in
/// one transaction. Under load many writes share one WAL fsync; alone, a write commits at once.
fn committer(mut conn: Connection, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Waits for one write, then takes every write queued behind it (up to MAX_BATCH); 0
    // when every sender is gone.
    while queue.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        run_batch(&mut conn, &mut batch);
    }
    tracing::debug!("metadata committer stopped");
}

fn fail_batch(batch: &mut Vec<Job>, err: MetadataError) {
    for job in batch.drain(..) {
        let _ = job.reply.send(Err(err.clone()));
    }
}

/// The batch in one transaction. A failed `BEGIN` or `COMMIT` (the disk full, say) fails the
/// whole batch; whatever transaction SQLite left open is rolled back, so the connection is
/// clean for the next batch.
fn run_batch(conn: &mut Connection, batch: &mut Vec<Job>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = sqlite_err(e);
        tracing::error!(error = %err, "metadata batch could not begin");
        fail_batch(batch, err);
        rollback_if_open(conn);
        return;
    }
    let mut results = Vec::with_capacity(batch.len());
    for job in batch.drain(..) {
        let result = apply_in_savepoint(conn, &job.op, &job.policy);
        results.push((job.reply, result));
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            for (reply, result) in results {
                // Err: the caller is gone (client disconnected); the write stands.
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            let err = sqlite_err(e);
            tracing::error!(error = %err, "metadata batch commit failed");
            rollback_if_open(conn);
            for (reply, _) in results {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

fn rollback_if_open(conn: &mut Connection) {
    if !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "rolling back a failed metadata batch failed");
        }
    }
}

/// One write inside its own savepoint: it fails alone, and a `put_many` fails whole.
fn apply_in_savepoint(
    conn: &mut Connection,
    op: &rules::WriteOp,
    policy: &crate::services::metadata::RetentionPolicy,
) -> Result<WriteDone, MetadataError> {
    conn.execute_batch("SAVEPOINT vaultfs_op")
        .map_err(sqlite_err)?;
    let result = ready(rules::apply(&mut rows::tx(conn), op, policy)).and_then(|r| r);
    let end = if result.is_ok() {
        "RELEASE vaultfs_op"
    } else {
        "ROLLBACK TO vaultfs_op; RELEASE vaultfs_op"
    };
    conn.execute_batch(end).map_err(sqlite_err)?;
    result
}

/// The output of `future`, which must finish when first polled (see the module docs).
fn ready<F: Future>(future: F) -> Result<F::Output, MetadataError> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => Err(MetadataError::Backend(
            "a synchronous metadata write waited".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_refuses_a_future_that_waits() {
        assert!(ready(async { 7 }).is_ok_and(|v| v == 7));
        let mut once = false;
        let waits = std::future::poll_fn(move |_| {
            if once {
                Poll::Ready(())
            } else {
                once = true;
                Poll::Pending
            }
        });
        assert!(matches!(ready(waits), Err(MetadataError::Backend(_))));
    }
}
