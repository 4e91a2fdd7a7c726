//! The read-side sources the rules query: `Snapshot` (the audit's
//! [`crate::services::metadata::rules::AuditSource`], on one read snapshot) and `Levels`
//! (a level listing's queries, on the read pool).

/// Expands inside [`sql_layer!`]; takes its arguments.
macro_rules! sql_reads {
    (
        db: $db:ty,
        conn: $conn:ty,
        row: $row:ty,
        store: $store:ty,
        reads: $reads:ident,
        writes: $writes:ident,
        extra: { $($extra:tt)* }
    ) => {
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
                    Some(_) => format!(
                        "AND path {} {} ESCAPE '\\'",
                        dialect::LIKE_ASCII_NOCASE,
                        arg()
                    ),
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
    };
}
