//! `vaultfs download REMOTE_PATH_OR_ID [LOCAL]`.
//!
//! Each file streams into `<dest>.vaultfs-part`, hashed as it is written; only when the
//! SHA-256 matches the server's ETag is it fsynced and renamed to `<dest>`. A retry after a
//! broken connection continues where the part file ends (a Range request guarded by
//! If-Range), and `--resume` does the same for a part file an earlier run left behind.

use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::output::Progress;
use super::upload::{parse_rate, Pacer};
use super::{
    basename, list_all, remote_dir, resolve_file, until_interrupted, CommonArgs, ItemResult,
    Outcome, Reporter, TempFiles,
};
use crate::api::FileMeta;
use crate::client::{Client, ClientError, RetryPolicy};

/// Flags of `vaultfs download`.
#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// Remote file path, file id, or directory (a prefix; every file under it)
    pub remote: String,
    /// Local file or directory [default: the remote name, in the current directory]
    pub local: Option<PathBuf>,
    /// Parallel transfers
    #[arg(short = 'j', long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Continue partial downloads (`*.vaultfs-part`) left by an interrupted run, and keep
    /// them when interrupted again
    #[arg(long)]
    pub resume: bool,
    /// Bandwidth limit per transfer, bytes per second (e.g. 10MiB)
    #[arg(long, value_parser = parse_rate)]
    pub limit_rate: Option<u64>,
    /// Download this old version of a file (see `vaultfs versions`)
    #[arg(long)]
    pub version: Option<i64>,
    /// Server, token, retries and output options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Suffix of a download in progress.
pub const PART_SUFFIX: &str = ".vaultfs-part";

/// Bytes gathered before one write (and hash) on the blocking pool.
const WRITE_BATCH: usize = 1 << 20;

/// `vaultfs download`: fetches a file, or every file under a directory, `--jobs` at a time, each
/// verified by SHA-256 and renamed into place from a `*.vaultfs-part` temp file registered in
/// `temps`.
pub async fn run(args: DownloadArgs, temps: TempFiles) -> Outcome {
    if let Some(version) = args.version {
        return super::versions::download_version(&args.common, &args.remote, args.local, version)
            .await;
    }
    let Some(client) = args.common.client_or_usage() else {
        return Outcome::Usage;
    };
    let policy = args.common.policy();
    let mut reporter = Reporter::new("download", &args.common, true, true);
    let plan = match plan(&client, &policy, &args).await {
        Ok(p) => p,
        Err(e) => {
            reporter.fatal(&e, &args.remote);
            return reporter.finish(false);
        }
    };
    reporter.plan(plan.len() as u64, plan.iter().map(|(m, _)| m.size).sum());
    let reporter = &reporter;
    let (client, policy, args, temps) = (&client, &policy, &args, &temps);
    let work = futures_util::stream::iter(plan)
        .map(|(meta, dest)| download_one(client, policy, reporter, temps, meta, dest, args))
        .buffer_unordered(usize::from(args.jobs))
        .for_each(|result| async move { reporter.result(result) });
    until_interrupted(reporter, work).await
}

/// The files to fetch and where each goes.
async fn plan(
    client: &Client,
    policy: &RetryPolicy,
    args: &DownloadArgs,
) -> Result<Vec<(FileMeta, PathBuf)>, ClientError> {
    let remote = args.remote.as_str();
    let names_dir = remote.is_empty() || remote.ends_with('/') || matches!(remote, "." | "/");
    if !names_dir {
        match resolve_file(client, policy, remote).await.0 {
            Ok(meta) => {
                let name = basename(&meta.path).to_string();
                let dest = match &args.local {
                    None => PathBuf::from(&name),
                    Some(l) => {
                        let is_dir = l.as_os_str().to_string_lossy().ends_with('/')
                            || tokio::fs::metadata(l).await.is_ok_and(|m| m.is_dir());
                        if is_dir {
                            l.join(&name)
                        } else {
                            l.clone()
                        }
                    }
                };
                return Ok(vec![(meta, dest)]);
            }
            Err(ClientError::Api { status: 404, .. }) => {} // maybe a directory
            Err(e) => return Err(e),
        }
    }
    let prefix = remote_dir(remote);
    let entries = list_all(client, policy, &prefix).await?;
    if entries.is_empty() {
        return Err(ClientError::Api {
            status: 404,
            code: "not_found".into(),
            message: format!("no file or directory named {remote:?}"),
            retry_after: None,
        });
    }
    let root = match &args.local {
        Some(l) => l.clone(),
        None if prefix.is_empty() => PathBuf::from("."),
        None => PathBuf::from(basename(&prefix)),
    };
    let mut plan = Vec::with_capacity(entries.len());
    for meta in entries {
        let rel = meta.path.strip_prefix(&prefix).unwrap_or(&meta.path);
        let mut dest = root.clone();
        for seg in rel.split('/') {
            // The server's path rules already exclude these; a client trusts no one.
            if seg.is_empty() || seg == "." || seg == ".." || seg.contains('\\') {
                return Err(ClientError::Other(format!(
                    "the server listed an unsafe path: {:?}",
                    meta.path
                )));
            }
            dest.push(seg);
        }
        plan.push((meta, dest));
    }
    Ok(plan)
}

