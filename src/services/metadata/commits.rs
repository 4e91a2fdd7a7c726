//! Commits (atomic multi-file publishes) and leases with fencing tokens (issue 21): their
//! types, the one store operation that carries them ([`AtomicOp`] through
//! [`super::MetadataStore::atomic`]), the row operations each backend supplies
//! ([`CommitRows`], SQL in [`commit_rows!`]), and the fence a write carries.
//!
//! What the operations mean is in `rules/commits.rs`, next to the other write rules: a
//! finish applies its deletions and puts with the ordinary rules, in one transaction, and
//! every write checks the leases on its paths there (the [`FENCE`] of its request).
//!
//! Staged files hold one blob reference each (`commit_files` rows count in
//! `blobs.refcount`), so collection and fsck treat staged content as referenced until the
//! commit is finished (the reference moves to the file row), aborted or expired (dropped).

use serde::{Deserialize, Serialize};

use super::{EventKind, FileMeta, S3ObjectRow};

tokio::task_local! {
    /// The `X-Vaultfs-Fence` of the request whose future runs now (set by the HTTP edge
    /// around each request). A backend's write reads it when the write is queued, so the
    /// check happens in the metadata transaction. Unset or `None`: the write carries no
    /// fence (refused under a live lease with `Locked`).
    pub static FENCE: Option<i64>;
}

/// The fence of the running request, if any.
pub(crate) fn current_fence() -> Option<i64> {
    FENCE.try_with(|f| *f).ok().flatten()
}

/// The extra member of a `lease_held` error: when the holder's lease ends.
pub(crate) const LEASE_HELD_UNTIL: &str = "expires_at";

/// A commit's state column.
pub(crate) const OPEN: &str = "open";
pub(crate) const FINISHED: &str = "finished";
pub(crate) const ABORTED: &str = "aborted";
pub(crate) const EXPIRED: &str = "expired";

/// A commit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRecord {
    pub id: String,
    pub idempotency_key: Option<String>,
    /// `open`, `finished`, `aborted` or `expired`.
    pub state: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// The finish's answer (JSON of [`FinishOutcome`]) once finished.
    pub result: Option<String>,
}

impl CommitRecord {
    /// The stored finish answer.
    pub fn finished(&self) -> Option<FinishOutcome> {
        self.result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok())
    }
}

/// A file staged in a commit: invisible until the finish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    #[serde(skip)]
    pub content_type: String,
    /// The S3 record a file staged through the S3 API carries to its finish (ETag, user
    /// metadata, checksums); `None` from the native front ends.
    #[serde(skip)]
    pub s3: Option<S3ObjectRow>,
}

/// How long a lease id that lapsed and was taken over is still told apart from an unknown
/// one (its renewal answers `LeaseExpired`, not `NotFound`).
pub(crate) const LAPSED_LEASE_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// How long an ended commit's row (its tombstone: `expired` answers 410 `commit_expired`,
/// `aborted` 404) is kept past the commit's expiry before the sweep removes it; its id is
/// then unknown (404). Finished commits stay (a retried finish answers their result).
pub(crate) const ENDED_COMMIT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// What a finish applies, besides the staged files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishRequest {
    pub commit_id: String,
    /// (path, sha256): the staged set must be exactly this.
    pub expect: Option<Vec<(String, String)>>,
    /// Paths removed in the same transaction (missing ones are skipped).
    pub delete: Vec<String>,
    /// Every live file under it that the commit does not write is deleted.
    pub replace_prefix: Option<String>,
    /// A feed seq: `PreconditionFailed` when anything under the commit's paths or
    /// `replace_prefix` changed after it.
    pub if_unchanged_since: Option<i64>,
    /// The paths the caller locked (staged and deleted): a staged set that grew meanwhile
    /// is `PathChanged`, and the caller locks again.
    pub locked: Vec<String>,
}

/// A finished commit, as `POST /api/v1/commits/{id}/finish` answers it (again on a retry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishOutcome {
    pub commit: String,
    /// The first and last seq of the commit's events (0 and 0 for an empty commit).
    pub seq_first: i64,
    pub seq_last: i64,
    pub files: Vec<FileMeta>,
}

/// A lease path's row: the newest fence issued for it and the current holder, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRow {
    pub(crate) path: String,
    pub(crate) fence: i64,
    pub(crate) lease_id: Option<String>,
    pub(crate) expires_at_ms: i64,
}

