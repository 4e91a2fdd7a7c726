//! Wiring: state, router, and [`run`], which serves on a given listener until `shutdown`
//! resolves. Tests call `run` on `127.0.0.1:0`; the binary calls it with the configured address.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::AppError;
use crate::handlers::{self, admin, files, health, list, share, sync, upload};
use crate::services::auth::{Auth, AuthError, Scope};
use crate::services::files::FileService;
use crate::services::lock_manager::LockManager;
use crate::services::metadata::{MetadataError, MetadataStore};
use crate::services::metadata_postgres::PostgresMetadata;
use crate::services::metadata_sqlite::SqliteMetadata;
use crate::services::notification::{Notifier, Retention};
use crate::services::storage::{BlobStore, StorageError};
use crate::services::ServiceError;
use crate::watchdog::StallMonitor;

/// How often the watchdog probes the runtime, and the delay it reports as a stall.
const STALL_PROBE_INTERVAL: Duration = Duration::from_millis(20);
const STALL_THRESHOLD: Duration = Duration::from_millis(100);

/// Largest JSON request body (move/copy requests).
const MAX_JSON_BODY: usize = 64 * 1024;
/// PostgreSQL connections per replica.
const METADATA_POOL: u32 = 32;
/// How often a replica on shared object storage sweeps blobs that no file references.
const REMOTE_SWEEP_EVERY: Duration = Duration::from_secs(10 * 60);

/// In a shared object store, blobs a crashed replica uploaded without committing, and those
/// whose collection failed, are found by listing the bucket: periodically, since replicas
/// come and go without a restart of the whole service.
fn spawn_periodic_sweep(files: FileService, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REMOTE_SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let swept = files.collect_unreferenced().await.map_err(|e| e.to_string());
                    let orphans = crate::fsck::sweep_orphans(&files).await.map_err(|e| e.to_string());
                    tracing::info!(?swept, ?orphans, "periodic blob sweep");
                }
                () = crate::services::notification::until_true(&mut shutdown) => return,
            }
        }
    });
}

/// Read-only SQLite connections.
const METADATA_READERS: u32 = 4;

/// Shared by every handler. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub files: FileService,
    pub config: Arc<Config>,
    /// Turns true when the server begins shutting down (sync streams close with 1001).
    pub shutdown: watch::Receiver<bool>,
    shutdown_trigger: Arc<watch::Sender<bool>>,
    /// Scheduling-delay probe of the runtime serving this state.
    pub stall: StallMonitor,
    /// True from the shutdown signal on: `/readyz` answers 503.
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// Tokens and share links.
    pub auth: Auth,
    /// Held while an online fsck runs (one at a time).
    pub fsck_slot: Arc<tokio::sync::Mutex<()>>,
    /// Holds the data directory's exclusive lock for the life of the server.
    _data_dir_lock: Arc<std::fs::File>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("authentication: {0}")]
    Auth(#[from] AuthError),
    #[error(
        "refusing to serve {addr} without authentication: it is not a loopback address and no \
         token exists. Create one first (`vaultfs token create --scope admin`), or pass \
         --insecure-no-auth to serve everyone who can reach it"
    )]
    Insecure { addr: std::net::SocketAddr },
}

impl AppState {
    /// Opens the data directory: lock file, blob store (sweeping temp files), metadata
    /// (running migrations), then collects blobs left unreferenced by a crash.
    pub async fn open(config: Config) -> Result<Self, ServerError> {
        let dir = &config.data_dir;
        let data_dir_error = |reason: String| ServerError::DataDir {
            path: dir.display().to_string(),
            reason,
        };
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| data_dir_error(format!("cannot create: {e}")))?;
        let lock_file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .await
            .map_err(|e| data_dir_error(format!("cannot open LOCK: {e}")))?
            .into_std()
            .await;
        lock_file.try_lock().map_err(|_| {
            data_dir_error("in use by another VaultFS process (LOCK is held)".to_string())
        })?;