/// `dest` with [`PART_SUFFIX`] appended to its file name.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(PART_SUFFIX);
    dest.with_file_name(name)
}

/// The part file: its handle and the hash of what it holds so far.
struct Part {
    file: Option<std::fs::File>,
    hasher: Sha256,
    len: u64,
}

impl Part {
    /// Opens `path`: continuing what it holds when `resume`, else empty.
    async fn open(p: PathBuf, resume: bool) -> io::Result<Part> {
        let (file, hasher, len) = crate::blocking::run(move || {
            #[allow(clippy::disallowed_methods)] // runs on the blocking pool
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(!resume)
                .open(&p)?;
            let (hasher, len) = if resume {
                crate::services::storage::hash_to_end(&mut file)?
            } else {
                (Sha256::new(), 0)
            };
            Ok((file, hasher, len))
        })
        .await?;
        Ok(Part {
            file: Some(file),
            hasher,
            len,
        })
    }

    /// Appends `buf` and hashes it, on the blocking pool.
    async fn append(&mut self, buf: BytesMut) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("part file lost by an earlier error"))?;
        let mut hasher = std::mem::take(&mut self.hasher);
        let n = buf.len() as u64;
        let (file, hasher) = crate::blocking::run(move || {
            file.write_all(&buf)?;
            hasher.update(&buf);
            Ok((file, hasher))
        })
        .await?;
        self.file = Some(file);
        self.hasher = hasher;
        self.len += n;
        Ok(())
    }

    /// Empties the part file to start over.
    async fn reset(&mut self) -> io::Result<()> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("part file lost by an earlier error"))?;
        let file = crate::blocking::run(move || {
            file.set_len(0)?;
            file.seek(io::SeekFrom::Start(0))?;
            Ok(file)
        })
        .await?;
        self.file = Some(file);
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }

    /// Flushes to disk and returns the content's SHA-256.
    async fn finish(&mut self) -> io::Result<String> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("part file lost by an earlier error"))?;
        let hasher = std::mem::take(&mut self.hasher);
        crate::blocking::run(move || {
            #[allow(clippy::disallowed_methods)] // runs on the blocking pool
            file.sync_all()?;
            Ok(hex::encode(hasher.finalize()))
        })
        .await
    }
}

fn local_error(e: io::Error, what: &str) -> ClientError {
    ClientError::local("local_io", format!("{what}: {e}"))
}

/// One GET into `part`, from where it ends. Returns the server's ETag (the SHA-256).
async fn fetch(
    client: &Client,
    meta: &FileMeta,
    part: &mut Part,
    progress: &Progress,
    limit: Option<u64>,
) -> Result<String, ClientError> {
    let mut req = client
        .http()
        .get(client.url(&format!("/api/v1/files/{}", meta.id)));
    if part.len > 0 {
        req = req
            .header("range", format!("bytes={}-", part.len))
            .header("if-range", meta.etag());
    }
    let resp = req.send().await?;
    match resp.status().as_u16() {
        200 => {
            if part.len > 0 {
                // The content changed (If-Range did not match) or ranges are unsupported.
                part.reset()
                    .await
                    .map_err(|e| local_error(e, "cannot reset the part file"))?;
            }
        }
        206 => {
            let start = resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(part.len) {
                part.reset()
                    .await
                    .map_err(|e| local_error(e, "cannot reset the part file"))?;
                return Err(ClientError::Transport(
                    "the server answered another range; starting over".into(),
                ));
            }
        }
        416 if part.len > 0 => {
            // The part holds at least the whole file already; check it as it is, or start
            // over when it is longer than the file.
            if part.len != meta.size {
                part.reset()
                    .await
                    .map_err(|e| local_error(e, "cannot reset the part file"))?;
                return Err(ClientError::Transport(
                    "partial download longer than the file; starting over".into(),
                ));
            }
            return Ok(meta.sha256.clone());
        }
        _ => return Err(Client::api_error(resp).await),
    }
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start_matches("W/").trim_matches('"').to_string())
        .unwrap_or_else(|| meta.sha256.clone());
    progress.restart_at(part.len);
    let mut pacer = Pacer::new(limit);
    let mut stream = resp.bytes_stream();
    let mut batch = BytesMut::with_capacity(WRITE_BATCH);
    loop {
        match stream.next().await {
            Some(Ok(chunk)) => {
                let n = chunk.len() as u64;
                batch.extend_from_slice(&chunk);
                progress.inc(n);
                if batch.len() >= WRITE_BATCH {
                    let full = std::mem::replace(&mut batch, BytesMut::with_capacity(WRITE_BATCH));
                    part.append(full)
                        .await
                        .map_err(|e| local_error(e, "cannot write the part file"))?;
                }
                pacer.moved(n).await;
            }
            Some(Err(e)) => {
                // Keep what arrived; the retry continues from there.
                part.append(batch)
                    .await
                    .map_err(|e| local_error(e, "cannot write the part file"))?;
                return Err(e.into());
            }
            None => break,
        }
    }
    part.append(batch)
        .await
        .map_err(|e| local_error(e, "cannot write the part file"))?;
    Ok(etag)
}

