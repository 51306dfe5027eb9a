//! When the handlers waiting in the hand-off channel were queued, for the
//! statistics' oldest waiter, read without a lock.
//!
//! A handler that cannot leave the queue early (no deadline, no watched
//! socket) waits in the channel itself, where nothing can peek at it. Each
//! one that waits (it was stamped at submission) gets the next number
//! here and its queue time in a ring slot; whoever takes a stamped one out
//! of the channel counts it taken: a worker in its own counters (no shared
//! write on the hot path), anyone else (a shutdown, a hang-up moving it
//! to the gate's queue) here. The channel is FIFO, so the first `k` taken
//! are numbers `0..k`, and the oldest waiter is the slot of number `k` (a
//! count bumped just after its `recv` lags by the handlers being started
//! at that moment). With more than
//! [`RING`] waiting at once its slot holds a newer handler's time, and the
//! age read is a lower bound.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use super::clock::Stamp;

/// Slots in the ring: 8 KiB per manager.
const RING: usize = 1024;

pub(super) struct WaitStamps {
    /// Numbers given so far; written under the admission lock.
    given: AtomicU64,
    /// Stamped handlers taken out of the channel other than by a worker
    /// about to start them.
    taken: AtomicU64,
    /// Slot `n % RING`: handler `n`'s queue time ([`Stamp::nanos`]).
    ring: Box<[AtomicU64]>,
}

impl WaitStamps {
    pub(super) fn new() -> WaitStamps {
        WaitStamps {
            given: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            ring: (0..RING).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records a handler queued at `at` that waits in the channel. Called
    /// under the admission lock, in channel order.
    #[inline]
    pub(super) fn push(&self, at: Stamp) {
        let n = self.given.load(Relaxed);
        self.slot(n).store(at.nanos(), Relaxed);
        // Publishes the slot with the number.
        self.given.store(n + 1, Release);
    }

    #[inline]
    fn slot(&self, n: u64) -> &AtomicU64 {
        let i = usize::try_from(n % RING as u64).expect("below RING");
        &self.ring[i]
    }

    /// A stamped handler left the channel, not to start.
    pub(super) fn took_one(&self) {
        self.taken.fetch_add(1, Release);
    }

    /// When the oldest handler still waiting in the channel was queued,
    /// given how many stamped ones the workers took to start.
    pub(super) fn oldest(&self, started: u64) -> Option<Stamp> {
        let taken = self.taken.load(Acquire) + started;
        if taken >= self.given.load(Acquire) {
            return None;
        }
        Stamp::from_nanos(self.slot(taken).load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Stamp {
        Stamp::from_nanos(ms * 1_000_000).unwrap()
    }

    #[test]
    fn the_oldest_is_the_first_not_taken() {
        let stamps = WaitStamps::new();
        assert_eq!(stamps.oldest(0), None);
        for ms in 1..=3 {
            stamps.push(at(ms));
        }
        assert_eq!(stamps.oldest(0), Some(at(1)));
        stamps.took_one();
        assert_eq!(stamps.oldest(0), Some(at(2)));
        // Two started by workers.
        assert_eq!(stamps.oldest(1), Some(at(3)));
        assert_eq!(stamps.oldest(2), None);
    }

    #[test]
    fn more_waiting_than_the_ring_reads_a_lower_bound() {
        let stamps = WaitStamps::new();
        for ms in 0..=RING as u64 {
            stamps.push(at(ms + 1));
        }
        // Slot 0 now holds number RING's time, queued later.
        assert_eq!(stamps.oldest(0), Some(at(RING as u64 + 1)));
    }
}
