//! Level listings (issue 22): the folders and files directly in one folder, sorted by a
//! column, filtered by a substring of their names, one page at a time, stated once for
//! every backend over a [`LevelSource`] of two queries.
//!
//! A page holds the folders first (by name, in the listing's direction when it sorts by
//! name, else ascending), then the files in the chosen order with the path as the tiebreak.
//! A position is the last item a page showed: a folder, or a file's sort key and path; the
//! next page starts strictly after it (keyset pagination), so it stays valid while others
//! write. [`encode_cursor`] and [`decode_cursor`] turn positions into the API's opaque
//! cursors, which name their sort: a cursor of another sort is refused, not misread.

use async_trait::async_trait;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::prefix_upper_bound;
use crate::services::metadata::{FileMeta, MetadataError};

/// The column a level listing is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListSort {
    /// By name: files by path, folders by name, both in the listing's direction.
    Name,
    /// By file size in bytes (folders first, by name ascending).
    Size,
    /// By last modification time, [`FileMeta::modified_ms`] (folders first, by name ascending).
    Modified,
    /// By version number (folders first, by name ascending).
    Version,
}

impl ListSort {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "name" => ListSort::Name,
            "size" => ListSort::Size,
            "modified" => ListSort::Modified,
            "version" => ListSort::Version,
            _ => return None,
        })
    }

    /// The file's sort key (0 for `Name`, whose key is the path itself).
    pub fn key(self, f: &FileMeta) -> i64 {
        match self {
            ListSort::Name => 0,
            ListSort::Size => i64::try_from(f.size).unwrap_or(i64::MAX),
            ListSort::Modified => f.modified_ms,
            ListSort::Version => f.version,
        }
    }
}

/// Where a page ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelPosition {
    /// After this folder (a full prefix ending in '/').
    Folder(String),
    /// After this file: its sort key (see [`ListSort::key`]) and path.
    File {
        /// The file's sort key under the listing's sort ([`ListSort::key`]).
        key: i64,
        /// The file's full path (the tiebreak among equal keys).
        path: String,
    },
}

/// One page of a level listing.
#[derive(Debug, Clone)]
pub struct LevelQuery<'a> {
    /// The folder listed: '' (the root) or a prefix ending in '/'. A prefix ending inside a
    /// name ("logs/2024-") lists its folder's entries whose names start with the rest.
    pub prefix: &'a str,
    /// Every file below `prefix`, no folders (the filter matches anywhere below `prefix`).
    pub recursive: bool,
    /// The column files are ordered by (then by path).
    pub sort: ListSort,
    /// Descending order: files, and folders too when sorting by [`ListSort::Name`].
    pub desc: bool,
    /// Keep only names containing this text, ASCII case-insensitively (`None`: all).
    pub filter: Option<&'a str>,
    /// Start strictly after this position, a previous page's `next` (`None`: the first page).
    pub after: Option<LevelPosition>,
    /// Most items, folders and files together, on the page (0 counts as 1).
    pub limit: usize,
}

/// One page of a level listing's results: the folders, then the files.
#[derive(Debug, Clone, Default)]
pub struct LevelPage {
    /// Folders on this page, each a full prefix ending in '/' (none when `recursive`).
    pub prefixes: Vec<String>,
    /// Files on this page, in the listing's order.
    pub entries: Vec<FileMeta>,
    /// Set when there may be more: the position of the page's last item.
    pub next: Option<LevelPosition>,
}

/// A range bound on folder values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound<'a> {
    pub(crate) value: &'a str,
    pub(crate) inclusive: bool,
}

/// The two queries a backend answers, on the index of migration 40.
#[async_trait]
pub(crate) trait LevelSource: Send + Sync {
    /// The first (`desc`: last) folder value, `rtrim(path, replace(path, '/', ''))`, of any
    /// file within the bounds.
    async fn folder_value(
        &self,
        low: Bound<'_>,
        high: Option<Bound<'_>>,
        desc: bool,
    ) -> Result<Option<String>, MetadataError>;

