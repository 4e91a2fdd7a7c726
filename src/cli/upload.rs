//! `vaultfs upload LOCAL... REMOTE`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncReadExt;

use super::output::Progress;
use super::{remote_dir, until_interrupted, CommonArgs, ItemResult, Outcome, Reporter};
use crate::api::FileMeta;
use crate::client::{Client, ClientError, RetryPolicy};

/// Flags of `vaultfs upload`.
#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// Local files or directories (directories are uploaded recursively)
    #[arg(required = true, num_args = 1..)]
    pub local: Vec<PathBuf>,
    /// Remote path; a directory when it ends in `/` or when several or directory sources
    /// are given (a source directory `D` lands at `REMOTE/D/...`)
    pub remote: String,
    /// Parallel transfers
    #[arg(short = 'j', long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Fail instead of replacing a file that exists (`If-None-Match: *`)
    #[arg(long)]
    pub if_absent: bool,
    /// Bandwidth limit per transfer, bytes per second (e.g. 10MiB)
    #[arg(long, value_parser = parse_rate)]
    pub limit_rate: Option<u64>,
    /// Files larger than this go through tus (resumable, in parallel parts)
    #[arg(long, default_value = "64MiB", value_parser = parse_size_arg)]
    pub tus_threshold: u64,
    /// Parallel partial uploads of one tus upload
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel_parts: u16,
    /// Always one request per file (no tus, no resume state)
    #[arg(long)]
    pub no_resume: bool,
    /// Server, token, retries and output options.
    #[command(flatten)]
    pub common: CommonArgs,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    crate::config::parse_size(s)
}

