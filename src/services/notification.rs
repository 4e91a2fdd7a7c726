//! The durable, sequence-numbered event log's live side: fan-out to subscribers.
//!
//! Events are written by the metadata store in the same transaction as each change (so the
//! log is complete and in commit order). This module never publishes an event from a writer:
//!
//! - A writer, after its commit, calls [`Notifier::poke`]: a `watch` counter bump. It never
//!   blocks, never fails, and works with zero subscribers.
//! - One hub task reads new events from the log in seq order and sends them on the live
//!   channel: bounded `broadcast` shards ([`live`], [`BROADCAST_CAPACITY`] each). It also
//!   polls the log every second, so a missed poke only delays, never loses.
//! - A [`Subscription`] subscribes to the broadcast *before* it replays from the log, skips
//!   what it already delivered, and turns `Lagged` (it fell behind) or a seq gap into catch-up
//!   reads from the log. It never slows anyone else down and never loses an event.
//!   `Closed` (the hub stopped: shutdown) ends the stream cleanly.
//! - Subscriber sessions run on a runtime of their own ([`sessions`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::metadata::{now_ms, Event, MetadataError, MetadataStore};

mod live;
mod sessions;
mod subscription;
use sessions::SessionRuntime;
pub use subscription::{until_true, Filter, Subscription};
use subscription::{CursorRegistration, Cursors};

/// Live events buffered for subscribers; a subscriber further behind catches up from the log.
pub const BROADCAST_CAPACITY: usize = 1024;
/// Events per catch-up read.
pub const CATCH_UP_BATCH: usize = 500;
/// Most seqs one long-poll examines before it answers (with no events, cursor advanced).
pub(crate) const POLL_SCAN_LIMIT: i64 = 10_000;
/// Events one long-poll query may return (more than `limit` when that is small, so a sparse
/// filter needs few queries).
const POLL_PAGE: usize = 1000;
/// The hub re-reads the log at least this often, whatever pokes it got.
const HUB_POLL: Duration = Duration::from_secs(1);

/// One event as the hub broadcast it: the event, and its JSON text, serialized once for every
/// subscriber that sees the event unchanged (all but the token-scoped views of moves and
/// copies across the scope's edge).
#[derive(Debug)]
pub(crate) struct Published {
    event: Event,
    json: Bytes,
}

impl Published {
    fn new(event: Event) -> Result<Self, serde_json::Error> {
        let json = Bytes::from(serde_json::to_string(&event)?);
        Ok(Published { event, json })
    }
}

/// One event ready for the wire: its seq and its JSON text (valid UTF-8, a WebSocket text
/// frame's payload). Cloning shares the bytes.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) seq: i64,
    pub(crate) json: Bytes,
}

impl Frame {
    fn of(event: &Event) -> Result<Self, MetadataError> {
        let json = serde_json::to_string(event).map_err(|e| {
            MetadataError::Backend(format!("cannot encode event {}: {e}", event.seq))
        })?;
        Ok(Frame {
            seq: event.seq,
            json: Bytes::from(json),
        })
    }
}

/// What a subscription has ready: a broadcast event it sees unchanged (shared bytes), or its
/// own view of an event (read from the log, or rewritten by its scope).
#[derive(Debug)]
enum Item {
    Shared(Arc<Published>),
    /// Boxed: the broadcast case, which carries only an `Arc`, is the common one.
    Own(Box<Event>),
}

impl Item {
    fn into_event(self) -> Event {
        match self {
            Item::Shared(p) => p.event.clone(),
            Item::Own(e) => *e,
        }
    }

    fn into_frame(self) -> Result<Frame, MetadataError> {
        match self {
            Item::Shared(p) => Ok(Frame {
                seq: p.event.seq,
                json: p.json.clone(),
            }),
            Item::Own(e) => Frame::of(&e),
        }
    }
}

/// Why a subscription to the event feed or a long-poll of it failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The cursor is older than the retained log (or ahead of it): re-list, resume from
    /// `latest`.
    #[error("cursor {since} is outside the retained event log; resync from {latest}")]
    ResyncRequired {
        /// The seq the client asked to resume after (its cursor).
        since: i64,
        /// The latest committed seq: re-list, then resume from it.
        latest: i64,
    },
    /// Reading the event log from the metadata store failed.
    #[error(transparent)]
    Store(#[from] MetadataError),
}

