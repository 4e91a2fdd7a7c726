//! [`super::CommitRows`] in SQL both engines accept, as [`commit_rows!`]: the staged
//! rows, the set-based finish statements, leases and fences, expanded inside
//! `sql_layer!` for each backend's `SqlTx` (the event insert picks its dialect by
//! `dialect::NAME`).

/// Expands, inside `sql_layer!`, [`CommitRows`] for its `SqlTx` (SQL both engines accept).
macro_rules! commit_rows {
    ($row:ty, $sqlx:ident) => {
        use $crate::services::metadata::commits::{
            values_rows, CommitRecord, CommitRows, LeaseRow, StagedEntry, ROWS_PER_STATEMENT,
        };

        #[allow(dead_code)] // see `SqlTx` in sql/rows.rs
        const COMMIT_COLUMNS: &str =
            "id, idempotency_key, state, created_at, expires_at, result";

        #[allow(dead_code)] // see `SqlTx` in sql/rows.rs
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
                let row = $sqlx::query(&sql)
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
                let row = $sqlx::query(&sql)
                    .bind(key)
                    .fetch_optional(&mut *self.conn)
                    .await
                    .map_err(map_err)?;
                row.as_ref().map(row_to_commit).transpose()
            }

            async fn release_commit_key(&mut self, id: &str) -> Result<(), MetadataError> {
                $sqlx::query("UPDATE commits SET idempotency_key = NULL WHERE id = $1")
                    .bind(id)
                    .execute(&mut *self.conn)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn insert_commit(&mut self, c: &CommitRecord) -> Result<(), MetadataError> {
                let q = $sqlx::query(
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
                let q = $sqlx::query("UPDATE commits SET state = $1, result = $2 WHERE id = $3")
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
                $sqlx::query_scalar(
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
                let q = $sqlx::query(
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
                let rows = $sqlx::query(
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
                let q = $sqlx::query(
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
                self.run($sqlx::query("DELETE FROM commit_files WHERE commit_id = $1").bind(commit_id))
                    .await
            }

            async fn lease_rows(&mut self) -> Result<Vec<LeaseRow>, MetadataError> {
                let rows = $sqlx::query("SELECT path, fence, lease_id, expires_at FROM leases")
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
                let q = $sqlx::query(
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
                    $sqlx::query("DELETE FROM lapsed_leases WHERE lapsed_at < $1").bind(forget_before),
                )
                .await?;
                let Some(lease_id) = row.lease_id.as_deref() else {
                    return Ok(());
                };
                let q = $sqlx::query(
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
                    $sqlx::query_scalar("SELECT fence FROM lapsed_leases WHERE lease_id = $1")
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
                let rows = $sqlx::query(
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
                    let mut q = $sqlx::query(&sql);
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
                    let mut q = $sqlx::query(&sql);
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
                    let mut q = $sqlx::query(&sql);
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
                    let mut q = $sqlx::query_as(&sql).bind(i64::try_from(skip).unwrap_or(i64::MAX));
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
                    let mut q = $sqlx::query(&sql);
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
                    let mut q = $sqlx::query_as(&sql);
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
                    let mut q = $sqlx::query_scalar(&sql)
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
                $sqlx::query_as("SELECT path, from_path FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(seq)
                    .bind(limit)
                    .fetch_all(&mut *self.conn)
                    .await
                    .map_err(map_err)
            }

            async fn oldest_retained_seq(&mut self) -> Result<Option<i64>, MetadataError> {
                $sqlx::query_scalar("SELECT MIN(seq) FROM events")
                    .fetch_one(&mut *self.conn)
                    .await
                    .map_err(map_err)
            }
        }
    };
}
