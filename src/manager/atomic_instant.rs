//! An optional [`Instant`] that one thread publishes and others read
//! without a lock: nanoseconds from an epoch in one atomic word, with the
//! memory ordering the caller needs (the queue's head stamp is a plain
//! statistic; the make-room pass's due time pairs with the queue counts).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(super) struct AtomicInstant {
    epoch: Instant,
    /// Nanoseconds from `epoch` plus one; 0: none.
    nanos: AtomicU64,
}

impl AtomicInstant {
    /// None yet; instants before now are stored as now.
    pub(super) fn new() -> AtomicInstant {
        AtomicInstant {
            epoch: Instant::now(),
            nanos: AtomicU64::new(0),
        }
    }

    pub(super) fn get(&self, order: Ordering) -> Option<Instant> {
        match self.nanos.load(order) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }

    pub(super) fn set(&self, at: Option<Instant>, order: Ordering) {
        self.store(self.encode(at), order);
    }

    /// `at` as this word holds it, for [`AtomicInstant::store`]: a caller
    /// that publishes the same instant later (the queue, when an entry
    /// becomes its head) converts it once, ahead of time.
    pub(super) fn encode(&self, at: Option<Instant>) -> u64 {
        at.map_or(0, |at| {
            let since = at.saturating_duration_since(self.epoch).as_nanos();
            u64::try_from(since).map_or(u64::MAX, |n| n + 1)
        })
    }

    /// Stores an [`encode`](AtomicInstant::encode)d instant; a relaxed
    /// store that would change nothing is left out (the queue's head is
    /// often unstamped, pop after pop).
    pub(super) fn store(&self, encoded: u64, order: Ordering) {
        if order != Ordering::SeqCst && self.nanos.load(Ordering::Relaxed) == encoded {
            return;
        }
        self.nanos.store(encoded, order);
    }
}