        let storage = match &config.blob_store {
            Some(url) => BlobStore::open_s3(dir, url).await?,
            None => BlobStore::open(dir).await?,
        };
        crate::metrics::install();
        let mut postgres = None;
        let inner: Arc<dyn MetadataStore> = match &config.metadata_url {
            Some(url) => {
                let pg =
                    PostgresMetadata::open(url, config.metadata_timeout, METADATA_POOL).await?;
                postgres = Some(pg.clone());
                Arc::new(pg)
            }
            None => Arc::new(
                SqliteMetadata::open(dir, config.metadata_timeout, METADATA_READERS).await?,
            ),
        };
        let metadata = crate::metrics::InstrumentedMetadata::wrap(inner);
        let locks = LockManager::new(config.lock_timeout);
        let (shutdown_trigger, shutdown) = watch::channel(false);
        let retention = Retention {
            max_age: config.events_retention,
            max_events: config.events_max,
            prune_every: config.events_prune_interval,
        };
        let notifier = Notifier::start(Arc::clone(&metadata), retention, shutdown.clone()).await?;
        let gate = crate::services::files::UploadGate::new(
            config.max_concurrent_uploads,
            config.max_queued_uploads,
            config.upload_queue_timeout,
        );
        let files = FileService::new(
            storage,
            metadata,
            locks,
            notifier,
            config.max_upload_size,
            gate,
        );
        if let Some(pg) = &postgres {
            // Other replicas' commits: their NOTIFY pokes our notifier, which reads the log.
            pg.spawn_listener(files.notifier().clone(), shutdown.clone());
        }
        if files.storage().is_remote() {
            spawn_periodic_sweep(files.clone(), shutdown.clone());
        }
        let collected = files.collect_unreferenced().await?;
        if collected > 0 {
            tracing::info!(collected, "collected unreferenced blobs");
        }
        // Files whose blob is gone (a disk fault, a hand-deleted file): found in the
        // background, reported loudly, never "repaired" into other content.
        let files_for_check = files.clone();
        metrics::gauge!("vaultfs_startup_check_running").set(1.0);
        tokio::spawn(async move {
            let meta = Arc::clone(files_for_check.metadata());
            match crate::fsck::missing_blobs(meta.as_ref(), files_for_check.storage()).await {
                Ok(damaged) => {
                    metrics::gauge!("vaultfs_blobs_missing").set(damaged.len() as f64);
                    for d in &damaged {
                        tracing::error!(path = %d.path, sha256 = %d.sha256, problem = %d.problem,
                            "file content is damaged; run `vaultfs fsck` for details");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "start-up blob check failed"),
            }
            match crate::fsck::sweep_orphans(&files_for_check).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(collected = n, "collected blobs left without metadata"),
                Err(e) => tracing::warn!(error = %e, "start-up orphan sweep failed"),
            }
            metrics::gauge!("vaultfs_startup_check_running").set(0.0);
        });
        let auth = Auth::open(Arc::clone(files.metadata())).await?;
        if let Some(token) = &config.bootstrap_token {
            if auth.bootstrap(token).await? {
                tracing::info!("installed the bootstrap admin token (VAULTFS_BOOTSTRAP_TOKEN)");
            }
        }
        auth.spawn_reloader(shutdown.clone());
        let stall = StallMonitor::start(
            tokio::runtime::Handle::current(),
            STALL_PROBE_INTERVAL,
            STALL_THRESHOLD,
        )?;
        Ok(AppState {
            files,
            config: Arc::new(config),
            stall,
            shutdown,
            shutdown_trigger: Arc::new(shutdown_trigger),
            draining: Arc::default(),
            auth,
            fsck_slot: Arc::default(),
            _data_dir_lock: Arc::new(lock_file),
        })
    }

    /// Readiness turns 503 from now on (shutdown has begun).
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts shutting down: sync streams close with 1001, long-polls answer, the event hub
    /// and pruner stop.
    pub fn begin_shutdown(&self) {
        self.start_draining();
        self.shutdown_trigger.send_replace(true);
    }

    pub async fn close(&self) {
        self.begin_shutdown();
        self.files.metadata().close().await;
    }
}

/// Who may call a route. Every route has exactly one rule, in [`routes`]; the authorization
/// layer refuses (403) a route it finds no rule for, so a route added elsewhere is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials: the probes.
    Open,
    /// A token with this scope (or, on an open server, nobody's token).
    Scope(Scope),
    /// A share link's signature, checked by the handler.
    Signed,
}

/// One route's authorization rule, as listed by [`route_rules`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

