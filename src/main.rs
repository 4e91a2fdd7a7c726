//! The `vaultfs` binary: parses flags, loads configuration, and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vaultfs::cli::{self, TempFiles};
use vaultfs::config::{self, Overrides, SizeValue};

#[derive(Debug, Parser)]
#[command(
    name = "vaultfs",
    version,
    about = "Self-hosted file storage and real-time sync"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (zero configuration: 127.0.0.1:8080, ./vaultfs-data).
    Serve(Box<ServeArgs>),
    /// Upload files or directories (recursively), in parallel, checksummed, with retries.
    Upload(cli::upload::UploadArgs),
    /// Download a file (by path or id) or a directory; verified, atomic, resumable.
    Download(cli::download::DownloadArgs),
    /// List a directory (`-l` long format, `-r` recursive).
    Ls(cli::ops::LsArgs),
    /// Show a file's metadata.
    Stat(cli::ops::StatArgs),
    /// Remove files (`-r` for directories).
    Rm(cli::ops::RmArgs),
    /// Move or rename a file.
    Mv(cli::ops::MoveArgs),
    /// Copy a file (the content is stored once).
    Cp(cli::ops::MoveArgs),
    /// Print changes as JSON lines; reconnects and resumes after the last printed seq.
    Watch(WatchArgs),
    /// Check a data directory (offline, or online with --server): every blob present with its
    /// size and SHA-256, the event log consistent with the files, no orphans (exit 1 on damage).
    Fsck(FsckArgs),
    /// Create, list or revoke API tokens.
    Token(cli::admin::TokenArgs),
    /// Print a time-limited link that downloads a file without a token.
    Share(cli::admin::ShareArgs),
    /// Run the escalation's load against a server and verify it (exit 1 on any failure).
    Loadtest(LoadtestArgs),
}

#[derive(Debug, clap::Args)]
struct LoadtestArgs {
    /// Server URL
    #[arg(long, env = "VAULTFS_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent uploaders
    #[arg(long, default_value_t = 50)]
    uploaders: usize,
    /// Concurrent downloaders reading back every upload [default: uploaders/4, at least 1]
    #[arg(long)]
    downloaders: Option<usize>,
    /// Workers issuing opposite moves (a->b while b->a)
    #[arg(long, default_value_t = 4)]
    movers: usize,
    /// Sync subscribers checking the feed
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// How long to run, e.g. 30s (ignored with --count)
    #[arg(long, default_value = "30s")]
    duration: String,
    /// Run this many uploads instead of a duration
    #[arg(long)]
    count: Option<u64>,
    /// Weighted size mix
    #[arg(long, default_value = "4KiB:50,1MiB:45,64MiB:5")]
    sizes: String,
    /// Fail when no request completes for this long
    #[arg(long, default_value = "5s")]
    stall_limit: String,
    /// Also write the report as JSON to FILE (`-` for standard output)
    #[arg(long)]
    json: Option<String>,
}

