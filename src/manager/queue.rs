//! The waiting queue: FIFO by id, with removal from the middle.
//!
//! A ring buffer of `(id, entry)` in arrival order (ids rise). The head is
//! taken in O(1) with no shifting, which is the hand-off's hot path; a
//! handler leaving from the middle (deadline, hang-up) is found by binary
//! search and its entry taken out at once, so its handler (socket, buffers)
//! is freed when it leaves. The place it held stays as a hole until the
//! head passes it, or until holes outnumber the waiting handlers, when the
//! buffer is compacted: memory stays within about twice the waiting
//! handlers at an amortised constant cost per removal.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use super::clock::Stamp;
use super::state::Entry;

/// When the head of the queue was queued, published by the queue as its
/// head changes and read without the queue's lock (the statistics'
/// oldest waiter, read on every request by some servers). None: no head,
/// or a head with no stamp (one starting at once on an idle worker).
#[derive(Default)]
pub(super) struct HeadStamp(AtomicU64);

impl HeadStamp {
    pub(super) fn get(&self) -> Option<Stamp> {
        Stamp::from_nanos(self.0.load(Relaxed))
    }

    /// A plain statistic: relaxed, and left alone when unchanged (the
    /// head is often unstamped, pop after pop).
    fn set(&self, nanos: u64) {
        if self.0.load(Relaxed) != nanos {
            self.0.store(nanos, Relaxed);
        }
    }
}

/// Holes tolerated before compacting, whatever the number waiting.
const MIN_HOLES: usize = 64;

/// A place in the queue: an entry, or the hole one left.
struct Place<Q> {
    id: u64,
    /// The entry's queue time as the head stamp holds it (0: none).
    stamp: u64,
    entry: Option<Entry<Q>>,
}

pub(super) struct Queue<Q> {
    /// In id order; the front, if any, is never a hole.
    places: VecDeque<Place<Q>>,
    /// Entries that are not holes.
    waiting: usize,
    head: Arc<HeadStamp>,
}

impl<Q> Queue<Q> {
    /// An empty queue that publishes its head's stamp in `head`.
    pub(super) fn new(head: Arc<HeadStamp>) -> Queue<Q> {
        Queue {
            places: VecDeque::new(),
            waiting: 0,
            head,
        }
    }

    /// Appends `entry`; its id must be above every id queued before.
    pub(super) fn push(&mut self, entry: Entry<Q>) {
        debug_assert!(self.places.back().is_none_or(|p| p.id < entry.id));
        let first = self.places.is_empty();
        self.places.push_back(Place {
            id: entry.id,
            stamp: entry.queued_at.map_or(0, Stamp::nanos),
            entry: Some(entry),
        });
        self.waiting += 1;
        if first {
            self.publish_head();
        }
    }

    /// Puts `entry` back in id order: a handler taken out of the hand-off
    /// channel unstarted, older than the ones queued after it. Rare (a
    /// worker retiring, a hang-up meeting the channel's head), so the
    /// shift it may cost does not matter.
    pub(super) fn insert(&mut self, entry: Entry<Q>) {
        let i = self.places.partition_point(|p| p.id < entry.id);
        debug_assert!(self.places.get(i).is_none_or(|p| p.id != entry.id));
        self.places.insert(
            i,
            Place {
                id: entry.id,
                stamp: entry.queued_at.map_or(0, Stamp::nanos),
                entry: Some(entry),
            },
        );
        self.waiting += 1;
        if i == 0 {
            self.publish_head();
        }
    }

    /// Takes the head.
    pub(super) fn pop(&mut self) -> Option<Entry<Q>> {
        let entry = self.places.pop_front()?.entry;
        self.waiting -= 1;
        self.skip_holes();
        self.publish_head();
        entry
    }

    /// The head: the handler that has waited longest.
    #[cfg(test)]
    fn first(&self) -> Option<&Entry<Q>> {
        self.places.front().and_then(|p| p.entry.as_ref())
    }

    pub(super) fn get(&self, id: u64) -> Option<&Entry<Q>> {
        let i = self.position(id)?;
        self.places[i].entry.as_ref()
    }

    pub(super) fn contains(&self, id: u64) -> bool {
        self.get(id).is_some()
    }

