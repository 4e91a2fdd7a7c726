//! `vaultfs upload` over tus for large files: the file is cut into `--parallel-parts` partial
//! uploads sent side by side, then one final concatenation commits it. The upload URLs are
//! kept in a resume state file (`$XDG_STATE_HOME` or `~/.local/state/vaultfs/tus/`), so a
//! killed run picks up where it stopped when run again with the same arguments. Each part
//! retries with backoff, resuming from the server's offset (HEAD), and progress counts the
//! bytes the server already has as done.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine;
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::output::Progress;
use crate::api::FileMeta;
use crate::client::{Client, ClientError, RetryPolicy};

/// Read size of a part's body.
const CHUNK: usize = 256 * 1024;
/// Most bytes one PATCH carries: what a broken connection can cost at worst (the server
/// keeps what reached it, so usually far less is sent again).
pub(super) const PATCH_CHUNK: u64 = 16 << 20;

/// What a resumed run needs: the parts' upload URLs for this file, target and content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct State {
    server: String,
    remote: String,
    sha256: String,
    size: u64,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Part {
    start: u64,
    len: u64,
    /// Path of the upload URL (`/api/v1/tus/<id>`).
    url: String,
}

/// What a tus upload did.
#[derive(Debug, Clone)]
pub(super) struct TusReport {
    pub meta: FileMeta,
    /// Bytes the server already had when this run began.
    pub resumed: u64,
    /// Bytes sent more than once (after a broken connection).
    pub resent: u64,
}

fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("vaultfs/tus");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/state/vaultfs/tus")
}

fn state_file(server: &str, remote: &str, sha256: &str) -> PathBuf {
    use sha2::Digest;
    let key = sha2::Sha256::digest(format!("{server}\n{remote}\n{sha256}").as_bytes());
    state_dir().join(format!("{}.json", hex::encode(&key[..16])))
}

fn tus_error(status: u16, what: &str) -> ClientError {
    ClientError::Api {
        status,
        code: "tus".into(),
        message: format!("{what}: HTTP {status}"),
        retry_after: None,
    }
}

/// Uploads `local` (`size` bytes, SHA-256 `sha256`) to `remote` through tus.
#[allow(clippy::too_many_arguments)]
pub(super) async fn upload(
    client: &Client,
    policy: &RetryPolicy,
    local: &Path,
    remote: &str,
    size: u64,
    sha256: &str,
    parallel: u16,
    if_absent: bool,
    progress: Arc<Progress>,
    warn: &(dyn Fn(&str) + Sync),
) -> Result<TusReport, ClientError> {
    let state_path = state_file(client.base(), remote, sha256);
    let mut state = match tokio::fs::read(&state_path).await {
        Ok(bytes) => serde_json::from_slice::<State>(&bytes)
            .ok()
            .filter(|s| s.size == size && s.sha256 == sha256 && s.remote == remote),
        Err(_) => None,
    };
    if state.is_none() {
        let n = u64::from(parallel.max(1)).min(size.max(1));
        let part_len = size.div_ceil(n);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < size || parts.is_empty() {
            let len = part_len.min(size - start);
            let (created, _) = policy
                .run(|_| create_partial(client, len), |_, _, _| {})
                .await;
            parts.push(Part {
                start,
                len,
                url: created?,
            });
            start += len;
        }
        let fresh = State {
            server: client.base().to_string(),
            remote: remote.to_string(),
            sha256: sha256.to_string(),
            size,
            parts,
        };
        if let Some(dir) = state_path.parent() {
            let _ = tokio::fs::create_dir_all(dir).await;
        }
        let json = serde_json::to_vec(&fresh).map_err(|e| ClientError::Other(e.to_string()))?;
        tokio::fs::write(&state_path, json)
            .await
            .map_err(|e| ClientError::Local {
                code: "local_io".into(),
                message: format!(
                    "cannot write the resume state {}: {e}",
                    state_path.display()
                ),
            })?;
        state = Some(fresh);
    }
    let Some(state) = state else {
        return Err(ClientError::Other("no resume state".into()));
    };
    let done: Arc<Vec<AtomicU64>> =
        Arc::new(state.parts.iter().map(|_| AtomicU64::new(0)).collect());
    let resumed = AtomicU64::new(0);
    let resent = AtomicU64::new(0);
    let results = futures_util::stream::iter(state.parts.clone().into_iter().enumerate())
        .map(|(i, part): (usize, Part)| {
            let (done, progress) = (Arc::clone(&done), Arc::clone(&progress));
            let (resumed, resent) = (&resumed, &resent);
            async move {
                let first = std::sync::atomic::AtomicBool::new(true);
                // How far into the part this run's requests streamed.
                let high = Arc::new(AtomicU64::new(0));
                let (first, high) = (&first, &high);
                // The retry budget starts over whenever the server's offset moved on: a
                // connection that keeps breaking but makes progress is not a failing one.
                let mut progressed_to = u64::MAX;
                loop {
                    let (result, _) = policy
                        .run(
                            |_| {
                                let (done, progress) = (Arc::clone(&done), Arc::clone(&progress));
                                let part = part.clone();
                                async move {
                                    let offset = head(client, &part.url).await?;
                                    if first.swap(false, Ordering::Relaxed) {
                                        resumed.fetch_add(offset, Ordering::Relaxed);
                                    }
                                    let sent = high.load(Ordering::Relaxed);
                                    if offset < sent {
                                        resent.fetch_add(sent - offset, Ordering::Relaxed);
                                    }
                                    done[i].store(offset, Ordering::Relaxed);
                                    let total: u64 =
                                        done.iter().map(|d| d.load(Ordering::Relaxed)).sum();
                                    progress.restart_at(total);
                                    let mut offset = offset;
                                    while offset < part.len {
                                        high.store(offset, Ordering::Relaxed);
                                        offset =
                                            send(client, local, &part, offset, &progress, high)
                                                .await?;
                                        done[i].store(offset, Ordering::Relaxed);
                                    }
                                    Ok(())
                                }
                            },
                            |attempt, err, delay| {
                                warn(&format!(
                                    "upload {remote} part {i}: {err}; retry {attempt} in {:.1} s",
                                    delay.as_secs_f64()
                                ))
                            },
                        )
                        .await;
                    match result {
                        Err(e) if e.is_retryable() => {
                            let now = done[i].load(Ordering::Relaxed);
                            if progressed_to != u64::MAX && now <= progressed_to {
                                break Err(e);
                            }
                            progressed_to = now;
                        }
                        other => break other,
                    }
                }
            }
        })
        .buffer_unordered(usize::from(parallel.max(1)))
        .collect::<Vec<_>>()
        .await;
    for r in results {
        r?;
    }
    let (meta, _) = policy
        .run(
            |_| concatenate(client, &state, sha256, if_absent),
            |_, _, _| {},
        )
        .await;
    let meta = meta?;
    let _ = tokio::fs::remove_file(&state_path).await;
    Ok(TusReport {
        meta,
        resumed: resumed.load(Ordering::Relaxed),
        resent: resent.load(Ordering::Relaxed),
    })
}

