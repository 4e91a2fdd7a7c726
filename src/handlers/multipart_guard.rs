//! Bounds on what a multipart body may make the parser (multer) hold, enforced from multer's
//! own parse rather than from a second reading of the bytes.
//!
//! multer buffers a part's header block (and a preamble) until it is complete, without limit;
//! the upload route has no body limit (uploads are large), so one endless part header would
//! grow memory without end. An earlier guard looked for the boundary in the bytes itself and
//! disagreed with multer about where parts start (a quoted `boundary` parameter; a delimiter
//! not after CRLF), which switched the limits off. This one does not parse at all:
//!
//! - the boundary is taken with `multer::parse_boundary`, the parse multer itself uses;
//! - the body reaches multer through [`guard`], which hands over at most one chunk of at most
//!   [`MAX_CHUNK`] bytes at a time, and only when multer has made no progress since the last
//!   one (no part, no data). Progress is what the consumer receives from multer: every part
//!   and every data chunk is an [`Budget::progress`] event;
//! - bytes handed over since the last progress event are bytes multer holds without being
//!   able to make a part or data of them: header (or preamble, or padding) bytes. Past
//!   [`MAX_PART_HEADER_BYTES`] plus the delimiter line, the body ends with
//!   [`UploadError::PartHeaderTooLarge`].
//!
//! So multer's buffer never exceeds about `MAX_PART_HEADER_BYTES + 2 * MAX_CHUNK`, whatever
//! the body is. Parts are counted from what multer yields ([`MAX_PARTS`], in the handler).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use crate::services::upload::UploadError;

/// Largest header block of one part (filename, name, content type...). A header block that
/// starts within the chunk that ended the previous part may pass with up to [`MAX_CHUNK`]
/// more; memory stays bounded either way.
pub const MAX_PART_HEADER_BYTES: usize = 16 * 1024;
/// Most parts of any kind (plain fields included) in one body.
pub const MAX_PARTS: usize = 10_000;
/// Largest slice of the body handed to multer at once.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Progress events the consumer saw from multer, shared with the [`guard`] stream.
#[derive(Debug, Clone, Default)]
pub struct Budget(Arc<AtomicU64>);

