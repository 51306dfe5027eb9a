//! When the handlers waiting in the token channel were queued, for the
//! statistics' oldest waiter, read without a lock.
//!
//! A handler that cannot leave the queue early (no deadline, no watched
//! socket) waits in the channel itself, where nothing can peek at it. Each
//! one that waits gets the next number here and its queue time in a ring
//! slot; a worker that takes it marks every number up to its own taken
//! (the channel is FIFO, so they leave in number order). The oldest waiter
//! is then the slot of the first number not taken. With more than
//! [`RING`] waiting at once its slot holds a newer handler's time, and the
//! age read is a lower bound.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

/// Slots in the ring: 8 KiB per manager.
const RING: usize = 1024;

pub(super) struct WaitStamps {
    epoch: Instant,
    /// Numbers given so far; written under the admission lock.
    given: AtomicU64,
    /// Every number below this was taken out of the channel.
    taken: AtomicU64,
    /// Slot `n % RING`: handler `n`'s queue time, in microseconds since
    /// `epoch` plus one.
    ring: Box<[AtomicU64]>,
}

impl WaitStamps {
    pub(super) fn new(epoch: Instant) -> WaitStamps {
        WaitStamps {
            epoch,
            given: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            ring: (0..RING).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records a handler queued at `at` that waits in the channel; returns
    /// its number. Called under the admission lock, in channel order.
    pub(super) fn push(&self, at: Instant) -> u64 {
        let n = self.given.load(Relaxed);
        let micros = u64::try_from(at.saturating_duration_since(self.epoch).as_micros())
            .map_or(u64::MAX, |m| m + 1);
        self.slot(n).store(micros, Relaxed);
        // Publishes the slot with the number.
        self.given.store(n + 1, Release);
        n
    }

    fn slot(&self, n: u64) -> &AtomicU64 {
        let i = usize::try_from(n % RING as u64).expect("below RING");
        &self.ring[i]
    }

    /// Handler `n` left the channel.
    pub(super) fn took(&self, n: u64) {
        if self.taken.load(Relaxed) <= n {
            self.taken.fetch_max(n + 1, Release);
        }
    }

    /// When the oldest handler still waiting in the channel was queued.
    pub(super) fn oldest(&self) -> Option<Instant> {
        let taken = self.taken.load(Acquire);
        if taken >= self.given.load(Acquire) {
            return None;
        }
        let micros = self.slot(taken).load(Relaxed);
        (micros != 0).then(|| self.epoch + Duration::from_micros(micros - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_is_the_first_not_taken() {
        let epoch = Instant::now();
        let stamps = WaitStamps::new(epoch);
        assert_eq!(stamps.oldest(), None);
        let at = |ms| epoch + Duration::from_millis(ms);
        let ids: Vec<u64> = (1..=3).map(|ms| stamps.push(at(ms))).collect();
        assert_eq!(ids, [0, 1, 2]);
        assert_eq!(stamps.oldest(), Some(at(1)));
        // Two workers: the second handler is marked first.
        stamps.took(1);
        assert_eq!(stamps.oldest(), Some(at(3)));
        stamps.took(0);
        assert_eq!(stamps.oldest(), Some(at(3)), "taken never goes back");
        stamps.took(2);
        assert_eq!(stamps.oldest(), None);
    }

    #[test]
    fn more_waiting_than_the_ring_reads_a_lower_bound() {
        let epoch = Instant::now();
        let stamps = WaitStamps::new(epoch);
        for ms in 0..=RING as u64 {
            stamps.push(epoch + Duration::from_millis(ms + 1));
        }
        // Slot 0 now holds number RING's time, queued later.
        assert_eq!(
            stamps.oldest(),
            Some(epoch + Duration::from_millis(RING as u64 + 1))
        );
    }
}