#[derive(Debug, clap::Args)]
struct FsckArgs {
    /// Data directory [default: ./vaultfs-data; env VAULTFS_DATA_DIR]
    #[arg(long, env = "VAULTFS_DATA_DIR", default_value = "./vaultfs-data")]
    data_dir: PathBuf,
    /// Remove orphan blobs and leftover temp files (damaged files are only reported)
    #[arg(long)]
    repair: bool,
    /// Check through this running server (online) instead of a stopped --data-dir
    #[arg(long)]
    server: Option<String>,
    /// Bearer token for --server (needs the admin scope) [env: VAULTFS_TOKEN]
    #[arg(long, env = "VAULTFS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct WatchArgs {
    /// Server URL
    #[arg(long, env = "VAULTFS_URL", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Start after this seq (replaying what was missed); without it, from now
    #[arg(long)]
    since: Option<i64>,
    /// Only paths under this prefix
    #[arg(long, default_value = "")]
    prefix: String,
    /// Bearer token (once the server requires one)
    #[arg(long, env = "VAULTFS_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080; env VAULTFS_LISTEN]
    #[arg(long)]
    listen: Option<String>,
    /// Data directory [default: ./vaultfs-data; env VAULTFS_DATA_DIR]
    #[arg(long)]
    data_dir: Option<String>,
    /// TOML configuration file [env VAULTFS_CONFIG]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Largest accepted upload, e.g. 16GiB [env VAULTFS_MAX_UPLOAD_SIZE]
    #[arg(long)]
    max_upload_size: Option<String>,
    /// Deadline for acquiring locks, e.g. 10s [env VAULTFS_LOCK_TIMEOUT]
    #[arg(long)]
    lock_timeout: Option<String>,
    /// Uploads streaming at once; more wait for a slot [default: 64; env VAULTFS_MAX_CONCURRENT_UPLOADS]
    #[arg(long)]
    max_concurrent_uploads: Option<String>,
    /// Open connections at most; more get 503 [default: 10000; env VAULTFS_MAX_CONNECTIONS]
    #[arg(long)]
    max_connections: Option<String>,
    /// After SIGTERM, time for in-flight requests to finish [default: 30s; env VAULTFS_SHUTDOWN_GRACE]
    #[arg(long)]
    shutdown_grace: Option<String>,
    /// Serve a non-loopback address although no token exists: everyone who can reach it may
    /// do everything [env VAULTFS_INSECURE_NO_AUTH]
    #[arg(long)]
    insecure_no_auth: bool,
    /// Browser origins allowed to call the API, comma-separated [env VAULTFS_ALLOWED_ORIGINS]
    #[arg(long)]
    allowed_origins: Option<String>,
    /// Metadata in PostgreSQL: postgres://user:pass@host:port/db [env VAULTFS_METADATA_URL]
    #[arg(long)]
    metadata_url: Option<String>,
    /// Blobs in S3-compatible storage: s3://bucket[/prefix]?endpoint=URL&region=R (credentials
    /// from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) [env VAULTFS_BLOB_STORE]
    #[arg(long)]
    blob_store: Option<String>,
    /// Serve the S3-compatible API on this address, e.g. 127.0.0.1:9000 [default: off; env VAULTFS_S3_LISTEN]
    #[arg(long)]
    s3_listen: Option<String>,
    /// Base domain for virtual-host-style S3 requests [default: path-style only; env VAULTFS_S3_DOMAIN]
    #[arg(long)]
    s3_domain: Option<String>,
    /// PEM certificate chain: serve HTTPS on both listeners [env VAULTFS_TLS_CERT]
    #[arg(long)]
    tls_cert: Option<String>,
    /// PEM private key for --tls-cert [env VAULTFS_TLS_KEY]
    #[arg(long)]
    tls_key: Option<String>,
    /// Log format: text or json [env VAULTFS_LOG_FORMAT]
    #[arg(long, env = "VAULTFS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(&cli.command, Command::Serve(a) if a.log_format == "json"));
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Upload(args) => run_cli(|_| cli::upload::run(args)),
        Command::Download(args) => run_cli(|temps| cli::download::run(args, temps)),
        Command::Ls(args) => run_cli(|_| cli::ops::ls(args)),
        Command::Stat(args) => run_cli(|_| cli::ops::stat(args)),
        Command::Rm(args) => run_cli(|_| cli::ops::rm(args)),
        Command::Mv(args) => run_cli(|_| cli::ops::move_or_copy(args, false)),
        Command::Cp(args) => run_cli(|_| cli::ops::move_or_copy(args, true)),
        Command::Watch(args) => run_client(watch(args)),
        Command::Loadtest(args) => run_client(loadtest(args)),
        Command::Fsck(args) => run_client(fsck(args)),
        Command::Token(args) => run_client(cli::admin::token(args)),
        Command::Share(args) => run_client(cli::admin::share(args)),
    }
}

