//! The live channel from the hub to the subscriptions: one event, many receivers.
//!
//! A tokio `broadcast` channel wakes its waiting receivers in rounds of 32 under the channel's
//! one lock, and every woken receiver takes that lock again to wait for the next event. With
//! 10,000 subscribers on one channel, the hub and the receivers it has just woken hand the
//! lock back and forth some 300 times per event, each handoff a thread sleep and wake-up:
//! measured, the session threads were idle 70% of the time while an event took hundreds of
//! milliseconds to reach everyone. The live channel is therefore [`SHARDS`] broadcast
//! channels: a subscription listens on one (round robin), and the hub sends each event (one
//! shared `Arc`, serialized once) to all of them, so the receivers of one shard re-register
//! while the hub wakes the next.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

use super::{Published, BROADCAST_CAPACITY};

/// Broadcast channels of the live feed.
pub(super) const SHARDS: usize = 32;

/// The hub's side: sends to every shard.
pub(super) struct LiveSender {
    shards: Vec<broadcast::Sender<Arc<Published>>>,
    /// The highest seq sent (see [`LiveTemplates::sent`]).
    sent: Arc<AtomicI64>,
}

impl LiveSender {
    /// Sends `event` to every shard. A shard without receivers drops it (nothing to do).
    pub(super) fn send(&self, event: Arc<Published>) {
        // Before the shards: a receiver that reads the new seq and finds its shard still
        // without it only looks again later.
        self.sent.fetch_max(event.event.seq, Ordering::Release);
        for shard in &self.shards {
            let _ = shard.send(Arc::clone(&event));
        }
    }
}

/// Receivers that never read, one per shard, kept only to `resubscribe()` new
/// subscriptions. A broadcast channel overwrites old slots whatever its receivers do, so
/// they hold no memory beyond the channels' fixed slots.
pub(super) struct LiveTemplates {
    shards: Vec<broadcast::Receiver<Arc<Published>>>,
    sent: Arc<AtomicI64>,
}

impl LiveTemplates {
    /// The highest seq the hub has sent (0 before the first): a subscription that has
    /// delivered it has nothing waiting in its shard, and need not take the shard's lock to
    /// find that out (10,000 subscribers on 32 shards do so at every event).
    pub(super) fn sent(&self) -> Arc<AtomicI64> {
        Arc::clone(&self.sent)
    }

    /// A receiver of shard `n % SHARDS`, seeing what the hub sends from now on.
    pub(super) fn subscribe(&self, n: u64) -> broadcast::Receiver<Arc<Published>> {
        let len = self.shards.len().max(1) as u64;
        let index = usize::try_from(n % len).unwrap_or(0);
        self.shards
            .get(index)
            .map_or_else(|| broadcast::channel(1).1, broadcast::Receiver::resubscribe)
    }
}

/// The live channel: [`SHARDS`] broadcast channels of [`BROADCAST_CAPACITY`] events each.
pub(super) fn channel() -> (LiveSender, LiveTemplates) {
    let (senders, receivers) = (0..SHARDS)
        .map(|_| broadcast::channel(BROADCAST_CAPACITY))
        .unzip();
    let sent = Arc::new(AtomicI64::new(0));
    (
        LiveSender {
            shards: senders,
            sent: Arc::clone(&sent),
        },
        LiveTemplates {
            shards: receivers,
            sent,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::metadata::{Event, EventKind};

    fn event(seq: i64) -> Arc<Published> {
        let e = Event {
            seq,
            kind: EventKind::Created,
            id: format!("f{seq}"),
            path: format!("p/{seq}"),
            from_path: None,
            version: 1,
            size: 0,
            sha256: String::new(),
            at: "2026-12-01T00:00:00Z".into(),
            trash_id: None,
            restored_from: None,
            commit: None,
            commit_size: None,
        };
        Arc::new(Published::new(e).unwrap())
    }

    #[tokio::test]
    async fn every_shard_sees_every_event_in_order_and_closes_with_the_sender() {
        let (tx, templates) = channel();
        let mut rxs: Vec<_> = (0..(SHARDS as u64 * 2))
            .map(|n| templates.subscribe(n))
            .collect();
        let sent = templates.sent();
        assert_eq!(sent.load(Ordering::Acquire), 0);
        for seq in 1..=3 {
            tx.send(event(seq));
            assert_eq!(sent.load(Ordering::Acquire), seq);
        }
        drop(tx);
        for rx in &mut rxs {
            for seq in 1..=3 {
                assert_eq!(rx.recv().await.unwrap().event.seq, seq);
            }
            assert!(matches!(
                rx.recv().await,
                Err(broadcast::error::RecvError::Closed)
            ));
        }
    }
}
