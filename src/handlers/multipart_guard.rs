//! Bounds on what a multipart body may make the parser hold.
//!
//! The multipart parser (multer, under axum's `Multipart`) buffers a part's header block
//! until its blank line, without limit; the upload route has no body limit (uploads are
//! large), so one endless `Content-Disposition` would grow memory without end. This stream
//! adapter watches the body on its way to the parser: a header block over
//! [`MAX_PART_HEADER_BYTES`] or more than [`MAX_PARTS`] parts end the body with an error,
//! which the handler answers with 400.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;

/// Largest header block of one part (filename, name, content type...).
pub const MAX_PART_HEADER_BYTES: usize = 16 * 1024;
/// Most parts of any kind (plain fields included) in one body.
pub const MAX_PARTS: usize = 10_000;

/// Why the guard stopped a body (shared with the handler to pick the answer).
#[derive(Debug, Clone, Default)]
pub struct Verdict(Arc<AtomicU8>);

impl Verdict {
    pub const HEADER_TOO_LARGE: u8 = 1;
    pub const TOO_MANY_PARTS: u8 = 2;

    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, v: u8) {
        self.0.store(v, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Guard {
    /// `--boundary`.
    delimiter: Vec<u8>,
    /// Unscanned tail of the previous chunk (a pattern may span chunks).
    carry: Vec<u8>,
    in_headers: bool,
    header_len: usize,
    parts: usize,
    done: bool,
    verdict: Verdict,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(p) = haystack.get(from..)?.iter().position(|&b| b == first) {
        let at = from + p;
        if haystack.get(at..at + needle.len())? == needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

impl Guard {
    pub fn new(boundary: &str, verdict: Verdict) -> Self {
        Guard {
            delimiter: [b"--".as_slice(), boundary.as_bytes()].concat(),
            carry: Vec::new(),
            in_headers: false,
            header_len: 0,
            parts: 0,
            done: false,
            verdict,
        }
    }

    /// Scans the next chunk; `Err` once a bound is crossed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), &'static str> {
        if self.done {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let mut i = 0;
        loop {
            let rest = &buf[i..];
            if self.in_headers {
                match find(rest, b"\r\n\r\n") {
                    Some(pos) => {
                        self.header_len += pos;
                        if self.header_len > MAX_PART_HEADER_BYTES {
                            break;
                        }
                        self.in_headers = false;
                        i += pos + 4;
                    }
                    None => {
                        let tail = rest.len().min(3);
                        self.header_len += rest.len() - tail;
                        self.carry = rest[rest.len() - tail..].to_vec();
                        break;
                    }
                }
            } else {
                match find(rest, &self.delimiter) {
                    Some(pos) => {
                        if buf.len() < i + pos + self.delimiter.len() + 2 {
                            // Whether this is the closing delimiter (`--` follows) is in the
                            // next chunk: keep the delimiter and decide then.
                            self.carry = buf[i + pos..].to_vec();
                            break;
                        }
                        i += pos + self.delimiter.len();
                        if buf.get(i..i + 2) == Some(b"--".as_slice()) {
                            self.done = true; // the closing delimiter: the epilogue follows
                            return Ok(());
                        }
                        self.parts += 1;
                        if self.parts > MAX_PARTS {
                            self.verdict.set(Verdict::TOO_MANY_PARTS);
                            return Err("too many parts");
                        }
                        self.in_headers = true;
                        self.header_len = 0;
                    }
                    None => {
                        let tail = rest.len().min(self.delimiter.len() + 1);
                        self.carry = rest[rest.len() - tail..].to_vec();
                        break;
                    }
                }
            }
        }
        if self.header_len > MAX_PART_HEADER_BYTES {
            self.verdict.set(Verdict::HEADER_TOO_LARGE);
            return Err("part header too large");
        }
        Ok(())
    }
}

/// The boundary parameter of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty())
    })
}

/// `body` with the guard applied.
pub fn guard_body(
    body: axum::body::Body,
    boundary: &str,
    verdict: Verdict,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    use futures_util::StreamExt;
    let mut guard = Guard::new(boundary, verdict);
    body.into_data_stream().map(move |item| match item {
        Ok(bytes) => match guard.feed(&bytes) {
            Ok(()) => Ok(bytes),
            Err(why) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why)),
        },
        Err(e) => Err(std::io::Error::other(e)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: &[u8], chunk: usize) -> (Result<(), &'static str>, u8) {
        let verdict = Verdict::default();
        let mut g = Guard::new("XyZ", verdict.clone());
        for c in body.chunks(chunk) {
            if let Err(e) = g.feed(c) {
                return (Err(e), verdict.get());
            }
        }
        (Ok(()), verdict.get())
    }

    #[test]
    fn ordinary_bodies_pass_in_any_chunking() {
        let mut body = Vec::new();
        for i in 0..50 {
            body.extend_from_slice(
                b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a",
            );
            body.extend_from_slice(i.to_string().as_bytes());
            body.extend_from_slice(b"\"\r\n\r\n");
            body.extend_from_slice(&vec![b'-'; 70_000]); // data that looks like dashes
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body.extend_from_slice(&vec![b'e'; 100_000]); // an epilogue is not a header
        for chunk in [1, 3, 7, 64, 4096, 1 << 20] {
            assert_eq!(run(&body, chunk), (Ok(()), 0), "chunk {chunk}");
        }
    }

    #[test]
    fn endless_header_and_part_floods_are_stopped() {
        let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"".to_vec();
        body.extend_from_slice(&vec![b'n'; MAX_PART_HEADER_BYTES + 10]);
        for chunk in [5, 1000, 1 << 20] {
            assert_eq!(
                run(&body, chunk),
                (Err("part header too large"), Verdict::HEADER_TOO_LARGE)
            );
        }
        let mut body = Vec::new();
        for _ in 0..=MAX_PARTS {
            body.extend_from_slice(
                b"--XyZ\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nv\r\n",
            );
        }
        assert_eq!(
            run(&body, 4096),
            (Err("too many parts"), Verdict::TOO_MANY_PARTS)
        );
    }

    #[test]
    fn boundary_parameter() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            boundary("multipart/form-data; charset=x; BOUNDARY=\"q q\"").as_deref(),
            Some("q q")
        );
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(boundary("multipart/form-data; boundary="), None);
    }
}
