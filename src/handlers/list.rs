//! `GET /api/v1/list`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::ApiQuery;
use crate::app::AppState;
use crate::error::AppError;
use crate::paths::validate_prefix;
use crate::services::files::{ListPage, RequestCtx};

pub const DEFAULT_LIMIT: usize = 1000;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    prefix: String,
    delimiter: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

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
    let page = state
        .files
        .list(&prefix, delimiter, cursor, limit, &ctx)
        .await?;
    Ok(Json(page))
}
