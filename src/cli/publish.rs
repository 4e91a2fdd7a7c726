//! `vaultfs publish LOCAL_DIR REMOTE_PREFIX` (a tree as one commit, issue 21) and
//! `vaultfs lease run PATH -- COMMAND` (a command under a lease, with its fence exported).
//!
//! publish: the idempotency key is derived from the server, the local directory, the
//! prefix, `--replace` and the tree (paths, sizes, modification times), so a run killed
//! halfway and started again with the same arguments gets the same commit back and skips
//! files already staged with the same SHA-256. The finish carries the whole tree as
//! `expect`. Nothing is visible before it.
//!
//! lease run: takes the lease (waiting up to `--wait` while another holder has it), runs
//! COMMAND with `VAULTFS_FENCE` and `VAULTFS_LEASE`, renews every third of the ttl, sends
//! COMMAND SIGTERM when a renewal fails, releases at the end. Exit status: COMMAND's, or
//! 75 when the lease could not be taken or was lost.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::Digest;

use super::CommonArgs;
use crate::client::{Client, ClientError};

/// Exit status when the lease could not be taken or was lost (EX_TEMPFAIL).
pub const EXIT_LEASE: u8 = 75;

/// Flags of `vaultfs publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The directory to publish
    pub local: PathBuf,
    /// Where its files land: REMOTE_PREFIX + their path relative to LOCAL_DIR
    pub remote: String,
    /// Delete the files under REMOTE_PREFIX that are not in the tree (to the trash)
    #[arg(long)]
    pub replace: bool,
    /// Uploads at once
    #[arg(short = 'j', long, default_value_t = 8)]
    pub jobs: usize,
    /// Server, token, retries and output options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Flags of `vaultfs lease`.
#[derive(Debug, clap::Args)]
pub struct LeaseArgs {
    /// The lease subcommand to run (only `run` so far).
    #[command(subcommand)]
    pub command: LeaseCommand,
}

