//! Wiring: state, router, and [`run`], which serves on a given listener until `shutdown`
//! resolves. Tests call `run` on `127.0.0.1:0`; the binary calls it with the configured address.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::AppError;
use crate::handlers::{self, admin, files, health, list, sync, upload};
use crate::services::files::FileService;
use crate::services::lock_manager::LockManager;
use crate::services::metadata::{MetadataError, MetadataStore};
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

        let storage = BlobStore::open(dir).await?;
        let metadata: Arc<dyn MetadataStore> =
            Arc::new(SqliteMetadata::open(dir, config.metadata_timeout, METADATA_READERS).await?);
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
        let collected = files.collect_unreferenced().await?;
        if collected > 0 {
            tracing::info!(collected, "collected unreferenced blobs");
        }
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
            _data_dir_lock: Arc::new(lock_file),
        })
    }

    /// Starts shutting down: sync streams close with 1001, long-polls answer, the event hub
    /// and pruner stop.
    pub fn begin_shutdown(&self) {
        self.shutdown_trigger.send_replace(true);
    }

    pub async fn close(&self) {
        self.begin_shutdown();
        self.files.metadata().close().await;
    }
}

/// The API router over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route(
            "/api/v1/files/upload",
            post(upload::upload)
                .layer(DefaultBodyLimit::disable())
                .layer(axum::middleware::map_response(upload::close_after_error)),
        )
        .route(
            "/api/v1/files/{id}",
            get(files::get_content).delete(files::delete),
        )
        .route("/api/v1/files/{id}/meta", get(files::get_meta))
        .route("/api/v1/files/{id}/move", post(files::move_file))
        .route("/api/v1/files/{id}/copy", post(files::copy_file))
        .route("/api/v1/fs/{*path}", get(files::get_by_path))
        .route("/api/v1/stat", get(files::stat))
        .route("/api/v1/list", get(list::list))
        .route("/api/v1/sync", get(sync::sync))
        .route("/api/v1/events", get(sync::events))
        .route("/api/v1/admin/locks", get(admin::locks))
        .route("/api/v1/admin/runtime", get(admin::runtime))
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

/// A response write that makes no progress for this long ends the connection.
const WRITE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long in-flight requests may take to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The accept loop: HTTP/1.1 with upgrades (WebSocket), TCP_NODELAY on every socket, a bounded
/// read buffer, and graceful shutdown (stop accepting, let in-flight requests finish within
/// [`SHUTDOWN_GRACE`]).
async fn serve(
    listener: TcpListener,
    app: Router,
    state: &AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let connections = tokio_util::task::TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.max_buf_size(MAX_CONNECTION_BUFFER);
    tokio::pin!(shutdown);
    loop {
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
            () = &mut shutdown => break,
        };
        // Nagle + delayed ACK would cost ~40 ms per small response on a reused connection.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection(
                hyper_util::rt::TokioIo::new(crate::conn::ServerIo::new(
                    stream,
                    WRITE_IDLE_TIMEOUT,
                )),
                service,
            )
            .with_upgrades();
        let mut stop = state.shutdown.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = crate::services::notification::until_true(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
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
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within the grace period");
    }
}

/// Serves VaultFS on `listener` until `shutdown` resolves, then closes the stores.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let state = AppState::open(config).await?;
    let app = router(state.clone());
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %state.config.data_dir.display(), "VaultFS listening");
    serve(listener, app, &state, shutdown).await;
    state.close().await;
    tracing::info!("VaultFS stopped");
    Ok(())
}
