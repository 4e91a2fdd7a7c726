//! Path rules for every user-supplied path.
//!
//! A [`VPath`] is a validated, NFC-normalized, `/`-separated relative path in VaultFS's own
//! namespace. User paths never become filesystem paths (blobs are stored by content hash), but
//! clients do turn them into local paths when they download, so we refuse anything that could
//! mean "somewhere else" to a client, a proxy or a later decoding step.

use std::fmt;

use unicode_normalization::UnicodeNormalization;

/// Longest accepted path, in bytes of UTF-8 after normalization.
pub const MAX_PATH_BYTES: usize = 4096;
/// Percent-decoding stages checked beyond the HTTP layer's own (`%25252e...` nests deeper
/// than any real client encodes; past this the path is refused).
const MAX_DECODING_STAGES: usize = 8;
/// Longest accepted segment, in bytes of UTF-8 after normalization.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Why a path was refused. The message is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("path is empty")]
    Empty,
    /// Longer than `MAX_PATH_BYTES` bytes.
    #[error("path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    /// A segment is longer than `MAX_SEGMENT_BYTES` bytes.
    #[error("path segment is longer than {MAX_SEGMENT_BYTES} bytes")]
    SegmentTooLong,
    /// Starts with `/`.
    #[error("path must be relative (no leading '/')")]
    Absolute,
    /// Has `//` or ends with `/`.
    #[error("path has an empty segment ('//' or a trailing '/')")]
    EmptySegment,
    /// Has a `.` or `..` segment.
    #[error("path segments '.' and '..' are not allowed")]
    DotSegment,
    /// Has a backslash.
    #[error("backslashes are not allowed in paths")]
    Backslash,
    /// Has a control, bidirectional-override or replacement character.
    #[error("control, bidirectional-override and replacement characters are not allowed in paths")]
    ForbiddenChar,
    /// A segment ends with a space or a dot (Windows would drop it).
    #[error("a path segment may not end with a space or a dot")]
    TrailingSpaceOrDot,
    /// Percent-decoding it would give one of the refused forms.
    #[error("path contains a percent-encoded sequence that decodes to a forbidden path")]
    EncodedTraversal,
    /// Starts with a drive letter (`C:`).
    #[error("path may not start with a drive letter (C:)")]
    DriveLetter,
}

/// A validated path. Construct with [`VPath::parse`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VPath(String);

impl VPath {
    /// Validates and normalizes `raw` (already percent-decoded once by the HTTP layer).
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        let nfc: String = raw.nfc().collect();
        check_normalized(&nfc)?;
        // Another decoding step (a proxy, a client, a shell script) must not turn an accepted
        // path into a traversal: `%2e%2e` arrives here literally when the client encoded
        // twice, `%252e%252e` when it encoded three times. Every stage is checked.
        let mut stage = nfc.clone();
        let mut settled = false;
        for _ in 0..MAX_DECODING_STAGES {
            if !stage.contains('%') {
                settled = true;
                break;
            }
            match percent_decode(&stage) {
                // Decodes to bytes that are not UTF-8 (overlong encodings such as %c0%ae).
                None => return Err(PathError::EncodedTraversal),
                Some(decoded) if decoded == stage => {
                    settled = true;
                    break;
                }
                Some(decoded) => {
                    let decoded_nfc: String = decoded.nfc().collect();
                    check_normalized(&decoded_nfc).map_err(|_| PathError::EncodedTraversal)?;
                    stage = decoded_nfc;
                }
            }
        }
        if !settled {
            return Err(PathError::EncodedTraversal);
        }
        Ok(VPath(nfc))
    }

    /// The normalized path (NFC, relative, `/`-separated).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The normalized path, by value.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Parent prefixes, each ending in `/`: `a/b/c` gives `a/`, `a/b/`.
    pub fn parent_prefixes(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(move |(i, _)| &self.0[..=i])
    }

    /// `self` joined with `name` (itself validated) as a child path.
    pub fn join(&self, name: &str) -> Result<VPath, PathError> {
        VPath::parse(&format!("{}/{}", self.0, name))
    }
}

impl fmt::Display for VPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Validates a listing prefix: may be empty or end in a partial segment, but obeys the same
/// character rules as a path.
pub fn validate_prefix(raw: &str) -> Result<String, PathError> {
    let nfc: String = raw.nfc().collect();
    if nfc.is_empty() {
        return Ok(nfc);
    }
    if nfc.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if nfc.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if nfc.contains('\\') {
        return Err(PathError::Backslash);
    }
    if nfc.chars().any(forbidden_char) {
        return Err(PathError::ForbiddenChar);
    }
    // Every complete segment (all but the last, which may be partial) must be a valid segment.
    let mut segs: Vec<&str> = nfc.split('/').collect();
    segs.pop();
    for s in segs {
        check_segment(s)?;
    }
    Ok(nfc)
}

