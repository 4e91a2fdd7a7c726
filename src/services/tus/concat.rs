//! A final concatenation staged on local disk: the partial uploads copied into the final's
//! file, hashed as they are copied, then committed.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::session::SessionView;
use super::{Inner, TusError};
use crate::services::files::RequestCtx;
use crate::services::metadata::now_ms;
use crate::services::metadata::tus::SessionRow;

impl Inner {
    /// A final concatenation: the partial uploads copied, in order, into the final's file
    /// (hashed as they are copied: the one read), then committed; the partials are removed.
    pub(super) async fn concatenate(
        &self,
        ctx: &RequestCtx,
        row: SessionRow,
        partials: Vec<SessionRow>,
    ) -> Result<SessionView, TusError> {
        let total = row.length.unwrap_or(0);
        let batch = match self.files.begin_batch(Some(total)).await {
            Ok(b) => b,
            Err(e) => {
                let _ = self.store.delete(&row.id).await;
                return Err(e.into());
            }
        };
        let sources: Vec<(PathBuf, u64)> = partials
            .iter()
            .map(|p| (self.file_path(&p.id), p.offset))
            .collect();
        let target = self.file_path(&row.id);
        let copied = crate::blocking::run(move || concat_files(&target, &sources)).await;
        let sha = match copied {
            Ok(sha) => sha,
            Err(e) => {
                self.forget(&row.id).await;
                let _ = self.store.delete(&row.id).await;
                return Err(e.into());
            }
        };
        let expires = now_ms().saturating_add(self.expiry_ms());
        if !self.store.advance(&row.id, 0, total, expires).await? && total > 0 {
            return Err(TusError::NotFound);
        }
        let mut row = row;
        row.offset = total;
        let view = self.complete(ctx, batch, row, Some(sha)).await?;
        for p in &partials {
            self.forget(&p.id).await;
            let _ = self.store.delete(&p.id).await;
        }
        Ok(view)
    }
}

/// Writes the first `len` bytes of each source, in order, to a new `target`, fdatasynced;
/// returns their SHA-256. Blocking: runs on the blocking pool.
fn concat_files(target: &Path, sources: &[(PathBuf, u64)]) -> io::Result<Sha256> {
    use std::io::Read;
    #[allow(clippy::disallowed_methods)] // on the blocking pool
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(target)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for (path, len) in sources {
        #[allow(clippy::disallowed_methods)] // on the blocking pool
        let mut src = std::fs::File::open(path)?.take(*len);
        let mut copied = 0u64;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            copied += n as u64;
        }
        if copied != *len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "partial upload {} is shorter than acknowledged",
                    path.display()
                ),
            ));
        }
    }
    #[allow(clippy::disallowed_methods)] // on the blocking pool
    out.sync_data()?;
    Ok(sha)
}