impl LeaseRow {
    pub(crate) fn live(&self, now: i64) -> bool {
        self.lease_id.is_some() && self.expires_at_ms > now
    }

    /// Whether a write to `path` is under this lease path (the file itself, or a prefix
    /// ending in `/` above it).
    pub(crate) fn covers(&self, path: &str) -> bool {
        self.path == path || (self.path.ends_with('/') && path.starts_with(&self.path))
    }

    pub(crate) fn lease(&self) -> Option<Lease> {
        Some(Lease {
            lease_id: self.lease_id.clone()?,
            path: self.path.clone(),
            fence: self.fence,
            expires_at_ms: self.expires_at_ms,
        })
    }
}

/// A live lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub lease_id: String,
    pub path: String,
    pub fence: i64,
    pub expires_at_ms: i64,
}

/// The operations on commits and leases; each is one write transaction (reads too, so
/// they see the writes before them in order).
#[derive(Debug, Clone)]
pub enum AtomicOp {
    /// A new open commit, or the one an earlier call made with the same key.
    CreateCommit {
        id: String,
        idempotency_key: Option<String>,
        ttl_ms: i64,
    },
    /// The commit and its staged files.
    Get {
        commit_id: String,
    },
    /// Adds (or replaces, per path) staged files; at most `max_files` in the commit.
    Stage {
        commit_id: String,
        entries: Vec<StagedEntry>,
        max_files: usize,
    },
    Finish(FinishRequest),
    Abort {
        commit_id: String,
    },
    /// Ends at most `limit` open commits whose ttl passed.
    ExpireCommits {
        limit: i64,
    },
    AcquireLease {
        lease_id: String,
        path: String,
        ttl_ms: i64,
    },
    RenewLease {
        lease_id: String,
        ttl_ms: i64,
    },
    ReleaseLease {
        lease_id: String,
    },
    /// The live leases.
    Leases,
}

/// What an [`AtomicOp`] produced.
#[derive(Debug, Clone)]
pub enum AtomicDone {
    /// The commit, and whether this call created it.
    Commit(CommitRecord, bool),
    Staged {
        commit: CommitRecord,
        files: Vec<StagedEntry>,
        /// Blobs a re-staged path no longer references, at zero now.
        released: Vec<String>,
    },
    Finished {
        outcome: FinishOutcome,
        /// Blobs whose count dropped to zero (files replaced or deleted for good).
        released: Vec<String>,
    },
    /// Blobs released (abort, expiry), with how many commits ended.
    Released(usize, Vec<String>),
    Lease(Lease),
    Leases(Vec<Lease>),
    Done,
}

