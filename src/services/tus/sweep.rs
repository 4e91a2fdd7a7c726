//! The expiry sweep: expired sessions' bytes removed, old rows deleted, orphaned staging
//! files and objects cleaned up, on a timer until shutdown.

use std::time::Duration;

use super::{remove_file, TusError, TusService};
use crate::services::metadata::now_ms;
use crate::services::metadata::tus::SessionState;
use crate::services::ServiceError;

/// Most due sessions one sweep pass handles.
const SWEEP_BATCH: usize = 1000;

impl TusService {
    /// One pass of the expiry sweep: expired sessions' bytes removed (their rows kept as
    /// tombstones for another expiry period), old tombstones and done rows deleted, staging
    /// files without an open session removed. Returns how many sessions expired.
    pub(crate) async fn sweep(&self) -> Result<usize, TusError> {
        let inner = &self.inner;
        let now = now_ms();
        let mut expired = 0;
        for row in inner.store.due(now, SWEEP_BATCH).await? {
            match row.state {
                SessionState::Open => {
                    if inner
                        .store
                        .expire(&row.id, now.saturating_add(inner.expiry_ms()))
                        .await?
                    {
                        inner.forget(&row.id).await;
                        inner.drop_remote(&row).await;
                        expired += 1;
                    }
                }
                SessionState::Done | SessionState::Expired => {
                    inner.store.delete(&row.id).await?;
                }
            }
        }
        let mut dir = tokio::fs::read_dir(&inner.dir).await?;
        while let Some(entry) = dir.next_entry().await? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let open = inner
                .store
                .get(&name)
                .await?
                .is_some_and(|r| r.state == SessionState::Open);
            if !open {
                remove_file(&entry.path()).await;
            }
        }
        if let Some(staging) = &inner.remote {
            // Objects of sessions that are no longer open (a replica died between the row
            // and the removal): removed. Multipart uploads are aborted with their session.
            for id in staging.sessions().await.map_err(ServiceError::from)? {
                let open = inner
                    .store
                    .get(&id)
                    .await?
                    .is_some_and(|r| r.state == SessionState::Open);
                if !open {
                    inner.remove_objects(staging, &id).await;
                }
            }
        }
        if expired > 0 {
            metrics::counter!("vaultfs_tus_sessions_expired_total").increment(expired as u64);
            tracing::info!(expired, "expired tus upload sessions");
        }
        Ok(expired)
    }

    pub(super) fn spawn_sweep(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let service = self.clone();
        let every = (self.inner.limits.expiry / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = service.sweep().await {
                            tracing::warn!(error = %e, "tus session sweep failed");
                        }
                    }
                    () = crate::services::notification::until_true(&mut shutdown) => return,
                }
            }
        });
    }
}