/// The subcommands of `vaultfs lease`.
#[derive(Debug, clap::Subcommand)]
pub enum LeaseCommand {
    /// Run COMMAND while holding the lease on PATH (a file, or a prefix ending in /)
    Run {
        /// The file, or a prefix ending in /, to hold the lease on
        path: String,
        /// The lease's ttl; renewed every third of it
        #[arg(long, default_value = "30s")]
        ttl: String,
        /// How long to wait while another holder has the lease
        #[arg(long, default_value = "0s")]
        wait: String,
        /// The command and its arguments (after --)
        #[arg(last = true, required = true)]
        command: Vec<String>,
        /// Server, token, retries and output options.
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// One local file of the tree.
struct Local {
    remote: String,
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
}

async fn walk(root: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = dirs.pop() {
        let mut entries = tokio::fs::read_dir(&dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel_path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type().await?;
            if kind.is_dir() {
                dirs.push((entry.path(), rel_path));
            } else if kind.is_file() {
                out.push((rel_path, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

async fn tree(root: &Path, prefix: &str) -> std::io::Result<Vec<Local>> {
    let mut files = Vec::new();
    for (rel, path) in walk(root).await? {
        let meta = tokio::fs::metadata(&path).await?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        files.push(Local {
            remote: format!("{prefix}{rel}"),
            path,
            size: meta.len(),
            mtime_ns,
        });
    }
    Ok(files)
}

fn idempotency_key(
    server: &str,
    root: &Path,
    prefix: &str,
    replace: bool,
    files: &[Local],
) -> String {
    let mut h = sha2::Sha256::new();
    h.update(format!(
        "{server}\n{}\n{prefix}\n{replace}\n",
        root.display()
    ));
    for f in files {
        h.update(format!("{}\t{}\t{}\n", f.remote, f.size, f.mtime_ns));
    }
    format!("publish-{}", hex::encode(h.finalize()))
}

async fn json_call(
    client: &Client,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, ClientError> {
    let mut request = client.http().request(method, client.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    if response.status() == reqwest::StatusCode::NO_CONTENT {
        return Ok(Value::Null);
    }
    Client::parse(response).await
}

/// Retried like every CLI request.
async fn call(
    common: &CommonArgs,
    client: &Client,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, ClientError> {
    let policy = common.policy();
    let (result, _) = policy
        .run(
            |_| json_call(client, method.clone(), path, body.clone()),
            |_, e, delay| eprintln!("vaultfs: {e}; retrying in {delay:?}"),
        )
        .await;
    result
}

async fn stage_one(
    common: &CommonArgs,
    client: &Client,
    commit: &str,
    file: &Local,
    sha: &str,
) -> Result<(), ClientError> {
    let policy = common.policy();
    let path = format!(
        "/api/v1/files/upload?path={}&commit={commit}",
        crate::api::encode_path(&file.remote)
    );
    let (result, _) = policy
        .run(
            |_| async {
                let body = tokio::fs::File::open(&file.path)
                    .await
                    .map_err(|e| ClientError::local("read_failed", e.to_string()))?;
                let stream = tokio_util::io::ReaderStream::new(body);
                let response = client
                    .http()
                    .post(client.url(&path))
                    .header("x-checksum-sha256", sha)
                    .header("content-length", file.size)
                    .body(reqwest::Body::wrap_stream(stream))
                    .send()
                    .await?;
                Client::parse::<Value>(response).await.map(|_| ())
            },
            |_, e, delay| eprintln!("vaultfs: {}: {e}; retrying in {delay:?}", file.remote),
        )
        .await;
    result
}

/// `vaultfs publish`.
pub async fn publish(args: PublishArgs) -> ExitCode {
    let Some(client) = args.common.client_or_usage() else {
        return ExitCode::from(2);
    };
    let prefix = if args.remote.is_empty() || args.remote.ends_with('/') {
        args.remote.clone()
    } else {
        format!("{}/", args.remote)
    };
    let root = tokio::fs::canonicalize(&args.local)
        .await
        .unwrap_or_else(|_| args.local.clone());
    let files = match tree(&root, &prefix).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vaultfs: cannot read {}: {e}", args.local.display());
            return ExitCode::from(2);
        }
    };
    match publish_tree(&args, &client, &root, &prefix, &files).await {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vaultfs: publish failed: {e}");
            ExitCode::from(1)
        }
    }
}

async fn publish_tree(
    args: &PublishArgs,
    client: &Client,
    root: &Path,
    prefix: &str,
    files: &[Local],
) -> Result<Value, ClientError> {
    let common = &args.common;
    let key = idempotency_key(client.base(), root, prefix, args.replace, files);
    let created = call(
        common,
        client,
        reqwest::Method::POST,
        "/api/v1/commits",
        Some(json!({"idempotency_key": key, "ttl": "1h"})),
    )
    .await?;
    if created["result"].is_object() {
        return Ok(created["result"].clone());
    }
    let id = created["id"].as_str().unwrap_or_default().to_string();
    let status = call(
        common,
        client,
        reqwest::Method::GET,
        &format!("/api/v1/commits/{id}"),
        None,
    )
    .await?;
    let staged: std::collections::HashMap<String, String> = status["files"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| {
                    Some((
                        f["path"].as_str()?.to_string(),
                        f["sha256"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let jobs = args.jobs.max(1);
    let results: Vec<Result<(String, String, bool), ClientError>> =
        futures_util::stream::iter(files.iter())
            .map(|file| {
                let staged = &staged;
                let id = &id;
                async move {
                    let (sha, _) = crate::services::storage::hash_file(file.path.clone())
                        .await
                        .map_err(|e| ClientError::local("read_failed", e.to_string()))?;
                    let skip = staged.get(&file.remote) == Some(&sha);
                    if !skip {
                        stage_one(common, client, id, file, &sha).await?;
                    }
                    Ok((file.remote.clone(), sha, skip))
                }
            })
            .buffer_unordered(jobs)
            .collect()
            .await;
    let mut expect = Vec::with_capacity(results.len());
    let mut skipped = 0;
    for r in results {
        let (path, sha, skip) = r?;
        skipped += usize::from(skip);
        expect.push(json!({"path": path, "sha256": sha}));
    }
    let mut body = json!({ "expect": expect });
    if args.replace {
        body["replace_prefix"] = json!(prefix);
    }
    let done = call(
        common,
        client,
        reqwest::Method::POST,
        &format!("/api/v1/commits/{id}/finish"),
        Some(body),
    )
    .await?;
    Ok(json!({
        "op": "publish",
        "ok": true,
        "commit": id,
        "files": files.len(),
        "already_staged": skipped,
        "seq_first": done["seq_first"],
        "seq_last": done["seq_last"],
    }))
}

/// `vaultfs lease ...`.
pub async fn lease(args: LeaseArgs) -> ExitCode {
    match args.command {
        LeaseCommand::Run {
            path,
            ttl,
            wait,
            command,
            common,
        } => lease_run(path, ttl, wait, command, common).await,
    }
}

async fn lease_run(
    path: String,
    ttl: String,
    wait: String,
    command: Vec<String>,
    common: CommonArgs,
) -> ExitCode {
    let (ttl_d, wait_d) = match (crate::config::parse_duration(&ttl), parse_wait(&wait)) {
        (Ok(t), Ok(w)) if !t.is_zero() => (t, w),
        _ => {
            eprintln!("vaultfs: --ttl and --wait must be durations like 30s (ttl above 0)");
            return ExitCode::from(2);
        }
    };
    let Some(client) = common.client_or_usage() else {
        return ExitCode::from(2);
    };
    let deadline = tokio::time::Instant::now() + wait_d;
    let lease = loop {
        let body = json!({"path": path, "ttl": ttl});
        match call(
            &common,
            &client,
            reqwest::Method::POST,
            "/api/v1/leases",
            Some(body),
        )
        .await
        {
            Ok(lease) => break lease,
            Err(e) if e.code() == "lease_held" && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                eprintln!("vaultfs: cannot take the lease on {path}: {e}");
                return ExitCode::from(EXIT_LEASE);
            }
        }
    };
    let lease_id = lease["lease_id"].as_str().unwrap_or_default().to_string();
    let fence = lease["fence"].as_i64().unwrap_or_default();
    let Some((program, rest)) = command.split_first() else {
        return ExitCode::from(2);
    };
    let mut child = match tokio::process::Command::new(program)
        .args(rest)
        .env(crate::client::FENCE_ENV, fence.to_string())
        .env("VAULTFS_LEASE", &lease_id)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vaultfs: cannot run {program}: {e}");
            let _ = release(&client, &lease_id).await;
            return ExitCode::from(127);
        }
    };
    let every = ttl_d / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut last_renewed = tokio::time::Instant::now();
    let mut lost = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = tick.tick(), if !lost => {
                let renew_path = format!("/api/v1/leases/{lease_id}/renew");
                let renew = json_call(
                    &client,
                    reqwest::Method::POST,
                    &renew_path,
                    Some(json!({"ttl": ttl})),
                );
                match tokio::time::timeout(every, renew).await {
                    Ok(Ok(_)) => last_renewed = tokio::time::Instant::now(),
                    Ok(Err(e)) if e.status().is_some() && !e.is_retryable() => {
                        eprintln!("vaultfs: the lease on {path} was lost: {e}; stopping the command");
                        lost = true;
                    }
                    other => {
                        // A passing failure: retried at the next tick while the lease lasts.
                        if last_renewed.elapsed() >= ttl_d {
                            eprintln!("vaultfs: the lease on {path} could not be renewed ({other:?}); stopping the command");
                            lost = true;
                        }
                    }
                }
                if lost {
                    terminate(&child).await;
                }
            }
        }
    };
    if !lost {
        let _ = release(&client, &lease_id).await;
    }
    if lost {
        return ExitCode::from(EXIT_LEASE);
    }
    match status {
        Ok(s) => match s.code() {
            Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
            None => {
                use std::os::unix::process::ExitStatusExt;
                ExitCode::from(
                    128u8.saturating_add(u8::try_from(s.signal().unwrap_or(0)).unwrap_or(0)),
                )
            }
        },
        Err(e) => {
            eprintln!("vaultfs: waiting for the command: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--wait`: a duration, where zero (`0s`, the default) means not waiting at all
/// (`parse_duration` refuses zero, as every other duration setting must be positive).
fn parse_wait(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if !digits.is_empty() && digits.bytes().all(|b| b == b'0') {
        // Zero of a known unit.
        return crate::config::parse_duration(&format!("1{}", &t[digits.len()..]))
            .map(|_| Duration::ZERO);
    }
    crate::config::parse_duration(t)
}

/// SIGTERM to the child (through kill(1): no signal crate for one call).
async fn terminate(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
}

async fn release(client: &Client, lease_id: &str) -> Result<(), ClientError> {
    json_call(
        client,
        reqwest::Method::DELETE,
        &format!("/api/v1/leases/{lease_id}"),
        None,
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    #[test]
    fn wait_may_be_zero() {
        use std::time::Duration;
        assert_eq!(super::parse_wait("0s"), Ok(Duration::ZERO));
        assert_eq!(super::parse_wait("0"), Ok(Duration::ZERO));
        assert_eq!(super::parse_wait("00ms"), Ok(Duration::ZERO));
        assert_eq!(super::parse_wait("10s"), Ok(Duration::from_secs(10)));
        assert!(super::parse_wait("0x").is_err());
        assert!(super::parse_wait("soon").is_err());
    }
}