/// Row operations on the commit and lease tables, inside one open write transaction.
#[async_trait::async_trait]
pub(crate) trait CommitRows: Send {
    /// Events appended from now on belong to commit (id, event count); `None`: to none.
    fn set_commit_note(&mut self, note: Option<(String, i64)>);
    /// The seq of the last event this transaction appended.
    fn last_appended_seq(&self) -> Option<i64>;
    async fn commit_by_id(
        &mut self,
        id: &str,
    ) -> Result<Option<CommitRecord>, super::MetadataError>;
    async fn commit_by_key(
        &mut self,
        key: &str,
    ) -> Result<Option<CommitRecord>, super::MetadataError>;
    async fn insert_commit(&mut self, c: &CommitRecord) -> Result<(), super::MetadataError>;
    async fn set_commit_state(
        &mut self,
        id: &str,
        state: &str,
        result: Option<&str>,
    ) -> Result<(), super::MetadataError>;
    /// Open commits whose `expires_at <= now`, at most `limit`.
    async fn expired_commits(
        &mut self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<String>, super::MetadataError>;
    /// Removes at most `limit` expired or aborted commits whose `expires_at` is before
    /// `before` (their staged rows went when they ended).
    async fn purge_ended_commits(
        &mut self,
        before: i64,
        limit: i64,
    ) -> Result<(), super::MetadataError>;
    /// Staged files of a commit, by path.
    async fn staged_files(
        &mut self,
        commit_id: &str,
    ) -> Result<Vec<StagedEntry>, super::MetadataError>;
    async fn upsert_staged(
        &mut self,
        commit_id: &str,
        e: &StagedEntry,
    ) -> Result<(), super::MetadataError>;
    async fn delete_staged(&mut self, commit_id: &str) -> Result<(), super::MetadataError>;
    /// Every lease path's row (a handful: one per path ever leased).
    async fn lease_rows(&mut self) -> Result<Vec<LeaseRow>, super::MetadataError>;
    /// Inserts or replaces the row of `row.path`.
    async fn put_lease_row(&mut self, row: &LeaseRow) -> Result<(), super::MetadataError>;
    /// Remembers `row`'s lease (lapsed, about to be taken over) as of `now`, and forgets
    /// those remembered before `forget_before`.
    async fn remember_lapsed_lease(
        &mut self,
        row: &LeaseRow,
        now: i64,
        forget_before: i64,
    ) -> Result<(), super::MetadataError>;
    /// Whether `lease_id` lapsed and was taken over (and is still remembered).
    async fn lapsed_lease(&mut self, lease_id: &str) -> Result<bool, super::MetadataError>;
    // Set-based row operations of a finish: a handful of statements for a whole commit,
    // each the same rows as the per-file operation of `rules::Tx` it names, applied to a
    // batch (none for an empty one).

    /// The file rows at the paths staged in `commit_id`.
    async fn files_at_staged_paths(
        &mut self,
        commit_id: &str,
    ) -> Result<Vec<FileMeta>, super::MetadataError>;
    /// `Tx::insert_file` of each.
    async fn insert_files(&mut self, metas: &[FileMeta]) -> Result<(), super::MetadataError>;
    /// `Tx::update_content` of each (distinct ids).
    async fn update_contents(&mut self, metas: &[FileMeta]) -> Result<(), super::MetadataError>;
    /// `Tx::insert_version` of each.
    async fn insert_versions(&mut self, metas: &[FileMeta]) -> Result<(), super::MetadataError>;
    /// `Tx::versions_beyond` of each of `ids`: (id, version, sha256).
    async fn versions_beyond_each(
        &mut self,
        ids: &[String],
        skip: u64,
    ) -> Result<Vec<(String, i64, String)>, super::MetadataError>;
    /// `Tx::delete_version` of each (id, version).
    async fn delete_versions(&mut self, rows: &[(String, i64)])
        -> Result<(), super::MetadataError>;
    /// Drops `n` references of each (sha256, n) (distinct hashes); (sha256, count left) of
    /// those that have a row.
    async fn drop_blob_refs(
        &mut self,
        refs: &[(String, i64)],
    ) -> Result<Vec<(String, i64)>, super::MetadataError>;
    /// `Tx::append_event` of each (kind, file), in order (consecutive seqs), with no
    /// `from_path` and no note.
    async fn append_events(
        &mut self,
        events: &[(EventKind, FileMeta)],
        at: i64,
    ) -> Result<(), super::MetadataError>;
    /// (path, from_path) of the events after `seq`, at most `limit`.
    async fn paths_changed_after(
        &mut self,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<(String, Option<String>)>, super::MetadataError>;
    /// The lowest retained seq.
    async fn oldest_retained_seq(&mut self) -> Result<Option<i64>, super::MetadataError>;
}

/// Rows per statement of the set-based operations: at most 13 binds a row keeps a
/// statement under SQLite's 32,766 and PostgreSQL's 65,535 parameters.
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

/// `rows` tuples of `VALUES`, each the bind numbers `template` names (offsets into the
/// row's `width` binds), numbered from `$first`: `($1, $2), ($3, $4)`.
pub(crate) fn values_rows(rows: usize, first: usize, width: usize, template: &[usize]) -> String {
    let mut out = String::with_capacity(rows * template.len() * 6);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for (i, offset) in template.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(first + r * width + offset).to_string());
        }
        out.push(')');
    }
    out
}