fn check_normalized(p: &str) -> Result<(), PathError> {
    if p.is_empty() {
        return Err(PathError::Empty);
    }
    if p.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if p.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if p.contains('\\') {
        return Err(PathError::Backslash);
    }
    if p.chars().any(forbidden_char) {
        return Err(PathError::ForbiddenChar);
    }
    for seg in p.split('/') {
        check_segment(seg)?;
    }
    // `C:x` and `C:` join to a drive on Windows clients, whatever directory they download to.
    let mut first = p.chars();
    if let (Some(letter), Some(':')) = (first.next(), first.next()) {
        if letter.is_ascii_alphabetic() {
            return Err(PathError::DriveLetter);
        }
    }
    // Compatibility forms: full-width dots and solidi (U+FF0E, U+FF0F, U+FF3C) and similar look
    // like '.', '/' and '\' to people and to NFKC-normalizing clients.
    let nfkc: String = p.nfkc().collect();
    if nfkc != p {
        if nfkc.contains('\\') {
            return Err(PathError::Backslash);
        }
        if nfkc.starts_with('/') {
            return Err(PathError::Absolute);
        }
        for seg in nfkc.split('/') {
            if seg.is_empty() {
                return Err(PathError::EmptySegment);
            }
            if seg == "." || seg == ".." {
                return Err(PathError::DotSegment);
            }
        }
    }
    Ok(())
}

fn check_segment(seg: &str) -> Result<(), PathError> {
    if seg.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if seg == "." || seg == ".." {
        return Err(PathError::DotSegment);
    }
    if seg.len() > MAX_SEGMENT_BYTES {
        return Err(PathError::SegmentTooLong);
    }
    if seg.ends_with(' ') || seg.ends_with('.') {
        return Err(PathError::TrailingSpaceOrDot);
    }
    Ok(())
}

/// Control, bidirectional-override, BOM, separator and replacement characters (also refused
/// in token labels).
pub(crate) fn forbidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{FFFD}'                  // replacement char: the client sent invalid UTF-8
            | '\u{200E}' | '\u{200F}'   // LRM, RLM
            | '\u{202A}'..='\u{202E}'   // bidi embeddings and overrides
            | '\u{2066}'..='\u{2069}'   // bidi isolates
            | '\u{FEFF}'                // BOM / zero-width no-break space
            | '\u{2028}' | '\u{2029}'   // line and paragraph separators (break logs, JS)
        )
}

