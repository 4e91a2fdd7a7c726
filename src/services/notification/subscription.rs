//! One subscriber's side of the feed: its [`Filter`] (prefix and token scope) and the
//! gapless [`Subscription`] stream, which reads the live channel and falls back to the log.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::{Frame, Item, Published, CATCH_UP_BATCH};
use crate::services::metadata::{Event, EventKind, MetadataError, MetadataStore};

fn matches(e: &Event, prefix: &str) -> bool {
    prefix.is_empty()
        || e.path.starts_with(prefix)
        || e.from_path
            .as_deref()
            .is_some_and(|p| p.starts_with(prefix))
}

/// What one subscriber sees: events under `prefix` (what it asked for), as seen from inside
/// `scope` (its token's prefix; empty: everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub(crate) prefix: String,
    pub(crate) scope: String,
}

impl Filter {
    #[cfg(test)]
    pub(crate) fn prefix(prefix: impl Into<String>) -> Self {
        Filter {
            prefix: prefix.into(),
            scope: String::new(),
        }
    }

    /// A prefix every event this filter shows has as its path or source path (the longer of
    /// the two: one contains the other, or nothing is shown at all).
    pub(super) fn narrowest(&self) -> &str {
        if self.scope.len() > self.prefix.len() {
            &self.scope
        } else {
            &self.prefix
        }
    }

    /// The event as this subscriber may see it, or `None`. A path outside the scope is never
    /// shown: a move out of the scope reads as a deletion of the source, a move or copy into
    /// it as a creation (without the outside source path).
    pub fn view(&self, e: &Event) -> Option<Event> {
        match self.classify(e) {
            View::Hidden => None,
            View::Same => Some(e.clone()),
            View::Changed(scoped) => Some(*scoped),
        }
    }

    /// [`Filter::view`] without copying an event this subscriber sees unchanged.
    fn classify(&self, e: &Event) -> View {
        let scoped = if self.scope.is_empty() {
            None
        } else {
            let inside = |p: &str| p.starts_with(&self.scope);
            let from_inside = e.from_path.as_deref().map(inside);
            match (inside(&e.path), from_inside) {
                (true, None | Some(true)) => None,
                (true, Some(false)) => Some(Event {
                    kind: EventKind::Created,
                    from_path: None,
                    ..e.clone()
                }),
                (false, Some(true)) if e.kind == EventKind::Moved => Some(Event {
                    kind: EventKind::Deleted,
                    path: e.from_path.clone().unwrap_or_default(),
                    from_path: None,
                    ..e.clone()
                }),
                (false, _) => return View::Hidden,
            }
        };
        match scoped {
            None if matches(e, &self.prefix) => View::Same,
            Some(scoped) if matches(&scoped, &self.prefix) => View::Changed(Box::new(scoped)),
            _ => View::Hidden,
        }
    }
}

/// How one subscriber sees one event.
enum View {
    Hidden,
    Same,
    /// Boxed: rare (a move or copy across a token's scope).
    Changed(Box<Event>),
}

/// A gapless, ordered stream of events for one subscriber.
pub struct Subscription {
    pub(super) meta: Arc<dyn MetadataStore>,
    pub(super) rx: broadcast::Receiver<Arc<Published>>,
    /// The highest seq the hub has sent on the live channel (see `live::LiveTemplates::sent`).
    pub(super) live_sent: Arc<std::sync::atomic::AtomicI64>,
    /// Highest seq delivered or skipped (filtered out).
    pub(super) last: i64,
    pub(super) filter: Filter,
    /// Reading from the log instead of the channel (replay, or after falling behind).
    pub(super) behind: bool,
    /// Read from the log, not yet delivered (at most [`CATCH_UP_BATCH`]).
    pub(super) pending: VecDeque<Event>,
    pub(super) catch_up_reads: u64,
    pub(super) registration: CursorRegistration,
}

pub(super) type Cursors =
    Arc<std::sync::Mutex<std::collections::HashMap<u64, Arc<std::sync::atomic::AtomicI64>>>>;