    /// Takes handler `id` out of the queue, wherever it is.
    pub(super) fn remove(&mut self, id: u64) -> Option<Entry<Q>> {
        let i = self.position(id)?;
        let entry = self.places[i].entry.take()?;
        self.waiting -= 1;
        self.skip_holes();
        if i == 0 {
            self.publish_head();
        }
        let holes = self.places.len() - self.waiting;
        if holes > self.waiting.max(MIN_HOLES) {
            self.places.retain(|p| p.entry.is_some());
            // A burst that has left gives its memory back too.
            if self.places.capacity() > 4 * self.places.len().max(MIN_HOLES) {
                self.places.shrink_to(2 * self.places.len());
            }
        }
        Some(entry)
    }

    /// Takes every waiting handler out, in queue order.
    pub(super) fn take_all(&mut self) -> Vec<Entry<Q>> {
        self.waiting = 0;
        let places = std::mem::take(&mut self.places);
        self.publish_head();
        places.into_iter().filter_map(|p| p.entry).collect()
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.places.binary_search_by_key(&id, |p| p.id).ok()
    }

    fn publish_head(&self) {
        self.head.set(self.places.front().map_or(0, |p| p.stamp));
    }

    /// Keeps the head a waiting handler.
    fn skip_holes(&mut self) {
        while self.places.front().is_some_and(|p| p.entry.is_none()) {
            self.places.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64) -> Entry<u64> {
        Entry {
            id,
            source: None,
            key: None,
            queued_at: Stamp::from_nanos(id + 1),
            watched: false,
            handler: id,
        }
    }

    fn queue() -> Queue<u64> {
        Queue::new(Arc::new(HeadStamp::default()))
    }

    fn ids(queue: &mut Queue<u64>) -> Vec<u64> {
        std::iter::from_fn(|| queue.pop().map(|e| e.handler)).collect()
    }

    #[test]
    fn pops_in_order_skipping_those_that_left() {
        let mut queue = queue();
        for id in 1..=6 {
            queue.push(entry(id));
        }
        assert_eq!(queue.remove(1).map(|e| e.handler), Some(1));
        assert_eq!(queue.remove(4).map(|e| e.handler), Some(4));
        assert!(queue.remove(4).is_none(), "gone already");
        assert!(queue.remove(9).is_none(), "never queued");
        assert_eq!(queue.first().map(|e| e.id), Some(2));
        assert_eq!(queue.head.get(), queue.first().and_then(|e| e.queued_at));
        assert!(queue.contains(5) && !queue.contains(4));
        assert_eq!(ids(&mut queue), [2, 3, 5, 6]);
        assert!(queue.first().is_none());
        assert_eq!(queue.head.get(), None);
    }

    #[test]
    fn holes_never_outnumber_the_waiting_for_long() {
        let mut queue = queue();
        queue.push(entry(0));
        // The head stays; everyone behind it leaves, as with a flood of
        // clients that hang up while every slot is held.
        for id in 1..100_000 {
            queue.push(entry(id));
            queue.remove(id);
            assert!(queue.places.len() <= 2 + MIN_HOLES);
        }
        assert!(queue.places.capacity() <= 4 * (2 + MIN_HOLES) + 8);
        assert_eq!(ids(&mut queue), [0]);
    }

    #[test]
    fn an_entry_put_back_takes_its_place_by_id() {
        let mut queue = queue();
        for id in [2, 4, 6] {
            queue.push(entry(id));
        }
        queue.remove(2);
        queue.insert(entry(1));
        queue.insert(entry(5));
        assert_eq!(queue.first().map(|e| e.id), Some(1));
        assert_eq!(queue.head.get(), queue.first().and_then(|e| e.queued_at));
        assert_eq!(ids(&mut queue), [1, 4, 5, 6]);
    }

    #[test]
    fn take_all_keeps_the_order() {
        let mut queue = queue();
        for id in 1..=5 {
            queue.push(entry(id));
        }
        queue.remove(3);
        let all: Vec<u64> = queue.take_all().into_iter().map(|e| e.handler).collect();
        assert_eq!(all, [1, 2, 4, 5]);
        assert!(queue.pop().is_none());
    }
}
