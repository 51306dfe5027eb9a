//! The workers' slots and counters, read without a lock.
//!
//! Slots are only ever added (a retired worker's slot is reused, never
//! removed), so the list is append-only: chunk `k` holds `2^k` slots and
//! is allocated when the first of them is added, and a slot once added
//! never moves. Each worker's counters sit beside the slots in a dense
//! array, a cache line each, so that summing them for the statistics
//! reads one line per worker in order. Readers ([`Manager::stats`](crate::Manager::stats) on
//! every request, the make-room pass, a shutdown calling stop hooks) load
//! the length and walk the chunks, with no lock and no write to shared
//! memory; the rare writer (a worker starting on a new slot) holds the
//! lock of the free list.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

use super::slot::Slot;
use super::stats::{Stats, WorkerCounters, WorkerTotals};

/// Enough chunks for 2^32 - 1 slots, above the bound on `max_running`.
const CHUNKS: usize = 32;

struct Chunk {
    slots: Box<[CachePadded<OnceLock<Slot>>]>,
    counters: Box<[WorkerCounters]>,
}

pub(super) struct SlotList {
    chunks: [OnceLock<Chunk>; CHUNKS],
    /// Slots added; every slot below it is initialised.
    len: AtomicUsize,
}

/// The chunk holding slot `index`, and its place there.
fn locate(index: usize) -> (usize, usize) {
    let chunk = (usize::BITS - 1 - (index + 1).leading_zeros()) as usize;
    (chunk, index + 1 - (1 << chunk))
}

impl SlotList {
    pub(super) fn new() -> SlotList {
        SlotList {
            chunks: [const { OnceLock::new() }; CHUNKS],
            len: AtomicUsize::new(0),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Slot `index`, which must have been added.
    pub(super) fn get(&self, index: usize) -> &Slot {
        let (chunk, at) = locate(index);
        self.chunks[chunk]
            .get()
            .and_then(|chunk| chunk.slots[at].get())
            .expect("a slot below the length is initialised")
    }

    /// The counters of slot `index`, which must have been added; only its
    /// worker writes them.
    pub(super) fn counters(&self, index: usize) -> &WorkerCounters {
        let (chunk, at) = locate(index);
        let chunk = self.chunks[chunk].get().expect("the slot was added");
        &chunk.counters[at]
    }

    /// Adds every worker's counters to `stats`.
    /// Adds every worker's counters to `stats`; returns how many stamped
    /// handlers the workers took out of the channel (for `WaitStamps`).
    pub(super) fn sum_counters(&self, stats: &mut Stats) -> u64 {
        let mut totals = WorkerTotals::default();
        let mut left = self.len();
        for chunk in self.chunks.iter().map_while(OnceLock::get) {
            let here = left.min(chunk.counters.len());
            for counters in &chunk.counters[..here] {
                counters.add_to(&mut totals);
            }
            left -= here;
        }
        totals.add_to(stats);
        totals.stamped_taken
    }

    /// Every slot added so far, in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Slot> {
        (0..self.len()).map(|index| self.get(index))
    }

    /// Adds `slot`; returns its index. Callers must not push concurrently
    /// (the free list's lock serialises them).
    pub(super) fn push(&self, slot: Slot) -> usize {
        let index = self.len.load(Ordering::Relaxed);
        let (chunk, at) = locate(index);
        let chunk = self.chunks[chunk].get_or_init(|| Chunk {
            slots: (0..1usize << chunk)
                .map(|_| CachePadded::new(OnceLock::new()))
                .collect(),
            counters: (0..1usize << chunk)
                .map(|_| WorkerCounters::default())
                .collect(),
        });
        assert!(
            chunk.slots[at].set(slot).is_ok(),
            "slot {index} added twice"
        );
        // Published after it is initialised.
        self.len.store(index + 1, Ordering::Release);
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_double_and_cover_every_index() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(1), (1, 0));
        assert_eq!(locate(2), (1, 1));
        assert_eq!(locate(3), (2, 0));
        assert_eq!(locate(6), (2, 3));
        assert_eq!(locate(7), (3, 0));
        assert_eq!(locate((1 << 31) - 1), (31, 0));
        assert_eq!(locate((1 << 32) - 2), (31, (1 << 31) - 1));
    }
}
