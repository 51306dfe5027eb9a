//! Queue-wait deadlines: a thread that refuses a waiting handler the moment
//! its deadline passes, without waiting for it to reach the head.
//!
//! A handler with a deadline waits in the queue inside a shared [`Ticket`];
//! whichever of the worker or this thread takes it out of the ticket first
//! decides its fate. The thread sleeps on a condition variable until the
//! earliest deadline, so an idle manager costs nothing.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use crate::util::lock;

/// A waiting handler that either a worker or the deadline thread claims.
pub(crate) struct Ticket<Q> {
    handler: Mutex<Option<Q>>,
    pub(crate) id: u64,
    pub(crate) source: Option<IpAddr>,
}

impl<Q> Ticket<Q> {
    pub(crate) fn new(handler: Q, id: u64, source: Option<IpAddr>) -> Ticket<Q> {
        Ticket {
            handler: Mutex::new(Some(handler)),
            id,
            source,
        }
    }

    /// Takes the handler out; `None` if the other side already has.
    pub(crate) fn claim(&self) -> Option<Q> {
        lock(&self.handler).take()
    }

    /// Whether the handler is still waiting (nobody claimed it yet).
    fn is_waiting(&self) -> bool {
        lock(&self.handler).is_some()
    }
}

struct Timed<Q> {
    deadline: Instant,
    seq: u64,
    ticket: Arc<Ticket<Q>>,
}

// Ordered so that `BinaryHeap` (a max-heap) pops the earliest deadline.
impl<Q> Ord for Timed<Q> {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}
impl<Q> PartialOrd for Timed<Q> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<Q> PartialEq for Timed<Q> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<Q> Eq for Timed<Q> {}

struct State<Q> {
    heap: BinaryHeap<Timed<Q>>,
    seq: u64,
    stopped: bool,
    /// The heap size at which tickets already claimed by a worker are
    /// swept out; see [`Deadlines::watch`].
    sweep_at: usize,
}

/// The smallest heap worth sweeping.
const MIN_SWEEP: usize = 64;

/// The deadline queue shared by submitters and the deadline thread.
pub(crate) struct Deadlines<Q> {
    state: Mutex<State<Q>>,
    wake: Condvar,
}

impl<Q> Deadlines<Q> {
    pub(crate) fn new() -> Deadlines<Q> {
        Deadlines {
            state: Mutex::new(State {
                heap: BinaryHeap::new(),
                seq: 0,
                stopped: false,
                sweep_at: MIN_SWEEP,
            }),
            wake: Condvar::new(),
        }
    }

    /// Watches `ticket` until `deadline`. Wakes the thread only when the
    /// new deadline is the earliest, which a uniform timeout never is.
    ///
    /// A ticket a worker claimed stays in the heap until its deadline; with
    /// a long timeout those would pile up at the arrival rate. So when the
    /// heap has doubled since the last sweep, claimed tickets are swept
    /// out: the heap stays within about twice the waiting handlers (and
    /// [`MIN_SWEEP`]), at an amortised constant cost per ticket.
    pub(crate) fn watch(&self, deadline: Instant, ticket: Arc<Ticket<Q>>) {
        let mut state = lock(&self.state);
        if state.heap.len() >= state.sweep_at {
            state.heap.retain(|t| t.ticket.is_waiting());
            state.sweep_at = (state.heap.len() * 2).max(MIN_SWEEP);
        }
        let earliest = state.heap.peek().is_none_or(|top| deadline < top.deadline);
        state.seq += 1;
        let seq = state.seq;
        state.heap.push(Timed {
            deadline,
            seq,
            ticket,
        });
        drop(state);
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Ends [`Deadlines::run`] and forgets every ticket.
    pub(crate) fn stop(&self) {
        let mut state = lock(&self.state);
        state.stopped = true;
        state.heap.clear();
        drop(state);
        self.wake.notify_one();
    }

    /// The deadline thread: hands every ticket whose deadline passed to
    /// `expire`, until [`Deadlines::stop`].
    pub(crate) fn run(&self, mut expire: impl FnMut(Arc<Ticket<Q>>)) {
        let mut state = lock(&self.state);
        while !state.stopped {
            let now = Instant::now();
            match state.heap.peek() {
                None => {
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                Some(top) if top.deadline <= now => {
                    let due = state.heap.pop().map(|t| t.ticket);
                    drop(state);
                    if let Some(ticket) = due {
                        expire(ticket);
                    }
                    state = lock(&self.state);
                }
                Some(top) => {
                    let wait = top.deadline - now;
                    state = self
                        .wake
                        .wait_timeout(state, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn claimed_tickets_do_not_pile_up() {
        let deadlines = Deadlines::new();
        let far = Instant::now() + Duration::from_secs(3600);
        let mut waiting = Vec::new();
        for i in 0..10_000u64 {
            let ticket = Arc::new(Ticket::new(i, i, None));
            deadlines.watch(far, ticket.clone());
            // Every tenth handler still waits; the rest were started.
            if i % 10 == 0 {
                waiting.push(ticket);
            } else {
                assert_eq!(ticket.claim(), Some(i));
            }
        }
        let state = lock(&deadlines.state);
        let len = state.heap.len();
        assert!(
            len <= 2 * waiting.len() + MIN_SWEEP,
            "heap holds {len} tickets"
        );
        // Every waiting ticket is still watched.
        let watched = state.heap.iter().filter(|t| t.ticket.is_waiting()).count();
        assert_eq!(watched, waiting.len());
    }
}