/// A subscription's position, visible to `/metrics` (lag) until the subscription is dropped.
pub(super) struct CursorRegistration {
    pub(super) id: u64,
    pub(super) cursor: Arc<std::sync::atomic::AtomicI64>,
    /// The hub's registry (its mutex guards the id -> position map), left on drop.
    pub(super) registry: Cursors,
}

impl Drop for CursorRegistration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.lock() {
            map.remove(&self.id);
        }
    }
}

impl Subscription {
    /// How many catch-up reads from the log this subscription made (replay and lag).
    pub fn catch_up_reads(&self) -> u64 {
        self.catch_up_reads
    }

    /// The next matching event; `Ok(None)` once the feed has closed (server shutting down).
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Result<Option<Event>, MetadataError> {
        Ok(self.next_item().await?.map(Item::into_event))
    }

    /// [`Subscription::next`] as its JSON text: the bytes the hub serialized once for every
    /// subscriber, unless this subscriber's view differs or the event came from the log.
    /// Cancel-safe.
    pub(crate) async fn next_frame(&mut self) -> Result<Option<Frame>, MetadataError> {
        self.next_item().await?.map(Item::into_frame).transpose()
    }

    /// The next frame if one is ready without waiting (buffered from a catch-up read, or
    /// already in the channel), for sending several in one write. `None` means "nothing
    /// ready now", also when the subscriber lagged or the feed closed: the next
    /// [`Subscription::next_frame`] deals with those.
    pub(crate) fn try_next_frame(&mut self) -> Result<Option<Frame>, MetadataError> {
        loop {
            self.publish_cursor();
            if let Some(e) = self.pending.pop_front() {
                return Frame::of(&e).map(Some);
            }
            if self.behind {
                return Ok(None);
            }
            // Nothing newer than what this subscription has was sent: its shard has nothing
            // for it now (asking would take the shard's lock).
            if self.last >= self.live_sent.load(std::sync::atomic::Ordering::Acquire) {
                return Ok(None);
            }
            match self.rx.try_recv() {
                Ok(p) => match self.accept(p) {
                    Some(item) => return item.into_frame().map(Some),
                    None => continue,
                },
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.behind = true;
                    return Ok(None);
                }
                Err(
                    broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed,
                ) => return Ok(None),
            }
        }
    }

    fn publish_cursor(&self) {
        self.registration
            .cursor
            .store(self.last, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes one broadcast event: what to deliver, or `None` (already delivered, filtered
    /// out, or a gap, which switches to reading the log).
    fn accept(&mut self, p: Arc<Published>) -> Option<Item> {
        let seq = p.event.seq;
        if seq <= self.last {
            return None; // already delivered by the replay
        }
        if seq != self.last + 1 {
            self.behind = true; // a gap: the log has it
            return None;
        }
        self.last = seq;
        match self.filter.classify(&p.event) {
            View::Hidden => None,
            View::Same => Some(Item::Shared(p)),
            View::Changed(e) => Some(Item::Own(e)),
        }
    }

    async fn next_item(&mut self) -> Result<Option<Item>, MetadataError> {
        loop {
            self.publish_cursor();
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(Item::Own(Box::new(e))));
            }
            if self.behind {
                let batch = self.meta.events_after(self.last, CATCH_UP_BATCH).await?;
                self.catch_up_reads += 1;
                metrics::counter!("vaultfs_sync_catchup_reads_total").increment(1);
                if batch.len() < CATCH_UP_BATCH {
                    self.behind = false;
                }
                for e in batch {
                    self.last = e.seq;
                    if let Some(seen) = self.filter.view(&e) {
                        self.pending.push_back(seen);
                    }
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(p) => {
                    if let Some(item) = self.accept(p) {
                        return Ok(Some(item));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::debug!(
                        skipped,
                        last = self.last,
                        "subscriber lagged; catching up from the log"
                    );
                    self.behind = true;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
            }
        }
    }
}

/// Resolves once `rx` reads true (or its sender is gone). The `watch` read guard that
/// `wait_for` returns is not `Send`; this drops it before returning, so callers may await
/// after selecting on it.
pub async fn until_true(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
