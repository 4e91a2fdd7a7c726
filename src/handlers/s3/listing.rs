//! ListObjectsV2 and ListObjects (v1) over `FileService::list`.

use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result};

use super::errors::from_service;
use super::ops::*;
use crate::services::files::RequestCtx;
use crate::services::ServiceError;

/// Percent-encodes a key for `encoding-type=url` (everything but unreserved and `/`).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A listing position in VaultFS's cursor format (`services/files.rs`): after `key`, or from
/// it when `inclusive`.
fn cursor_at(key: &str, inclusive: bool) -> String {
    use base64::Engine;
    let tagged = format!("{}{key}", if inclusive { "i:" } else { "x:" });
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tagged)
}

/// One listed object, before encoding.
struct Listed {
    key: String,
    size: u64,
    etag: String,
    modified_ms: i64,
}

impl Listed {
    fn encoded(self, url: bool) -> Object {
        Object {
            key: Some(if url { url_encode(&self.key) } else { self.key }),
            size: Some(i64::try_from(self.size).unwrap_or(i64::MAX)),
            e_tag: Some(ETag::Strong(self.etag)),
            last_modified: Some(timestamp(self.modified_ms)),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        }
    }
}

struct ListResult {
    objects: Vec<Listed>,
    prefixes: Vec<String>,
    /// Continuation token when truncated.
    next: Option<String>,
    /// The last key or prefix returned (v1's NextMarker).
    last: Option<String>,
    max_keys: i32,
}

impl VaultS3 {
    pub(super) async fn s3_list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let ctx = self.ctx(&req).await?;
        let input = req.input;
        let page = self
            .list_page(
                &input.bucket,
                input.prefix.as_deref().unwrap_or(""),
                input.delimiter.as_deref(),
                input.continuation_token.as_deref(),
                input.start_after.as_deref(),
                input.max_keys,
                &ctx,
            )
            .await?;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc = |s: String| if url { url_encode(&s) } else { s };
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(enc(input.prefix.unwrap_or_default())),
            delimiter: input.delimiter.map(enc),
            max_keys: Some(page.max_keys),
            key_count: Some(i32::try_from(page.objects.len() + page.prefixes.len()).unwrap_or(0)),
            is_truncated: Some(page.next.is_some()),
            continuation_token: input.continuation_token,
            next_continuation_token: page.next,
            start_after: input.start_after.map(enc),
            encoding_type: input.encoding_type,
            contents: Some(page.objects.into_iter().map(|o| o.encoded(url)).collect()),
            common_prefixes: Some(
                page.prefixes
                    .into_iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(enc(p)),
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    pub(super) async fn s3_list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let ctx = self.ctx(&req).await?;
        let input = req.input;
        let page = self
            .list_page(
                &input.bucket,
                input.prefix.as_deref().unwrap_or(""),
                input.delimiter.as_deref(),
                None,
                input.marker.as_deref(),
                input.max_keys,
                &ctx,
            )
            .await?;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc = |s: String| if url { url_encode(&s) } else { s };
        let truncated = page.next.is_some();
        let next_marker = if truncated {
            page.last.clone().map(enc)
        } else {
            None
        };
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(enc(input.prefix.unwrap_or_default())),
            delimiter: input.delimiter.map(enc),
            marker: Some(enc(input.marker.unwrap_or_default())),
            max_keys: Some(page.max_keys),
            is_truncated: Some(truncated),
            next_marker,
            encoding_type: input.encoding_type,
            contents: Some(page.objects.into_iter().map(|o| o.encoded(url)).collect()),
            common_prefixes: Some(
                page.prefixes
                    .into_iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(enc(p)),
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    #[allow(clippy::too_many_arguments)]
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        start_after: Option<&str>,
        max_keys: Option<i32>,
        ctx: &RequestCtx,
    ) -> S3Result<ListResult> {
        self.require_bucket(bucket, ctx).await?;
        let delimiter = match delimiter {
            None | Some("") => false,
            Some("/") => true,
            Some(_) => {
                return Err(s3_error!(
                    NotImplemented,
                    "only '/' is supported as a delimiter"
                ))
            }
        };
        let max_keys = max_keys.unwrap_or(MAX_KEYS).clamp(0, MAX_KEYS);
        let base = format!("{bucket}/");
        let full_prefix = format!("{base}{prefix}");
        if max_keys == 0 {
            return Ok(ListResult {
                objects: Vec::new(),
                prefixes: Vec::new(),
                next: None,
                last: None,
                max_keys,
            });
        }
        let cursor = match (token, start_after) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(after)) if !after.is_empty() => {
                let key = format!("{base}{after}");
                if key.as_str() < full_prefix.as_str() {
                    None
                } else if delimiter && after.ends_with('/') {
                    // After a common prefix: skip everything under it ('/' + 1 == '0').
                    Some(cursor_at(&format!("{}0", &key[..key.len() - 1]), true))
                } else {
                    Some(cursor_at(&key, false))
                }
            }
            _ => None,
        };
        let page = self
            .state
            .files
            .list(
                &full_prefix,
                delimiter,
                cursor.as_deref(),
                usize::try_from(max_keys).unwrap_or(1000),
                ctx,
            )
            .await
            .map_err(|e| match e {
                ServiceError::Forbidden => s3_error!(AccessDenied, "outside the token's prefix"),
                other => from_service(other),
            })?;
        let records = match (page.entries.first(), page.entries.last()) {
            (Some(a), Some(b)) => self
                .meta
                .objects_in(&a.path, &b.path)
                .await
                .map_err(|e| from_service(e.into()))?,
            _ => Default::default(),
        };
        let mut last: Option<String> = None;
        let objects: Vec<Listed> = page
            .entries
            .into_iter()
            .filter_map(|m| {
                let key = m.path.strip_prefix(&base)?.to_string();
                let etag = match records.get(&m.path) {
                    Some((sha, etag)) if *sha == m.sha256 => etag.clone(),
                    _ => m.sha256.clone(),
                };
                Some(Listed {
                    key,
                    size: m.size,
                    etag,
                    modified_ms: m.modified_ms,
                })
            })
            .collect();
        let prefixes: Vec<String> = page
            .prefixes
            .into_iter()
            .filter_map(|p| p.strip_prefix(&base).map(str::to_string))
            .collect();
        if let Some(o) = objects.last() {
            last = Some(o.key.clone());
        }
        if let Some(p) = prefixes.last() {
            if last.as_ref().is_none_or(|l| p > l) {
                last = Some(p.clone());
            }
        }
        Ok(ListResult {
            objects,
            prefixes,
            next: page.next_cursor,
            last,
            max_keys,
        })
    }
}
