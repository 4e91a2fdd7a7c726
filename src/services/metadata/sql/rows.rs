//! The row operations of one write transaction, for one backend's types: the row
//! decoders, `SqlTx` (the [`crate::services::metadata::rules::Tx`] of an open
//! transaction) and the lookups it shares with the store.

/// Expands inside [`sql_layer!`]; takes its arguments.
macro_rules! sql_rows {
    (
        sqlx: $sqlx:ident,
        db: $db:ty,
        conn: $conn:ty,
        row: $row:ty,
        store: $store:ty,
        reads: $reads:ident,
        writes: $writes:ident,
        extra: { $($extra:tt)* }
    ) => {
        // Unused where a backend runs its writes on another expansion (SQLite's committer,
        // `sqlite/committer.rs`, expands this macro over its synchronous connection).
        #[allow(dead_code)]
        fn size_i64(size: u64) -> Result<i64, MetadataError> {
            i64::try_from(size).map_err(|_| MetadataError::Backend("size out of range".into()))
        }

        fn size_u64(size: i64) -> Result<u64, MetadataError> {
            u64::try_from(size).map_err(|_| MetadataError::Backend("negative size".into()))
        }

        fn row_to_meta(row: &$row) -> Result<FileMeta, MetadataError> {
            let created: i64 = row.try_get("created_at").map_err(map_err)?;
            let modified: i64 = row.try_get("modified_at").map_err(map_err)?;
            Ok(FileMeta {
                id: row.try_get("id").map_err(map_err)?,
                path: row.try_get("path").map_err(map_err)?,
                size: size_u64(row.try_get("size").map_err(map_err)?)?,
                sha256: row.try_get("sha256").map_err(map_err)?,
                version: row.try_get("version").map_err(map_err)?,
                content_type: row.try_get("content_type").map_err(map_err)?,
                created_at: rfc3339(created),
                modified_at: rfc3339(modified),
                modified_ms: modified,
            })
        }

        fn row_to_event(row: &$row) -> Result<Event, MetadataError> {
            let kind: String = row.try_get("kind").map_err(map_err)?;
            let at: i64 = row.try_get("at").map_err(map_err)?;
            Ok(Event {
                seq: row.try_get("seq").map_err(map_err)?,
                kind: EventKind::parse(&kind)
                    .ok_or_else(|| MetadataError::Backend(format!("unknown event kind {kind}")))?,
                id: row.try_get("file_id").map_err(map_err)?,
                path: row.try_get("path").map_err(map_err)?,
                from_path: row.try_get("from_path").map_err(map_err)?,
                version: row.try_get("version").map_err(map_err)?,
                size: size_u64(row.try_get("size").map_err(map_err)?)?,
                sha256: row.try_get("sha256").map_err(map_err)?,
                at: rfc3339(at),
                trash_id: row.try_get("trash_id").map_err(map_err)?,
                restored_from: row.try_get("restored_from").map_err(map_err)?,
                commit: row.try_get("commit_id").map_err(map_err)?,
                commit_size: row
                    .try_get::<Option<i64>, _>("commit_size")
                    .map_err(map_err)?
                    .map(size_u64)
                    .transpose()?,
            })
        }

        fn row_to_trash(row: &$row) -> Result<TrashEntry, MetadataError> {
            Ok(TrashEntry {
                trash_id: row.try_get("trash_id").map_err(map_err)?,
                file: row_to_meta(row)?,
                deleted_at_ms: row.try_get("deleted_at").map_err(map_err)?,
                expires_at_ms: row.try_get("expires_at").map_err(map_err)?,
                batch_id: row.try_get("batch_id").map_err(map_err)?,
            })
        }

        /// Trash entries matching `filter` (SQL after WHERE, binding `$1` to `value`).
        async fn trash_where<'e, E: $sqlx::Executor<'e, Database = $db>>(
            conn: E,
            filter: &str,
            value: &str,
        ) -> Result<Vec<TrashEntry>, MetadataError> {
            let sql = format!(
                "SELECT {} FROM trash WHERE {filter} ORDER BY trash_id",
                dialect::TRASH_COLUMNS
            );
            let rows = $sqlx::query(&sql)
                .bind(value)
                .fetch_all(conn)
                .await
                .map_err(map_err)?;
            rows.iter().map(row_to_trash).collect()
        }

        /// `AND path >= $a AND path < $b` for paths under `prefix` (nothing when it bounds
        /// nothing), with the upper bound to bind.
        fn prefix_range(prefix: &str, a: u8, b: u8) -> (String, String) {
            match $crate::services::metadata::rules::prefix_upper_bound(prefix) {
                None => (format!("AND ${b} = ${b}"), String::new()),
                Some(upper) => (format!("AND path >= ${a} AND path < ${b}"), upper),
            }
        }

        fn row_to_token(r: &$row) -> Result<TokenRecord, MetadataError> {
            Ok(TokenRecord {
                id: r.try_get("id").map_err(map_err)?,
                label: r.try_get("label").map_err(map_err)?,
                secret_hash: r.try_get("secret_hash").map_err(map_err)?,
                scopes: r.try_get("scopes").map_err(map_err)?,
                prefix: r.try_get("prefix").map_err(map_err)?,
                created_at: r.try_get("created_at").map_err(map_err)?,
                expires_at: r.try_get("expires_at").map_err(map_err)?,
                revoked_at: r.try_get("revoked_at").map_err(map_err)?,
            })
        }

        fn limit_i64(limit: usize) -> i64 {
            i64::try_from(limit).unwrap_or(i64::MAX)
        }

        /// The file whose `column` (`id` or `path`) is `value`.
        async fn file_where<'e, E: $sqlx::Executor<'e, Database = $db>>(
            conn: E,
            column: &str,
            value: &str,
        ) -> Result<Option<FileMeta>, MetadataError> {
            let sql = format!(
                "SELECT {} FROM files WHERE {column} = $1",
                dialect::FILE_COLUMNS
            );
            let row = $sqlx::query(&sql)
                .bind(value)
                .fetch_optional(conn)
                .await
                .map_err(map_err)?;
            row.as_ref().map(row_to_meta).transpose()
        }

        /// Row operations on an open write transaction.
        // Unused where a backend runs its writes on another expansion (SQLite's committer,
        // `sqlite/committer.rs`, expands this macro over its synchronous connection).
        #[allow(dead_code)]
        struct SqlTx<'c> {
            conn: &'c mut $conn,
            /// The seq of the last event appended, if any.
            last_seq: Option<i64>,
            /// The commit (id, event count) the events appended now belong to.
            commit: Option<(String, i64)>,
        }

        // Unused where a backend runs its writes on another expansion (SQLite's committer,
        // `sqlite/committer.rs`, expands this macro over its synchronous connection).
        #[allow(dead_code)]
        impl<'c> SqlTx<'c> {
            fn new(conn: &'c mut $conn) -> Self {
                SqlTx {
                    conn,
                    last_seq: None,
                    commit: None,
                }
            }

            async fn run<'q>(
                &mut self,
                q: $sqlx::query::Query<'q, $db, <$db as $sqlx::Database>::Arguments<'q>>,
            ) -> Result<(), MetadataError> {
                q.execute(&mut *self.conn).await.map_err(map_err)?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl Tx for SqlTx<'_> {
            async fn file_by_id(&mut self, id: &str) -> Result<Option<FileMeta>, MetadataError> {
                file_where(&mut *self.conn, "id", id).await
            }

            async fn file_by_path(
                &mut self,
                path: &str,
            ) -> Result<Option<FileMeta>, MetadataError> {
                file_where(&mut *self.conn, "path", path).await
            }

            async fn insert_file(&mut self, meta: &FileMeta) -> Result<(), MetadataError> {
                let q = $sqlx::query(dialect::INSERT_FILE)
                    .bind(&meta.id)
                    .bind(&meta.path)
                    .bind(size_i64(meta.size)?)
                    .bind(&meta.sha256)
                    .bind(meta.version)
                    .bind(&meta.content_type)
                    .bind(meta.modified_ms);
                self.run(q).await
            }

            async fn update_content(&mut self, meta: &FileMeta) -> Result<(), MetadataError> {
                let q = $sqlx::query(dialect::UPDATE_CONTENT)
                    .bind(size_i64(meta.size)?)
                    .bind(&meta.sha256)
                    .bind(meta.version)
                    .bind(&meta.content_type)
                    .bind(meta.modified_ms)
                    .bind(&meta.id);
                self.run(q).await
            }

            async fn update_path(&mut self, id: &str, path: &str) -> Result<(), MetadataError> {
                self.run($sqlx::query(dialect::UPDATE_PATH).bind(path).bind(id))
                    .await
            }

            async fn delete_file(&mut self, id: &str) -> Result<(), MetadataError> {
                self.run($sqlx::query(dialect::DELETE_FILE).bind(id)).await
            }

            async fn add_blob_ref(&mut self, sha256: &str, size: u64) -> Result<(), MetadataError> {
                let q = $sqlx::query(dialect::ADD_BLOB_REF)
                    .bind(sha256)
                    .bind(size_i64(size)?);
                self.run(q).await
            }

            async fn drop_blob_ref(&mut self, sha256: &str) -> Result<Option<i64>, MetadataError> {
                $sqlx::query_scalar(dialect::DROP_BLOB_REF)
                    .bind(sha256)
                    .fetch_optional(&mut *self.conn)
                    .await
                    .map_err(map_err)
            }

            async fn append_event(
                &mut self,
                kind: EventKind,
                meta: &FileMeta,
                from_path: Option<&str>,
                note: &EventNote,
                at: i64,
            ) -> Result<i64, MetadataError> {
                let seq: i64 = $sqlx::query_scalar(dialect::APPEND_EVENT)
                    .bind(kind.as_str())
                    .bind(&meta.id)
                    .bind(&meta.path)
                    .bind(from_path)
                    .bind(meta.version)
                    .bind(size_i64(meta.size)?)
                    .bind(&meta.sha256)
                    .bind(at)
                    .bind(note.trash_id.as_deref())
                    .bind(note.restored_from)
                    .bind(self.commit.as_ref().map(|c| c.0.clone()))
                    .bind(self.commit.as_ref().map(|c| c.1))
                    .fetch_one(&mut *self.conn)
                    .await
                    .map_err(map_err)?;
                self.last_seq = Some(seq);
                Ok(seq)
            }

            async fn insert_version(&mut self, meta: &FileMeta) -> Result<(), MetadataError> {
                let q = $sqlx::query(dialect::INSERT_VERSION)
                    .bind(&meta.id)
                    .bind(meta.version)
                    .bind(size_i64(meta.size)?)
                    .bind(&meta.sha256)
                    .bind(&meta.content_type)
                    .bind(meta.modified_ms);
                self.run(q).await
            }

            async fn version_row(
                &mut self,
                id: &str,
                version: i64,
            ) -> Result<Option<FileMeta>, MetadataError> {
                version_where(&mut *self.conn, id, version).await
            }

            async fn versions_beyond(
                &mut self,
                id: &str,
                skip: u64,
            ) -> Result<Vec<(i64, String)>, MetadataError> {
                $sqlx::query_as(dialect::VERSIONS_BEYOND)
                    .bind(id)
                    .bind(i64::try_from(skip).unwrap_or(i64::MAX))
                    .fetch_all(&mut *self.conn)
                    .await
                    .map_err(map_err)
            }

            async fn delete_version(
                &mut self,
                id: &str,
                version: i64,
            ) -> Result<(), MetadataError> {
                self.run($sqlx::query(dialect::DELETE_VERSION).bind(id).bind(version))
                    .await
            }

            async fn trash_file(&mut self, entry: &TrashEntry) -> Result<(), MetadataError> {
                let q = $sqlx::query(dialect::TRASH_FILE)
                    .bind(&entry.trash_id)
                    .bind(entry.deleted_at_ms)
                    .bind(entry.expires_at_ms)
                    .bind(entry.batch_id.as_deref())
                    .bind(&entry.file.id);
                self.run(q).await
            }

            async fn untrash_file(
                &mut self,
                trash_id: &str,
                path: &str,
            ) -> Result<(), MetadataError> {
                self.run(
                    $sqlx::query(dialect::UNTRASH_FILE)
                        .bind(trash_id)
                        .bind(path),
                )
                .await
            }

            async fn trash_by_id(
                &mut self,
                trash_id: &str,
            ) -> Result<Option<TrashEntry>, MetadataError> {
                Ok(trash_where(&mut *self.conn, "trash_id = $1", trash_id)
                    .await?
                    .pop())
            }

            async fn trash_by_batch(
                &mut self,
                batch_id: &str,
            ) -> Result<Vec<TrashEntry>, MetadataError> {
                trash_where(&mut *self.conn, "batch_id = $1", batch_id).await
            }

            async fn expired_trash(
                &mut self,
                now: i64,
                limit: i64,
            ) -> Result<Vec<TrashEntry>, MetadataError> {
                let sql = format!(
                    "SELECT {} FROM trash WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2",
                    dialect::TRASH_COLUMNS
                );
                let rows = $sqlx::query(&sql)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(&mut *self.conn)
                    .await
                    .map_err(map_err)?;
                rows.iter().map(row_to_trash).collect()
            }

            async fn delete_trash(&mut self, trash_id: &str) -> Result<(), MetadataError> {
                self.run($sqlx::query(dialect::DELETE_TRASH).bind(trash_id))
                    .await
            }

            async fn files_under(&mut self, prefix: &str) -> Result<Vec<FileMeta>, MetadataError> {
                let (range, upper) = prefix_range(prefix, 1, 2);
                let sql = format!(
                    "SELECT {} FROM files WHERE path >= $1 {range} ORDER BY path",
                    dialect::FILE_COLUMNS
                );
                let rows = $sqlx::query(&sql)
                    .bind(prefix)
                    .bind(upper)
                    .fetch_all(&mut *self.conn)
                    .await
                    .map_err(map_err)?;
                rows.iter().map(row_to_meta).collect()
            }

            async fn put_s3_object(
                &mut self,
                path: &str,
                sha256: &str,
                row: &S3ObjectRow,
            ) -> Result<(), MetadataError> {
                let q = $sqlx::query(dialect::PUT_S3_OBJECT)
                    .bind(path)
                    .bind(sha256)
                    .bind(&row.etag)
                    .bind(&row.attrs);
                self.run(q).await
            }

            async fn forget_s3_object(&mut self, path: &str) -> Result<(), MetadataError> {
                self.run($sqlx::query(dialect::FORGET_S3_OBJECT).bind(path))
                    .await
            }

            async fn move_s3_object(&mut self, from: &str, to: &str) -> Result<(), MetadataError> {
                self.forget_s3_object(to).await?;
                self.run($sqlx::query(dialect::MOVE_S3_OBJECT).bind(from).bind(to))
                    .await
            }
        }

        /// Old version `version` of file `id`.
        // Unused where a backend runs its writes on another expansion (SQLite's committer,
        // `sqlite/committer.rs`, expands this macro over its synchronous connection).
        #[allow(dead_code)]
        async fn version_where<'e, E: $sqlx::Executor<'e, Database = $db>>(
            conn: E,
            id: &str,
            version: i64,
        ) -> Result<Option<FileMeta>, MetadataError> {
            let sql = format!(
                "SELECT {} FROM versions WHERE file_id = $1 AND version = $2",
                dialect::VERSION_COLUMNS
            );
            let row = $sqlx::query(&sql)
                .bind(id)
                .bind(version)
                .fetch_optional(conn)
                .await
                .map_err(map_err)?;
            row.as_ref().map(row_to_meta).transpose()
        }

        commit_rows!($row, $sqlx);
    };
}