type Route = (&'static str, Method, Access, MethodRouter<AppState>);

/// Every route, with its method and rule. The router is built from this list only.
fn routes() -> Vec<Route> {
    use Access::{Open, Scope as S, Signed};
    use Scope::{Admin, Read, Write};
    vec![
        ("/healthz", Method::GET, Open, get(health::healthz)),
        ("/readyz", Method::GET, Open, get(health::readyz)),
        (
            "/metrics",
            Method::GET,
            S(Admin),
            get(crate::metrics::render),
        ),
        (
            "/api/v1/files/upload",
            Method::POST,
            S(Write),
            post(upload::upload)
                .layer(DefaultBodyLimit::disable())
                .layer(axum::middleware::map_response(upload::close_after_error)),
        ),
        (
            "/api/v1/files/{id}",
            Method::GET,
            S(Read),
            get(files::get_content),
        ),
        (
            "/api/v1/files/{id}",
            Method::DELETE,
            S(Write),
            delete(files::delete),
        ),
        (
            "/api/v1/files/{id}/meta",
            Method::GET,
            S(Read),
            get(files::get_meta),
        ),
        (
            "/api/v1/files/{id}/move",
            Method::POST,
            S(Write),
            post(files::move_file),
        ),
        (
            "/api/v1/files/{id}/copy",
            Method::POST,
            S(Write),
            post(files::copy_file),
        ),
        (
            "/api/v1/fs/{*path}",
            Method::GET,
            S(Read),
            get(files::get_by_path),
        ),
        ("/api/v1/stat", Method::GET, S(Read), get(files::stat)),
        ("/api/v1/list", Method::GET, S(Read), get(list::list)),
        ("/api/v1/sync", Method::GET, S(Read), get(sync::sync)),
        ("/api/v1/events", Method::GET, S(Read), get(sync::events)),
        ("/api/v1/share", Method::POST, S(Read), post(share::create)),
        (
            "/api/v1/shared/{*path}",
            Method::GET,
            Signed,
            get(share::download),
        ),
        (
            "/api/v1/admin/locks",
            Method::GET,
            S(Admin),
            get(admin::locks),
        ),
        (
            "/api/v1/admin/runtime",
            Method::GET,
            S(Admin),
            get(admin::runtime),
        ),
        (
            "/api/v1/admin/fsck",
            Method::POST,
            S(Admin),
            post(admin::fsck),
        ),
        (
            "/api/v1/admin/tokens",
            Method::GET,
            S(Admin),
            get(admin::list_tokens),
        ),
        (
            "/api/v1/admin/tokens",
            Method::POST,
            S(Admin),
            post(admin::create_token),
        ),
        (
            "/api/v1/admin/tokens/{id}",
            Method::DELETE,
            S(Admin),
            delete(admin::revoke_token),
        ),
    ]
}

/// The authorization rule of every route (GET routes answer HEAD under the same rule).
pub fn route_rules() -> Vec<RouteRule> {
    routes()
        .into_iter()
        .map(|(path, method, access, _)| RouteRule {
            method,
            path,
            access,
        })
        .collect()
}

/// The rule for a matched route, looked up by the authorization layer.
pub fn rule_for(method: &Method, path: &str) -> Option<Access> {
    static RULES: std::sync::OnceLock<HashMap<(Method, &'static str), Access>> =
        std::sync::OnceLock::new();
    let rules = RULES.get_or_init(|| {
        route_rules()
            .into_iter()
            .map(|r| ((r.method, r.path), r.access))
            .collect()
    });
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    rules.get(&(method.clone(), path)).copied()
}

/// The API router over `state`.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (path, _, _, method_router) in routes() {
        // Same path, other method: axum merges the method routers.
        router = router.route(path, method_router);
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handlers::authz::authorize,
        ))
        .route_layer(axum::middleware::from_fn(crate::metrics::track))
        .fallback(|| async {
            AppError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such route",
            )
        })
        .method_not_allowed_fallback(|| async {
            AppError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn(handlers::request_id))
        .with_state(state)
}

/// Largest read buffer per HTTP/1 connection. hyper's default (~400 KiB) grows while a body
/// streams and stays at that size on the kept-alive connection: with 1,000 client connections
/// that alone was ~400 MiB. 64 KiB reads keep upload throughput.
const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// Answer to a connection past `max_connections`, written before closing it.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 79\r\n\r\n\
{\"error\":{\"code\":\"overloaded\",\"message\":\"too many connections; retry shortly\"}}";

/// Counts one open connection while alive.
struct ConnectionSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("vaultfs_connections_open").decrement(1.0);
    }
}

