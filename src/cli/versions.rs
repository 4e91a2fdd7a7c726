//! `vaultfs versions`, `restore`, `trash ls|restore|purge`, and `download --version N`.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::Digest;

use super::{resolve_file, CommonArgs, Outcome};
use crate::api::{encode_path, FileMeta, FileVersion, TrashPage, VersionPage};
use crate::client::{Client, ClientError};

/// Flags of `vaultfs versions`.
#[derive(Debug, clap::Args)]
pub struct VersionsArgs {
    /// Remote file path or id
    pub path: String,
    /// Server, token, retries and output options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Flags of `vaultfs restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Remote file path or id
    pub path: String,
    /// The version to make current again (as a new version)
    #[arg(long)]
    pub version: i64,
    /// Server, token, retries and output options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Flags of `vaultfs trash`.
#[derive(Debug, clap::Args)]
pub struct TrashArgs {
    /// The trash subcommand to run.
    #[command(subcommand)]
    pub command: TrashCommand,
}

/// The subcommands of `vaultfs trash`.
#[derive(Debug, clap::Subcommand)]
pub enum TrashCommand {
    /// List trash entries (under PREFIX)
    Ls {
        /// Only entries under this directory [default: the whole trash]
        prefix: Option<String>,
        /// Server, token, retries and output options.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Put a trashed file back (at its old path, or --to), or a whole `rm -r` with --batch
    Restore {
        /// Trash id (from `vaultfs trash ls`)
        #[arg(required_unless_present = "batch", conflicts_with = "batch")]
        trash_id: Option<String>,
        /// Restore every file of one recursive delete
        #[arg(long)]
        batch: Option<String>,
        /// Restore to this path instead
        #[arg(long, conflicts_with = "batch")]
        to: Option<String>,
        /// Move a file occupying the target to the trash
        #[arg(long)]
        overwrite: bool,
        /// Server, token, retries and output options.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Remove a trash entry for good
    Purge {
        /// Trash id (from `vaultfs trash ls`)
        trash_id: String,
        /// Server, token, retries and output options.
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// One request with a JSON answer (or none, on 204).
async fn call<T: DeserializeOwned>(
    client: &Client,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Option<T>, ClientError> {
    let mut req = client.http().request(method, client.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    if resp.status() == reqwest::StatusCode::NO_CONTENT {
        return Ok(None);
    }
    Client::parse(resp).await.map(Some)
}

fn report_err(e: &ClientError) -> Outcome {
    eprintln!("vaultfs: {e}");
    Outcome::SomeFailed
}

fn print_meta(meta: &FileMeta, json: bool) {
    if json {
        println!("{}", serde_json::to_string(meta).unwrap_or_default());
    } else {
        println!(
            "{}\tv{}\t{}\t{}",
            meta.path, meta.version, meta.size, meta.sha256
        );
    }
}

async fn resolve(
    client: &Client,
    common: &CommonArgs,
    path: &str,
) -> Result<FileMeta, ClientError> {
    resolve_file(client, &common.policy(), path.trim_start_matches('/'))
        .await
        .0
}

/// Every version of a file, newest first.
pub async fn all_versions(client: &Client, id: &str) -> Result<Vec<FileVersion>, ClientError> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("/api/v1/files/{}/versions", encode_path(id));
        if let Some(c) = &cursor {
            q.push_str(&format!("?cursor={}", encode_path(c)));
        }
        let page: Option<VersionPage> = call(client, reqwest::Method::GET, &q, None).await?;
        let Some(page) = page else { return Ok(out) };
        out.extend(page.versions);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// `vaultfs versions`: prints a file's versions, newest first (the current one marked).
pub async fn versions(args: VersionsArgs) -> Outcome {
    let Some(client) = args.common.client_or_usage() else {
        return Outcome::Usage;
    };
    let meta = match resolve(&client, &args.common, &args.path).await {
        Ok(m) => m,
        Err(e) => return report_err(&e),
    };
    match all_versions(&client, &meta.id).await {
        Ok(list) => {
            for v in list {
                if args.common.json {
                    println!("{}", serde_json::to_string(&v).unwrap_or_default());
                } else {
                    let mark = if v.current { "\tcurrent" } else { "" };
                    println!(
                        "v{}\t{}\t{}\t{}{mark}",
                        v.version, v.size, v.sha256, v.modified_at
                    );
                }
            }
            Outcome::AllSucceeded
        }
        Err(e) => report_err(&e),
    }
}

/// `vaultfs restore`: makes `--version` of a file current again, as a new version, and prints the
/// file's metadata.
pub async fn restore(args: RestoreArgs) -> Outcome {
    let Some(client) = args.common.client_or_usage() else {
        return Outcome::Usage;
    };
    let meta = match resolve(&client, &args.common, &args.path).await {
        Ok(m) => m,
        Err(e) => return report_err(&e),
    };
    let path = format!(
        "/api/v1/files/{}/versions/{}/restore",
        encode_path(&meta.id),
        args.version
    );
    match call::<FileMeta>(&client, reqwest::Method::POST, &path, None).await {
        Ok(Some(m)) => {
            print_meta(&m, args.common.json);
            Outcome::AllSucceeded
        }
        Ok(None) => Outcome::AllSucceeded,
        Err(e) => report_err(&e),
    }
}

/// `vaultfs trash`: lists, restores or purges trash entries.
pub async fn trash(args: TrashArgs) -> Outcome {
    match args.command {
        TrashCommand::Ls { prefix, common } => {
            let Some(client) = common.client_or_usage() else {
                return Outcome::Usage;
            };
            let prefix = prefix.map(|p| super::remote_dir(&p)).unwrap_or_default();
            let mut cursor: Option<String> = None;
            loop {
                let mut q = format!("/api/v1/trash?prefix={}", encode_path(&prefix));
                if let Some(c) = &cursor {
                    q.push_str(&format!("&cursor={}", encode_path(c)));
                }
                let page = match call::<TrashPage>(&client, reqwest::Method::GET, &q, None).await {
                    Ok(Some(p)) => p,
                    Ok(None) => return Outcome::AllSucceeded,
                    Err(e) => return report_err(&e),
                };
                for e in &page.entries {
                    if common.json {
                        println!("{}", serde_json::to_string(e).unwrap_or_default());
                    } else {
                        println!(
                            "{}\t{}\tv{}\t{}\t{}\t{}",
                            e.trash_id,
                            e.path,
                            e.version,
                            e.size,
                            e.deleted_at,
                            e.batch_id.as_deref().unwrap_or("-")
                        );
                    }
                }
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => return Outcome::AllSucceeded,
                }
            }
        }
        TrashCommand::Restore {
            trash_id,
            batch,
            to,
            overwrite,
            common,
        } => {
            let Some(client) = common.client_or_usage() else {
                return Outcome::Usage;
            };
            if let Some(batch) = batch {
                let path = format!("/api/v1/trash/batches/{}/restore", encode_path(&batch));
                return match call::<Value>(&client, reqwest::Method::POST, &path, None).await {
                    Ok(Some(v)) => {
                        let files: Vec<FileMeta> =
                            serde_json::from_value(v["files"].clone()).unwrap_or_default();
                        for f in &files {
                            print_meta(f, common.json);
                        }
                        Outcome::AllSucceeded
                    }
                    Ok(None) => Outcome::AllSucceeded,
                    Err(e) => report_err(&e),
                };
            }
            let Some(trash_id) = trash_id else {
                return Outcome::Usage;
            };
            let body = serde_json::json!({
                "to": to.map(|t| t.trim_start_matches('/').to_string()),
                "overwrite": overwrite,
            });
            let path = format!("/api/v1/trash/{}/restore", encode_path(&trash_id));
            match call::<FileMeta>(&client, reqwest::Method::POST, &path, Some(body)).await {
                Ok(Some(m)) => {
                    print_meta(&m, common.json);
                    Outcome::AllSucceeded
                }
                Ok(None) => Outcome::AllSucceeded,
                Err(e) => report_err(&e),
            }
        }
        TrashCommand::Purge { trash_id, common } => {
            let Some(client) = common.client_or_usage() else {
                return Outcome::Usage;
            };
            let path = format!("/api/v1/trash/{}", encode_path(&trash_id));
            match call::<Value>(&client, reqwest::Method::DELETE, &path, None).await {
                Ok(_) => Outcome::AllSucceeded,
                Err(e) => report_err(&e),
            }
        }
    }
}

/// `vaultfs rm -r DIR`: one recursive delete (one transaction, one batch id, printed so the
/// whole tree can be restored with `vaultfs trash restore --batch`).
pub async fn remove_tree(
    client: &Client,
    prefix: &str,
) -> Result<crate::api::TreeDeleted, ClientError> {
    let path = format!("/api/v1/fs/{}?recursive=true", encode_path(prefix));
    call(client, reqwest::Method::DELETE, &path, None)
        .await?
        .ok_or_else(|| ClientError::local("unexpected", "the server answered no content"))
}

/// `vaultfs download PATH --version N`: the old version's content into `local` (default:
/// the file's name), written to a temporary file, verified against its SHA-256, renamed.
pub async fn download_version(
    common: &CommonArgs,
    remote: &str,
    local: Option<PathBuf>,
    version: i64,
) -> Outcome {
    let Some(client) = common.client_or_usage() else {
        return Outcome::Usage;
    };
    let meta = match resolve(&client, common, remote).await {
        Ok(m) => m,
        Err(e) => return report_err(&e),
    };
    let target = local.unwrap_or_else(|| PathBuf::from(super::basename(&meta.path)));
    let target = if tokio::fs::metadata(&target).await.is_ok_and(|m| m.is_dir()) {
        target.join(super::basename(&meta.path))
    } else {
        target
    };
    let url = format!("/api/v1/files/{}/versions/{version}", encode_path(&meta.id));
    let resp = match client.http().get(client.url(&url)).send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => return report_err(&Client::api_error(r).await),
        Err(e) => return report_err(&e.into()),
    };
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return report_err(&e.into()),
    };
    let sha = hex::encode(sha2::Sha256::digest(&body));
    if sha != etag {
        eprintln!(
            "vaultfs: version {version} of {}: checksum mismatch",
            meta.path
        );
        return Outcome::SomeFailed;
    }
    let part = target.with_extension("vaultfs-part");
    let written = async {
        tokio::fs::write(&part, &body).await?;
        tokio::fs::rename(&part, &target).await
    };
    match written.await {
        Ok(()) => {
            if !common.quiet {
                eprintln!("{} v{version} -> {}", meta.path, target.display());
            }
            Outcome::AllSucceeded
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            eprintln!("vaultfs: {}: {e}", target.display());
            Outcome::SomeFailed
        }
    }
}