async fn download_one(
    client: &Client,
    policy: &RetryPolicy,
    reporter: &Reporter,
    temps: &TempFiles,
    meta: FileMeta,
    dest: PathBuf,
    args: &DownloadArgs,
) -> ItemResult {
    let result = ItemResult::new("download", meta.path.clone(), dest.display().to_string());
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Err(e) = tokio::fs::create_dir_all(parent).await {
            return result.failed_local(
                "local_io",
                format!("cannot create {}: {e}", parent.display()),
            );
        }
    }
    let part_file = part_path(&dest);
    // Without --resume the part file is ours to remove when interrupted.
    if !args.resume {
        temps.add(part_file.clone());
    }
    let progress = reporter.transfer(&meta.path, meta.size);
    let outcome = transfer(client, policy, reporter, &meta, &part_file, &progress, args).await;
    let result = match outcome {
        Ok((resumed_from, attempts, note)) => match tokio::fs::rename(&part_file, &dest).await {
            Ok(()) => {
                let mut r = result.succeeded(Some(meta.clone()), meta.size, attempts);
                r.resumed_from = resumed_from.filter(|n| *n > 0);
                if let Some(n) = note {
                    r = r.with_note(n);
                }
                r
            }
            Err(e) => result.failed_local("local_io", format!("cannot rename into place: {e}")),
        },
        Err((e, attempts, keep_part)) => {
            if !keep_part {
                let _ = tokio::fs::remove_file(&part_file).await;
            }
            result.failed(&e, attempts)
        }
    };
    temps.forget(&part_file);
    result
}

/// Fetches into the part file with retries and checks the SHA-256. On failure, says whether
/// the part file is worth keeping (for `--resume`).
async fn transfer(
    client: &Client,
    policy: &RetryPolicy,
    reporter: &Reporter,
    meta: &FileMeta,
    part_file: &Path,
    progress: &Progress,
    args: &DownloadArgs,
) -> Result<(Option<u64>, u32, Option<String>), (ClientError, u32, bool)> {
    let mut part = Part::open(part_file.to_path_buf(), args.resume)
        .await
        .map_err(|e| (local_error(e, "cannot open the part file"), 0, false))?;
    let resumed_from = args.resume.then_some(part.len);
    let mut restarted = false;
    let mut attempt = 1;
    loop {
        match fetch(client, meta, &mut part, progress, args.limit_rate).await {
            Ok(etag) => {
                let sha = part
                    .finish()
                    .await
                    .map_err(|e| (local_error(e, "cannot flush the part file"), attempt, false))?;
                if sha == etag {
                    let note = restarted.then(|| {
                        "the partial download did not match the file; downloaded whole".to_string()
                    });
                    return Ok((if restarted { None } else { resumed_from }, attempt, note));
                }
                if resumed_from.is_some_and(|n| n > 0) && !restarted {
                    // The part came from another version of the file: start over once.
                    restarted = true;
                    part = Part::open(part_file.to_path_buf(), false)
                        .await
                        .map_err(|e| {
                            (local_error(e, "cannot open the part file"), attempt, false)
                        })?;
                    continue;
                }
                return Err((
                    ClientError::local(
                        "checksum_mismatch",
                        format!(
                            "downloaded content has SHA-256 {sha}, the server promised {etag}; \
                             nothing was written"
                        ),
                    ),
                    attempt,
                    false,
                ));
            }
            Err(e) if e.is_retryable() && attempt <= policy.retries => {
                let delay = policy.delay(attempt, &e);
                reporter.warn(&format!(
                    "download {}: {e}; retry {attempt} in {:.1} s (continuing at {})",
                    meta.path,
                    delay.as_secs_f64(),
                    super::human_bytes(part.len)
                ));
                tokio::time::sleep(delay).await;
                attempt += 1;
                if part.file.is_none() {
                    // A write failed mid-way: reopen and continue from what is on disk.
                    part = Part::open(part_file.to_path_buf(), true)
                        .await
                        .map_err(|e| {
                            (local_error(e, "cannot open the part file"), attempt, false)
                        })?;
                }
            }
            Err(e) => {
                let keep = args.resume && e.is_retryable();
                return Err((e, attempt, keep));
            }
        }
    }
}
