//! The row operations of [`super::rules`] on sqlx, written once.
//!
//! sqlx's SQLite and PostgreSQL drivers share their API but not their types, and code
//! generic over `sqlx::Database` needs bounds that break the `Send` inference of async
//! trait methods. So the code is written once here as [`sql_layer!`] and expanded by each
//! backend for its concrete types, with that backend's `map_err` and a `dialect` module of
//! SQL text. SQL that both engines accept (sqlx binds `$N` on SQLite too) is in [`common`];
//! a backend's dialect re-exports it and adds what differs.

/// SQL both engines accept as written.
#[path = "sql_common.rs"]
pub(crate) mod common;

/// Expands, inside a backend's module, the sqlx code of the row operations:
/// `SqlTx` (a [`super::rules::Tx`] on an open transaction), `Snapshot` (an
/// [`super::rules::AuditSource`]), `migrate`, and the store's `MetadataStore` impl. Needs
/// `map_err(sqlx::Error) -> MetadataError` and a `dialect` module (see [`common`]) in scope.
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
        async fn trash_where<'e, E: sqlx::Executor<'e, Database = $db>>(
            conn: E,
            filter: &str,
            value: &str,
        ) -> Result<Vec<TrashEntry>, MetadataError> {
            let sql = format!(
                "SELECT {} FROM trash WHERE {filter} ORDER BY trash_id",
                dialect::TRASH_COLUMNS
            );
            let rows = sqlx::query(&sql)
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
        async fn file_where<'e, E: sqlx::Executor<'e, Database = $db>>(
            conn: E,
            column: &str,
            value: &str,
        ) -> Result<Option<FileMeta>, MetadataError> {
            let sql = format!("SELECT {} FROM files WHERE {column} = $1", dialect::FILE_COLUMNS);
            let row = sqlx::query(&sql)
                .bind(value)
                .fetch_optional(conn)
                .await
                .map_err(map_err)?;
            row.as_ref().map(row_to_meta).transpose()
        }

        /// Row operations on an open write transaction.
        struct SqlTx<'c> {
            conn: &'c mut $conn,
            /// The seq of the last event appended, if any.
            last_seq: Option<i64>,
            /// The commit (id, event count) the events appended now belong to.
            commit: Option<(String, i64)>,
        }

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
                q: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
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
                let q = sqlx::query(dialect::INSERT_FILE)
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
                let q = sqlx::query(dialect::UPDATE_CONTENT)
                    .bind(size_i64(meta.size)?)
                    .bind(&meta.sha256)
                    .bind(meta.version)
                    .bind(&meta.content_type)
                    .bind(meta.modified_ms)
                    .bind(&meta.id);
                self.run(q).await
            }

            async fn update_path(&mut self, id: &str, path: &str) -> Result<(), MetadataError> {
                self.run(sqlx::query(dialect::UPDATE_PATH).bind(path).bind(id))
                    .await
            }

            async fn delete_file(&mut self, id: &str) -> Result<(), MetadataError> {
                self.run(sqlx::query(dialect::DELETE_FILE).bind(id)).await
            }

            async fn add_blob_ref(&mut self, sha256: &str, size: u64) -> Result<(), MetadataError> {
                let q = sqlx::query(dialect::ADD_BLOB_REF)
                    .bind(sha256)
                    .bind(size_i64(size)?);
                self.run(q).await
            }

            async fn drop_blob_ref(&mut self, sha256: &str) -> Result<Option<i64>, MetadataError> {
                sqlx::query_scalar(dialect::DROP_BLOB_REF)
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
                let seq: i64 = sqlx::query_scalar(dialect::APPEND_EVENT)
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
                let q = sqlx::query(dialect::INSERT_VERSION)
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
                sqlx::query_as(dialect::VERSIONS_BEYOND)
                    .bind(id)
                    .bind(i64::try_from(skip).unwrap_or(i64::MAX))
                    .fetch_all(&mut *self.conn)
                    .await
                    .map_err(map_err)
            }

            async fn delete_version(&mut self, id: &str, version: i64) -> Result<(), MetadataError> {
                self.run(sqlx::query(dialect::DELETE_VERSION).bind(id).bind(version))
                    .await
            }

            async fn trash_file(&mut self, entry: &TrashEntry) -> Result<(), MetadataError> {
                let q = sqlx::query(dialect::TRASH_FILE)
                    .bind(&entry.trash_id)
                    .bind(entry.deleted_at_ms)
                    .bind(entry.expires_at_ms)
                    .bind(entry.batch_id.as_deref())
                    .bind(&entry.file.id);
                self.run(q).await
            }

            async fn untrash_file(&mut self, trash_id: &str, path: &str) -> Result<(), MetadataError> {
                self.run(sqlx::query(dialect::UNTRASH_FILE).bind(trash_id).bind(path))
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
                let rows = sqlx::query(&sql)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(&mut *self.conn)
                    .await
                    .map_err(map_err)?;
                rows.iter().map(row_to_trash).collect()
            }

            async fn delete_trash(&mut self, trash_id: &str) -> Result<(), MetadataError> {
                self.run(sqlx::query(dialect::DELETE_TRASH).bind(trash_id))
                    .await
            }

            async fn files_under(&mut self, prefix: &str) -> Result<Vec<FileMeta>, MetadataError> {
                let (range, upper) = prefix_range(prefix, 1, 2);
                let sql = format!(
                    "SELECT {} FROM files WHERE path >= $1 {range} ORDER BY path",
                    dialect::FILE_COLUMNS
                );
                let rows = sqlx::query(&sql)
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
                let q = sqlx::query(dialect::PUT_S3_OBJECT)
                    .bind(path)
                    .bind(sha256)
                    .bind(&row.etag)
                    .bind(&row.attrs);
                self.run(q).await
            }

            async fn forget_s3_object(&mut self, path: &str) -> Result<(), MetadataError> {
                self.run(sqlx::query(dialect::FORGET_S3_OBJECT).bind(path)).await
            }

            async fn move_s3_object(&mut self, from: &str, to: &str) -> Result<(), MetadataError> {
                self.forget_s3_object(to).await?;
                self.run(sqlx::query(dialect::MOVE_S3_OBJECT).bind(from).bind(to))
                    .await
            }
        }

        /// Old version `version` of file `id`.
        async fn version_where<'e, E: sqlx::Executor<'e, Database = $db>>(
            conn: E,
            id: &str,
            version: i64,
        ) -> Result<Option<FileMeta>, MetadataError> {
            let sql = format!(
                "SELECT {} FROM versions WHERE file_id = $1 AND version = $2",
                dialect::VERSION_COLUMNS
            );
            let row = sqlx::query(&sql)
                .bind(id)
                .bind(version)
                .fetch_optional(conn)
                .await
                .map_err(map_err)?;
            row.as_ref().map(row_to_meta).transpose()
        }

        commit_rows!($row);

        /// The audit's queries, on a read transaction the backend opened as one snapshot.
        struct Snapshot<'c> {
            conn: &'c mut $conn,
        }

        #[async_trait::async_trait]
        impl AuditSource for Snapshot<'_> {
            async fn counts(&mut self) -> Result<(i64, i64, Option<i64>, i64), MetadataError> {
                sqlx::query_as(dialect::AUDIT_COUNTS)
                    .fetch_one(&mut *self.conn)
                    .await
                    .map_err(map_err)
            }

            async fn gaps(&mut self, limit: i64) -> Result<Vec<(i64, i64)>, MetadataError> {
                sqlx::query_as(dialect::AUDIT_GAPS)
                    .bind(limit)
                    .fetch_all(&mut *self.conn)
                    .await
                    .map_err(map_err)
            }

            async fn last_event_mismatches(
                &mut self,
                limit: i64,
            ) -> Result<Vec<LastEventMismatch>, MetadataError> {
                let rows = sqlx::query(dialect::AUDIT_LAST_EVENTS)
                    .bind(limit)
                    .fetch_all(&mut *self.conn)
                    .await
                    .map_err(map_err)?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    let f_id: Option<String> = row.try_get("f_id").map_err(map_err)?;
                    let file = match f_id {
                        None => None,
                        Some(_) => Some((
                            row.try_get("f_path").map_err(map_err)?,
                            row.try_get("f_version").map_err(map_err)?,
                            row.try_get("f_sha256").map_err(map_err)?,
                        )),
                    };
                    out.push(LastEventMismatch {
                        seq: row.try_get("seq").map_err(map_err)?,
                        kind: row.try_get("kind").map_err(map_err)?,
                        id: row.try_get("file_id").map_err(map_err)?,
                        path: row.try_get("path").map_err(map_err)?,
                        version: row.try_get("version").map_err(map_err)?,
                        sha256: row.try_get("sha256").map_err(map_err)?,
                        file,
                    });
                }
                Ok(out)
            }

            async fn files_without_events(
                &mut self,
                limit: i64,
            ) -> Result<Vec<(String, String)>, MetadataError> {
                sqlx::query_as(dialect::AUDIT_FILES_WITHOUT_EVENTS)
                    .bind(limit)
                    .fetch_all(&mut *self.conn)
                    .await
                    .map_err(map_err)
            }

            async fn refcount_mismatches(
                &mut self,
                limit: i64,
            ) -> Result<Vec<(String, Option<i64>, i64)>, MetadataError> {
                sqlx::query_as(dialect::AUDIT_REFCOUNTS)
                    .bind(limit)
                    .fetch_all(&mut *self.conn)
                    .await
                    .map_err(map_err)
            }

            async fn retention_counts(&mut self) -> Result<(i64, i64), MetadataError> {
                sqlx::query_as(dialect::AUDIT_RETENTION_COUNTS)
                    .fetch_one(&mut *self.conn)
                    .await
                    .map_err(map_err)
            }

            async fn version_orphans(
                &mut self,
                limit: i64,
            ) -> Result<Vec<(String, i64)>, MetadataError> {
                sqlx::query_as(dialect::AUDIT_VERSION_ORPHANS)
                    .bind(limit)
                    .fetch_all(&mut *self.conn)
                    .await
                    .map_err(map_err)
            }

            async fn trash_live(
                &mut self,
                limit: i64,
            ) -> Result<Vec<(String, String, String)>, MetadataError> {
                sqlx::query_as(dialect::AUDIT_TRASH_LIVE)
                    .bind(limit)
                    .fetch_all(&mut *self.conn)
                    .await
                    .map_err(map_err)
            }
        }

        /// A level listing's two queries (`rules::listing`), on the read pool.
        struct Levels<'p> {
            pool: &'p sqlx::Pool<$db>,
        }

        #[async_trait::async_trait]
        impl rules::listing::LevelSource for Levels<'_> {
            async fn folder_value(
                &self,
                low: rules::listing::Bound<'_>,
                high: Option<rules::listing::Bound<'_>>,
                desc: bool,
            ) -> Result<Option<String>, MetadataError> {
                let folder = dialect::FOLDER_OF_PATH;
                let lo = if low.inclusive { ">=" } else { ">" };
                let hi = match high {
                    Some(b) if b.inclusive => format!("AND {folder} <= $2"),
                    Some(_) => format!("AND {folder} < $2"),
                    None => String::new(),
                };
                let dir = if desc { "DESC" } else { "" };
                let sql = format!(
                    "SELECT {folder} FROM files WHERE {folder} {lo} $1 {hi}
                     ORDER BY {folder} {dir} LIMIT 1"
                );
                let mut query = sqlx::query_scalar(&sql).bind(low.value);
                if let Some(b) = high {
                    query = query.bind(b.value);
                }
                query.fetch_optional(self.pool).await.map_err(map_err)
            }

            async fn folder_files(
                &self,
                q: &$crate::services::metadata::LevelQuery<'_>,
                after: Option<(i64, &str)>,
                pattern: Option<&str>,
                limit: usize,
            ) -> Result<Vec<FileMeta>, MetadataError> {
                use rules::listing::ListSort;
                let (folder, recursive, sort, desc) = (q.prefix, q.recursive, q.sort, q.desc);
                let column = match sort {
                    ListSort::Name => None,
                    ListSort::Size => Some("size"),
                    ListSort::Modified => Some("modified_at"),
                    ListSort::Version => Some("version"),
                };
                let (cmp, dir) = if desc { ("<", "DESC") } else { (">", "") };
                let mut n = 1;
                let mut arg = || {
                    n += 1;
                    format!("${n}")
                };
                // A prefix that ends inside a name ("logs/2024-") lists the names of its
                // folder that start with the rest.
                let folder_dir = &folder[..folder.rfind('/').map_or(0, |i| i + 1)];
                let partial = !recursive && folder_dir.len() < folder.len();
                let upper = if recursive || partial {
                    rules::prefix_upper_bound(folder)
                } else {
                    None
                };
                let level = if partial {
                    let d = arg();
                    format!("{} = {d} AND path >= $1", dialect::FOLDER_OF_PATH)
                } else {
                    format!("{} = $1", dialect::FOLDER_OF_PATH)
                };
                let scope = match (recursive || partial, &upper) {
                    (false, _) => level,
                    (true, None) => "path >= $1".to_string(),
                    (true, Some(_)) if partial => format!("{level} AND path < {}", arg()),
                    (true, Some(_)) => format!("path >= $1 AND path < {}", arg()),
                };
                let after_sql = match (after, column) {
                    (None, _) => String::new(),
                    (Some(_), None) => format!("AND path {cmp} {}", arg()),
                    (Some(_), Some(c)) => {
                        let (k, p) = (arg(), arg());
                        format!("AND ({c}, path) {cmp} ({k}, {p})")
                    }
                };
                let pattern_sql = match pattern {
                    None => String::new(),
                    Some(_) => format!("AND path {} {} ESCAPE '\\'", dialect::LIKE_ASCII_NOCASE, arg()),
                };
                let order = match column {
                    None => format!("path {dir}"),
                    Some(c) => format!("{c} {dir}, path {dir}"),
                };
                let sql = format!(
                    "SELECT {} FROM files WHERE {scope} {after_sql} {pattern_sql}
                     ORDER BY {order} LIMIT {}",
                    dialect::FILE_COLUMNS,
                    arg()
                );
                let mut query = sqlx::query(&sql).bind(folder);
                if partial {
                    query = query.bind(folder_dir);
                }
                if let Some(u) = &upper {
                    query = query.bind(u.as_str());
                }
                if let Some((key, path)) = after {
                    if column.is_some() {
                        query = query.bind(key);
                    }
                    query = query.bind(path);
                }
                if let Some(p) = pattern {
                    query = query.bind(p);
                }
                let rows = query
                    .bind(limit_i64(limit))
                    .fetch_all(self.pool)
                    .await
                    .map_err(map_err)?;
                rows.iter().map(row_to_meta).collect()
            }
        }

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
