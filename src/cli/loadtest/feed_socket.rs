//! A load-test subscriber's WebSocket: the client handshake and the reading of the server's
//! frames over a plain stream, with tungstenite's frame header parser and frame encoder.
//!
//! The tool runs 10,000 of these next to the server it measures, on the same cores, so what
//! one delivered frame costs the tool is taken from the server. `tokio-tungstenite` costs
//! more per frame than the feed needs: its read buffer is zero-filled before every read
//! attempt, each frame's payload is split off into a message of its own, and every poll
//! registers the task's waker twice (read and write). Here one buffer is read into without
//! filling it, the frames in it are parsed in place (a subscriber that fell behind gets many
//! per read), and a frame's payload is lent to the caller until the next read. What a
//! subscriber checks does not change: every frame is a complete WebSocket message, in order.

use std::io::Cursor;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

/// Bytes read at most per read (and the buffer's starting size): the feed's frames are a few
/// hundred bytes.
const READ_CHUNK: usize = 4 * 1024;
/// Longest handshake response accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest message accepted (the server's events are far smaller).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Why the feed socket failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FeedError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// What the server sent: a complete text or binary message (lent until the next call), or
/// its close frame (code, reason).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Close(Option<(u16, String)>),
}

/// One client WebSocket over `S` (a TCP stream in the tool).
pub(crate) struct FeedSocket<S> {
    stream: S,
    /// Read from the stream, not yet consumed; starts with a whole frame when one is lent.
    buf: BytesMut,
    /// Bytes at the front of `buf` that the frame lent last time occupies.
    lent: usize,
    /// A fragmented message being put together (the server sends none, but may).
    partial: Option<(bool, Vec<u8>)>,
}

