//! `GET /api/v1/list`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::ApiQuery;
use crate::app::AppState;
use crate::error::AppError;
use crate::paths::validate_prefix;
use crate::services::files::{ListOrder, ListPage, RequestCtx};
use crate::services::metadata::ListSort;

pub(crate) const DEFAULT_LIMIT: usize = 1000;

/// Query of `GET /api/v1/list`: prefix, optional `/` delimiter, cursor, page size, sort and
/// filter.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    prefix: String,
    delimiter: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
    /// `name` (default), `size`, `modified` or `version`.
    sort: Option<String>,
    /// `asc` (default) or `desc`.
    order: Option<String>,
    /// Names containing this text (ASCII case-insensitive); without a delimiter, paths below
    /// `prefix` containing it.
    filter: Option<String>,
}

/// Longest `filter`, in characters.
const MAX_FILTER: usize = 1024;

/// `GET /api/v1/list`: one page of the files (and, with a delimiter, sub-prefixes) under `prefix`.
pub async fn list(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ListPage>, AppError> {
    let prefix = validate_prefix(&q.prefix)?;
    let delimiter = match q.delimiter.as_deref() {
        None | Some("") => false,
        Some("/") => true,
        Some(_) => {
            return Err(AppError::bad_request(
                "invalid_query",
                "the only supported delimiter is '/'",
            ))
        }
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 {
        return Err(AppError::bad_request(
            "invalid_query",
            "limit must be at least 1",
        ));
    }
    let cursor = q.cursor.as_deref().filter(|c| !c.is_empty());
    let sort = q.sort.as_deref().map_or(Some(ListSort::Name), sort_of);
    let Some(sort) = sort else {
        return Err(AppError::bad_request(
            "invalid_query",
            "sort is one of name, size, modified, version",
        ));
    };
    let Some(desc) = q.order.as_deref().map_or(Some(false), descending) else {
        return Err(AppError::bad_request(
            "invalid_query",
            "order is asc or desc",
        ));
    };
    let filter = q.filter.as_deref().filter(|f| !f.is_empty());
    if filter.is_some_and(|f| f.chars().count() > MAX_FILTER) {
        return Err(AppError::bad_request(
            "invalid_query",
            "filter is at most 1024 characters",
        ));
    }
    // Name ascending without a filter is the plain listing, exactly as before sorting.
    let page = if sort == ListSort::Name && !desc && filter.is_none() {
        state
            .files
            .list(&prefix, delimiter, cursor, limit, &ctx)
            .await?
    } else {
        let order = ListOrder { sort, desc, filter };
        state
            .files
            .list_sorted(&prefix, delimiter, order, cursor, limit, &ctx)
            .await?
    };
    Ok(Json(page))
}

/// `sort`'s value (`""` is the default).
fn sort_of(value: &str) -> Option<ListSort> {
    if value.is_empty() {
        return Some(ListSort::Name);
    }
    ListSort::parse(value)
}

/// Whether `order` asks for descending (`""` is the default, ascending).
fn descending(value: &str) -> Option<bool> {
    match value {
        "" | "asc" => Some(false),
        "desc" => Some(true),
        _ => None,
    }
}
