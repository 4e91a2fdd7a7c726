//! Listings: one level or recursive, in path order with a path cursor, or sorted by
//! another column with a sort-aware cursor (the page's pagination).

use base64::Engine;

use super::{FileService, ListOrder, ListPage, RequestCtx, MAX_LIST_LIMIT};
use crate::services::auth::Narrowed;
use crate::services::metadata::rules::listing;
use crate::services::metadata::LevelQuery;
use crate::services::ServiceError;

impl FileService {
    /// Lists files by path, S3-style: with `delimiter`, files below the next `/` are rolled up
    /// into `prefixes`. The cursor is a position in path order, so it stays valid while others
    /// write (entries created behind it are not revisited; entries ahead of it are seen).
    ///
    /// A principal limited to a prefix sees only what is under it: a listing inside its prefix
    /// is unchanged, a listing of an ancestor shows only the way down to the prefix (or, when
    /// recursive, the prefix's contents), and a disjoint one is refused.
    pub async fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        cursor: Option<&str>,
        limit: usize,
        ctx: &RequestCtx,
    ) -> Result<ListPage, ServiceError> {
        match ctx.principal.narrow(prefix) {
            Narrowed::Unchanged => {}
            Narrowed::Disjoint => return Err(ServiceError::Forbidden),
            Narrowed::To(scope) if delimiter => {
                // The one directory on the way to the scope, as a common prefix.
                let rest = &scope[prefix.len()..];
                let end = rest.find('/').map_or(rest.len(), |i| i + 1);
                return Ok(ListPage {
                    entries: Vec::new(),
                    prefixes: vec![format!("{prefix}{}", &rest[..end])],
                    next_cursor: None,
                });
            }
            Narrowed::To(scope) => {
                return Box::pin(self.list(&scope, false, cursor, limit, ctx)).await
            }
        }
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        let (mut key, mut inclusive) = match cursor {
            Some(c) => decode_cursor(c, prefix)?,
            None => (prefix.to_string(), true),
        };
        let batch = (limit + 1).min(1000);
        let mut entries = Vec::new();
        let mut prefixes = Vec::new();
        let mut next_cursor = None;
        'scan: loop {
            let rows = self.meta.scan(&key, inclusive, batch).await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let Some(rest) = row.path.strip_prefix(prefix) else {
                    break 'scan;
                };
                let common = if delimiter {
                    rest.find('/').map(|i| format!("{prefix}{}", &rest[..=i]))
                } else {
                    None
                };
                if entries.len() + prefixes.len() == limit {
                    next_cursor = Some(encode_cursor(&key, inclusive));
                    break 'scan;
                }
                match common {
                    Some(cp) => {
                        // Skip everything under this common prefix: '/' + 1 == '0'.
                        key = format!("{}0", &cp[..cp.len() - 1]);
                        inclusive = true;
                        prefixes.push(cp);
                        continue 'scan;
                    }
                    None => {
                        key = row.path.clone();
                        inclusive = false;
                        entries.push(row);
                    }
                }
            }
        }
        Ok(ListPage {
            entries,
            prefixes,
            next_cursor,
        })
    }

    /// A listing of `prefix` sorted by `order.sort` (descending when `order.desc`), keeping
    /// names that contain `order.filter` (ASCII case-insensitively), one page at a time
    /// (issue 22). With `delimiter`, one level: its folders first, then its files. Without,
    /// every file below `prefix` (unindexed: the subtree is sorted per page), the filter
    /// matching anywhere in the path below `prefix`. Its cursor names the sort, and one of
    /// another sort is refused with [`ServiceError::CursorOtherSort`]. A principal limited
    /// to a prefix sees what [`Self::list`] shows it.
    pub async fn list_sorted(
        &self,
        prefix: &str,
        delimiter: bool,
        order: ListOrder<'_>,
        cursor: Option<&str>,
        limit: usize,
        ctx: &RequestCtx,
    ) -> Result<ListPage, ServiceError> {
        let ListOrder { sort, desc, filter } = order;
        match ctx.principal.narrow(prefix) {
            Narrowed::Unchanged => {}
            Narrowed::Disjoint => return Err(ServiceError::Forbidden),
            Narrowed::To(_) if delimiter => {
                // The one folder on the way to the principal's prefix, if the filter keeps it.
                let mut page = self.list(prefix, true, None, 1, ctx).await?;
                page.prefixes.retain(|p| {
                    let name = p[prefix.len()..].trim_end_matches('/').to_ascii_lowercase();
                    cursor.is_none()
                        && filter.is_none_or(|f| name.contains(&f.to_ascii_lowercase()))
                });
                return Ok(page);
            }
            Narrowed::To(scope) => {
                let below = Box::pin(self.list_sorted(&scope, false, order, cursor, limit, ctx));
                return below.await;
            }
        }
        let after = match cursor {
            None => None,
            Some(c) => Some(listing::decode_cursor(c, prefix, sort, desc).map_err(
                |e| match e {
                    listing::CursorError::Invalid => ServiceError::InvalidCursor,
                    listing::CursorError::OtherSort => ServiceError::CursorOtherSort,
                },
            )?),
        };
        if !delimiter && matches!(after, Some(listing::LevelPosition::Folder(_))) {
            // A recursive listing has no folders to be after.
            return Err(ServiceError::InvalidCursor);
        }
        let query = LevelQuery {
            prefix,
            recursive: !delimiter,
            sort,
            desc,
            filter,
            after,
            limit: limit.clamp(1, MAX_LIST_LIMIT),
        };
        let page = self.meta.list_level(&query).await?;
        Ok(ListPage {
            entries: page.entries,
            prefixes: page.prefixes,
            next_cursor: page
                .next
                .map(|pos| listing::encode_cursor(sort, desc, &pos)),
        })
    }
}

fn encode_cursor(key: &str, inclusive: bool) -> String {
    let tagged = format!("{}{key}", if inclusive { "i:" } else { "x:" });
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tagged)
}

fn decode_cursor(cursor: &str, prefix: &str) -> Result<(String, bool), ServiceError> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| ServiceError::InvalidCursor)?;
    let text = String::from_utf8(raw).map_err(|_| ServiceError::InvalidCursor)?;
    let (inclusive, key) = if let Some(k) = text.strip_prefix("i:") {
        (true, k)
    } else if let Some(k) = text.strip_prefix("x:") {
        (false, k)
    } else if text.starts_with("s:") {
        // A sorted or filtered listing's (see `list_level`).
        return Err(ServiceError::CursorOtherSort);
    } else {
        return Err(ServiceError::InvalidCursor);
    };
    // A cursor belongs to the listing of its prefix.
    if !key.starts_with(prefix) && key < prefix {
        return Err(ServiceError::InvalidCursor);
    }
    Ok((key.to_string(), inclusive))
}
