//! The row operations of [`super::rules`] on sqlx, written once.
//!
//! sqlx's SQLite and PostgreSQL drivers share their API but not their types, and code
//! generic over `sqlx::Database` needs bounds that break the `Send` inference of async
//! trait methods. So the code is written once here as [`sql_layer!`] and expanded by each
//! backend for its concrete types, with that backend's `map_err` and a `dialect` module of
//! SQL text. SQL that both engines accept (sqlx binds `$N` on SQLite too) is in [`common`];
//! a backend's dialect re-exports it and adds what differs.

/// SQL both engines accept as written.
pub(crate) mod common;
#[macro_use]
mod reads;
#[macro_use]
mod rows;
#[macro_use]
mod store;

/// Expands, inside a backend's module, the sqlx code of the row operations, in three
/// parts: `sql_rows!` (`SqlTx`, a [`super::rules::Tx`] on an open transaction, and the row
/// decoders, in `sql/rows.rs`), `sql_reads!` (`Snapshot`, an [`super::rules::AuditSource`],
/// and `Levels`, in `sql/reads.rs`) and `sql_store!` (the store's `MetadataStore` impl and
/// `migrate`, in `sql/store.rs`). Needs `map_err(sqlx::Error) -> MetadataError` and a
/// `dialect` module (see [`common`]) in scope.
macro_rules! sql_layer {
    (
        db: $db:ty,
        conn: $conn:ty,
        row: $row:ty,
        store: $store:ty,
        reads: $reads:ident,
        writes: $writes:ident,
        extra: { $($extra:tt)* }
    ) => {
        use sqlx::Row as _;

        use $crate::services::metadata::rules::{
            self, AuditSource, LastEventMismatch, Transfer, Tx, WriteOp,
        };
        use $crate::services::metadata::{
            now_ms, rfc3339, BatchOutcome, ChangeOutcome, Event, EventKind, EventNote, FileMeta, MetadataAudit, MetadataError, Precondition, PutOutcome, PutRequest, RetentionPolicy, RetentionStats, TokenRecord, TrashEntry, S3ObjectRow,
        };

        sql_rows! {
            sqlx: sqlx,
            db: $db,
            conn: $conn,
            row: $row,
            store: $store,
            reads: $reads,
            writes: $writes,
            extra: { $($extra)* }
        }

        sql_reads! {
            db: $db,
            conn: $conn,
            row: $row,
            store: $store,
            reads: $reads,
            writes: $writes,
            extra: { $($extra)* }
        }

        sql_store! {
            db: $db,
            conn: $conn,
            row: $row,
            store: $store,
            reads: $reads,
            writes: $writes,
            extra: { $($extra)* }
        }
    };
}
