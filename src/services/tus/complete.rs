//! Completing a session: the file handed to the one write entry point (or staged in a
//! commit), the session finished, or ended on a refusal a retry cannot change.

use std::io;

use sha2::{Digest, Sha256};

use super::remote::Remote;
use super::session::SessionView;
use super::upload_metadata::{meta_value, parse_metadata, upload_options};
use super::{Inner, TusError};
use crate::paths::VPath;
use crate::services::files::RequestCtx;
use crate::services::metadata::tus::SessionRow;
use crate::services::metadata::{now_ms, MetadataError};
use crate::services::upload::{StagedFile, StagedObject, UploadBatch, UploadError, UploadOutcome};
use crate::services::ServiceError;

impl Inner {
    /// Hands a complete session to the write entry point, under `batch`'s permit. A refusal
    /// that cannot change (prefix, precondition, declared SHA-256) ends the session; a
    /// passing one (busy, lock timeout) keeps it, and a PATCH at its full offset retries.
    pub(super) async fn complete(
        &self,
        ctx: &RequestCtx,
        batch: UploadBatch,
        row: SessionRow,
        sha: Option<Sha256>,
    ) -> Result<SessionView, TusError> {
        let result = self.commit(ctx, batch, &row, sha).await;
        match result {
            Ok(outcome) => {
                let keep = now_ms().saturating_add(self.expiry_ms());
                self.store
                    .finish(&row.id, Some(&outcome.meta.id), keep)
                    .await?;
                self.forget(&row.id).await;
                self.drop_remote(&row).await;
                metrics::counter!("vaultfs_tus_uploads_committed_total").increment(1);
                let mut view = SessionView::of(&row);
                view.expires_at = None;
                view.committed = Some(outcome);
                Ok(view)
            }
            Err(e) => {
                if is_final_refusal(&e) {
                    tracing::info!(id = %row.id, error = %e, "tus upload refused at completion; session ended");
                    self.forget(&row.id).await;
                    self.drop_remote(&row).await;
                    let _ = self.store.delete(&row.id).await;
                }
                Err(e)
            }
        }
    }

    async fn commit(
        &self,
        ctx: &RequestCtx,
        mut batch: UploadBatch,
        row: &SessionRow,
        sha: Option<Sha256>,
    ) -> Result<UploadOutcome, TusError> {
        let meta = parse_metadata(&row.metadata)?;
        let options = upload_options(&meta)?;
        let target = VPath::parse(&row.target)
            .map_err(|e| TusError::Invalid(format!("the upload's target path: {e}")))?;
        if let Some(record) = &row.remote {
            let staging = self.remote.as_ref().ok_or(TusError::StagingLost)?;
            let record = Remote::parse(record)?;
            let object = match sha {
                // A final concatenation: assembled, hashed while it was.
                Some(sha) if record.assembled => StagedObject {
                    key: record.key,
                    size: row.length.unwrap_or(row.offset),
                    sha256: sha.finalize().into(),
                },
                _ => self.assemble(staging, row, record).await?,
            };
            batch.stage_object(ctx, &target, object, options).await?;
            let mut outcomes = batch.commit(ctx).await?;
            return outcomes
                .pop()
                .ok_or_else(|| TusError::Io(io::Error::other("the commit returned no file")));
        }
        let file = StagedFile {
            path: self.file_path(&row.id),
            size: row.length.unwrap_or(row.offset),
            sha256: sha.map(|h| h.finalize().into()),
        };
        batch.stage_file(ctx, &target, file, options).await?;
        if let Some(commit) = meta_value(&meta, "commit") {
            // Staged in the commit (issue 21): no file exists yet, so the outcome names the
            // staged content with an empty id and version 0.
            let max = self.limits.commit_max_files;
            let staged = batch
                .commit_to(ctx, (commit, max))
                .await?
                .pop()
                .ok_or_else(|| TusError::Io(io::Error::other("the commit staged no file")))?;
            return Ok(UploadOutcome {
                meta: crate::services::metadata::FileMeta {
                    id: String::new(),
                    path: staged.path,
                    size: staged.size,
                    sha256: staged.sha256,
                    version: 0,
                    content_type: staged.content_type,
                    created_at: String::new(),
                    modified_at: String::new(),
                    modified_ms: 0,
                },
                created: false,
                extra_digest: None,
            });
        }
        let mut outcomes = batch.commit(ctx).await?;
        outcomes
            .pop()
            .ok_or_else(|| TusError::Io(io::Error::other("the commit returned no file")))
    }
}

/// Refusals a retry cannot change: the session is ended.
fn is_final_refusal(e: &TusError) -> bool {
    match e {
        TusError::Invalid(_) => true,
        TusError::Service(s) => matches!(
            s,
            ServiceError::Forbidden
                | ServiceError::Upload(UploadError::ChecksumMismatch { .. })
                | ServiceError::Upload(UploadError::TooLarge { .. })
                | ServiceError::Metadata(MetadataError::PreconditionFailed)
        ),
        _ => false,
    }
}
