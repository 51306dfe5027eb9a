//! An optional [`Instant`] that one thread publishes and others read
//! without a lock: nanoseconds from an epoch in one atomic word, with the
//! memory ordering the caller needs (the make-room pass's due time pairs
//! with the queue counts, in sequential order).

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
        let nanos = at.map_or(0, |at| {
            let since = at.saturating_duration_since(self.epoch).as_nanos();
            u64::try_from(since).map_or(u64::MAX, |n| n + 1)
        });
        self.nanos.store(nanos, order);
    }
}
