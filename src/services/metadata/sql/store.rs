//! The store's `MetadataStore` methods that are the same on both engines, on its pools, and
//! `migrate` (the `.sql` migrations of the backend's dialect, in order).

/// Expands inside [`sql_layer!`]; takes its arguments.
macro_rules! sql_store {
    (
        db: $db:ty,
        conn: $conn:ty,
        row: $row:ty,
        store: $store:ty,
        reads: $reads:ident,
        writes: $writes:ident,
        extra: { $($extra:tt)* }
    ) => {
        impl $store {
            /// The retention policy writes apply now.
            fn policy(&self) -> std::sync::Arc<RetentionPolicy> {
                let guard = self.retention.read().unwrap_or_else(|e| e.into_inner());
                std::sync::Arc::clone(&guard)
            }
        }

        /// Everything but the writes' transactions, the audit's snapshot, closing and
        /// fences is the same on both engines: the store's methods, on its pools. The
        /// backend provides `write(&self, WriteOp)`, `snapshot(&self)` (a read transaction
        /// that is one snapshot) and `shutdown(&self)`, and may add trait methods in `extra`.
        #[async_trait::async_trait]
        impl $crate::services::metadata::MetadataStore for $store {
            async fn get_by_id(&self, id: &str) -> Result<Option<FileMeta>, MetadataError> {
                file_where(&self.$reads, "id", id).await
            }

            async fn get_by_path(&self, path: &str) -> Result<Option<FileMeta>, MetadataError> {
                file_where(&self.$reads, "path", path).await
            }

            async fn put(&self, req: PutRequest) -> Result<PutOutcome, MetadataError> {
                self.write(WriteOp::Put(req)).await?.into_put()
            }

            async fn put_many(
                &self,
                reqs: Vec<PutRequest>,
            ) -> Result<Vec<PutOutcome>, MetadataError> {
                if reqs.is_empty() {
                    return Ok(Vec::new());
                }
                self.write(WriteOp::PutMany(reqs)).await?.into_many()
            }

            async fn delete(
                &self,
                id: &str,
                expected_path: &str,
                precondition: &Precondition,
            ) -> Result<ChangeOutcome, MetadataError> {
                let op = WriteOp::Delete {
                    id: id.to_string(),
                    expected_path: expected_path.to_string(),
                    precondition: precondition.clone(),
                    permanent: false,
                };
                self.write(op).await?.into_change()
            }

            fn set_retention(&self, policy: RetentionPolicy) {
                let mut guard = self.retention.write().unwrap_or_else(|e| e.into_inner());
                *guard = std::sync::Arc::new(policy);
            }

            async fn delete_permanently(
                &self,
                id: &str,
                expected_path: &str,
                precondition: &Precondition,
            ) -> Result<ChangeOutcome, MetadataError> {
                let op = WriteOp::Delete {
                    id: id.to_string(),
                    expected_path: expected_path.to_string(),
                    precondition: precondition.clone(),
                    permanent: true,
                };
                self.write(op).await?.into_change()
            }

            async fn versions(
                &self,
                id: &str,
                before: Option<i64>,
                limit: usize,
            ) -> Result<Vec<FileMeta>, MetadataError> {
                let sql = format!(
                    "SELECT {} FROM versions WHERE file_id = $1 AND version < $2
                     ORDER BY version DESC LIMIT $3",
                    dialect::VERSION_COLUMNS
                );
                let rows = sqlx::query(&sql)
                    .bind(id)
                    .bind(before.unwrap_or(i64::MAX))
                    .bind(limit_i64(limit))
                    .fetch_all(&self.$reads)
                    .await
                    .map_err(map_err)?;
                rows.iter().map(row_to_meta).collect()
            }

            async fn restore_version(
                &self,
                id: &str,
                expected_path: &str,
                version: i64,
                precondition: &Precondition,
            ) -> Result<ChangeOutcome, MetadataError> {
                let op = WriteOp::RestoreVersion {
                    id: id.to_string(),
                    expected_path: expected_path.to_string(),
                    version,
                    precondition: precondition.clone(),
                };
                self.write(op).await?.into_change()
            }

            async fn delete_tree(
                &self,
                prefix: &str,
                expected_ids: &[String],
                batch_id: &str,
                permanent: bool,
            ) -> Result<BatchOutcome, MetadataError> {
                let op = WriteOp::DeleteTree {
                    prefix: prefix.to_string(),
                    expected_ids: expected_ids.to_vec(),
                    batch_id: batch_id.to_string(),
                    permanent,
                };
                self.write(op).await?.into_batch()
            }

            async fn trash_entries(
                &self,
                prefix: &str,
                after: Option<&str>,
                limit: usize,
                now_ms: i64,
            ) -> Result<Vec<TrashEntry>, MetadataError> {
                let (range, upper) = prefix_range(prefix, 4, 5);
                let sql = format!(
                    "SELECT {} FROM trash WHERE trash_id > $1 AND expires_at > $2
                     AND path >= $4 {range} ORDER BY trash_id LIMIT $3",
                    dialect::TRASH_COLUMNS
                );
                let rows = sqlx::query(&sql)
                    .bind(after.unwrap_or(""))
                    .bind(now_ms)
                    .bind(limit_i64(limit))
                    .bind(prefix)
                    .bind(upper)
                    .fetch_all(&self.$reads)
                    .await
                    .map_err(map_err)?;
                rows.iter().map(row_to_trash).collect()
            }

            async fn trash_entry(
                &self,
                trash_id: &str,
            ) -> Result<Option<TrashEntry>, MetadataError> {
                Ok(trash_where(&self.$reads, "trash_id = $1", trash_id)
                    .await?
                    .pop())
            }

            async fn trash_batch(&self, batch_id: &str) -> Result<Vec<TrashEntry>, MetadataError> {
                trash_where(&self.$reads, "batch_id = $1", batch_id).await
            }

            async fn restore_trash(
                &self,
                trash_id: &str,
                to: Option<&str>,
                overwrite: bool,
            ) -> Result<ChangeOutcome, MetadataError> {
                let op = WriteOp::RestoreTrash {
                    trash_id: trash_id.to_string(),
                    to: to.map(str::to_string),
                    overwrite,
                };
                self.write(op).await?.into_change()
            }

            async fn restore_batch(&self, batch_id: &str) -> Result<BatchOutcome, MetadataError> {
                let op = WriteOp::RestoreBatch {
                    batch_id: batch_id.to_string(),
                };
                self.write(op).await?.into_batch()
            }

            async fn purge_trash(&self, trash_id: &str) -> Result<Vec<String>, MetadataError> {
                let op = WriteOp::PurgeTrash {
                    trash_id: trash_id.to_string(),
                };
                Ok(self.write(op).await?.into_released()?.1)
            }

            async fn expire_trash(
                &self,
                now_ms: i64,
                limit: usize,
            ) -> Result<(usize, Vec<String>), MetadataError> {
                let op = WriteOp::ExpireTrash {
                    now: now_ms,
                    limit: limit_i64(limit),
                };
                self.write(op).await?.into_released()
            }

            async fn retention_stats(&self) -> Result<RetentionStats, MetadataError> {
                let (entries, bytes, versions): (i64, i64, i64) =
                    sqlx::query_as(dialect::RETENTION_STATS)
                        .fetch_one(&self.$reads)
                        .await
                        .map_err(map_err)?;
                Ok(RetentionStats {
                    trash_entries: size_u64(entries)?,
                    trash_bytes: size_u64(bytes)?,
                    versions_retained: size_u64(versions)?,
                })
            }

            async fn rename(
                &self,
                id: &str,
                expected_path: &str,
                to: &str,
                overwrite: bool,
            ) -> Result<ChangeOutcome, MetadataError> {
                let op = WriteOp::Rename(Transfer::new(id, expected_path, to, overwrite));
                self.write(op).await?.into_change()
            }

            async fn copy(
                &self,
                id: &str,
                expected_path: &str,
                to: &str,
                overwrite: bool,
            ) -> Result<ChangeOutcome, MetadataError> {
                let op = WriteOp::Copy(Transfer::new(id, expected_path, to, overwrite));
                self.write(op).await?.into_change()
            }

            async fn copy_with_s3(
                &self,
                id: &str,
                expected_path: &str,
                to: &str,
                overwrite: bool,
                s3: Option<S3ObjectRow>,
            ) -> Result<ChangeOutcome, MetadataError> {
                let mut transfer = Transfer::new(id, expected_path, to, overwrite);
                transfer.s3 = s3;
                self.write(WriteOp::Copy(transfer)).await?.into_change()
            }

            async fn scan(
                &self,
                start: &str,
                inclusive: bool,
                limit: usize,
            ) -> Result<Vec<FileMeta>, MetadataError> {
                let op = if inclusive { ">=" } else { ">" };
                // Byte order on both engines (PostgreSQL: the column's "C" collation), so
                // cursors stay valid across backends.
                let sql = format!(
                    "SELECT {} FROM files WHERE path {op} $1 ORDER BY path LIMIT $2",
                    dialect::FILE_COLUMNS
                );
                let rows = sqlx::query(&sql)
                    .bind(start)
                    .bind(limit_i64(limit))
                    .fetch_all(&self.$reads)
                    .await
                    .map_err(map_err)?;
                rows.iter().map(row_to_meta).collect()
            }

            async fn list_level(
                &self,
                q: &$crate::services::metadata::LevelQuery<'_>,
            ) -> Result<$crate::services::metadata::LevelPage, MetadataError> {
                let levels = Levels { pool: &self.$reads };
                rules::listing::list_level(&levels, q).await
            }

            async fn blob_refcount(&self, sha256: &str) -> Result<i64, MetadataError> {
                // A read: the caller holds the blob's exclusive lock, so every commit
                // referencing it has finished and is visible to a reader.
                let n: Option<i64> = sqlx::query_scalar(dialect::BLOB_REFCOUNT)
                    .bind(sha256)
                    .fetch_optional(&self.$reads)
                    .await
                    .map_err(map_err)?;
                Ok(n.unwrap_or(0))
            }

            async fn forget_blob(&self, sha256: &str) -> Result<bool, MetadataError> {
                let done = sqlx::query(dialect::FORGET_BLOB)
                    .bind(sha256)
                    .execute(&self.$writes)
                    .await
                    .map_err(map_err)?;
                Ok(done.rows_affected() > 0)
            }

            async fn unreferenced_blobs(&self, limit: usize) -> Result<Vec<String>, MetadataError> {
                sqlx::query_scalar(dialect::UNREFERENCED_BLOBS)
                    .bind(limit_i64(limit))
                    .fetch_all(&self.$reads)
                    .await
                    .map_err(map_err)
            }

            async fn events_after(
                &self,
                since: i64,
                limit: usize,
            ) -> Result<Vec<Event>, MetadataError> {
                let sql = format!(
                    "SELECT {} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
                    dialect::EVENT_COLUMNS
                );
                let rows = sqlx::query(&sql)
                    .bind(since)
                    .bind(limit_i64(limit))
                    .fetch_all(&self.$reads)
                    .await
                    .map_err(map_err)?;
                rows.iter().map(row_to_event).collect()
            }

            async fn events_matching(
                &self,
                since: i64,
                through: i64,
                prefix: &str,
                limit: usize,
            ) -> Result<Vec<Event>, MetadataError> {
                // The seq window bounds the rows read; the prefix is a range on the path
                // columns in byte order. Without an upper bound, a superset is enough:
                // callers filter what they get.
                let upper = $crate::services::metadata::rules::prefix_upper_bound(prefix);
                let filter = match upper {
                    None => String::new(),
                    Some(_) => format!(
                        "AND ((path{c} >= $3 AND path{c} < $4)
                              OR (from_path{c} >= $3 AND from_path{c} < $4))",
                        c = dialect::BYTE_ORDER
                    ),
                };
                let sql = format!(
                    "SELECT {} FROM events WHERE seq > $1 AND seq <= $2 {filter}
                     ORDER BY seq LIMIT $5",
                    dialect::EVENT_COLUMNS
                );
                let rows = sqlx::query(&sql)
                    .bind(since)
                    .bind(through)
                    .bind(prefix)
                    .bind(upper.unwrap_or_default())
                    .bind(limit_i64(limit))
                    .fetch_all(&self.$reads)
                    .await
                    .map_err(map_err)?;
                rows.iter().map(row_to_event).collect()
            }

            async fn latest_seq(&self) -> Result<i64, MetadataError> {
                sqlx::query_scalar(dialect::LATEST_SEQ)
                    .fetch_one(&self.$reads)
                    .await
                    .map_err(map_err)
            }

            async fn oldest_seq(&self) -> Result<Option<i64>, MetadataError> {
                sqlx::query_scalar(dialect::OLDEST_SEQ)
                    .fetch_one(&self.$reads)
                    .await
                    .map_err(map_err)
            }

            async fn prune_events(
                &self,
                older_than_ms: i64,
                keep_last: i64,
            ) -> Result<u64, MetadataError> {
                let cut = self.latest_seq().await?.saturating_sub(keep_last);
                let mut total = 0;
                loop {
                    let done = sqlx::query(dialect::PRUNE_EVENTS)
                        .bind(cut)
                        .bind(older_than_ms)
                        .bind(dialect::PRUNE_BATCH)
                        .execute(&self.$writes)
                        .await
                        .map_err(map_err)?;
                    total += done.rows_affected();
                    if done.rows_affected() < dialect::PRUNE_BATCH.unsigned_abs() {
                        return Ok(total);
                    }
                }
            }

            async fn audit(&self) -> Result<MetadataAudit, MetadataError> {
                let mut tx = self.snapshot().await?;
                let audit = rules::audit(&mut Snapshot { conn: &mut tx }).await?;
                tx.rollback().await.map_err(map_err)?;
                Ok(audit)
            }

            async fn insert_token(&self, token: &TokenRecord) -> Result<(), MetadataError> {
                sqlx::query(dialect::INSERT_TOKEN)
                    .bind(&token.id)
                    .bind(&token.label)
                    .bind(&token.secret_hash)
                    .bind(&token.scopes)
                    .bind(&token.prefix)
                    .bind(token.created_at)
                    .bind(token.expires_at)
                    .bind(token.revoked_at)
                    .execute(&self.$writes)
                    .await
                    .map_err(|e| match &e {
                        sqlx::Error::Database(db) if db.is_unique_violation() => {
                            MetadataError::AlreadyExists
                        }
                        _ => map_err(e),
                    })?;
                Ok(())
            }

            async fn tokens(&self) -> Result<Vec<TokenRecord>, MetadataError> {
                let rows = sqlx::query(dialect::TOKENS)
                    .fetch_all(&self.$reads)
                    .await
                    .map_err(map_err)?;
                rows.iter().map(row_to_token).collect()
            }

            async fn revoke_token(&self, id: &str, at_ms: i64) -> Result<bool, MetadataError> {
                let done = sqlx::query(dialect::REVOKE_TOKEN)
                    .bind(at_ms)
                    .bind(id)
                    .execute(&self.$writes)
                    .await
                    .map_err(map_err)?;
                Ok(done.rows_affected() > 0)
            }

            async fn server_secret(
                &self,
                name: &str,
                fresh: &[u8],
            ) -> Result<Vec<u8>, MetadataError> {
                sqlx::query(dialect::INSERT_SECRET)
                    .bind(name)
                    .bind(fresh)
                    .execute(&self.$writes)
                    .await
                    .map_err(map_err)?;
                sqlx::query_scalar(dialect::SECRET)
                    .bind(name)
                    .fetch_one(&self.$writes)
                    .await
                    .map_err(map_err)
            }

            async fn atomic(
                &self,
                op: $crate::services::metadata::commits::AtomicOp,
            ) -> Result<$crate::services::metadata::commits::AtomicDone, MetadataError> {
                self.write(WriteOp::Atomic(op)).await?.into_atomic()
            }

            async fn ping(&self) -> Result<(), MetadataError> {
                sqlx::query("SELECT 1")
                    .execute(&self.$reads)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn close(&self) {
                self.shutdown().await;
            }

            $($extra)*
        }

        /// Applies the pending migrations of `dialect::MIGRATIONS` in order, each in its own
        /// transaction with its `schema_migrations` row. Refuses a database newer than this
        /// binary.
        async fn migrate(conn: &mut $conn) -> Result<(), MetadataError> {
            sqlx::query(dialect::SCHEMA_TABLE)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            let current: i64 = sqlx::query_scalar(dialect::CURRENT_SCHEMA)
                .fetch_one(&mut *conn)
                .await
                .map_err(map_err)?;
            let known = dialect::MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
            if current > known {
                return Err(MetadataError::Schema(format!(
                    "database schema version {current} is newer than this binary knows ({known}); \
                     refusing to start"
                )));
            }
            // Every known migration not yet recorded, in order (not only those above the
            // highest applied: branches add migrations with gaps between their numbers, and a
            // database that ran a higher one first still gets the lower one).
            let applied: Vec<i64> = sqlx::query_scalar(dialect::APPLIED_MIGRATIONS)
                .fetch_all(&mut *conn)
                .await
                .map_err(map_err)?;
            for (version, sql) in dialect::MIGRATIONS.iter().filter(|m| !applied.contains(&m.0)) {
                let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(map_err)?;
                // One statement at a time: `raw_sql(..).execute(&mut conn)` defeats Send
                // inference inside tokio::spawn (sqlx issue #3150). Migrations contain no ';'
                // in literals.
                for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    sqlx::query(statement)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| MetadataError::Schema(format!("migration {version}: {e}")))?;
                }
                sqlx::query(dialect::RECORD_MIGRATION)
                    .bind(version)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                tracing::info!(version, backend = dialect::NAME, "applied metadata migration");
            }
            Ok(())
        }
    };
}
