//! Queue-wait deadlines: the heap of `(deadline, id)` the deadline thread
//! sleeps on, kept under the admission lock beside the queue itself, so a
//! deadline can never be seen before its handler is queued.
//!
//! An entry whose handler already left the queue (started, abandoned)
//! stays until its deadline passes or a sweep removes it; see
//! [`Deadlines::watch`].

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Clone, Copy)]
struct Timed {
    deadline: Instant,
    id: u64,
}

// Ordered so that `BinaryHeap` (a max-heap) pops the earliest deadline,
// and among equal deadlines the earliest arrival.
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.deadline, other.id).cmp(&(self.deadline, self.id))
    }
}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Timed {}

/// The smallest heap worth sweeping.
const MIN_SWEEP: usize = 64;

/// Deadlines of waiting handlers, by id.
pub(crate) struct Deadlines {
    heap: BinaryHeap<Timed>,
    /// The heap size at which entries of handlers gone from the queue are
    /// swept out.
    sweep_at: usize,
}

impl Deadlines {
    pub(crate) fn new() -> Deadlines {
        Deadlines {
            heap: BinaryHeap::new(),
            sweep_at: MIN_SWEEP,
        }
    }

    /// Watches handler `id` until `deadline`; true if it is now the
    /// earliest (the deadline thread must wake to re-arm its timer).
    ///
    /// When the heap has doubled since the last sweep, entries whose
    /// handler no longer waits (`waiting(id)` false) are swept out: the
    /// heap stays within about twice the waiting handlers (and
    /// [`MIN_SWEEP`]) at an amortised constant cost per entry.
    pub(crate) fn watch(
        &mut self,
        deadline: Instant,
        id: u64,
        waiting: impl Fn(u64) -> bool,
    ) -> bool {
        if self.heap.len() >= self.sweep_at {
            self.heap.retain(|t| waiting(t.id));
            self.sweep_at = (self.heap.len() * 2).max(MIN_SWEEP);
        }
        let earliest = self.heap.peek().is_none_or(|top| deadline < top.deadline);
        self.heap.push(Timed { deadline, id });
        earliest
    }

    /// The earliest deadline, if any.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|t| t.deadline)
    }

    /// Takes out the id of the earliest entry if its deadline passed.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<u64> {
        if self.next()? <= now {
            self.heap.pop().map(|t| t.id)
        } else {
            None
        }
    }

    pub(crate) fn clear(&mut self) {
        self.heap.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    #[test]
    fn entries_of_departed_handlers_do_not_pile_up() {
        let mut deadlines = Deadlines::new();
        let far = Instant::now() + Duration::from_secs(3600);
        // Every tenth handler still waits; the rest left the queue.
        let mut waiting = HashSet::new();
        for id in 0..10_000u64 {
            if id % 10 == 0 {
                waiting.insert(id);
            }
            deadlines.watch(far, id, |id| waiting.contains(&id));
        }
        let len = deadlines.heap.len();
        assert!(len <= 2 * waiting.len() + MIN_SWEEP, "heap holds {len}");
        let watched = deadlines
            .heap
            .iter()
            .filter(|t| waiting.contains(&t.id))
            .count();
        assert_eq!(watched, waiting.len());
    }

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let mut deadlines = Deadlines::new();
        let now = Instant::now();
        assert!(deadlines.watch(now + Duration::from_secs(2), 1, |_| true));
        assert!(deadlines.watch(now + Duration::from_secs(1), 2, |_| true));
        assert!(!deadlines.watch(now + Duration::from_secs(3), 3, |_| true));
        assert_eq!(deadlines.pop_due(now), None);
        let later = now + Duration::from_secs(2);
        assert_eq!(deadlines.pop_due(later), Some(2));
        assert_eq!(deadlines.pop_due(later), Some(1));
        assert_eq!(deadlines.pop_due(later), None);
    }
}
