//! The metadata database's pools for a feature's own rows (tus sessions, web sessions), on
//! either backend, every query under one deadline. [`on_pool!`] runs the same query code
//! on the SQLite or the PostgreSQL pool, type-checked once per backend.

use std::time::Duration;

use sqlx::{PgPool, SqlitePool};

use super::MetadataError;

/// Which database the rows live in.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// The embedded database: its one writer connection and its readers.
    Sqlite {
        /// The single writer (shared with the metadata store's writes).
        writer: SqlitePool,
        /// The read pool.
        readers: SqlitePool,
    },
    /// PostgreSQL: one pool for reads and writes.
    Postgres(PgPool),
}

/// The pools and the deadline of every query on them.
#[derive(Debug, Clone)]
pub(crate) struct Pools {
    pub(crate) backend: Backend,
    timeout: Duration,
}

impl Pools {
    pub(crate) fn sqlite(writer: SqlitePool, readers: SqlitePool, timeout: Duration) -> Self {
        Pools {
            backend: Backend::Sqlite { writer, readers },
            timeout,
        }
    }

    pub(crate) fn postgres(pool: PgPool, timeout: Duration) -> Self {
        Pools {
            backend: Backend::Postgres(pool),
            timeout,
        }
    }

    /// `query` within the deadline: past it `Busy`, a pool timeout `Busy`, else `Backend`.
    pub(crate) async fn deadline<T>(
        &self,
        query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, MetadataError> {
        match tokio::time::timeout(self.timeout, query).await {
            Err(_) => Err(MetadataError::Busy),
            Ok(r) => r.map_err(map_err),
        }
    }
}

pub(crate) fn map_err(e: sqlx::Error) -> MetadataError {
    match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => MetadataError::Busy,
        _ => MetadataError::Backend(e.to_string()),
    }
}

/// Runs `$body` with `$pool` bound to the backend's writer (`write`) or a reader (`read`) of
/// `$self.pools`: the same code, type-checked once per backend. `$post` turns the backend's
/// own result type (bound to `$r`) into a common one.
macro_rules! on_pool {
    ($self:ident, write, $pool:ident => $body:expr, |$r:ident| $post:expr) => {
        match &$self.pools.backend {
            $crate::services::metadata::pools::Backend::Sqlite { writer: $pool, .. } => {
                let $r = $self.pools.deadline($body).await?;
                $post
            }
            $crate::services::metadata::pools::Backend::Postgres($pool) => {
                let $r = $self.pools.deadline($body).await?;
                $post
            }
        }
    };
    ($self:ident, read, $pool:ident => $body:expr, |$r:ident| $post:expr) => {
        match &$self.pools.backend {
            $crate::services::metadata::pools::Backend::Sqlite { readers: $pool, .. } => {
                let $r = $self.pools.deadline($body).await?;
                $post
            }
            $crate::services::metadata::pools::Backend::Postgres($pool) => {
                let $r = $self.pools.deadline($body).await?;
                $post
            }
        }
    };
}
pub(crate) use on_pool;