    /// Files directly in the folder of `q.prefix` whose path starts with it (`q.recursive`:
    /// every file whose path starts with it), in `q.sort` order (then path; both descending when
    /// `q.desc`), strictly after `after` (key, path), whose path matches the LIKE `pattern`
    /// (escape character '\'; ASCII case-insensitive), at most `limit`.
    async fn folder_files(
        &self,
        q: &LevelQuery<'_>,
        after: Option<(i64, &str)>,
        pattern: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FileMeta>, MetadataError>;
}

/// `text` with LIKE's wildcards and the escape character escaped (escape character '\').
pub(crate) fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// True when `name` contains `filter`, ASCII case-insensitively (what LIKE does on SQLite
/// and ILIKE under the "C" collation on PostgreSQL).
fn name_matches(name: &str, filter: &str) -> bool {
    name.to_ascii_lowercase()
        .contains(&filter.to_ascii_lowercase())
}

/// One page of the level listing `q`.
pub(crate) async fn list_level<S: LevelSource + ?Sized>(
    src: &S,
    q: &LevelQuery<'_>,
) -> Result<LevelPage, MetadataError> {
    let limit = q.limit.max(1);
    // One item more than the page tells whether another page follows.
    let want = limit.saturating_add(1);
    let mut page = LevelPage::default();
    let folders_desc = q.sort == ListSort::Name && q.desc;
    let upper = prefix_upper_bound(q.prefix);
    let filter = q.filter.filter(|f| !f.is_empty());

    // The folders, unless the position is already among the files.
    let mut folder_after = match &q.after {
        _ if q.recursive => None,
        Some(LevelPosition::File { .. }) => None,
        Some(LevelPosition::Folder(f)) => Some(Some(f.clone())),
        None => Some(None),
    };
    while let Some(after) = folder_after.take() {
        if page.prefixes.len() >= want {
            break;
        }
        // Ascending: from just above the last folder's subtree ('/' + 1 == '0'); descending:
        // below the last folder (its subtree sorts at or above it).
        let skip = after.as_deref().map(|f| format!("{}0", &f[..f.len() - 1]));
        let value = if folders_desc {
            let high = match after.as_deref() {
                Some(f) => Some(Bound {
                    value: f,
                    inclusive: false,
                }),
                None => upper.as_deref().map(|u| Bound {
                    value: u,
                    inclusive: false,
                }),
            };
            let low = Bound {
                value: q.prefix,
                inclusive: false,
            };
            src.folder_value(low, high, true).await?
        } else {
            let low = match skip.as_deref() {
                Some(s) => Bound {
                    value: s,
                    inclusive: true,
                },
                None => Bound {
                    value: q.prefix,
                    inclusive: false,
                },
            };
            let high = upper.as_deref().map(|u| Bound {
                value: u,
                inclusive: false,
            });
            src.folder_value(low, high, false).await?
        };
        let Some(value) = value else { break };
        let Some(rest) = value.strip_prefix(q.prefix) else {
            break;
        };
        let Some(end) = rest.find('/') else { break };
        let folder = format!("{}{}", q.prefix, &rest[..=end]);
        // Its name starts in the folder of the prefix (which may end inside a name).
        let dir = q.prefix.rfind('/').map_or(0, |i| i + 1);
        let name = &folder[dir..folder.len() - 1];
        if filter.is_none_or(|f| name_matches(name, f)) {
            page.prefixes.push(folder.clone());
        }
        folder_after = Some(Some(folder));
    }

    let shown = page.prefixes.len();
    if shown < want {
        let after = match &q.after {
            Some(LevelPosition::File { key, path }) => Some((*key, path.as_str())),
            _ => None,
        };
        let pattern = filter.map(|f| format!("{}%{}%", like_escape(q.prefix), like_escape(f)));
        page.entries = src
            .folder_files(q, after, pattern.as_deref(), want - shown)
            .await?;
    }

    if page.prefixes.len() + page.entries.len() > limit {
        if page.entries.pop().is_none() {
            page.prefixes.pop();
        }
        page.next = Some(match page.entries.last() {
            Some(f) => LevelPosition::File {
                key: q.sort.key(f),
                path: f.path.clone(),
            },
            None => match page.prefixes.last() {
                Some(f) => LevelPosition::Folder(f.clone()),
                // A limit of at least 1 keeps one item.
                None => return Ok(page),
            },
        });
    }
    Ok(page)
}

/// Why a cursor was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CursorError {
    /// Not a cursor of this listing's folder, or not a cursor at all.
    Invalid,
    /// A cursor of a listing with another sort or order.
    OtherSort,
}