fn init_tracing(json: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, Registry};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: client commands print their results on stdout.
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = if json {
        Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(std::io::stderr),
        )
    } else {
        Box::new(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    // `--features console` (built with RUSTFLAGS="--cfg tokio_unstable"): tokio-console can
    // attach on 127.0.0.1:6669.
    #[cfg(feature = "console")]
    let registry = registry.with(console_subscriber::spawn());
    registry.init();
}

/// Runs a client command on a small runtime; the future returns the exit code.
fn run_client(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(fut),
        Err(e) => {
            eprintln!("vaultfs: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a file command; afterwards, with the runtime and so every in-flight write stopped,
/// removes the temp files an interrupted download left.
fn run_cli<F, Fut>(command: F) -> ExitCode
where
    F: FnOnce(TempFiles) -> Fut,
    Fut: std::future::Future<Output = cli::Outcome>,
{
    let temps = TempFiles::default();
    let fut = command(temps.clone());
    let code = run_client(async move { fut.await.exit_code() });
    for path in temps.take_all() {
        // The runtime is gone: plain blocking calls are right here.
        #[allow(clippy::disallowed_methods)]
        if std::fs::remove_file(&path).is_ok() {
            eprintln!("vaultfs: removed partial download {}", path.display());
        }
    }
    code
}

async fn fsck_online(
    server: &str,
    token: Option<String>,
    repair: bool,
) -> Result<vaultfs::fsck::FsckReport, String> {
    use vaultfs::client::{Client, ClientOptions};
    // Hashing every blob takes as long as it takes: no read timeout.
    let options = ClientOptions {
        token,
        read_timeout: None,
    };
    let client = Client::with_options(server, &options).map_err(|e| e.to_string())?;
    let url = client.url(&format!("/api/v1/admin/fsck?repair={repair}"));
    let resp = client
        .http()
        .post(url)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Client::parse(resp).await.map_err(|e| e.to_string())
}

async fn fsck(args: FsckArgs) -> ExitCode {
    let result = match &args.server {
        Some(server) => fsck_online(server, args.token.clone(), args.repair).await,
        None => vaultfs::fsck::run(&args.data_dir, args.repair)
            .await
            .map_err(|e| e.to_string()),
    };
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vaultfs fsck: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("vaultfs fsck: {e}"),
        }
    } else {
        for d in &report.damaged {
            println!("DAMAGED {}  (sha256 {}): {}", d.path, d.sha256, d.problem);
        }
        for p in &report.metadata_problems {
            println!("INCONSISTENT {} {}: {}", p.kind, p.path, p.detail);
        }
        let action = if report.repaired { "removed" } else { "found" };
        let temp = if report.online {
            "temp files not checked online".to_string()
        } else {
            format!("{} temp files {action}", report.temp_files)
        };
        println!(
            "{} files, {} blobs checked ({} bytes hashed), {} damaged, {} events checked \
             (latest seq {}), {} metadata problems, {} orphan blobs {action}, {temp}",
            report.files,
            report.blobs_checked,
            report.bytes_checked,
            report.damaged.len(),
            report.events,
            report.latest_seq,
            report.metadata_problems.len(),
            report.orphan_blobs.len(),
        );
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn loadtest(args: LoadtestArgs) -> ExitCode {
    use vaultfs::config::parse_duration;
    use vaultfs::loadtest::{parse_sizes, LoadConfig};
    let parsed = (|| -> Result<LoadConfig, String> {
        Ok(LoadConfig {
            url: args.url.clone(),
            uploaders: args.uploaders.max(1),
            downloaders: args.downloaders.unwrap_or((args.uploaders / 4).max(1)),
            movers: args.movers,
            subscribers: args.subscribers,
            duration: match args.count {
                Some(_) => None,
                None => {
                    Some(parse_duration(&args.duration).map_err(|e| format!("--duration: {e}"))?)
                }
            },
            count: args.count,
            sizes: parse_sizes(&args.sizes).map_err(|e| format!("--sizes: {e}"))?,
            stall_limit: parse_duration(&args.stall_limit)
                .map_err(|e| format!("--stall-limit: {e}"))?,
            progress: true,
        })
    })();
    let config = match parsed {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vaultfs loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match vaultfs::loadtest::run(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vaultfs loadtest: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.text());
    if let Some(target) = &args.json {
        let json = match serde_json::to_string_pretty(&report) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("vaultfs loadtest: {e}");
                return ExitCode::FAILURE;
            }
        };
        if target == "-" {
            println!("{json}");
        } else if let Err(e) = tokio::fs::write(target, json).await {
            eprintln!("vaultfs loadtest: cannot write {target}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn watch(args: WatchArgs) -> ExitCode {
    use std::io::Write;
    let options = vaultfs::client::ClientOptions {
        token: args.token.clone(),
        read_timeout: None,
    };
    let client = match vaultfs::client::Client::with_options(&args.server, &options) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vaultfs: {e}");
            return ExitCode::from(2);
        }
    };
    let mut since = args.since;
    loop {
        let printer = |event: &serde_json::Value| {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{event}").is_ok() && out.flush().is_ok()
        };
        let end = tokio::select! {
            end = vaultfs::client::watch(&client, since, &args.prefix, printer) => end,
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        };
        match end {
            vaultfs::client::WatchEnd::ResyncRequired { latest } => {
                eprintln!(
                    "vaultfs: the server no longer has events after seq {since:?}; re-list, then \
                     continuing from seq {latest}"
                );
                println!(
                    "{}",
                    serde_json::json!({"kind": "resync_required", "latest_seq": latest})
                );
                since = Some(latest);
            }
            // stdout closed (e.g. piped into `head`): done.
            vaultfs::client::WatchEnd::Stopped => return ExitCode::SUCCESS,
            vaultfs::client::WatchEnd::Disconnected(_) => {}
            vaultfs::client::WatchEnd::Refused(why) => {
                eprintln!("vaultfs: the server refused the subscription: {why}");
                return ExitCode::FAILURE;
            }
        }
    }
}

fn load_config(args: &ServeArgs) -> Result<config::Config, String> {
    let env = |k: &str| std::env::var(k).ok();
    let file_path = args
        .config
        .clone()
        .or_else(|| env("VAULTFS_CONFIG").map(PathBuf::from));
    let file = match &file_path {
        Some(path) => {
            // Runs before the runtime exists: a blocking read is fine here.
            #[allow(clippy::disallowed_methods)]
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
            Some((
                path.as_path(),
                Overrides::from_toml(&text, path).map_err(|e| e.to_string())?,
            ))
        }
        None => None,
    };
    let flags = Overrides {
        listen: args.listen.clone(),
        data_dir: args.data_dir.clone(),
        max_upload_size: args.max_upload_size.clone().map(SizeValue::Text),
        lock_timeout: args.lock_timeout.clone(),
        metadata_timeout: None,
        events_retention: None,
        events_max: None,
        max_concurrent_uploads: args.max_concurrent_uploads.clone().map(SizeValue::Text),
        max_connections: args.max_connections.clone().map(SizeValue::Text),
        shutdown_grace: args.shutdown_grace.clone(),
        insecure_no_auth: args.insecure_no_auth.then_some(true),
        allowed_origins: args.allowed_origins.clone(),
        metadata_url: args.metadata_url.clone(),
        blob_store: args.blob_store.clone(),
        s3_listen: args.s3_listen.clone(),
        s3_domain: args.s3_domain.clone(),
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
        ..Overrides::default()
    };
    config::resolve(file, &Overrides::from_env(&env), &flags).map_err(|e| e.to_string())
}

fn serve(args: ServeArgs) -> ExitCode {
    // Every connection is a descriptor: 1,000 uploads and their subscribers need more than
    // the usual soft limit of 1,024.
    if let Err(e) = rlimit::increase_nofile_limit(65_536) {
        eprintln!("vaultfs: warning: cannot raise the open-file limit: {e}");
    }
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vaultfs: {e}");
            return ExitCode::from(2);
        }
    };
    // File I/O runs on the blocking pool; 64 threads keep up with 64 admitted uploads plus
    // downloads (each holds a thread only per read or write call), and far fewer threads than
    // tokio's default 512 keep the allocator's per-thread arenas, and so RSS, small.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vaultfs: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The one place that enters the runtime.
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        vaultfs::server::run(listener, config, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vaultfs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
