//! Serving file content: conditional requests, ranges, streaming.
//!
//! Content is the uploader's, served with the uploader's `Content-Type`, so every content
//! response (200, 206, 304, 416) tells browsers not to run it on the API's origin:
//! `X-Content-Type-Options: nosniff`, `Content-Security-Policy: sandbox` (no scripts, a
//! unique origin) and `Content-Disposition: attachment`. Only `?inline=1` on a type that is
//! safe to render ([`safe_inline`]: plain text, raster images, audio, video) gets `inline`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::{header_str, parse_etags};
use crate::app::AppState;
use crate::error::AppError;
use crate::services::metadata::{EtagMatch, FileMeta};

/// What a `Range` header asks of a file of known size.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// No (usable) Range: the whole content.
    Full,
    /// Inclusive byte range.
    Partial(u64, u64),
    /// A well-formed range that no byte of the content falls in: 416 `range_not_satisfiable`.
    Unsatisfiable,
    /// Not a valid `bytes=` range: 416 with the code `invalid_range`.
    Malformed,
}

/// Parses a `Range` header against a content of `size` bytes (public for `fuzz/`).
pub fn parse_range(value: &str, size: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        // A unit we do not know: ignore the header (RFC 9110, 14.2).
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        // Multiple ranges are optional; serve the whole content instead.
        return RangeSpec::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeSpec::Malformed;
    };
    let parse = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match parse(suffix) {
            None => RangeSpec::Malformed,
            Some(0) => RangeSpec::Unsatisfiable,
            Some(_) if size == 0 => RangeSpec::Unsatisfiable,
            Some(n) => RangeSpec::Partial(size.saturating_sub(n), size - 1),
        },
        (start, "") => match parse(start) {
            None => RangeSpec::Malformed,
            Some(s) if s >= size => RangeSpec::Unsatisfiable,
            Some(s) => RangeSpec::Partial(s, size - 1),
        },
        (start, end) => match (parse(start), parse(end)) {
            (Some(s), Some(e)) if s <= e => {
                if s >= size {
                    RangeSpec::Unsatisfiable
                } else {
                    RangeSpec::Partial(s, e.min(size - 1))
                }
            }
            _ => RangeSpec::Malformed,
        },
    }
}

fn http_date(ms: i64) -> String {
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

fn etag_matches_weakly(tags: &EtagMatch, sha256: &str, raw: &str) -> bool {
    match tags {
        EtagMatch::Any => true,
        EtagMatch::OneOf(list) => {
            // If-None-Match uses weak comparison: W/"x" matches "x".
            list.iter().any(|t| t == sha256)
                || raw
                    .split(',')
                    .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
                    .any(|t| t == sha256)
        }
    }
}

/// The policy of every content response: no scripts, no plugins, no forms, an opaque origin.
pub const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; media-src 'self'";

/// True when the query asks for `inline=1` (or `inline=true`).
pub fn inline_requested(query: Option<&str>) -> bool {
    query
        .unwrap_or("")
        .split('&')
        .any(|pair| matches!(pair, "inline=1" | "inline=true"))
}

/// Types a browser renders passively (no scripts, no active document): the only ones served
/// `inline` on request. Everything else, HTML, SVG, XML, JavaScript, PDF, unknown types,
/// is always an attachment.
pub fn safe_inline(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "text/plain"
            | "image/png"
            | "image/jpeg"
            | "image/gif"
            | "image/webp"
            | "image/avif"
            | "image/bmp"
            | "audio/mpeg"
            | "audio/ogg"
            | "audio/wav"
            | "audio/webm"
            | "audio/flac"
            | "audio/aac"
            | "video/mp4"
            | "video/webm"
            | "video/ogg"
    )
}

