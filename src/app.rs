//! The application state every handler shares, and opening it: the data-directory lock, the
//! blob store, the metadata store, the notifier, authentication, and the background work a
//! server runs (start-up blob check, orphan sweeps, token reloads).
//!
//! Below the HTTP layers (`handlers`, `server`), above the services it wires together.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::services::auth::{Auth, AuthError};
use crate::services::files::FileService;
use crate::services::lock_manager::LockManager;
use crate::services::metadata::postgres::PostgresMetadata;
use crate::services::metadata::sqlite::SqliteMetadata;
use crate::services::metadata::{MetadataError, MetadataStore};
use crate::services::notification::{Notifier, Retention};
use crate::services::storage::{BlobStore, StorageError};
use crate::services::ServiceError;
use crate::watchdog::StallMonitor;

/// How often the watchdog probes the runtime, and the delay it reports as a stall.
const STALL_PROBE_INTERVAL: Duration = Duration::from_millis(20);
const STALL_THRESHOLD: Duration = Duration::from_millis(100);

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
                    let orphans = crate::services::fsck::sweep_orphans(&files).await.map_err(|e| e.to_string());
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
    pub(crate) files: FileService,
    /// tus resumable upload sessions.
    pub(crate) tus: crate::services::tus::TusService,
    pub(crate) config: Arc<Config>,
    /// Turns true when the server begins shutting down (sync streams close with 1001).
    pub(crate) shutdown: watch::Receiver<bool>,
    shutdown_trigger: Arc<watch::Sender<bool>>,
    /// Scheduling-delay probe of the runtime serving this state.
    pub(crate) stall: StallMonitor,
    /// True from the shutdown signal on: `/readyz` answers 503.
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// Tokens and share links.
    pub(crate) auth: Auth,
    /// The web file browser's sessions (handlers::web).
    pub(crate) sessions: crate::services::web_session::Sessions,
    /// Held while an online fsck runs, so at most one runs at a time (guards no data).
    pub(crate) fsck_slot: Arc<tokio::sync::Mutex<()>>,
    /// Holds the data directory's exclusive lock for the life of the server.
    _data_dir_lock: Arc<std::fs::File>,
}

/// Why the server could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {reason}")]
    /// The data directory could not be created, locked or used.
    DataDir {
        /// The data directory.
        path: String,
        /// What went wrong with it.
        reason: String,
    },
    /// The blob store failed to open.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The metadata store failed to open or migrate.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// A service failed while starting (for example its background sweep).
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// Binding or serving a listener failed.
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The token table could not be loaded.
    #[error("authentication: {0}")]
    Auth(#[from] AuthError),
    #[error(
        "refusing to serve {addr} without authentication: it is not a loopback address and no \
         token exists. Create one first (`vaultfs token create --scope admin`), or pass \
         --insecure-no-auth to serve everyone who can reach it"
    )]
    /// A non-loopback listener without a token and without `--insecure-no-auth`.
    Insecure {
        /// The listen address that would be open to everyone.
        addr: std::net::SocketAddr,
    },
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
        crate::services::secret::private_data_dir(dir).await;
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
            None => BlobStore::open_with_inline(dir, config.inline_max_size).await?,
        };
        crate::metrics::install();
        let mut postgres = None;
        let tus_store;
        let web_sessions;
        let inner: Arc<dyn MetadataStore> = match &config.metadata_url {
            Some(url) => {
                let pg =
                    PostgresMetadata::open(url, config.metadata_timeout, METADATA_POOL).await?;
                postgres = Some(pg.clone());
                tus_store = pg.tus_store();
                web_sessions = pg.web_session_store();
                Arc::new(pg)
            }
            None => {
                let sqlite =
                    SqliteMetadata::open(dir, config.metadata_timeout, METADATA_READERS).await?;
                tus_store = sqlite.tus_store();
                web_sessions = sqlite.web_session_store();
                Arc::new(sqlite)
            }
        };
        let metadata = crate::services::metadata::instrumented::InstrumentedMetadata::wrap(inner);
        metadata.set_retention(config.retention_policy());
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
        )
        .with_body_limits(crate::services::upload::BodyLimits::from_config(&config));
        if let Some(pg) = &postgres {
            // Other replicas' commits: their NOTIFY pokes our notifier, which reads the log.
            pg.spawn_listener(files.notifier().clone(), shutdown.clone());
        }
        files.spawn_trash_expiry(shutdown.clone());
        crate::services::commits::spawn_commit_expiry(files.clone(), shutdown.clone());
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
            match crate::services::fsck::missing_blobs(meta.as_ref(), files_for_check.storage())
                .await
            {
                Ok(damaged) => {
                    metrics::gauge!("vaultfs_blobs_missing").set(damaged.len() as f64);
                    for d in &damaged {
                        tracing::error!(path = %d.path, sha256 = %d.sha256, problem = %d.problem,
                            "file content is damaged; run `vaultfs fsck` for details");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "start-up blob check failed"),
            }
            match crate::services::fsck::sweep_orphans(&files_for_check).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(collected = n, "collected blobs left without metadata"),
                Err(e) => tracing::warn!(error = %e, "start-up orphan sweep failed"),
            }
            metrics::gauge!("vaultfs_startup_check_running").set(0.0);
        });
        let tus = crate::services::tus::TusService::start(
            files.clone(),
            tus_store,
            dir,
            crate::services::tus::TusLimits::from_config(&config),
            shutdown.clone(),
        )
        .await?;
        let auth = Auth::open_configured(Arc::clone(files.metadata()), &config).await?;
        if let Some(token) = &config.bootstrap_token {
            if auth.bootstrap(token).await? {
                tracing::info!("installed the bootstrap admin token (VAULTFS_BOOTSTRAP_TOKEN)");
            }
        }
        auth.spawn_reloader(shutdown.clone());
        let sessions = crate::services::web_session::Sessions::new(web_sessions);
        sessions.spawn_sweeper(shutdown.clone());
        let stall = StallMonitor::start(
            tokio::runtime::Handle::current(),
            STALL_PROBE_INTERVAL,
            STALL_THRESHOLD,
        )?;
        Ok(AppState {
            files,
            tus,
            config: Arc::new(config),
            stall,
            shutdown,
            shutdown_trigger: Arc::new(shutdown_trigger),
            draining: Arc::default(),
            sessions,
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

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts shutting down: sync streams close with 1001, long-polls answer, the event hub
    /// and pruner stop.
    pub fn begin_shutdown(&self) {
        self.start_draining();
        self.shutdown_trigger.send_replace(true);
    }

    /// Begins shutdown and closes the metadata store (its pools and writer task).
    pub async fn close(&self) {
        self.begin_shutdown();
        self.files.metadata().close().await;
    }
}