impl Budget {
    /// multer yielded a part or a data chunk.
    pub fn progress(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn events(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The boundary of a `multipart/form-data` content type, by multer's own parse.
pub fn boundary(content_type: &str) -> Result<String, UploadError> {
    multer::parse_boundary(content_type).map_err(|e| UploadError::Multipart(e.to_string()))
}

/// `body`, handed to multer as described in the module doc.
pub fn guard<S>(body: S, boundary: &str, budget: Budget) -> Guarded<S> {
    Guarded {
        inner: Box::pin(body),
        budget,
        seen_events: 0,
        fed: 0,
        fed_at_progress: 0,
        // The delimiter line around a header block: CRLF "--" boundary CRLF ... CRLFCRLF.
        allowance: (MAX_PART_HEADER_BYTES + boundary.len() + 16) as u64,
        rest: Bytes::new(),
        just_fed: false,
        done: false,
    }
}

/// See [`guard`].
pub struct Guarded<S> {
    inner: Pin<Box<S>>,
    budget: Budget,
    seen_events: u64,
    fed: u64,
    fed_at_progress: u64,
    allowance: u64,
    /// The unhanded tail of a chunk larger than [`MAX_CHUNK`].
    rest: Bytes,
    just_fed: bool,
    done: bool,
}

impl<S> Guarded<S> {
    fn hand(&mut self, mut chunk: Bytes) -> Poll<Option<Result<Bytes, UploadError>>> {
        if chunk.len() > MAX_CHUNK {
            self.rest = chunk.split_off(MAX_CHUNK);
        }
        self.fed += chunk.len() as u64;
        self.just_fed = true;
        Poll::Ready(Some(Ok(chunk)))
    }
}

impl<S> Stream for Guarded<S>
where
    S: Stream<Item = Result<Bytes, UploadError>>,
{
    type Item = Result<Bytes, UploadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        // One chunk per read of multer's (it reads until the stream is pending), and none
        // while it may still make progress from what it holds: let it work first.
        let events = this.budget.events();
        if this.just_fed || events != this.seen_events {
            this.just_fed = false;
            if events != this.seen_events {
                this.seen_events = events;
                this.fed_at_progress = this.fed;
            }
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // multer is stuck with what it holds: header bytes, or a possible delimiter's start.
        if this.fed - this.fed_at_progress > this.allowance {
            this.done = true;
            return Poll::Ready(Some(Err(UploadError::PartHeaderTooLarge(
                MAX_PART_HEADER_BYTES,
            ))));
        }
        if !this.rest.is_empty() {
            let chunk = std::mem::take(&mut this.rest);
            return this.hand(chunk);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) if chunk.is_empty() => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(Some(Ok(chunk))) => this.hand(chunk),
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The error a multer failure stands for: a failure of the guarded body comes back as itself.
pub fn multer_error(e: multer::Error) -> UploadError {
    match e {
        multer::Error::StreamReadFailed(inner) => match inner.downcast::<UploadError>() {
            Ok(e) => *e,
            Err(other) => UploadError::Read(other.to_string()),
        },
        multer::Error::StreamSizeExceeded { limit } => UploadError::TooLarge { limit },
        other => UploadError::Multipart(other.to_string()),
    }
}

/// A part's data as a stream for the upload pipeline; every chunk is a progress event.
pub fn part_stream(
    field: multer::Field<'static>,
    budget: Budget,
) -> impl Stream<Item = Result<Bytes, UploadError>> + Send {
    use futures_util::StreamExt;
    field.map(move |item| {
        budget.progress();
        item.map_err(multer_error)
    })
}

/// Reads a part that is not stored (a plain form field) to its end.
pub async fn skip_part(field: multer::Field<'static>, budget: Budget) -> Result<(), UploadError> {
    use futures_util::StreamExt;
    let mut part = std::pin::pin!(part_stream(field, budget));
    while let Some(chunk) = part.next().await {
        chunk?;
    }
    Ok(())
}

/// The multer parser over a guarded body.
pub fn parser<S>(body: S, boundary: String, budget: Budget) -> multer::Multipart<'static>
where
    S: Stream<Item = Result<Bytes, UploadError>> + Send + 'static,
{
    let guarded = guard(body, &boundary, budget);
    multer::Multipart::new(guarded, boundary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// Parses `body` in `chunk`-byte pieces the way the handler does; the outcome and the
    /// file parts' data.
    async fn parse(body: &[u8], chunk: usize) -> Result<Vec<Vec<u8>>, UploadError> {
        let pieces: Vec<Result<Bytes, UploadError>> = body
            .chunks(chunk.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let budget = Budget::default();
        let mut mp = parser(
            futures_util::stream::iter(pieces),
            "XyZ".to_string(),
            budget.clone(),
        );
        let mut files = Vec::new();
        while let Some(field) = mp.next_field().await.map_err(multer_error)? {
            budget.progress();
            let mut data = Vec::new();
            let mut part = std::pin::pin!(part_stream(field, budget.clone()));
            while let Some(c) = part.next().await {
                data.extend_from_slice(&c?);
            }
            files.push(data);
        }
        Ok(files)
    }

    #[tokio::test]
    async fn ordinary_bodies_pass_in_any_chunking() {
        let mut body = Vec::new();
        for i in 0..20 {
            body.extend_from_slice(
                b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a",
            );
            body.extend_from_slice(i.to_string().as_bytes());
            body.extend_from_slice(b"\"\r\n\r\n");
            body.extend_from_slice(&vec![b'-'; 70_000]); // data that looks like dashes
            body.extend_from_slice(b"--XyZ--"); // not a delimiter: not after CRLF
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body.extend_from_slice(&vec![b'e'; 100_000]); // an epilogue is not a header
        for chunk in [1, 7, 4096, 1 << 20] {
            let files = parse(&body, chunk).await.unwrap();
            assert_eq!(files.len(), 20, "chunk {chunk}");
            assert!(files.iter().all(|f| f.len() == 70_007), "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn endless_header_is_stopped() {
        let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"".to_vec();
        body.extend_from_slice(&vec![b'n'; 4 * MAX_PART_HEADER_BYTES]);
        for chunk in [5, 1000, 1 << 20] {
            let e = parse(&body, chunk).await.unwrap_err();
            assert!(matches!(e, UploadError::PartHeaderTooLarge(_)), "{e:?}");
        }
        // After a `--XyZ--` inside file data (not a delimiter for multer), then a real one.
        let mut body =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\nab--XyZ--\r\n--XyZ\r\nContent-Disposition: form-data; name=\""
                .to_vec();
        body.extend_from_slice(&vec![b'n'; 4 * MAX_PART_HEADER_BYTES + 3 * MAX_CHUNK]);
        for chunk in [5, 1000, 1 << 20] {
            let e = parse(&body, chunk).await.unwrap_err();
            assert!(matches!(e, UploadError::PartHeaderTooLarge(_)), "{e:?}");
        }
    }

    #[test]
    fn boundary_is_multers() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").unwrap(),
            "abc"
        );
        assert_eq!(
            boundary("multipart/form-data; x=\"; boundary=fake\"; boundary=B").unwrap(),
            "B"
        );
        assert!(boundary("multipart/form-data").is_err());
    }
}