/// `attachment; filename="..."; filename*=UTF-8''...` (RFC 6266), or `inline`.
fn disposition(path: &str, content_type: &str, inline: bool) -> String {
    if inline && safe_inline(content_type) {
        return "inline".to_string();
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' && c != '%' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// `nosniff` and the sandbox, on any response about content (errors included).
fn put_protection(map: &mut HeaderMap) {
    map.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    map.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
}

/// Answers a GET or HEAD for `meta`'s content; `inline`: the client asked for `?inline=1`.
pub async fn serve(
    state: &AppState,
    meta: FileMeta,
    headers: &HeaderMap,
    head: bool,
    inline: bool,
) -> Result<Response, AppError> {
    let etag = meta.etag();
    let last_modified = http_date(meta.modified_ms);
    let mut base = HeaderMap::new();
    let put = |map: &mut HeaderMap, name: header::HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            map.insert(name, v);
        }
    };
    put(&mut base, header::ETAG, &etag);
    put(&mut base, header::LAST_MODIFIED, &last_modified);
    put(&mut base, header::ACCEPT_RANGES, "bytes");
    put_protection(&mut base);
    put(
        &mut base,
        header::CONTENT_DISPOSITION,
        &disposition(&meta.path, &meta.content_type, inline),
    );

    // Conditional GET.
    if let Some(inm) = header_str(headers, "if-none-match")? {
        if etag_matches_weakly(&parse_etags(inm), &meta.sha256, inm) {
            return Ok((StatusCode::NOT_MODIFIED, base).into_response());
        }
    } else if let Some(ims) = header_str(headers, "if-modified-since")? {
        if let Ok(since) = httpdate::parse_http_date(ims) {
            let modified = UNIX_EPOCH
                + Duration::from_secs(u64::try_from(meta.modified_ms / 1000).unwrap_or(0));
            if modified <= since && since <= SystemTime::now() + Duration::from_secs(60) {
                return Ok((StatusCode::NOT_MODIFIED, base).into_response());
            }
        }
    }

    // Range, honouring If-Range (strong entity-tag or date).
    let mut range = RangeSpec::Full;
    if let Some(value) = header_str(headers, "range")? {
        let if_range_ok = match header_str(headers, "if-range")? {
            None => true,
            Some(ir) if ir.trim_start().starts_with('"') => ir.trim() == etag,
            Some(ir) => ir.trim() == last_modified,
        };
        if if_range_ok {
            range = parse_range(value, meta.size);
        }
    }
    let (status, start, len) = match range {
        RangeSpec::Full => (StatusCode::OK, 0, meta.size),
        RangeSpec::Partial(s, e) => {
            put(
                &mut base,
                header::CONTENT_RANGE,
                &format!("bytes {s}-{e}/{}", meta.size),
            );
            (StatusCode::PARTIAL_CONTENT, s, e - s + 1)
        }
        RangeSpec::Unsatisfiable | RangeSpec::Malformed => {
            let mut err = AppError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                if range == RangeSpec::Malformed {
                    "invalid_range"
                } else {
                    "range_not_satisfiable"
                },
                format!("the range cannot be served from {} bytes", meta.size),
            )
            .into_response();
            put(
                err.headers_mut(),
                header::CONTENT_RANGE,
                &format!("bytes */{}", meta.size),
            );
            put_protection(err.headers_mut());
            return Ok(err);
        }
    };
    put(&mut base, header::CONTENT_TYPE, &meta.content_type);
    put(&mut base, header::CONTENT_LENGTH, &len.to_string());

    let body = if head {
        Body::empty()
    } else {
        // Plain HTTP/1.1 and a file on local disk: the connection sends the file's bytes
        // itself (splice), they never pass through here.
        let zero_copy = match crate::zero_copy::current() {
            Some(handle) if len > 0 => state
                .files
                .open_content_file(&meta)
                .await?
                .map(|file| handle.body(file, start, len).boxed()),
            _ => None,
        };
        let content = match zero_copy {
            Some(body) => body,
            None => state.files.read_content(&meta, start, len).await?,
        };
        // Counted while the body streams: in flight until it ends or the client goes away.
        let in_flight = crate::metrics::InFlight::new("vaultfs_downloads_in_flight");
        let bytes_out = metrics::counter!("vaultfs_download_bytes_total");
        let stream = content.map(move |chunk| {
            let _alive = &in_flight;
            if let Ok(c) = &chunk {
                bytes_out.increment(c.len() as u64);
            }
            chunk
        });
        Body::from_stream(stream)
    };
    let mut response = (status, base).into_response();
    *response.body_mut() = body;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeSpec::Partial(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeSpec::Partial(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeSpec::Partial(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), RangeSpec::Partial(0, 99));
        assert_eq!(
            parse_range("bytes=50-1000", 100),
            RangeSpec::Partial(50, 99)
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=9-1", 100), RangeSpec::Malformed);
        assert_eq!(parse_range("bytes=abc", 100), RangeSpec::Malformed);
        assert_eq!(parse_range("bytes=1-2-3", 100), RangeSpec::Malformed);
        assert_eq!(parse_range("bytes=+1-2", 100), RangeSpec::Malformed);
        assert_eq!(parse_range("items=0-1", 100), RangeSpec::Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Full);
    }

    #[test]
    fn only_passive_types_render_inline() {
        for t in [
            "text/plain",
            "text/plain; charset=utf-8",
            "IMAGE/PNG",
            "video/mp4",
        ] {
            assert!(safe_inline(t), "{t}");
            assert_eq!(disposition("a/b", t, true), "inline");
        }
        for t in [
            "text/html",
            "image/svg+xml",
            "application/xml",
            "text/xml",
            "application/xhtml+xml",
            "text/javascript",
            "application/javascript",
            "application/pdf",
            "application/octet-stream",
            "text/plain+html",
            "",
        ] {
            assert!(!safe_inline(t), "{t}");
            assert!(disposition("a/b", t, true).starts_with("attachment"));
        }
        assert_eq!(
            disposition("d/r\u{e9}sum\u{e9} \"1\".txt", "text/plain", false),
            "attachment; filename=\"r_sum_ _1_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%221%22.txt"
        );
    }
}