/// Retention of the event log.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub(crate) max_age: Duration,
    pub(crate) max_events: u64,
    pub(crate) prune_every: Duration,
}

struct Inner {
    meta: Arc<dyn MetadataStore>,
    /// Bumped after every commit; the hub waits on it.
    poke: watch::Sender<u64>,
    /// Receivers that never read, kept only to subscribe new subscriptions (see [`live`]).
    template: live::LiveTemplates,
    /// Highest seq the hub has read and broadcast; long-polls wait on it.
    published: watch::Sender<i64>,
    shutdown: watch::Receiver<bool>,
    /// Every live subscription's position, for the lag metric.
    /// Its mutex guards the id -> position map; held for one insert, remove or scan.
    cursors: Cursors,
    next_cursor: std::sync::atomic::AtomicU64,
    /// Where subscriber sessions run (see [`sessions`]).
    sessions: SessionRuntime,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

impl Notifier {
    /// Starts the hub (on the session runtime) and the retention pruner. Both stop when
    /// `shutdown` turns true; the hub then drops the live channel, which ends every
    /// subscription with `Closed`.
    pub async fn start(
        meta: Arc<dyn MetadataStore>,
        retention: Retention,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, MetadataError> {
        let latest = meta.latest_seq().await?;
        let (tx, template) = live::channel();
        let (poke, poked) = watch::channel(0u64);
        let (published, _) = watch::channel(latest);
        let notifier = Notifier {
            inner: Arc::new(Inner {
                meta: Arc::clone(&meta),
                poke,
                template,
                published,
                shutdown: shutdown.clone(),
                cursors: Cursors::default(),
                next_cursor: std::sync::atomic::AtomicU64::new(0),
                sessions: SessionRuntime::start(),
            }),
        };
        let sessions = &notifier.inner.sessions;
        sessions.spawn(hub(notifier.clone(), tx, poked, latest, shutdown));
        tokio::spawn(pruner(meta, retention, notifier.inner.shutdown.clone()));
        Ok(notifier)
    }

    /// Tells the hub that something committed. Never blocks, never fails.
    pub fn poke(&self) {
        self.inner.poke.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Runs a subscriber's session on the session runtime (see [`sessions`]).
    pub(crate) fn spawn_session<F>(&self, session: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.sessions.spawn(session);
    }

    /// The highest seq broadcast so far.
    pub fn published(&self) -> i64 {
        *self.inner.published.borrow()
    }

    /// Live subscriptions, and how far the furthest behind is from the newest event (events).
    pub fn subscriber_lag(&self) -> (usize, i64) {
        let published = self.published();
        match self.inner.cursors.lock() {
            Ok(map) => {
                let lag = map
                    .values()
                    .map(|c| published - c.load(std::sync::atomic::Ordering::Relaxed))
                    .max()
                    .unwrap_or(0);
                (map.len(), lag.max(0))
            }
            Err(_) => (0, 0),
        }
    }

    async fn check_cursor(&self, since: i64, latest: i64) -> Result<(), SubscribeError> {
        if since > latest || since < 0 {
            return Err(SubscribeError::ResyncRequired { since, latest });
        }
        if since < latest {
            let oldest = self.inner.meta.oldest_seq().await?;
            if oldest.is_none_or(|o| o > since + 1) {
                return Err(SubscribeError::ResyncRequired { since, latest });
            }
        }
        Ok(())
    }

    /// A subscription delivering every event with `seq > since` (or from now, without
    /// `since`) whose path or source path starts with `prefix`, in seq order. Returns the
    /// latest committed seq at subscription time too (the `hello` frame's `latest_seq`).
    pub async fn subscribe(
        &self,
        since: Option<i64>,
        filter: Filter,
    ) -> Result<(Subscription, i64), SubscribeError> {
        // Subscribe to the live feed before reading anything: whatever commits from here on
        // is either in the replay or in the channel.
        let n = self
            .inner
            .next_cursor
            .load(std::sync::atomic::Ordering::Relaxed);
        let rx = self.inner.template.subscribe(n);
        let latest = self.inner.meta.latest_seq().await?;
        let last = match since {
            None => latest,
            Some(since) => {
                self.check_cursor(since, latest).await?;
                since
            }
        };
        let cursor = Arc::new(std::sync::atomic::AtomicI64::new(last));
        let id = self
            .inner
            .next_cursor
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut map) = self.inner.cursors.lock() {
            map.insert(id, Arc::clone(&cursor));
        }
        Ok((
            Subscription {
                meta: Arc::clone(&self.inner.meta),
                rx,
                live_sent: self.inner.template.sent(),
                last,
                filter,
                behind: true,
                pending: VecDeque::new(),
                catch_up_reads: 0,
                registration: CursorRegistration {
                    id,
                    cursor,
                    registry: Arc::clone(&self.inner.cursors),
                },
            },
            latest,
        ))
    }

    /// One long-poll: events after `since` (from now without it) matching `prefix`, at most
    /// `limit`; when there are none, waits up to `wait` for one. Returns the events and the
    /// cursor to pass next time (the last seq examined, matching or not). One call examines
    /// at most [`POLL_SCAN_LIMIT`] seqs: past that it answers with no events and the cursor
    /// advanced, so a filter that matches nothing in a long log costs a bounded number of
    /// queries per request (each reads one seq window, filtered by prefix in the database).
    pub async fn poll(
        &self,
        since: Option<i64>,
        filter: &Filter,
        limit: usize,
        wait: Duration,
    ) -> Result<(Vec<Event>, i64), SubscribeError> {
        let deadline = tokio::time::Instant::now() + wait;
        let latest = self.inner.meta.latest_seq().await?;
        let mut cursor = since.unwrap_or(latest);
        self.check_cursor(cursor, latest).await?;
        let mut published = self.inner.published.subscribe();
        let mut shutdown = self.inner.shutdown.clone();
        let page = limit.max(POLL_PAGE);
        let mut scanned = 0;
        loop {
            // Committed seqs only: the latest read at the start, or what the hub published.
            let known = latest.max(*published.borrow_and_update());
            let through = known.min(cursor.saturating_add(POLL_SCAN_LIMIT - scanned));
            if through > cursor {
                let batch = self
                    .inner
                    .meta
                    .events_matching(cursor, through, filter.narrowest(), page)
                    .await?;
                let end = match batch.last() {
                    Some(last) if batch.len() == page => last.seq,
                    _ => through,
                };
                let mut matched = Vec::new();
                for e in &batch {
                    if let Some(seen) = filter.view(e) {
                        matched.push(seen);
                        if matched.len() == limit {
                            return self.whole_commits(matched, e.seq).await;
                        }
                    }
                }
                scanned += end - cursor;
                cursor = end;
                if !matched.is_empty() || scanned >= POLL_SCAN_LIMIT {
                    return self.whole_commits(matched, cursor).await;
                }
                if cursor < known {
                    continue; // more committed events to examine
                }
            }
            let target = cursor;
            tokio::select! {
                r = tokio::time::timeout_at(deadline, async {
                    published.wait_for(|p| *p > target).await.is_ok()
                }) => {
                    match r {
                        Ok(true) => continue,
                        // Deadline passed, or the hub is gone (shutdown): answer what we have.
                        Ok(false) | Err(_) => return Ok((Vec::new(), cursor)),
                    }
                }
                () = until_true(&mut shutdown) => return Ok((Vec::new(), cursor)),
            }
        }
    }
}

impl Notifier {
    /// A long-poll page ends at a commit boundary (issue 21): when its last events belong
    /// to a commit that continues past `cursor`, they are left for the next page, unless
    /// the page holds nothing else (one commit larger than the page).
    async fn whole_commits(
        &self,
        mut matched: Vec<Event>,
        cursor: i64,
    ) -> Result<(Vec<Event>, i64), SubscribeError> {
        let Some(commit) = matched.last().and_then(|e| e.commit.clone()) else {
            return Ok((matched, cursor));
        };
        let next = self.inner.meta.events_after(cursor, 1).await?;
        if next
            .first()
            .is_none_or(|e| e.commit.as_deref() != Some(commit.as_str()))
        {
            return Ok((matched, cursor));
        }
        match matched
            .iter()
            .rposition(|e| e.commit.as_deref() != Some(commit.as_str()))
        {
            None => Ok((matched, cursor)),
            Some(keep) => {
                let resume = matched[keep + 1].seq - 1;
                matched.truncate(keep + 1);
                Ok((matched, resume))
            }
        }
    }
}

async fn hub(
    notifier: Notifier,
    tx: live::LiveSender,
    mut poked: watch::Receiver<u64>,
    mut cursor: i64,
    mut shutdown: watch::Receiver<bool>,
) {
    // Only a weak interest in the notifier: the published watch lives in it.
    let published = notifier.inner.published.clone();
    let meta = Arc::clone(&notifier.inner.meta);
    drop(notifier);
    loop {
        tokio::select! {
            changed = poked.changed() => {
                if changed.is_err() {
                    break; // every Notifier is gone
                }
            }
            () = tokio::time::sleep(HUB_POLL) => {}
            () = until_true(&mut shutdown) => break,
        }
        loop {
            match meta.events_after(cursor, CATCH_UP_BATCH).await {
                Ok(batch) => {
                    let n = batch.len();
                    for e in batch {
                        cursor = e.seq;
                        match Published::new(e) {
                            // Err means "no subscriber right now": nothing to do.
                            Ok(p) => {
                                tx.send(Arc::new(p));
                            }
                            // Never seen (the event is plain strings and numbers). The seq is
                            // skipped on the channel, so subscribers see a gap and read it
                            // from the log, where they report the error themselves.
                            Err(err) => {
                                tracing::error!(error = %err, seq = cursor, "event hub cannot encode an event")
                            }
                        }
                    }
                    published.send_replace(cursor);
                    if n < CATCH_UP_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event hub could not read the log; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
    tracing::debug!("event hub stopped");
    // Dropping `tx` ends every subscription with `Closed`.
}

async fn pruner(
    meta: Arc<dyn MetadataStore>,
    retention: Retention,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(retention.prune_every) => {}
            () = until_true(&mut shutdown) => return,
        }
        let max_age_ms = i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let older_than = now_ms().saturating_sub(max_age_ms);
        let keep = i64::try_from(retention.max_events).unwrap_or(i64::MAX);
        match meta.prune_events(older_than, keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "pruned old events"),
            Err(e) => tracing::warn!(error = %e, "event pruning failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Invariant 4: a receiver that overflows resyncs from the log and continues in order; a
    //! sender dropped mid-stream ends the stream cleanly. No unwrap on any receive.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::services::metadata::sqlite::SqliteMetadata;
    use crate::services::metadata::{EventKind, Precondition, PutRequest};
    use crate::services::storage::BlobRef;

    async fn store(dir: &std::path::Path) -> Arc<dyn MetadataStore> {
        Arc::new(
            SqliteMetadata::open(dir, Duration::from_secs(10), 2)
                .await
                .unwrap(),
        )
    }

    async fn commit(meta: &Arc<dyn MetadataStore>, notifier: &Notifier, path: &str) {
        meta.put(PutRequest {
            path: path.to_string(),
            blob: BlobRef {
                sha256: "00".repeat(32),
                size: 1,
            },
            content_type: "x".into(),
            precondition: Precondition::None,
            s3: None,
        })
        .await
        .unwrap();
        notifier.poke();
    }

    fn retention() -> Retention {
        Retention {
            max_age: Duration::from_secs(3600),
            max_events: 1_000_000,
            prune_every: Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn overflowed_subscriber_catches_up_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let meta = store(dir.path()).await;
        let (_trigger, shutdown) = watch::channel(false);
        let notifier = Notifier::start(Arc::clone(&meta), retention(), shutdown)
            .await
            .unwrap();
        let (mut slow, latest) = notifier.subscribe(None, Filter::default()).await.unwrap();
        assert_eq!(latest, 0);
        // Three times the channel's capacity commits while `slow` reads nothing.
        let total = (BROADCAST_CAPACITY * 3) as i64;
        for i in 0..total {
            commit(&meta, &notifier, &format!("f{i}")).await;
        }
        // Let the hub broadcast everything so the receiver really overflows.
        tokio::time::timeout(Duration::from_secs(10), async {
            while notifier.published() < total {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        for want in 1..=total {
            let e = tokio::time::timeout(Duration::from_secs(10), slow.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(e.seq, want, "in order, no gap, no duplicate");
        }
        assert!(
            slow.catch_up_reads() >= 2,
            "it lagged and read from the log"
        );
    }

    #[tokio::test]
    async fn sender_dropped_mid_stream_ends_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let meta = store(dir.path()).await;
        let (trigger, shutdown) = watch::channel(false);
        let notifier = Notifier::start(Arc::clone(&meta), retention(), shutdown)
            .await
            .unwrap();
        let (mut sub, _) = notifier.subscribe(None, Filter::default()).await.unwrap();
        commit(&meta, &notifier, "a").await;
        let first = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap();
        assert_eq!(first.unwrap().map(|e| e.seq), Some(1));
        // Shutdown: the hub drops the only broadcast sender.
        trigger.send_replace(true);
        let end = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap();
        assert!(
            matches!(end, Ok(None)),
            "Closed ends the stream with None, no panic"
        );
        // New subscribers after shutdown also end at once.
        let (mut late, _) = notifier.subscribe(None, Filter::default()).await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), late.next())
            .await
            .unwrap();
        assert!(matches!(end, Ok(None)));
        // Publishing after shutdown neither blocks nor panics.
        commit(&meta, &notifier, "b").await;
    }

    #[tokio::test]
    async fn prefix_filter_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let meta = store(dir.path()).await;
        let (_t, shutdown) = watch::channel(false);
        let notifier = Notifier::start(Arc::clone(&meta), retention(), shutdown)
            .await
            .unwrap();
        for p in ["a/1", "b/1", "a/2"] {
            commit(&meta, &notifier, p).await;
        }
        let (mut sub, latest) = notifier
            .subscribe(Some(0), Filter::prefix("a/"))
            .await
            .unwrap();
        assert_eq!(latest, 3);
        let e1 = sub.next().await.unwrap().unwrap();
        let e2 = sub.next().await.unwrap().unwrap();
        assert_eq!((e1.path.as_str(), e2.path.as_str()), ("a/1", "a/2"));
        assert!(matches!(
            notifier.subscribe(Some(99), Filter::default()).await,
            Err(SubscribeError::ResyncRequired { latest: 3, .. })
        ));
    }

    #[tokio::test]
    async fn live_frames_are_serialized_once_and_drain_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let meta = store(dir.path()).await;
        let (_t, shutdown) = watch::channel(false);
        let notifier = Notifier::start(Arc::clone(&meta), retention(), shutdown)
            .await
            .unwrap();
        let (mut a, _) = notifier.subscribe(None, Filter::default()).await.unwrap();
        let (mut b, _) = notifier
            .subscribe(None, Filter::prefix("x/"))
            .await
            .unwrap();
        // Both read the (empty) log, then wait on the channel: live from here on.
        for sub in [&mut a, &mut b] {
            let idle = tokio::time::timeout(Duration::from_millis(100), sub.next_frame()).await;
            assert!(idle.is_err(), "nothing to deliver yet");
        }
        for i in 0..5 {
            commit(&meta, &notifier, &format!("x/{i}")).await;
        }
        tokio::time::timeout(Duration::from_secs(10), async {
            while notifier.published() < 5 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        let fa = a.next_frame().await.unwrap().unwrap();
        let fb = b.next_frame().await.unwrap().unwrap();
        assert_eq!(fa.seq, 1);
        assert_eq!(
            fa.json.as_ptr(),
            fb.json.as_ptr(),
            "both subscribers send the bytes the hub serialized"
        );
        let e: Event = serde_json::from_slice(&fa.json).unwrap();
        assert_eq!((e.seq, e.path.as_str()), (1, "x/0"));
        // The rest is ready without waiting, in order.
        let mut seqs = Vec::new();
        while let Some(f) = a.try_next_frame().unwrap() {
            seqs.push(f.seq);
        }
        assert_eq!(seqs, vec![2, 3, 4, 5]);
        assert!(a.try_next_frame().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_scoped_view_gets_its_own_frame() {
        let dir = tempfile::tempdir().unwrap();
        let meta = store(dir.path()).await;
        let (_t, shutdown) = watch::channel(false);
        let notifier = Notifier::start(Arc::clone(&meta), retention(), shutdown)
            .await
            .unwrap();
        let scoped = Filter {
            prefix: String::new(),
            scope: "in/".into(),
        };
        let (mut sub, _) = notifier.subscribe(None, scoped).await.unwrap();
        let put = meta
            .put(PutRequest {
                path: "out/f".to_string(),
                blob: BlobRef {
                    sha256: "00".repeat(32),
                    size: 1,
                },
                content_type: "x".into(),
                precondition: Precondition::None,
                s3: None,
            })
            .await
            .unwrap();
        meta.rename(&put.meta.id, "out/f", "in/g", false)
            .await
            .unwrap();
        notifier.poke();
        let f = tokio::time::timeout(Duration::from_secs(10), sub.next_frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let e: Event = serde_json::from_slice(&f.json).unwrap();
        assert_eq!(
            e.kind,
            EventKind::Created,
            "a move into the scope reads as a creation"
        );
        assert_eq!(e.from_path, None);
    }
}