/// Tags a level listing's cursor (the plain listing's are `i:` and `x:`).
const TAG: &str = "s:";

#[derive(Serialize, Deserialize)]
struct CursorBody {
    sort: ListSort,
    desc: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    folder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    key: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    path: Option<String>,
}

/// The opaque cursor for `pos` in a listing sorted by `sort`.
pub(crate) fn encode_cursor(sort: ListSort, desc: bool, pos: &LevelPosition) -> String {
    let body = match pos {
        LevelPosition::Folder(f) => CursorBody {
            sort,
            desc,
            folder: Some(f.clone()),
            key: None,
            path: None,
        },
        LevelPosition::File { key, path } => CursorBody {
            sort,
            desc,
            folder: None,
            key: Some(*key),
            path: Some(path.clone()),
        },
    };
    // Serializing plain strings and numbers cannot fail; an empty body would only restart.
    let json = serde_json::to_string(&body).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{TAG}{json}"))
}

/// The position `cursor` names in the listing of `prefix` sorted by `sort`.
pub(crate) fn decode_cursor(
    cursor: &str,
    prefix: &str,
    sort: ListSort,
    desc: bool,
) -> Result<LevelPosition, CursorError> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| CursorError::Invalid)?;
    let text = String::from_utf8(raw).map_err(|_| CursorError::Invalid)?;
    let Some(json) = text.strip_prefix(TAG) else {
        // The plain listing's cursor (name, ascending, no filter).
        return Err(if text.starts_with("i:") || text.starts_with("x:") {
            CursorError::OtherSort
        } else {
            CursorError::Invalid
        });
    };
    let body: CursorBody = serde_json::from_str(json).map_err(|_| CursorError::Invalid)?;
    if body.sort != sort || body.desc != desc {
        return Err(CursorError::OtherSort);
    }
    let pos = match (body.folder, body.key, body.path) {
        (Some(f), None, None) if f.ends_with('/') => LevelPosition::Folder(f),
        (None, Some(key), Some(path)) => LevelPosition::File { key, path },
        _ => return Err(CursorError::Invalid),
    };
    let within = match &pos {
        LevelPosition::Folder(f) => f.len() > prefix.len() && f.starts_with(prefix),
        LevelPosition::File { path, .. } => path.starts_with(prefix),
    };
    if within {
        Ok(pos)
    } else {
        Err(CursorError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(like_escape(r"50%_a\b"), r"50\%\_a\\b");
        assert_eq!(like_escape("plain"), "plain");
    }

    #[test]
    fn cursors_round_trip_and_name_their_sort() {
        let pos = LevelPosition::File {
            key: 42,
            path: "d/x".into(),
        };
        let c = encode_cursor(ListSort::Size, true, &pos);
        assert_eq!(decode_cursor(&c, "d/", ListSort::Size, true), Ok(pos));
        assert_eq!(
            decode_cursor(&c, "d/", ListSort::Size, false),
            Err(CursorError::OtherSort)
        );
        assert_eq!(
            decode_cursor(&c, "e/", ListSort::Size, true),
            Err(CursorError::Invalid)
        );
        let plain = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("x:d/x");
        assert_eq!(
            decode_cursor(&plain, "d/", ListSort::Name, false),
            Err(CursorError::OtherSort)
        );
        assert_eq!(
            decode_cursor("!!", "d/", ListSort::Name, false),
            Err(CursorError::Invalid)
        );
        let folder = LevelPosition::Folder("d/sub/".into());
        let c = encode_cursor(ListSort::Name, false, &folder);
        assert_eq!(decode_cursor(&c, "d/", ListSort::Name, false), Ok(folder));
    }
}
