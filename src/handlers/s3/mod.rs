//! The S3-compatible API (`--s3-listen`), on its own listener.
//!
//! The wire protocol (SigV4 in headers and presigned URLs, aws-chunked payloads with chunk
//! signatures and trailers, XML bodies and errors) is the `s3s` crate's; this module is the
//! backend: every operation maps onto VaultFS files, under the caller's token.
//!
//! - [`auth`]: key pairs derived from tokens, SigV4 secret lookup, scope checks.
//! - [`ops`]: the `s3s::S3` implementation (dispatch) and what the operations share;
//!   [`buckets`], [`objects`] and [`listing`]: the operations.
//! - [`multipart`]: multipart uploads (staged parts, Complete as one commit).
//! - [`write`]: [`write::write_object`], the one way this API writes a file.
//! - [`errors`]: service errors as S3 error codes.
//!
//! A bucket is a top-level path segment: object `k` in bucket `b` is the file `b/k`.

/// An output struct (`$output`) with the flexible checksums `$sums` (a `Checksums`) and
/// the other fields given (`$extra`): PutObject, UploadPart, GetObject and HeadObject show
/// checksums alike.
macro_rules! with_checksums {
    ($output:ident, $sums:expr, { $($field:ident: $value:expr),* $(,)? }) => {{
        let c: crate::services::s3_meta::Checksums = $sums;
        $output {
            $($field: $value,)*
            checksum_crc32: c.crc32,
            checksum_crc32c: c.crc32c,
            checksum_crc64nvme: c.crc64nvme,
            checksum_sha1: c.sha1,
            checksum_sha256: c.sha256,
            ..Default::default()
        }
    }};
}

pub(crate) mod auth;
pub(crate) mod buckets;
pub(crate) mod errors;
pub(crate) mod listing;
pub(crate) mod multipart;
pub(crate) mod objects;
pub(crate) mod ops;
pub(crate) mod write;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;

use crate::app::{AppState, ServerError};
use crate::services::s3_meta::S3Meta;

/// Longest validity of a presigned URL (`X-Amz-Expires`), as AWS allows.
pub(crate) const MAX_PRESIGNED_EXPIRES: u64 = 7 * 24 * 3600;
/// Largest request clock skew accepted, in seconds (header and presigned SigV4).
pub(crate) const MAX_CLOCK_SKEW_SECS: u32 = 15 * 60;
/// How often abandoned multipart uploads are looked for.
const MULTIPART_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10 * 60);

#[derive(Clone)]
struct Entry {
    service: s3s::service::S3Service,
}

/// Binds the S3 listener and builds its app, when `s3_listen` is set. The caller serves it
/// with the same accept loop as the main API.
pub(crate) async fn listener(
    state: &AppState,
) -> Result<Option<(TcpListener, Router)>, ServerError> {
    let Some(addr) = state.config.s3_listen else {
        return Ok(None);
    };
    let meta = S3Meta::open(
        &state.config.data_dir,
        state.config.metadata_url.as_deref(),
        state.config.metadata_timeout,
    )
    .await?;
    let keys = auth::KeyDeriver::new(&state.auth);
    multipart::spawn_sweeper(
        meta.clone(),
        state.config.s3_multipart_max_age,
        MULTIPART_SWEEP_EVERY,
        state.shutdown.clone(),
    );
    let backend = ops::VaultS3::new(state.clone(), meta);
    let mut builder = s3s::service::S3ServiceBuilder::new(backend);
    builder.set_auth(auth::TokenAuth {
        auth: state.auth.clone(),
        keys,
    });
    builder.set_access(auth::ScopeAccess {
        auth: state.auth.clone(),
    });
    if let Some(domain) = &state.config.s3_domain {
        let host = s3s::host::SingleDomain::new(domain)
            .map_err(|e| std::io::Error::other(format!("s3_domain {domain:?}: {e}")))?;
        builder.set_host(host);
    }
    let mut s3_config = s3s::config::S3Config::default();
    s3_config.presigned_url_max_skew_time_secs = MAX_CLOCK_SKEW_SECS;
    builder.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(
        s3_config,
    ))));
    let entry = Entry {
        service: builder.build(),
    };
    let app = Router::new()
        .fallback(handle)
        .layer(axum::middleware::from_fn(super::request_id))
        .with_state(entry);
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "S3 API listening");
    Ok(Some((listener, app)))
}

/// `X-Amz-Expires` above the 7-day maximum, refused before s3s checks the signature.
fn expires_too_long(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|kv| {
            kv.split_once('=').is_some_and(|(k, v)| {
                k.eq_ignore_ascii_case("X-Amz-Expires")
                    && v.parse::<u64>().map_or(true, |n| n > MAX_PRESIGNED_EXPIRES)
            })
        })
    })
}

fn error_response(e: s3s::S3Error) -> Response {
    match e.to_http_response() {
        Ok(resp) => resp.map(axum::body::Body::new).into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn handle(State(entry): State<Entry>, request: Request) -> Response {
    if expires_too_long(request.uri().query()) {
        return error_response(s3s::s3_error!(
            AuthorizationQueryParametersError,
            "X-Amz-Expires must be at most 604800 seconds (7 days)"
        ));
    }
    let request = request.map(s3s::Body::http_body_unsync);
    match entry.service.call(request).await {
        Ok(resp) => resp.map(axum::body::Body::new),
        Err(e) => {
            tracing::warn!(error = ?e, "S3 request failed outside the operation");
            error_response(s3s::s3_error!(InternalError))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn presigned_expiry_is_bounded() {
        assert!(!super::expires_too_long(None));
        assert!(!super::expires_too_long(Some("X-Amz-Expires=604800&a=b")));
        assert!(super::expires_too_long(Some("a=b&X-Amz-Expires=604801")));
        assert!(super::expires_too_long(Some("X-Amz-Expires=-1")));
    }
}