async fn create_partial(client: &Client, len: u64) -> Result<String, ClientError> {
    let r = client
        .http()
        .post(client.url("/api/v1/tus/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-concat", "partial")
        .header("upload-length", len.to_string())
        .send()
        .await?;
    if r.status() != 201 {
        return Err(Client::api_error(r).await);
    }
    r.headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| ClientError::Other("tus creation without Location".into()))
}

async fn head(client: &Client, url: &str) -> Result<u64, ClientError> {
    let r = client
        .http()
        .head(client.url(url))
        .header("tus-resumable", "1.0.0")
        .send()
        .await?;
    if r.status() != 200 {
        let status = r.status().as_u16();
        // An expired or lost session cannot be resumed: not retryable, start over next run.
        return Err(tus_error(
            if status == 410 { 404 } else { status },
            "tus HEAD",
        ));
    }
    r.headers()
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ClientError::Other("tus HEAD without Upload-Offset".into()))
}

/// One PATCH with the rest of the part from `offset`, streamed from the file.
async fn send(
    client: &Client,
    local: &Path,
    part: &Part,
    offset: u64,
    progress: &Arc<Progress>,
    streamed: &Arc<AtomicU64>,
) -> Result<u64, ClientError> {
    let mut file = tokio::fs::File::open(local)
        .await
        .map_err(|e| ClientError::Local {
            code: "local_io".into(),
            message: format!("cannot read {}: {e}", local.display()),
        })?;
    file.seek(io::SeekFrom::Start(part.start + offset))
        .await
        .map_err(|e| ClientError::Other(e.to_string()))?;
    let left = (part.len - offset).min(PATCH_CHUNK);
    let progress = Arc::clone(progress);
    let streamed = Arc::clone(streamed);
    let reader = file.take(left);
    let body = futures_util::stream::unfold(reader, move |mut reader| {
        let (progress, streamed) = (Arc::clone(&progress), Arc::clone(&streamed));
        async move {
            let mut buf = BytesMut::with_capacity(CHUNK);
            match reader.read_buf(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    progress.inc(n as u64);
                    streamed.fetch_add(n as u64, Ordering::Relaxed);
                    Some((Ok::<_, io::Error>(buf.freeze()), reader))
                }
                Err(e) => Some((Err(e), reader)),
            }
        }
    });
    let r = client
        .http()
        .patch(client.url(&part.url))
        .header("tus-resumable", "1.0.0")
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", offset.to_string())
        .header("content-length", left.to_string())
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await?;
    match r.status().as_u16() {
        204 => r
            .headers()
            .get("upload-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::Other("tus PATCH answer without Upload-Offset".into())),
        // Someone moved the offset (a retry's old request): HEAD again.
        409 => Err(ClientError::Transport("tus offset conflict".into())),
        _ => Err(Client::api_error(r).await),
    }
}

async fn concatenate(
    client: &Client,
    state: &State,
    sha256: &str,
    if_absent: bool,
) -> Result<FileMeta, ClientError> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut metadata = format!("path {},sha256 {}", b64(&state.remote), b64(sha256));
    if if_absent {
        metadata.push_str(&format!(",if_none_match {}", b64("*")));
    }
    let urls: Vec<&str> = state.parts.iter().map(|p| p.url.as_str()).collect();
    let r = client
        .http()
        .post(client.url("/api/v1/tus/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-concat", format!("final;{}", urls.join(" ")))
        .header("upload-metadata", metadata)
        .send()
        .await?;
    if r.status() != 201 {
        return Err(Client::api_error(r).await);
    }
    client.stat(&state.remote).await
}
