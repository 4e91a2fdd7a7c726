//! What a request asks for and what it is answered: creation, append, the session's view,
//! and how an upload is concatenated.

use crate::services::metadata::tus::{SessionRow, SessionState};
use crate::services::upload::UploadOutcome;

use super::checksum::Checksum;

/// How an upload is concatenated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Concat {
    None,
    Partial,
    /// The partial uploads' ids, in order.
    Final(Vec<String>),
}

impl Concat {
    pub(super) fn to_text(&self) -> String {
        match self {
            Concat::None => String::new(),
            Concat::Partial => "partial".into(),
            Concat::Final(ids) => format!("final;{}", ids.join(" ")),
        }
    }

    pub(super) fn of(row: &SessionRow) -> Concat {
        if row.concat == "partial" {
            Concat::Partial
        } else if let Some(ids) = row.concat.strip_prefix("final;") {
            Concat::Final(ids.split(' ').map(str::to_string).collect())
        } else {
            Concat::None
        }
    }
}

/// What a creation request asked for.
#[derive(Debug, Clone)]
pub(crate) struct Creation {
    /// `None`: deferred (`Upload-Defer-Length: 1`). Ignored for a final concatenation.
    pub length: Option<u64>,
    /// The `Upload-Metadata` header as sent.
    pub metadata: String,
    /// `?path=DIR/` on the creation URL, joined to the `filename` key.
    pub dir: Option<String>,
    pub concat: Concat,
}

/// A PATCH (or the body of a creation-with-upload).
#[derive(Debug, Clone)]
pub(crate) struct Append {
    /// `Upload-Offset`.
    pub offset: u64,
    /// `Upload-Length`, declaring a deferred length.
    pub length: Option<u64>,
    pub checksum: Option<Checksum>,
    /// `Content-Length`, when sent.
    pub content_length: Option<u64>,
}

/// A session as a client sees it (HEAD, and the answers to POST and PATCH).
#[derive(Debug, Clone)]
pub(crate) struct SessionView {
    pub id: String,
    pub offset: u64,
    pub length: Option<u64>,
    pub metadata: String,
    pub concat: Concat,
    /// Milliseconds since the epoch; `None` once the session is done.
    pub expires_at: Option<i64>,
    /// The file this upload became, once committed.
    pub committed: Option<UploadOutcome>,
}

impl SessionView {
    pub(super) fn of(row: &SessionRow) -> Self {
        SessionView {
            id: row.id.clone(),
            offset: row.offset,
            length: row.length,
            metadata: row.metadata.clone(),
            concat: Concat::of(row),
            expires_at: (row.state == SessionState::Open).then_some(row.expires_at),
            committed: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn concat_round_trips() {
        let c = Concat::Final(vec!["a".into(), "b".into()]);
        let row = SessionRow {
            id: "x".into(),
            owner: String::new(),
            length: None,
            offset: 0,
            target: String::new(),
            metadata: String::new(),
            concat: c.to_text(),
            state: SessionState::Open,
            file_id: None,
            created_at: 0,
            expires_at: 0,
            remote: None,
        };
        assert_eq!(Concat::of(&row), c);
    }
}
