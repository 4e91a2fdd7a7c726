//! The `vaultfs` binary: parses flags, loads configuration, and dispatches to the library
//! (`vaultfs::server::run` for `serve`, `vaultfs::cli` for every other command).

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
    /// List a file's versions, newest first.
    Versions(cli::versions::VersionsArgs),
    /// Make an old version of a file current again (as a new version).
    Restore(cli::versions::RestoreArgs),
    /// The trash: `ls [PREFIX]`, `restore TRASH_ID|--batch ID [--to PATH]`, `purge TRASH_ID`.
    Trash(cli::versions::TrashArgs),
    /// Move or rename a file.
    Mv(cli::ops::MoveArgs),
    /// Copy a file (the content is stored once).
    Cp(cli::ops::MoveArgs),
    /// Print changes as JSON lines; reconnects and resumes after the last printed seq.
    Watch(cli::watch::WatchArgs),
    /// Check a data directory (offline, or online with --server): every blob present with its
    /// size and SHA-256, the event log consistent with the files, no orphans (exit 1 on damage).
    Fsck(cli::fsck::FsckArgs),
    /// Create, list or revoke API tokens.
    Token(cli::admin::TokenArgs),
    /// Print a time-limited link that downloads a file without a token.
    Share(cli::admin::ShareArgs),
    /// Run the escalation's load against a server and verify it (exit 1 on any failure).
    Loadtest(cli::loadtest::LoadtestArgs),
    /// Upload a directory as one commit: all its files appear at once, or none does.
    Publish(cli::publish::PublishArgs),
    /// Leases: `run PATH [--ttl 30s] [--wait 0s] -- COMMAND ...` (exit 75: lease lost).
    Lease(cli::publish::LeaseArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080; env VAULTFS_LISTEN]
    #[arg(long)]
    listen: Option<String>,
    /// Also serve /healthz and /readyz on this address, with a connection cap of its own, so
    /// probes are answered however many connections clients hold [env VAULTFS_PROBE_LISTEN]
    #[arg(long)]
    probe_listen: Option<String>,
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
    /// Host names a loopback listener answers besides localhost, comma-separated (the
    /// DNS-rebinding check) [env VAULTFS_ALLOWED_HOSTS]
    #[arg(long)]
    allowed_hosts: Option<String>,
    /// File holding the server secret share links are signed with [default:
    /// DATA_DIR/secret.key, made at first start; or env VAULTFS_SECRET_KEY; env
    /// VAULTFS_SECRET_KEY_FILE]
    #[arg(long)]
    secret_key_file: Option<String>,
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

impl Command {
    /// Reads `--token-file` (or VAULTFS_TOKEN_FILE) into the command's token.
    fn load_token_file(&mut self) -> Result<(), String> {
        let (token, file) = match self {
            Command::Upload(a) => return a.common.load_token_file(),
            Command::Download(a) => return a.common.load_token_file(),
            Command::Ls(a) => return a.common.load_token_file(),
            Command::Stat(a) => return a.common.load_token_file(),
            Command::Rm(a) => return a.common.load_token_file(),
            Command::Mv(a) | Command::Cp(a) => return a.common.load_token_file(),
            Command::Share(a) => return a.common.load_token_file(),
            Command::Publish(a) => return a.common.load_token_file(),
            Command::Lease(a) => match &mut a.command {
                cli::publish::LeaseCommand::Run { common, .. } => return common.load_token_file(),
            },
            Command::Versions(a) => return a.common.load_token_file(),
            Command::Restore(a) => return a.common.load_token_file(),
            Command::Trash(a) => match &mut a.command {
                cli::versions::TrashCommand::Ls { common, .. }
                | cli::versions::TrashCommand::Restore { common, .. }
                | cli::versions::TrashCommand::Purge { common, .. } => {
                    return common.load_token_file()
                }
            },
            Command::Token(a) => (&mut a.token, a.token_file.as_deref()),
            Command::Fsck(a) => (&mut a.token, a.token_file.as_deref()),
            Command::Watch(a) => (&mut a.token, a.token_file.as_deref()),
            Command::Serve(_) | Command::Loadtest(_) => return Ok(()),
        };
        cli::load_token_file(token, file)
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Err(e) = cli.command.load_token_file() {
        eprintln!("vaultfs: {e}");
        return ExitCode::from(2);
    }
    init_tracing(matches!(&cli.command, Command::Serve(a) if a.log_format == "json"));
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Upload(args) => run_cli(|_| cli::upload::run(args)),
        Command::Download(args) => run_cli(|temps| cli::download::run(args, temps)),
        Command::Ls(args) => run_cli(|_| cli::ops::ls(args)),
        Command::Stat(args) => run_cli(|_| cli::ops::stat(args)),
        Command::Rm(args) => run_cli(|_| cli::ops::rm(args)),
        Command::Versions(args) => run_cli(|_| cli::versions::versions(args)),
        Command::Restore(args) => run_cli(|_| cli::versions::restore(args)),
        Command::Trash(args) => run_cli(|_| cli::versions::trash(args)),
        Command::Mv(args) => run_cli(|_| cli::ops::move_or_copy(args, false)),
        Command::Cp(args) => run_cli(|_| cli::ops::move_or_copy(args, true)),
        Command::Watch(args) => run_client(cli::watch::run(args)),
        Command::Loadtest(args) => run_client(cli::loadtest::command(args)),
        Command::Fsck(args) => run_client(cli::fsck::run(args)),
        Command::Token(args) => run_client(cli::admin::token(args)),
        Command::Share(args) => run_client(cli::admin::share(args)),
        Command::Publish(args) => run_client(cli::publish::publish(args)),
        Command::Lease(args) => run_client(cli::publish::lease(args)),
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
        probe_listen: args.probe_listen.clone(),
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
        allowed_hosts: args.allowed_hosts.clone(),
        secret_key_file: args.secret_key_file.clone(),
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