/// A header parsed from the front of the buffer: what it says and where its payload is.
struct Parsed {
    is_final: bool,
    opcode: OpCode,
    head: usize,
    total: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> FeedSocket<S> {
    /// The client handshake for `path_and_query` on `host` (the `Host` header) over `stream`.
    pub(crate) async fn handshake(
        mut stream: S,
        host: &str,
        path_and_query: &str,
    ) -> Result<Self, FeedError> {
        let key = generate_key();
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buf.reserve(READ_CHUNK);
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(FeedError::Handshake(
                    "connection closed before the response".into(),
                ));
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let parsed = response
                .parse(&buf)
                .map_err(|e| FeedError::Handshake(format!("bad response: {e}")))?;
            let httparse::Status::Complete(head) = parsed else {
                if buf.len() > MAX_RESPONSE_HEAD {
                    return Err(FeedError::Handshake("response head too long".into()));
                }
                continue;
            };
            if response.code != Some(101) {
                return Err(FeedError::Handshake(format!(
                    "HTTP {} instead of 101 Switching Protocols",
                    response.code.unwrap_or(0)
                )));
            }
            let accept = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                .map(|h| h.value);
            if accept != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
                return Err(FeedError::Handshake(
                    "missing or wrong Sec-WebSocket-Accept".into(),
                ));
            }
            // What follows the head is the first frames.
            buf.advance(head);
            return Ok(FeedSocket {
                stream,
                buf,
                lent: 0,
                partial: None,
            });
        }
    }

    /// The next message or close frame; `None` once the stream ends. Pings are answered
    /// (pong) and pongs skipped on the way.
    pub(crate) async fn next(&mut self) -> Result<Option<Received<'_>>, FeedError> {
        loop {
            self.buf.advance(std::mem::take(&mut self.lent));
            let Some(frame) = self.next_frame().await? else {
                return Ok(None);
            };
            let Parsed {
                is_final,
                opcode,
                head,
                total,
            } = frame;
            match opcode {
                OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                    if self.partial.is_some() {
                        return Err(FeedError::Protocol(
                            "a new message inside a fragmented one".into(),
                        ));
                    }
                    let text = matches!(data, Data::Text);
                    if !is_final {
                        self.partial = Some((text, self.buf[head..total].to_vec()));
                        self.lent = total;
                        continue;
                    }
                    self.lent = total;
                    let payload = &self.buf[head..total];
                    return Ok(Some(if text {
                        Received::Text(payload)
                    } else {
                        Received::Binary(payload)
                    }));
                }
                OpCode::Data(Data::Continue) => {
                    let Some((text, mut message)) = self.partial.take() else {
                        return Err(FeedError::Protocol("a continuation of nothing".into()));
                    };
                    message.extend_from_slice(&self.buf[head..total]);
                    self.lent = total;
                    if message.len() > MAX_MESSAGE {
                        return Err(FeedError::Protocol("message too long".into()));
                    }
                    if !is_final {
                        self.partial = Some((text, message));
                        continue;
                    }
                    // Rare: the message is put in place of the frames it was made of.
                    self.buf.advance(std::mem::take(&mut self.lent));
                    let rest = self.buf.split();
                    self.buf.extend_from_slice(&message);
                    self.buf.extend_from_slice(&rest);
                    self.lent = message.len();
                    let payload = &self.buf[..message.len()];
                    return Ok(Some(if text {
                        Received::Text(payload)
                    } else {
                        Received::Binary(payload)
                    }));
                }
                OpCode::Control(Control::Ping) => {
                    let mut pong = Frame::pong(self.buf[head..total].to_vec());
                    let mask = uuid::Uuid::new_v4();
                    let mut key = [0u8; 4];
                    key.copy_from_slice(&mask.as_bytes()[..4]);
                    pong.header_mut().mask = Some(key);
                    let mut out = Vec::with_capacity(total - head + 6);
                    pong.format(&mut out)
                        .map_err(|e| FeedError::Protocol(format!("cannot encode a pong: {e}")))?;
                    self.lent = total;
                    self.stream.write_all(&out).await?;
                    self.stream.flush().await?;
                }
                OpCode::Control(Control::Pong) => self.lent = total,
                OpCode::Control(Control::Close) => {
                    let payload = &self.buf[head..total];
                    let close = (payload.len() >= 2).then(|| {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        (code, String::from_utf8_lossy(&payload[2..]).into_owned())
                    });
                    self.lent = total;
                    return Ok(Some(Received::Close(close)));
                }
                other => {
                    return Err(FeedError::Protocol(format!("unexpected opcode {other}")));
                }
            }
        }
    }

    /// Reads until the buffer starts with a whole frame; `None` if the stream ends first.
    async fn next_frame(&mut self) -> Result<Option<Parsed>, FeedError> {
        loop {
            let mut cursor = Cursor::new(&self.buf[..]);
            let header = FrameHeader::parse(&mut cursor)
                .map_err(|e| FeedError::Protocol(format!("bad frame header: {e}")))?;
            if let Some((header, len)) = header {
                if header.mask.is_some() {
                    return Err(FeedError::Protocol("the server masked a frame".into()));
                }
                let head = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
                let total = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= MAX_MESSAGE)
                    .and_then(|l| l.checked_add(head))
                    .ok_or_else(|| FeedError::Protocol(format!("frame of {len} bytes")))?;
                if self.buf.len() >= total {
                    return Ok(Some(Parsed {
                        is_final: header.is_final,
                        opcode: header.opcode,
                        head,
                        total,
                    }));
                }
                self.buf.reserve(total - self.buf.len());
            }
            self.buf.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, DuplexStream};

    /// A server frame (unmasked) with this first byte and payload.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    /// Answers the handshake on `server`, then writes `after` with it (same write).
    async fn accept(server: &mut DuplexStream, after: &[u8]) {
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            server.read_exact(&mut byte).await.unwrap();
            request.push(byte[0]);
        }
        let text = String::from_utf8(request).unwrap();
        assert!(
            text.starts_with("GET /api/v1/sync?since=3 HTTP/1.1\r\n"),
            "{text}"
        );
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let mut response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
        .into_bytes();
        response.extend_from_slice(after);
        server.write_all(&response).await.unwrap();
    }

    async fn connect(after: Vec<u8>) -> (FeedSocket<DuplexStream>, DuplexStream) {
        let (client, mut server) = duplex(1 << 20);
        let accepting = tokio::spawn(async move {
            accept(&mut server, &after).await;
            server
        });
        let ws = FeedSocket::handshake(client, "h:1", "/api/v1/sync?since=3")
            .await
            .unwrap();
        (ws, accepting.await.unwrap())
    }

    #[tokio::test]
    async fn frames_in_the_handshake_read_and_split_across_reads_arrive_whole_and_in_order() {
        let first = frame(0x81, br#"{"kind":"hello"}"#);
        let (mut ws, mut server) = connect(first).await;
        assert_eq!(
            ws.next().await.unwrap(),
            Some(Received::Text(br#"{"kind":"hello"}"#))
        );
        // Two frames in one write, then one (with a 16-bit length) byte by byte.
        let mut two = frame(0x81, b"one");
        two.extend(frame(0x82, b"two"));
        server.write_all(&two).await.unwrap();
        assert_eq!(ws.next().await.unwrap(), Some(Received::Text(b"one")));
        assert_eq!(ws.next().await.unwrap(), Some(Received::Binary(b"two")));
        let long = vec![b'x'; 300];
        let bytes = frame(0x81, &long);
        let writer = tokio::spawn(async move {
            for b in bytes {
                server.write_all(&[b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            server
        });
        assert_eq!(ws.next().await.unwrap(), Some(Received::Text(&long[..])));
        drop(writer.await.unwrap());
        assert_eq!(ws.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn pings_get_a_masked_pong_and_fragments_and_close_are_read() {
        let (mut ws, mut server) = connect(Vec::new()).await;
        let mut bytes = frame(0x89, b"hb"); // ping
        bytes.extend(frame(0x01, b"fra")); // text, not final
        bytes.extend(frame(0x8a, b"")); // a pong between fragments
        bytes.extend(frame(0x80, b"gment")); // continuation, final
        bytes.extend(frame(0x81, b"after"));
        bytes.extend(frame(0x88, b"\x03\xe9bye")); // close 1001
        server.write_all(&bytes).await.unwrap();
        assert_eq!(ws.next().await.unwrap(), Some(Received::Text(b"fragment")));
        assert_eq!(ws.next().await.unwrap(), Some(Received::Text(b"after")));
        assert_eq!(
            ws.next().await.unwrap(),
            Some(Received::Close(Some((1001, "bye".into()))))
        );
        // The pong: final, opcode 0xA, masked, payload "hb" under the mask.
        let mut pong = [0u8; 8];
        server.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong[0], 0x8a);
        assert_eq!(pong[1], 0x80 | 2);
        let mask = [pong[2], pong[3], pong[4], pong[5]];
        assert_eq!([pong[6] ^ mask[0], pong[7] ^ mask[1]], *b"hb");
    }

    #[tokio::test]
    async fn a_masked_server_frame_and_a_wrong_accept_key_are_refused() {
        let (mut ws, mut server) = connect(Vec::new()).await;
        server
            .write_all(&[0x81, 0x82, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2])
            .await
            .unwrap();
        assert!(matches!(ws.next().await, Err(FeedError::Protocol(_))));

        let (client, mut server) = duplex(1 << 16);
        let answering = tokio::spawn(async move {
            let mut request = vec![0u8; 4096];
            let _ = server.read(&mut request).await.unwrap();
            server
                .write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n",
                )
                .await
                .unwrap();
            server
        });
        let refused = FeedSocket::handshake(client, "h:1", "/").await;
        assert!(matches!(refused, Err(FeedError::Handshake(_))));
        drop(answering.await.unwrap());

        let (client, mut server) = duplex(1 << 16);
        let answering = tokio::spawn(async move {
            let mut request = vec![0u8; 4096];
            let _ = server.read(&mut request).await.unwrap();
            server
                .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            server
        });
        let refused = FeedSocket::handshake(client, "h:1", "/").await;
        assert!(matches!(refused, Err(FeedError::Handshake(m)) if m.contains("403")));
        drop(answering.await.unwrap());
    }
}