/// Expands, inside `sql_layer!`, [`CommitRows`] for its `SqlTx` (SQL both engines accept).
macro_rules! commit_rows {
    ($row:ty) => {
        use $crate::services::metadata::commits::{
            values_rows, CommitRecord, CommitRows, LeaseRow, StagedEntry, ROWS_PER_STATEMENT,
        };

        const COMMIT_COLUMNS: &str =
            "id, idempotency_key, state, created_at, expires_at, result";

        fn row_to_commit(r: &$row) -> Result<CommitRecord, MetadataError> {
            Ok(CommitRecord {
                id: r.try_get("id").map_err(map_err)?,
                idempotency_key: r.try_get("idempotency_key").map_err(map_err)?,
                state: r.try_get("state").map_err(map_err)?,
                created_at_ms: r.try_get("created_at").map_err(map_err)?,
                expires_at_ms: r.try_get("expires_at").map_err(map_err)?,
                result: r.try_get("result").map_err(map_err)?,
            })
        }

        #[async_trait::async_trait]
        impl CommitRows for SqlTx<'_> {
            fn set_commit_note(&mut self, note: Option<(String, i64)>) {
                self.commit = note;
            }

            fn last_appended_seq(&self) -> Option<i64> {
                self.last_seq
            }

            async fn commit_by_id(&mut self, id: &str) -> Result<Option<CommitRecord>, MetadataError> {
                let sql = format!("SELECT {COMMIT_COLUMNS} FROM commits WHERE id = $1");
                let row = sqlx::query(&sql)
                    .bind(id)
                    .fetch_optional(&mut *self.conn)
                    .await
                    .map_err(map_err)?;
                row.as_ref().map(row_to_commit).transpose()
            }

            async fn commit_by_key(
                &mut self,
                key: &str,
            ) -> Result<Option<CommitRecord>, MetadataError> {
                let sql = format!("SELECT {COMMIT_COLUMNS} FROM commits WHERE idempotency_key = $1");
                let row = sqlx::query(&sql)
                    .bind(key)
                    .fetch_optional(&mut *self.conn)
                    .await
                    .map_err(map_err)?;
                row.as_ref().map(row_to_commit).transpose()
            }

            async fn insert_commit(&mut self, c: &CommitRecord) -> Result<(), MetadataError> {
                let q = sqlx::query(
                    "INSERT INTO commits (id, idempotency_key, state, created_at, expires_at, result)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&c.id)
                .bind(c.idempotency_key.as_deref())
                .bind(&c.state)
                .bind(c.created_at_ms)
                .bind(c.expires_at_ms)
                .bind(c.result.as_deref());
                self.run(q).await
            }

            async fn set_commit_state(
                &mut self,
                id: &str,
                state: &str,
                result: Option<&str>,
            ) -> Result<(), MetadataError> {
                let q = sqlx::query("UPDATE commits SET state = $1, result = $2 WHERE id = $3")
                    .bind(state)
                    .bind(result)
                    .bind(id);
                self.run(q).await
            }

            async fn expired_commits(
                &mut self,
                now: i64,
                limit: i64,
            ) -> Result<Vec<String>, MetadataError> {
                sqlx::query_scalar(
                    "SELECT id FROM commits WHERE state = 'open' AND expires_at <= $1
                     ORDER BY expires_at LIMIT $2",
                )
                .bind(now)
                .bind(limit)
                .fetch_all(&mut *self.conn)
                .await
                .map_err(map_err)
            }

            async fn purge_ended_commits(
                &mut self,
                before: i64,
                limit: i64,
            ) -> Result<(), MetadataError> {
                let q = sqlx::query(
                    "DELETE FROM commits WHERE id IN (
                        SELECT id FROM commits WHERE state IN ('expired', 'aborted')
                        AND expires_at < $1 LIMIT $2)",
                )
                .bind(before)
                .bind(limit);
                self.run(q).await
            }

            async fn staged_files(
                &mut self,
                commit_id: &str,
            ) -> Result<Vec<StagedEntry>, MetadataError> {
                let rows = sqlx::query(
                    "SELECT path, size, sha256, content_type, s3_etag, s3_attrs FROM commit_files
                     WHERE commit_id = $1 ORDER BY path",
                )
                .bind(commit_id)
                .fetch_all(&mut *self.conn)
                .await
                .map_err(map_err)?;
                rows.iter()
                    .map(|r| {
                        let etag: Option<String> = r.try_get("s3_etag").map_err(map_err)?;
                        let attrs: Option<String> = r.try_get("s3_attrs").map_err(map_err)?;
                        Ok(StagedEntry {
                            path: r.try_get("path").map_err(map_err)?,
                            size: size_u64(r.try_get("size").map_err(map_err)?)?,
                            sha256: r.try_get("sha256").map_err(map_err)?,
                            content_type: r.try_get("content_type").map_err(map_err)?,
                            s3: etag.zip(attrs).map(|(etag, attrs)| {
                                $crate::services::metadata::S3ObjectRow { etag, attrs }
                            }),
                        })
                    })
                    .collect()
            }

            async fn upsert_staged(
                &mut self,
                commit_id: &str,
                e: &StagedEntry,
            ) -> Result<(), MetadataError> {
                let q = sqlx::query(
                    "INSERT INTO commit_files
                        (commit_id, path, size, sha256, content_type, s3_etag, s3_attrs)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (commit_id, path) DO UPDATE SET size = excluded.size,
                        sha256 = excluded.sha256, content_type = excluded.content_type,
                        s3_etag = excluded.s3_etag, s3_attrs = excluded.s3_attrs",
                )
                .bind(commit_id)
                .bind(&e.path)
                .bind(size_i64(e.size)?)
                .bind(&e.sha256)
                .bind(&e.content_type)
                .bind(e.s3.as_ref().map(|s| s.etag.as_str()))
                .bind(e.s3.as_ref().map(|s| s.attrs.as_str()));
                self.run(q).await
            }

            async fn delete_staged(&mut self, commit_id: &str) -> Result<(), MetadataError> {
                self.run(sqlx::query("DELETE FROM commit_files WHERE commit_id = $1").bind(commit_id))
                    .await
            }

            async fn lease_rows(&mut self) -> Result<Vec<LeaseRow>, MetadataError> {
                let rows = sqlx::query("SELECT path, fence, lease_id, expires_at FROM leases")
                    .fetch_all(&mut *self.conn)
                    .await
                    .map_err(map_err)?;
                rows.iter()
                    .map(|r| {
                        Ok(LeaseRow {
                            path: r.try_get("path").map_err(map_err)?,
                            fence: r.try_get("fence").map_err(map_err)?,
                            lease_id: r.try_get("lease_id").map_err(map_err)?,
                            expires_at_ms: r.try_get("expires_at").map_err(map_err)?,
                        })
                    })
                    .collect()
            }

            async fn put_lease_row(&mut self, row: &LeaseRow) -> Result<(), MetadataError> {
                let q = sqlx::query(
                    "INSERT INTO leases (path, fence, lease_id, expires_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (path) DO UPDATE SET fence = excluded.fence,
                        lease_id = excluded.lease_id, expires_at = excluded.expires_at",
                )
                .bind(&row.path)
                .bind(row.fence)
                .bind(row.lease_id.as_deref())
                .bind(row.expires_at_ms);
                self.run(q).await
            }

            async fn remember_lapsed_lease(
                &mut self,
                row: &LeaseRow,
                now: i64,
                forget_before: i64,
            ) -> Result<(), MetadataError> {
                self.run(
                    sqlx::query("DELETE FROM lapsed_leases WHERE lapsed_at < $1").bind(forget_before),
                )
                .await?;
                let Some(lease_id) = row.lease_id.as_deref() else {
                    return Ok(());
                };
                let q = sqlx::query(
                    "INSERT INTO lapsed_leases (lease_id, path, fence, lapsed_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (lease_id) DO NOTHING",
                )
                .bind(lease_id)
                .bind(&row.path)
                .bind(row.fence)
                .bind(now);
                self.run(q).await
            }

            async fn lapsed_lease(&mut self, lease_id: &str) -> Result<bool, MetadataError> {
                let found: Option<i64> =
                    sqlx::query_scalar("SELECT fence FROM lapsed_leases WHERE lease_id = $1")
                        .bind(lease_id)
                        .fetch_optional(&mut *self.conn)
                        .await
                        .map_err(map_err)?;
                Ok(found.is_some())
            }

            async fn files_at_staged_paths(
                &mut self,
                commit_id: &str,
            ) -> Result<Vec<FileMeta>, MetadataError> {
                let rows = sqlx::query(
                    "SELECT f.id, f.path, f.size, f.sha256, f.version, f.content_type,
                            f.created_at, f.modified_at
                     FROM commit_files c JOIN files f ON f.path = c.path
                     WHERE c.commit_id = $1",
                )
                .bind(commit_id)
                .fetch_all(&mut *self.conn)
                .await
                .map_err(map_err)?;
                rows.iter().map(row_to_meta).collect()
            }

            async fn insert_files(&mut self, metas: &[FileMeta]) -> Result<(), MetadataError> {
                for chunk in metas.chunks(ROWS_PER_STATEMENT) {
                    let sql = format!(
                        "INSERT INTO files
                            (id, path, size, sha256, version, content_type, created_at, modified_at)
                         VALUES {}",
                        values_rows(chunk.len(), 1, 7, &[0, 1, 2, 3, 4, 5, 6, 6])
                    );
                    let mut q = sqlx::query(&sql);
                    for m in chunk {
                        q = q
                            .bind(&m.id)
                            .bind(&m.path)
                            .bind(size_i64(m.size)?)
                            .bind(&m.sha256)
                            .bind(m.version)
                            .bind(&m.content_type)
                            .bind(m.modified_ms);
                    }
                    self.run(q).await?;
                }
                Ok(())
            }

            async fn update_contents(&mut self, metas: &[FileMeta]) -> Result<(), MetadataError> {
                for chunk in metas.chunks(ROWS_PER_STATEMENT) {
                    let sql = format!(
                        "UPDATE files SET size = v.column2, sha256 = v.column3,
                            version = v.column4, content_type = v.column5, modified_at = v.column6
                         FROM (VALUES {}) AS v WHERE files.id = v.column1",
                        values_rows(chunk.len(), 1, 6, &[0, 1, 2, 3, 4, 5])
                    );
                    let mut q = sqlx::query(&sql);
                    for m in chunk {
                        q = q
                            .bind(&m.id)
                            .bind(size_i64(m.size)?)
                            .bind(&m.sha256)
                            .bind(m.version)
                            .bind(&m.content_type)
                            .bind(m.modified_ms);
                    }
                    self.run(q).await?;
                }
                Ok(())
            }

            async fn insert_versions(&mut self, metas: &[FileMeta]) -> Result<(), MetadataError> {
                for chunk in metas.chunks(ROWS_PER_STATEMENT) {
                    let sql = format!(
                        "INSERT INTO versions (file_id, version, size, sha256, content_type, modified_at)
                         VALUES {}",
                        values_rows(chunk.len(), 1, 6, &[0, 1, 2, 3, 4, 5])
                    );
                    let mut q = sqlx::query(&sql);
                    for m in chunk {
                        q = q
                            .bind(&m.id)
                            .bind(m.version)
                            .bind(size_i64(m.size)?)
                            .bind(&m.sha256)
                            .bind(&m.content_type)
                            .bind(m.modified_ms);
                    }
                    self.run(q).await?;
                }
                Ok(())
            }

            async fn versions_beyond_each(
                &mut self,
                ids: &[String],
                skip: u64,
            ) -> Result<Vec<(String, i64, String)>, MetadataError> {
                let mut out = Vec::new();
                for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                    let sql = format!(
                        "SELECT file_id, version, sha256 FROM (
                            SELECT file_id, version, sha256, ROW_NUMBER() OVER (
                                PARTITION BY file_id ORDER BY version DESC) AS newer
                            FROM versions WHERE file_id IN ({})) AS ranked
                         WHERE newer > $1",
                        values_rows(chunk.len(), 2, 1, &[0]).replace(['(', ')'], "")
                    );
                    let mut q = sqlx::query_as(&sql).bind(i64::try_from(skip).unwrap_or(i64::MAX));
                    for id in chunk {
                        q = q.bind(id);
                    }
                    let rows: Vec<(String, i64, String)> =
                        q.fetch_all(&mut *self.conn).await.map_err(map_err)?;
                    out.extend(rows);
                }
                Ok(out)
            }

            async fn delete_versions(&mut self, rows: &[(String, i64)]) -> Result<(), MetadataError> {
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    let sql = format!(
                        "DELETE FROM versions WHERE (file_id, version) IN (VALUES {})",
                        values_rows(chunk.len(), 1, 2, &[0, 1])
                    );
                    let mut q = sqlx::query(&sql);
                    for (id, version) in chunk {
                        q = q.bind(id).bind(*version);
                    }
                    self.run(q).await?;
                }
                Ok(())
            }

            async fn drop_blob_refs(
                &mut self,
                refs: &[(String, i64)],
            ) -> Result<Vec<(String, i64)>, MetadataError> {
                let mut out = Vec::with_capacity(refs.len());
                for chunk in refs.chunks(ROWS_PER_STATEMENT) {
                    let sql = format!(
                        "UPDATE blobs SET refcount = refcount - v.column2
                         FROM (VALUES {}) AS v WHERE blobs.sha256 = v.column1
                         RETURNING sha256, refcount",
                        values_rows(chunk.len(), 1, 2, &[0, 1])
                    );
                    let mut q = sqlx::query_as(&sql);
                    for (sha, n) in chunk {
                        q = q.bind(sha).bind(*n);
                    }
                    let rows: Vec<(String, i64)> =
                        q.fetch_all(&mut *self.conn).await.map_err(map_err)?;
                    out.extend(rows);
                }
                Ok(out)
            }

            async fn append_events(
                &mut self,
                events: &[(EventKind, FileMeta)],
                at: i64,
            ) -> Result<(), MetadataError> {
                let (commit_id, commit_size) = match &self.commit {
                    Some((id, n)) => (Some(id.clone()), Some(*n)),
                    None => (None, None),
                };
                let postgres = dialect::NAME == "postgres";
                for chunk in events.chunks(ROWS_PER_STATEMENT) {
                    // $1..$3 the columns every row shares, then per row kind, id, path,
                    // version, size, sha256; PostgreSQL's has the row count at $4 and each
                    // row's place in the chunk first.
                    // SQLite's AUTOINCREMENT numbers the rows in VALUES order (one writer:
                    // consecutive seqs); PostgreSQL takes them from the counter row, which
                    // this transaction then holds until it commits.
                    let sql = if postgres {
                        format!(
                            "WITH c AS (UPDATE event_counter SET seq = seq + $4 WHERE id = 1
                                        RETURNING seq)
                             INSERT INTO events (seq, kind, file_id, path, version, size, sha256,
                                                 at, commit_id, commit_size)
                             SELECT c.seq - $4 + v.column1, v.column2, v.column3, v.column4,
                                    v.column5, v.column6, v.column7, $1, $2, $3
                             FROM c CROSS JOIN (VALUES {}) AS v
                             RETURNING seq",
                            values_rows(chunk.len(), 5, 7, &[0, 1, 2, 3, 4, 5, 6])
                        )
                    } else {
                        let rows = values_rows(chunk.len(), 4, 6, &[0, 1, 2, 3, 4, 5])
                            .replace(')', ", $1, $2, $3)");
                        format!(
                            "INSERT INTO events (kind, file_id, path, version, size, sha256, at,
                                                 commit_id, commit_size)
                             VALUES {rows} RETURNING seq"
                        )
                    };
                    let mut q = sqlx::query_scalar(&sql)
                        .bind(at)
                        .bind(commit_id.as_deref())
                        .bind(commit_size);
                    if postgres {
                        q = q.bind(i64::try_from(chunk.len()).unwrap_or(i64::MAX));
                    }
                    for (i, (kind, m)) in chunk.iter().enumerate() {
                        if postgres {
                            q = q.bind(i64::try_from(i + 1).unwrap_or(i64::MAX));
                        }
                        q = q
                            .bind(kind.as_str())
                            .bind(&m.id)
                            .bind(&m.path)
                            .bind(m.version)
                            .bind(size_i64(m.size)?)
                            .bind(&m.sha256);
                    }
                    let seqs: Vec<i64> = q.fetch_all(&mut *self.conn).await.map_err(map_err)?;
                    if seqs.len() != chunk.len() {
                        return Err(MetadataError::Backend(format!(
                            "{} events appended of {}",
                            seqs.len(),
                            chunk.len()
                        )));
                    }
                    self.last_seq = seqs.into_iter().max().or(self.last_seq);
                }
                Ok(())
            }

            async fn paths_changed_after(
                &mut self,
                seq: i64,
                limit: i64,
            ) -> Result<Vec<(String, Option<String>)>, MetadataError> {
                sqlx::query_as("SELECT path, from_path FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(seq)
                    .bind(limit)
                    .fetch_all(&mut *self.conn)
                    .await
                    .map_err(map_err)
            }

            async fn oldest_retained_seq(&mut self) -> Result<Option<i64>, MetadataError> {
                sqlx::query_scalar("SELECT MIN(seq) FROM events")
                    .fetch_one(&mut *self.conn)
                    .await
                    .map_err(map_err)
            }
        }
    };
}