pub(crate) fn parse_rate(s: &str) -> Result<u64, String> {
    match crate::config::parse_size(s) {
        Ok(0) => Err("the rate must be above 0".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// One file to send.
#[derive(Debug, Clone)]
struct Item {
    local: PathBuf,
    remote: String,
    size: u64,
}

/// Read size while streaming a file to the server.
const CHUNK: usize = 256 * 1024;

/// `vaultfs upload`: sends every file `--jobs` at a time (large ones through tus unless
/// `--no-resume`), verified by SHA-256, with retries; one result per file.
pub async fn run(args: UploadArgs) -> Outcome {
    let Some(client) = args.common.client_or_usage() else {
        return Outcome::Usage;
    };
    let policy = args.common.policy();
    let mut reporter = Reporter::new("upload", &args.common, true, true);

    let (items, problems) = plan(&args.local, &args.remote).await;
    for p in problems {
        reporter.result(p);
    }
    reporter.plan(items.len() as u64, items.iter().map(|i| i.size).sum());
    let reporter = &reporter;
    let client = &client;
    let policy = &policy;
    let work = futures_util::stream::iter(items)
        .map(|item| upload_one(client, policy, reporter, item, &args))
        .buffer_unordered(usize::from(args.jobs))
        .for_each(|result| async move { reporter.result(result) });
    until_interrupted(reporter, work).await
}

/// Expands the sources into files and their remote paths. Unreadable sources become failed
/// results.
async fn plan(locals: &[PathBuf], remote: &str) -> (Vec<Item>, Vec<ItemResult>) {
    let mut items = Vec::new();
    let mut problems = Vec::new();
    let single_file_target = locals.len() == 1
        && !remote.ends_with('/')
        && !matches!(remote, "" | "." | "/")
        && tokio::fs::metadata(&locals[0])
            .await
            .map(|m| m.is_file())
            .unwrap_or(false);
    let prefix = remote_dir(remote);
    for local in locals {
        let shown = local.display().to_string();
        let meta = match tokio::fs::metadata(local).await {
            Ok(m) => m,
            Err(e) => {
                problems.push(
                    ItemResult::new("upload", shown, "").failed_local("local_io", e.to_string()),
                );
                continue;
            }
        };
        if meta.is_file() {
            let target = if single_file_target {
                remote.trim_start_matches('/').to_string()
            } else {
                match local.file_name().and_then(|n| n.to_str()) {
                    Some(name) => format!("{prefix}{name}"),
                    None => {
                        problems.push(
                            ItemResult::new("upload", shown, "")
                                .failed_local("invalid_path", "the file name is not UTF-8"),
                        );
                        continue;
                    }
                }
            };
            items.push(Item {
                local: local.clone(),
                remote: target,
                size: meta.len(),
            });
        } else if meta.is_dir() {
            // `upload build ci/` puts build's files under ci/build/; `upload . ci/` under ci/.
            let base = match local.file_name() {
                Some(n) => match n.to_str() {
                    Some(n) => format!("{prefix}{n}/"),
                    None => {
                        problems.push(
                            ItemResult::new("upload", shown, "")
                                .failed_local("invalid_path", "the directory name is not UTF-8"),
                        );
                        continue;
                    }
                },
                None => prefix.clone(),
            };
            walk(local, &base, &mut items, &mut problems).await;
        } else {
            problems.push(
                ItemResult::new("upload", shown, "")
                    .failed_local("local_io", "not a regular file or directory"),
            );
        }
    }
    (items, problems)
}

/// Every regular file under `dir`, sorted, mapped under `base`. Symbolic links to
/// directories are not followed (no cycles); links to files are.
async fn walk(dir: &Path, base: &str, items: &mut Vec<Item>, problems: &mut Vec<ItemResult>) {
    let mut stack = vec![(dir.to_path_buf(), base.to_string())];
    while let Some((dir, base)) = stack.pop() {
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) => {
                problems.push(
                    ItemResult::new("upload", dir.display().to_string(), "")
                        .failed_local("local_io", e.to_string()),
                );
                continue;
            }
        };
        let mut found = Vec::new();
        loop {
            match entries.next_entry().await {
                Ok(Some(entry)) => found.push(entry),
                Ok(None) => break,
                Err(e) => {
                    problems.push(
                        ItemResult::new("upload", dir.display().to_string(), "")
                            .failed_local("local_io", e.to_string()),
                    );
                    break;
                }
            }
        }
        found.sort_by_key(|e| e.file_name());
        for entry in found.into_iter().rev() {
            let path = entry.path();
            let shown = path.display().to_string();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                problems.push(
                    ItemResult::new("upload", shown, "")
                        .failed_local("invalid_path", "the file name is not UTF-8"),
                );
                continue;
            };
            let Ok(kind) = entry.file_type().await else {
                continue;
            };
            if kind.is_dir() {
                stack.push((path, format!("{base}{name}/")));
            } else if kind.is_file() || kind.is_symlink() {
                match tokio::fs::metadata(&path).await {
                    Ok(m) if m.is_file() => items.push(Item {
                        local: path,
                        remote: format!("{base}{name}"),
                        size: m.len(),
                    }),
                    Ok(_) => {} // a link to a directory: not followed
                    Err(e) => problems.push(
                        ItemResult::new("upload", shown, "")
                            .failed_local("local_io", e.to_string()),
                    ),
                }
            }
        }
    }
    // `stack` pops in reverse; restore a stable, readable order.
    items.sort_by(|a, b| a.remote.cmp(&b.remote));
}

/// Paces a transfer to `limit` bytes per second.
#[derive(Debug)]
pub struct Pacer {
    limit: Option<u64>,
    start: Instant,
    moved: u64,
}

impl Pacer {
    pub(crate) fn new(limit: Option<u64>) -> Self {
        Pacer {
            limit,
            start: Instant::now(),
            moved: 0,
        }
    }

    /// A chunk size that keeps a paced transfer smooth.
    pub fn chunk(&self) -> usize {
        match self.limit {
            Some(l) => usize::try_from((l / 10).clamp(4096, CHUNK as u64)).unwrap_or(CHUNK),
            None => CHUNK,
        }
    }

    pub(crate) async fn moved(&mut self, n: u64) {
        self.moved += n;
        if let Some(limit) = self.limit {
            let due = Duration::from_secs_f64(self.moved as f64 / limit as f64);
            let elapsed = self.start.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
    }
}

/// The file as a body stream, counting progress and paced.
fn file_stream(
    file: tokio::fs::File,
    progress: Arc<Progress>,
    limit: Option<u64>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    struct State {
        file: tokio::fs::File,
        progress: Arc<Progress>,
        pacer: Pacer,
        done: bool,
    }
    let state = State {
        file,
        progress,
        pacer: Pacer::new(limit),
        done: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let mut buf = BytesMut::with_capacity(st.pacer.chunk());
        match st.file.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                st.progress.inc(n as u64);
                st.pacer.moved(n as u64).await;
                Some((Ok(buf.freeze()), st))
            }
            Err(e) => {
                st.done = true;
                Some((Err(e), st))
            }
        }
    })
}

