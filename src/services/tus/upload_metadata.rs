//! `Upload-Metadata`: parsing the header, the target path, and the write's options from its
//! keys.

use base64::Engine;

use super::TusError;
use crate::paths::VPath;
use crate::services::metadata::{EtagMatch, Precondition};
use crate::services::upload::UploadOptions;

const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// `Upload-Metadata`: `key base64,key base64,...` (a key alone has an empty value).
pub(crate) fn parse_metadata(header: &str) -> Result<Vec<(String, String)>, TusError> {
    let mut out = Vec::new();
    for pair in header.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut parts = pair.split(' ').filter(|p| !p.is_empty());
        let key = parts.next().unwrap_or_default().to_string();
        let value = match parts.next() {
            None => String::new(),
            Some(b64) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| {
                        TusError::Invalid(format!("Upload-Metadata value of {key:?} is not base64"))
                    })?;
                String::from_utf8(bytes).map_err(|_| {
                    TusError::Invalid(format!("Upload-Metadata value of {key:?} is not UTF-8"))
                })?
            }
        };
        if parts.next().is_some() {
            return Err(TusError::Invalid(format!(
                "Upload-Metadata pair {key:?} has more than one value"
            )));
        }
        out.push((key, value));
    }
    Ok(out)
}

pub(super) fn meta_value<'a>(meta: &'a [(String, String)], key: &str) -> Option<&'a str> {
    meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The target path: `path`, or `filename` joined to `?path=DIR/`.
pub(super) fn target_path(
    meta: &[(String, String)],
    dir: Option<&str>,
) -> Result<Option<VPath>, TusError> {
    let invalid = |e: crate::paths::PathError| TusError::Invalid(format!("invalid path: {e}"));
    if let Some(path) = meta_value(meta, "path") {
        return VPath::parse(path).map(Some).map_err(invalid);
    }
    match (meta_value(meta, "filename"), dir) {
        (Some(name), Some(dir)) => VPath::parse(dir.trim_end_matches('/'))
            .and_then(|d| d.join(name))
            .map(Some)
            .map_err(invalid),
        _ => Ok(None),
    }
}

/// The write's options from the metadata keys `content_type` (or tus-js-client's
/// `filetype`), `sha256` (hex), `if_none_match` (`*`) and `if_match` (entity tags).
/// `commit` (a commit id) stages the upload in that commit instead (see `commit`).
pub(super) fn upload_options(meta: &[(String, String)]) -> Result<UploadOptions, TusError> {
    let content_type = meta_value(meta, "content_type")
        .or_else(|| meta_value(meta, "filetype"))
        .filter(|t| !t.is_empty())
        .unwrap_or(DEFAULT_CONTENT_TYPE)
        .to_string();
    let expected_sha256 = match meta_value(meta, "sha256") {
        None => None,
        Some(hex_digest) => Some(
            hex::decode(hex_digest.trim())
                .ok()
                .filter(|d| d.len() == 32)
                .ok_or_else(|| {
                    TusError::Invalid("metadata `sha256` must be 64 hex digits".into())
                })?,
        ),
    };
    let precondition = match (
        meta_value(meta, "if_match"),
        meta_value(meta, "if_none_match"),
    ) {
        (Some(_), Some(_)) => {
            return Err(TusError::Invalid(
                "metadata `if_match` and `if_none_match` cannot be combined".into(),
            ))
        }
        (Some(tags), None) => Precondition::MustMatch(EtagMatch::parse(tags)),
        (None, Some(n)) if n.trim() == "*" => Precondition::MustNotExist,
        (None, Some(_)) => {
            return Err(TusError::Invalid(
                "metadata `if_none_match` supports only `*`".into(),
            ))
        }
        (None, None) => Precondition::None,
    };
    Ok(UploadOptions {
        content_type,
        precondition,
        expected_sha256,
        size_hint: None,
        digest_sink: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn metadata_parses_and_names_the_target() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let header = format!("path {},content_type {},empty", b64("a/b.bin"), b64("x/y"));
        let meta = parse_metadata(&header).unwrap();
        assert_eq!(meta_value(&meta, "empty"), Some(""));
        assert_eq!(
            target_path(&meta, None).unwrap().unwrap().as_str(),
            "a/b.bin"
        );
        assert_eq!(upload_options(&meta).unwrap().content_type, "x/y");
        let meta = parse_metadata(&format!("filename {}", b64("c.txt"))).unwrap();
        assert!(target_path(&meta, None).unwrap().is_none());
        assert_eq!(
            target_path(&meta, Some("dir/")).unwrap().unwrap().as_str(),
            "dir/c.txt"
        );
        assert!(parse_metadata("path !!!").is_err());
        // `commit` stages into a commit (issue 21); it is checked at creation.
        let commit = parse_metadata(&format!("commit {}", b64("c1"))).unwrap();
        assert!(upload_options(&commit).is_ok());
        let pre = parse_metadata(&format!("if_none_match {}", b64("*"))).unwrap();
        assert_eq!(
            upload_options(&pre).unwrap().precondition,
            Precondition::MustNotExist
        );
    }
}