/// The accept loop: HTTP/1.1 with upgrades (WebSocket), TCP_NODELAY on every socket, a bounded
/// read buffer, a header-read deadline, at most `max_connections` open, and graceful shutdown:
/// readiness turns 503 at once, the listener keeps accepting for `shutdown_drain_delay`, then
/// closes; in-flight requests get `shutdown_grace` to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    state: &AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    tls: Option<crate::tls::Tls>,
) {
    let config = Arc::clone(&state.config);
    let connections = tokio_util::task::TaskTracker::new();
    // Cancelled when the grace period ends: what is still in flight is cut off, also when
    // the runtime lives on (tests, embedding).
    let cut_off = tokio_util::sync::CancellationToken::new();
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_buf_size(MAX_CONNECTION_BUFFER)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    tokio::pin!(shutdown);
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        let drain_end = async {
            match drain_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown, if drain_until.is_none() => {
                state.start_draining();
                tracing::info!(drain = ?config.shutdown_drain_delay, grace = ?config.shutdown_grace,
                    "shutting down: readiness is 503; draining");
                if config.shutdown_drain_delay.is_zero() {
                    break;
                }
                drain_until = Some(tokio::time::Instant::now() + config.shutdown_drain_delay);
                continue;
            }
            () = drain_end => break,
        };
        // Nagle + delayed ACK would cost ~40 ms per small response on a reused connection.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let mut io = crate::conn::ServerIo::new(stream, config.write_idle_timeout);
        if open.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= config.max_connections {
            open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("vaultfs_connections_rejected_total").increment(1);
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    io.write_all(TOO_MANY_CONNECTIONS),
                )
                .await;
                // Dropping `io` lingers, then closes.
            });
            continue;
        }
        metrics::gauge!("vaultfs_connections_open").increment(1.0);
        let slot = ConnectionSlot(Arc::clone(&open));
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let (builder, tls) = (builder.clone(), tls.clone());
        let mut stop = state.shutdown.clone();
        let cut = cut_off.clone();
        connections.spawn(async move {
            let _slot = slot;
            // TLS (when configured): the handshake runs here, within its own deadline.
            let io = match crate::tls::MaybeTls::wrap(io, tls.as_ref()).await {
                Ok(io) => io,
                Err(e) => return tracing::debug!(error = %e, "TLS handshake failed"),
            };
            let conn = builder
                .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = crate::services::notification::until_true(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = conn => r,
                        () = cut.cancelled() => return,
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    state.begin_shutdown();
    connections.close();
    if tokio::time::timeout(config.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "in-flight requests did not finish within the grace period; cutting them off"
        );
        cut_off.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
    }
}

/// Serves VaultFS on `listener` until `shutdown` resolves, then closes the stores.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = listener.local_addr()?;
    let state = AppState::open(config).await?;
    // The configured address counts too: it is what the operator asked to expose.
    let exposed = !addr.ip().is_loopback()
        || !state.config.listen.ip().is_loopback()
        // The S3 listener serves an open server's files as freely.
        || state.config.s3_listen.is_some_and(|a| !a.ip().is_loopback());
    if !state.auth.required() && exposed {
        if !state.config.insecure_no_auth {
            state.close().await;
            let addr = if addr.ip().is_loopback() {
                state.config.listen
            } else {
                addr
            };
            return Err(ServerError::Insecure { addr });
        }
        tracing::warn!(%addr, "AUTHENTICATION IS DISABLED (--insecure-no-auth): anyone who can \
            reach this address can read, write and delete every file");
    }
    let app = router(state.clone());
    let tls = crate::tls::Tls::from_config(&state.config, state.shutdown.clone()).await?;
    // The S3-compatible API, on its own address (`--s3-listen`), served by the same loop.
    let s3 = match crate::handlers::s3::listener(&state).await? {
        Some((s3_listener, s3_app)) => {
            let (s3_state, s3_tls) = (state.clone(), tls.clone());
            let mut stop = state.shutdown.clone();
            Some(tokio::spawn(async move {
                let until =
                    async move { crate::services::notification::until_true(&mut stop).await };
                serve(s3_listener, s3_app, &s3_state, until, s3_tls).await;
            }))
        }
        None => None,
    };
    tracing::info!(%addr, data_dir = %state.config.data_dir.display(), "VaultFS listening");
    serve(listener, app, &state, shutdown, tls).await;
    if let Some(s3) = s3 {
        let _ = s3.await;
    }
    state.close().await;
    tracing::info!("VaultFS stopped");
    Ok(())
}
