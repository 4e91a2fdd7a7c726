//! The PATCH path under the session's turn: takeover, offset and length checks, the staging
//! quota, then the body received locally or in the object store.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio_util::sync::CancellationToken;

use super::receive::Stops;
use super::remote::Remote;
use super::session::{Append, Concat, SessionView};
use super::{owner_of, Inner, TusError};
use crate::services::files::RequestCtx;
use crate::services::metadata::now_ms;
use crate::services::metadata::tus::{SessionRow, SessionState};
use crate::services::upload::UploadError;

/// How long a new PATCH waits for the one it took over to let go of the session.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

impl Inner {
    pub(super) async fn append<S, E>(
        &self,
        ctx: &RequestCtx,
        id: &str,
        request: Append,
        body: S,
        revoked: &CancellationToken,
    ) -> Result<SessionView, TusError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<UploadError> + 'static,
    {
        let owner = owner_of(ctx);
        let row = self.visible_row(&owner, id).await?;
        if matches!(Concat::of(&row), Concat::Final(_)) {
            return Err(TusError::ModifyFinal);
        }
        if row.state == SessionState::Done {
            return if request.offset == row.offset {
                Ok(SessionView::of(&row))
            } else {
                Err(TusError::OffsetMismatch {
                    given: request.offset,
                    actual: row.offset,
                })
            };
        }
        // Take the session over: the request before us (a half-dead connection, most likely)
        // stops at its next chunk and gives the turn back.
        let live = self.live(id);
        let token = CancellationToken::new();
        live.take_over(token.clone());
        let _turn =
            match tokio::time::timeout(TAKEOVER_WAIT, Arc::clone(&live.turn).acquire_owned()).await
            {
                Ok(Ok(turn)) => turn,
                Ok(Err(_)) | Err(_) => return Err(TusError::Busy),
            };
        let batch = tokio::select! {
            batch = self.files.begin_batch(request.content_length) => batch?,
            () = token.cancelled() => return Err(TusError::Interrupted),
        };
        // Read again under the turn: the request taken over may have moved it.
        let mut row = self.open_row(&owner, id).await?;
        if request.offset != row.offset {
            return Err(TusError::OffsetMismatch {
                given: request.offset,
                actual: row.offset,
            });
        }
        if row.length == Some(row.offset) {
            // Every byte is here: a partial waits for its final; an upload whose commit
            // failed for a passing reason (busy, lock timeout) is committed again.
            if Concat::of(&row) == Concat::Partial {
                return Ok(SessionView::of(&row));
            }
            if revoked.is_cancelled() {
                return Err(TusError::Revoked);
            }
            let sha = live.hasher_at(row.offset);
            return self.complete(ctx, batch, row, sha).await;
        }
        if let Some(length) = request.length {
            match row.length {
                Some(known) if known != length => {
                    return Err(TusError::Invalid(format!(
                        "Upload-Length {length} differs from the upload's length {known}"
                    )))
                }
                Some(_) => {}
                None => {
                    self.declare_length(&owner, &row, length).await?;
                    row.length = Some(length);
                }
            }
        }
        let limit = row.length.unwrap_or_else(|| self.files.max_upload_size());
        if let Some(len) = request.content_length {
            if row.offset.saturating_add(len) > limit {
                return Err(TusError::LengthExceeded { length: limit });
            }
        }
        if row.length.is_none() {
            // A deferred length reserves what it has: check the quota as it grows.
            let usage = self.store.usage(&owner).await?;
            let more = request.content_length.unwrap_or(0);
            if usage.bytes.saturating_add(more) > self.limits.max_staging {
                return Err(TusError::StagingQuota {
                    limit: self.limits.max_staging,
                });
            }
        }
        let body = batch.body(body);
        let stops = Stops {
            takeover: &token,
            revoked,
        };
        let (offset, sha, failure) = match (&self.remote, &row.remote) {
            (Some(staging), Some(record)) => {
                let record = Remote::parse(record)?;
                let (offset, record, failure) = self
                    .receive_remote(
                        staging,
                        &row,
                        record,
                        limit,
                        request.checksum.as_ref(),
                        body,
                        &stops,
                    )
                    .await?;
                row.remote = Some(record.to_text());
                (offset, None, failure)
            }
            (None, Some(_)) => return Err(TusError::StagingLost),
            (_, None) => {
                self.receive(&live, &row, limit, request.checksum.as_ref(), body, &stops)
                    .await?
            }
        };
        row.offset = offset;
        if let Some(e) = failure {
            return Err(e);
        }
        if revoked.is_cancelled() {
            return Err(TusError::Revoked);
        }
        row.expires_at = now_ms().saturating_add(self.expiry_ms());
        if row.length == Some(row.offset) && Concat::of(&row) == Concat::None {
            return self.complete(ctx, batch, row, sha).await;
        }
        Ok(SessionView::of(&row))
    }

    async fn declare_length(
        &self,
        owner: &str,
        row: &SessionRow,
        length: u64,
    ) -> Result<(), TusError> {
        let limit = self.files.max_upload_size();
        if length > limit {
            return Err(TusError::TooLarge { limit });
        }
        if length < row.offset {
            return Err(TusError::Invalid(format!(
                "Upload-Length {length} is less than the {} bytes already received",
                row.offset
            )));
        }
        let usage = self.store.usage(owner).await?;
        // `usage` counts this session at its offset; it now reserves its length.
        if usage
            .bytes
            .saturating_sub(row.offset)
            .saturating_add(length)
            > self.limits.max_staging
        {
            return Err(TusError::StagingQuota {
                limit: self.limits.max_staging,
            });
        }
        if !self.store.declare_length(&row.id, length).await? {
            return Err(TusError::Invalid(
                "the upload's length is already set".into(),
            ));
        }
        Ok(())
    }
}
