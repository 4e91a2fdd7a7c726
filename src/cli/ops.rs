//! `vaultfs ls`, `stat`, `rm`, `mv`, `cp`.

use futures_util::StreamExt;

use super::{
    basename, list_all, remote_dir, resolve_file, until_interrupted, CommonArgs, ItemResult,
    Outcome, Reporter,
};
use crate::api::FileMeta;
use crate::client::{Client, ClientError, RetryPolicy};

/// Flags of `vaultfs ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Directory (prefix) to list, or one file [default: the root]
    #[arg(default_value = "")]
    pub prefix: String,
    /// Long format: size, version, modification time, SHA-256
    #[arg(short = 'l')]
    pub long: bool,
    /// Every file below the prefix, not only this level
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Entries per request to the server (at most 10000)
    #[arg(long, hide = true)]
    pub page_size: Option<usize>,
    /// Server, token, retries and output options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Flags of `vaultfs stat`.
#[derive(Debug, clap::Args)]
pub struct StatArgs {
    /// Remote paths or file ids
    #[arg(required = true, num_args = 1..)]
    pub paths: Vec<String>,
    /// Server, token, retries and output options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Flags of `vaultfs rm`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Remote paths or file ids (directories with -r)
    #[arg(required = true, num_args = 1..)]
    pub paths: Vec<String>,
    /// Remove every file under each directory
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Parallel requests
    #[arg(short = 'j', long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Server, token, retries and output options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Flags of `vaultfs mv` and `vaultfs cp`.
#[derive(Debug, clap::Args)]
pub struct MoveArgs {
    /// Remote path or file id
    pub from: String,
    /// New path; ending in `/`, the file keeps its name in that directory
    pub to: String,
    /// Replace a file at the target (otherwise 409 already_exists)
    #[arg(short = 'f', long)]
    pub overwrite: bool,
    /// Server, token, retries and output options.
    #[command(flatten)]
    pub common: CommonArgs,
}

fn long_line(f: &FileMeta) -> String {
    format!(
        "{:>12}  v{:<4} {}  {}  {}",
        f.size, f.version, f.modified_at, f.sha256, f.path
    )
}

fn entry_line(reporter: &Reporter, f: &FileMeta, long: bool) -> String {
    if reporter.json() {
        serde_json::to_string(f).unwrap_or_default()
    } else if long {
        long_line(f)
    } else {
        f.path.clone()
    }
}

fn prefix_line(reporter: &Reporter, p: &str, long: bool) -> String {
    if reporter.json() {
        serde_json::json!({ "prefix": p }).to_string()
    } else if long {
        format!("{:>12}  {:<5} {:<24}  {:<64}  {p}", "DIR", "", "", "")
    } else {
        p.to_string()
    }
}

/// `vaultfs ls`: prints the files and subdirectories under a prefix (or one file), one per line.
pub async fn ls(args: LsArgs) -> Outcome {
    let Some(client) = args.common.client_or_usage() else {
        return Outcome::Usage;
    };
    let policy = args.common.policy();
    let reporter = Reporter::new("ls", &args.common, false, false);
    let arg = args.prefix.trim_start_matches('/');
    let mut stat_missed = false;
    if !arg.is_empty() && !arg.ends_with('/') && arg != "." {
        match policy.run(|_| client.stat(arg), |_, _, _| {}).await.0 {
            Ok(meta) => {
                reporter.line(&entry_line(&reporter, &meta, args.long));
                return reporter.finish(false);
            }
            Err(ClientError::Api { status: 404, .. }) => stat_missed = true,
            Err(ClientError::Api { status: 400, .. }) => {} // not a file path; list it
            Err(e) => {
                reporter.fatal(&e, arg);
                return reporter.finish(false);
            }
        }
    }
    let prefix = remote_dir(arg);
    let mut cursor: Option<String> = None;
    let mut shown = 0u64;
    let work = async {
        loop {
            let (page, _) = policy
                .run(
                    |_| {
                        client.list_page(
                            &prefix,
                            !args.recursive,
                            cursor.as_deref(),
                            args.page_size,
                        )
                    },
                    |_, _, _| {},
                )
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    reporter.fatal(&e, &prefix);
                    return;
                }
            };
            for p in &page.prefixes {
                reporter.line(&prefix_line(&reporter, p, args.long));
                shown += 1;
            }
            for f in &page.entries {
                reporter.line(&entry_line(&reporter, f, args.long));
                shown += 1;
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        if shown == 0 && stat_missed {
            reporter.fatal(
                &ClientError::Api {
                    status: 404,
                    code: "not_found".into(),
                    message: "no such file or directory".into(),
                    retry_after: None,
                },
                arg,
            );
        }
    };
    until_interrupted(&reporter, work).await
}

/// `vaultfs stat`: prints each path's or id's metadata; one that cannot be resolved is reported as
/// an error and the rest still run.
pub async fn stat(args: StatArgs) -> Outcome {
    let Some(client) = args.common.client_or_usage() else {
        return Outcome::Usage;
    };
    let policy = args.common.policy();
    let reporter = Reporter::new("stat", &args.common, false, false);
    let work = async {
        for path in &args.paths {
            match resolve_file(&client, &policy, path).await.0 {
                Ok(meta) if reporter.json() => {
                    reporter.line(&serde_json::to_string(&meta).unwrap_or_default());
                }
                Ok(m) => reporter.line(&format!(
                    "path:         {}\nid:           {}\nsize:         {} ({})\nversion:      {}\n\
                     sha256:       {}\ncontent_type: {}\ncreated_at:   {}\nmodified_at:  {}",
                    m.path,
                    m.id,
                    m.size,
                    super::human_bytes(m.size),
                    m.version,
                    m.sha256,
                    m.content_type,
                    m.created_at,
                    m.modified_at
                )),
                Err(e) => reporter.fatal(&e, path),
            }
        }
    };
    until_interrupted(&reporter, work).await
}

/// Deletes one file; a 404 on a retry means an earlier attempt's delete landed.
async fn remove_one(client: &Client, policy: &RetryPolicy, meta: FileMeta) -> ItemResult {
    let result = ItemResult::new("rm", meta.path.clone(), "");
    let id = meta.id.as_str();
    let (r, attempts) = policy
        .run(
            |attempt| async move {
                match client.delete(id).await {
                    Err(ClientError::Api { status: 404, .. }) if attempt > 1 => Ok(()),
                    other => other,
                }
            },
            |_, _, _| {},
        )
        .await;
    match r {
        Ok(()) => result.succeeded(None, 0, attempts),
        Err(e) => result.failed(&e, attempts),
    }
}

/// `vaultfs rm`: deletes the given files (with `-r`, every file under each directory), `--jobs` at
/// a time.
pub async fn rm(args: RmArgs) -> Outcome {
    let Some(client) = args.common.client_or_usage() else {
        return Outcome::Usage;
    };
    let policy = args.common.policy();
    let reporter = Reporter::new("rm", &args.common, false, true);
    let (client, policy, reporter) = (&client, &policy, &reporter);
    let work = async {
        let mut targets = Vec::new();
        for path in &args.paths {
            let (found, _) = resolve_file(client, policy, path).await;
            match found {
                Ok(meta) => targets.push(meta),
                Err(ClientError::Api { status, .. }) if status == 404 || status == 400 => {
                    let prefix = remote_dir(path);
                    if args.recursive {
                        // One recursive delete: one transaction, one batch in the trash.
                        let item = ItemResult::new("rm", path.clone(), "");
                        match super::versions::remove_tree(client, &prefix).await {
                            Ok(done) => {
                                if let Some(batch) = &done.batch_id {
                                    eprintln!(
                                        "{prefix}: {} file(s) to the trash; restore with \
                                         `vaultfs trash restore --batch {batch}`",
                                        done.files.len()
                                    );
                                }
                                for f in done.files {
                                    let one = ItemResult::new("rm", f.path, "");
                                    reporter.result(one.succeeded(None, 0, 1));
                                }
                            }
                            Err(ClientError::Api { status: 404, .. }) => reporter.result(
                                item.failed_local("not_found", "no such file or directory"),
                            ),
                            Err(e) => reporter.result(item.failed(&e, 1)),
                        }
                        continue;
                    }
                    let under = if args.recursive {
                        list_all(client, policy, &prefix).await
                    } else {
                        policy
                            .run(
                                |_| client.list_page(&prefix, false, None, Some(1)),
                                |_, _, _| {},
                            )
                            .await
                            .0
                            .map(|p| p.entries)
                    };
                    match under {
                        Ok(files) if files.is_empty() => reporter.result(
                            ItemResult::new("rm", path.clone(), "")
                                .failed_local("not_found", "no such file or directory"),
                        ),
                        Ok(files) if args.recursive => targets.extend(files),
                        Ok(_) => {
                            reporter.result(ItemResult::new("rm", path.clone(), "").failed_local(
                                "is_a_directory",
                                "a directory; use -r to remove every file in it",
                            ))
                        }
                        Err(e) => {
                            reporter.result(ItemResult::new("rm", path.clone(), "").failed(&e, 1))
                        }
                    }
                }
                Err(e) => reporter.result(ItemResult::new("rm", path.clone(), "").failed(&e, 1)),
            }
        }
        futures_util::stream::iter(targets)
            .map(|meta| remove_one(client, policy, meta))
            .buffer_unordered(usize::from(args.jobs))
            .for_each(|r| async move { reporter.result(r) })
            .await;
    };
    until_interrupted(reporter, work).await
}

/// `mv` and `cp`.
pub async fn move_or_copy(args: MoveArgs, copy: bool) -> Outcome {
    let Some(client) = args.common.client_or_usage() else {
        return Outcome::Usage;
    };
    let policy = args.common.policy();
    let op = if copy { "cp" } else { "mv" };
    let reporter = Reporter::new(op, &args.common, false, true);
    let work = async {
        let source = match resolve_file(&client, &policy, &args.from).await {
            (Ok(m), _) => m,
            (Err(e), attempts) => {
                reporter.result(
                    ItemResult::new(op, args.from.clone(), args.to.clone()).failed(&e, attempts),
                );
                return;
            }
        };
        let to = if args.to.ends_with('/') {
            format!("{}{}", remote_dir(&args.to), basename(&source.path))
        } else {
            args.to.trim_start_matches('/').to_string()
        };
        let result = ItemResult::new(op, source.path.clone(), to.clone());
        let (client, source, to) = (&client, &source, &to);
        let (r, attempts) = policy
            .run(
                |attempt| async move {
                    let r = if copy {
                        client.copy_file(&source.id, to, args.overwrite).await
                    } else {
                        client.move_file(&source.id, to, args.overwrite).await
                    };
                    match r {
                        // A retry that finds the target taken may be finding this very
                        // operation, done before its answer was lost.
                        Err(e @ ClientError::Api { status: 409, .. }) if attempt > 1 => {
                            match client.stat(to).await {
                                Ok(m) if copy && m.sha256 == source.sha256 => Ok(m),
                                Ok(m) if !copy && m.id == source.id => Ok(m),
                                _ => Err(e),
                            }
                        }
                        other => other,
                    }
                },
                |attempt, err, delay| {
                    reporter.warn(&format!(
                        "{op} {}: {err}; retry {attempt} in {:.1} s",
                        source.path,
                        delay.as_secs_f64()
                    ))
                },
            )
            .await;
        reporter.result(match r {
            Ok(meta) => result.succeeded(Some(meta), 0, attempts),
            Err(e) => result.failed(&e, attempts),
        });
    };
    until_interrupted(&reporter, work).await
}
