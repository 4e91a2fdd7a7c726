//! Any string: `VPath::parse` never panics, and whatever it accepts is confined (no `.`/`..`
//! or empty segment, not absolute, no backslash or control character, in its NFKC form and
//! after any number of percent-decodings) and a fixpoint of parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultfs::paths::{validate_prefix, VPath};

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = ((b[i + 1] as char).to_digit(16), (b[i + 2] as char).to_digit(16)) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn confined(f: &str) {
    assert!(!f.is_empty() && !f.starts_with('/'), "{f:?}");
    assert!(!f.contains('\\') && !f.chars().any(char::is_control), "{f:?}");
    for seg in f.split('/') {
        assert!(!seg.is_empty() && seg != "." && seg != "..", "{f:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let _ = validate_prefix(raw);
    let Ok(p) = VPath::parse(raw) else {
        return;
    };
    let mut stage = p.as_str().to_string();
    confined(&stage);
    while let Some(d) = decode(&stage).filter(|d| *d != stage) {
        confined(&d);
        stage = d;
    }
    assert_eq!(VPath::parse(p.as_str()).map(VPath::into_string), Ok(p.as_str().to_string()));
});