/// Decodes `%XX` sequences; `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hi = (bytes[i + 1] as char).to_digit(16);
            let lo = (bytes[i + 2] as char).to_digit(16);
            if let (Some(h), Some(l)) = (hi, lo) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for p in [
            "a",
            "releases/latest/app.tar.gz",
            ".gitignore",
            "a/.hidden/b",
            "ünïcode/ファイル.txt",
            "with space/inside name.txt",
            "100%/done",
            "a..b/c...d",
        ] {
            assert_eq!(
                VPath::parse(p).map(|v| v.into_string()),
                Ok(p.to_string()),
                "{p}"
            );
        }
    }

    #[test]
    fn normalizes_nfd_to_nfc() {
        let nfd = "cafe\u{301}.txt";
        let nfc = "caf\u{e9}.txt";
        assert_eq!(
            VPath::parse(nfd).map(|v| v.into_string()),
            Ok(nfc.to_string())
        );
        assert_eq!(VPath::parse(nfd), VPath::parse(nfc));
    }

    #[test]
    fn parent_prefixes() {
        let p = VPath::parse("a/b/c").map_err(|e| e.to_string());
        let p = p.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.parent_prefixes().collect::<Vec<_>>(), vec!["a/", "a/b/"]);
    }

    #[test]
    fn rejects_hostile_paths() {
        let long_seg = "x".repeat(256);
        let long_path = format!("{}/y", "abcdefgh/".repeat(456));
        let cases: Vec<(&str, PathError)> = vec![
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("../x", PathError::DotSegment),
            ("a/../../x", PathError::DotSegment),
            ("./x", PathError::DotSegment),
            ("a//b", PathError::EmptySegment),
            ("a/", PathError::EmptySegment),
            ("a\\b", PathError::Backslash),
            ("..\\x", PathError::Backslash),
            ("C:\\Windows", PathError::Backslash),
            ("a\0b", PathError::ForbiddenChar),
            ("a\nb", PathError::ForbiddenChar),
            ("a\u{202E}txt.exe", PathError::ForbiddenChar),
            ("bad\u{FFFD}", PathError::ForbiddenChar),
            ("\u{FF0E}\u{FF0E}/x", PathError::DotSegment),
            ("\u{FF0E}\u{FF0E}\u{FF0F}x", PathError::DotSegment),
            ("a\u{FF3C}b", PathError::Backslash),
            ("%2e%2e/x", PathError::EncodedTraversal),
            ("%2e%2e%2fx", PathError::EncodedTraversal),
            ("a%2f%2fb", PathError::EncodedTraversal),
            ("a%00b", PathError::EncodedTraversal),
            ("%c0%ae%c0%ae/x", PathError::EncodedTraversal),
            ("a%5cb", PathError::EncodedTraversal),
            ("trailing./x", PathError::TrailingSpaceOrDot),
            ("trailing /x", PathError::TrailingSpaceOrDot),
            (long_seg.as_str(), PathError::SegmentTooLong),
            (long_path.as_str(), PathError::TooLong),
        ];
        for (raw, want) in cases {
            assert_eq!(VPath::parse(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn prefix_rules() {
        assert_eq!(validate_prefix(""), Ok(String::new()));
        assert_eq!(validate_prefix("rel"), Ok("rel".into()));
        assert_eq!(validate_prefix("releases/"), Ok("releases/".into()));
        assert!(validate_prefix("../").is_err());
        assert!(validate_prefix("/abs").is_err());
        assert!(validate_prefix("a\0").is_err());
    }

    /// What "names nothing outside the namespace" means for an accepted path: relative, no
    /// `.`/`..`/empty segment, no backslash or control character, in every form a client or
    /// proxy may turn it into (NFKC, any number of percent-decodings), and joined under a
    /// base directory it stays there.
    fn assert_confined(p: &str) {
        let mut forms = vec![p.to_string(), p.nfkc().collect::<String>()];
        let mut stage = p.to_string();
        while let Some(d) = percent_decode(&stage).filter(|d| *d != stage) {
            forms.push(d.clone());
            forms.push(d.nfkc().collect());
            stage = d;
        }
        for f in &forms {
            assert!(!f.is_empty() && !f.starts_with('/'), "{p:?} -> {f:?}");
            assert!(
                !f.contains('\\') && !f.chars().any(char::is_control),
                "{p:?} -> {f:?}"
            );
            for seg in f.split('/') {
                assert!(
                    !seg.is_empty() && seg != "." && seg != "..",
                    "{p:?} -> {f:?}"
                );
            }
            let base = std::path::Path::new("/base/dir");
            let joined = base.join(f);
            let mut depth = 0usize;
            for c in joined.components().skip(3) {
                match c {
                    std::path::Component::Normal(_) => depth += 1,
                    std::path::Component::CurDir => {}
                    other => panic!("{p:?} -> {f:?} has {other:?}"),
                }
            }
            assert!(depth >= 1 && joined.starts_with(base), "{p:?} -> {f:?}");
        }
        // Accepted paths are a fixpoint: parsing again changes nothing.
        assert_eq!(VPath::parse(p).map(VPath::into_string), Ok(p.to_string()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// Strings built from the characters traversals are made of.
        #[test]
        fn accepted_paths_stay_in_their_namespace(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                ".", "..", "/", "\\", "%", "2", "e", "E", "f", "F", "5", "c", "C", "a", ":",
                "%2e", "%2f", "%5c", "%25", "%c0", "%ae", "%00", "\u{0}", " ", "\u{FF0E}",
                "\u{FF0F}", "\u{FF3C}", "\u{2024}", "\u{FE52}", "\u{202E}", "e\u{301}",
                "\u{E9}", "x", "name", "\u{3000}", "\u{2215}", "\u{FF05}",
            ]), 1..12)
        ) {
            let raw: String = parts.concat();
            if let Ok(p) = VPath::parse(&raw) {
                assert_confined(p.as_str());
            }
        }

        /// Any string at all: never a panic, and anything accepted is confined.
        #[test]
        fn arbitrary_strings_never_escape(raw in "\\PC{0,40}") {
            if let Ok(p) = VPath::parse(&raw) {
                assert_confined(p.as_str());
            }
        }
    }

    #[test]
    fn nested_encodings_and_drive_letters() {
        for raw in [
            "%252e%252e%252fx",
            "%25252e%25252e/x",
            "%25%32%65%25%32%65/x",
            "C:x",
            "c:",
            "z:/x",
            "a\u{2028}b",
        ] {
            assert!(VPath::parse(raw).is_err(), "{raw:?}");
        }
        for ok in [
            "build:42/x",
            "2024-01-01T10:00:00.log",
            "a/C:x",
            "100%25",
            "50%",
        ] {
            assert!(VPath::parse(ok).is_ok(), "{ok:?}");
        }
    }
}