async fn upload_one(
    client: &Client,
    policy: &RetryPolicy,
    reporter: &Reporter,
    item: Item,
    args: &UploadArgs,
) -> ItemResult {
    let result = ItemResult::new(
        "upload",
        item.local.display().to_string(),
        item.remote.clone(),
    );
    let progress = Arc::new(reporter.transfer(&item.remote, item.size));
    let (sha, size) = match crate::services::storage::hash_file(item.local.clone()).await {
        Ok(v) => v,
        Err(e) => return result.failed_local("local_io", e.to_string()),
    };
    let if_absent = args.if_absent;
    if !args.no_resume && size > args.tus_threshold {
        let warn = |line: &str| reporter.warn(line);
        let report = super::tus_upload::upload(
            client,
            policy,
            &item.local,
            &item.remote,
            size,
            &sha,
            args.parallel_parts,
            if_absent,
            Arc::clone(&progress),
            &warn,
        )
        .await;
        return match report {
            Ok(r) => result.succeeded(Some(r.meta), size, 1).with_note(format!(
                "tus: {} parts, {} bytes resumed, {} bytes re-sent",
                args.parallel_parts, r.resumed, r.resent
            )),
            Err(e) => result.failed(&e, 1),
        };
    }
    let (outcome, attempts) = policy
        .run(
            |_| {
                let progress = Arc::clone(&progress);
                let (local, remote, sha) = (&item.local, &item.remote, &sha);
                async move {
                    progress.restart_at(0);
                    let file = tokio::fs::File::open(local).await.map_err(|e| {
                        ClientError::Other(format!("cannot read {}: {e}", local.display()))
                    })?;
                    let body =
                        reqwest::Body::wrap_stream(file_stream(file, progress, args.limit_rate));
                    match client
                        .upload(remote, body, Some(size), Some(sha), if_absent)
                        .await
                    {
                        // With --if-absent, a file already there with the same content is what
                        // was wanted: it was there before, or this very upload landed on an
                        // earlier attempt whose answer was lost. Either way, one version.
                        Err(e @ ClientError::Api { status: 412, .. }) if if_absent => {
                            match policy.run(|_| client.stat(remote), |_, _, _| {}).await.0 {
                                Ok(meta) if meta.sha256 == *sha => Ok((meta, true)),
                                _ => Err(e),
                            }
                        }
                        other => other.map(|meta: FileMeta| (meta, false)),
                    }
                }
            },
            |attempt, err, delay| {
                reporter.warn(&format!(
                    "upload {}: {err}; retry {attempt} in {:.1} s",
                    item.remote,
                    delay.as_secs_f64()
                ))
            },
        )
        .await;
    match outcome {
        Ok((meta, present)) => {
            let r = result.succeeded(Some(meta), size, attempts);
            if present {
                r.with_note("already present with identical content")
            } else {
                r
            }
        }
        Err(e) => result.failed(&e, attempts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plan_maps_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        tokio::fs::create_dir_all(root.join("a/b")).await.unwrap();
        tokio::fs::write(root.join("top.txt"), b"1").await.unwrap();
        tokio::fs::write(root.join("a/b/deep.txt"), b"22")
            .await
            .unwrap();
        let single = dir.path().join("one.bin");
        tokio::fs::write(&single, b"333").await.unwrap();

        let (items, problems) = plan(std::slice::from_ref(&single), "ci/x.bin").await;
        assert!(problems.is_empty());
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].remote, "ci/x.bin");

        let (items, _) = plan(std::slice::from_ref(&single), "ci/").await;
        assert_eq!(items[0].remote, "ci/one.bin");

        let (items, problems) = plan(&[root.clone(), single.clone()], "ci").await;
        assert!(problems.is_empty());
        let remotes: Vec<_> = items.iter().map(|i| i.remote.as_str()).collect();
        assert_eq!(
            remotes,
            ["ci/tree/a/b/deep.txt", "ci/tree/top.txt", "ci/one.bin"],
            "sources in the order given, each directory sorted"
        );
        assert_eq!(items.iter().map(|i| i.size).sum::<u64>(), 6);

        let (items, problems) = plan(&[dir.path().join("missing")], "ci/").await;
        assert!(items.is_empty());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].error.as_ref().unwrap().code, "local_io");
    }
}
