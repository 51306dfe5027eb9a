//! What the manager's handle, its workers and its deadline thread share.

use std::collections::HashMap;
use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::deadline::{Deadlines, Ticket};
use super::refused::Refused;
use super::slot::{Phase, Slot};
use super::stats::Counters;
use crate::admission::Refusal;
use crate::handler::{Handler, Stop};
use crate::util::{lock, panic_message, time_left};

/// Runs `f`, turning a panic into `None` after logging it.
pub(super) fn guarded<T>(what: &str, id: u64, f: impl FnOnce() -> T) -> Option<T> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => Some(value),
        Err(payload) => {
            log::error!(
                "handler {id} panicked in {what}: {}",
                panic_message(&*payload)
            );
            None
        }
    }
}

/// How a waiting handler sits in the queue: owned outright, or inside a
/// ticket the deadline thread may claim first.
pub(super) enum Waiting<Q> {
    Plain(Q),
    Timed(Arc<Ticket<Q>>),
}

impl<Q> Waiting<Q> {
    /// The handler; `None` if the deadline thread claimed it first (and
    /// took it out of the waiting count).
    pub(super) fn claim(self) -> Option<Q> {
        match self {
            Waiting::Plain(handler) => Some(handler),
            Waiting::Timed(ticket) => ticket.claim(),
        }
    }
}

pub(super) struct Entry<Q> {
    pub(super) id: u64,
    /// The canonical source, when the handler reported one.
    pub(super) source: Option<IpAddr>,
    pub(super) queued_at: Instant,
    pub(super) waiting: Waiting<Q>,
}

/// The admission side, under one lock: the policy, per-source counts and
/// the queue's sending end (dropped at shutdown, which wakes every worker).
pub(super) struct Gate<Q, S> {
    pub(super) policy: S,
    pub(super) per_source: HashMap<IpAddr, usize>,
    pub(super) queue: Option<Sender<Entry<Q>>>,
    pub(super) next_id: u64,
    /// Counted here rather than in atomics: the lock is held anyway.
    pub(super) submitted: u64,
    pub(super) admitted: u64,
}

/// Running and waiting counts packed into one word, so that a start
/// (waiting - 1, running + 1) is a single atomic step and admission never
/// sees a handler in neither place.
///
/// Aligned to its own cache line: the submitter and every worker write it.
#[repr(align(128))]
pub(super) struct Counts(pub(super) AtomicU64);

impl Counts {
    const WAITING: u64 = 1;
    const RUNNING: u64 = 1 << 32;

    pub(super) fn get(&self) -> (usize, usize) {
        let word = self.0.load(Ordering::SeqCst);
        ((word >> 32) as usize, (word & 0xFFFF_FFFF) as usize)
    }
    pub(super) fn queued(&self) {
        self.0.fetch_add(Self::WAITING, Ordering::SeqCst);
    }
    /// Returns whether the manager became idle (nothing running or waiting).
    pub(super) fn left_queue(&self) -> bool {
        self.0.fetch_sub(Self::WAITING, Ordering::SeqCst) == Self::WAITING
    }
    pub(super) fn started(&self) {
        self.0
            .fetch_add(Self::RUNNING - Self::WAITING, Ordering::SeqCst);
    }
    /// Returns whether the manager became idle (nothing running or waiting).
    pub(super) fn finished(&self) -> bool {
        self.0.fetch_sub(Self::RUNNING, Ordering::SeqCst) == Self::RUNNING
    }

    pub(super) fn is_idle(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

pub(super) struct ManagerState<Q, S> {
    pub(super) max_running: usize,
    pub(super) gate: Mutex<Gate<Q, S>>,
    /// Workers block here; a shutdown drains it.
    pub(super) queue: Receiver<Entry<Q>>,
    pub(super) counts: Counts,
    /// Counters the submitting side writes; workers count in their slots.
    pub(super) counters: Counters,
    pub(super) slots: Box<[Slot]>,
    pub(super) phase: Arc<Phase>,
    pub(super) closing: AtomicBool,
    /// Signalled when the manager becomes idle while someone waits for it.
    pub(super) idle: (Mutex<()>, Condvar),
    pub(super) idle_waiters: AtomicUsize,
    pub(super) deadlines: Deadlines<Q>,
}

impl<Q, S> ManagerState<Q, S> {
    /// Waits until idle or `deadline` (`None`: none); true if idle.
    pub(super) fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        // Registered before the check: a handler leaving after the check
        // sees the waiter and notifies under the lock (both sides SeqCst).
        self.idle_waiters.fetch_add(1, Ordering::SeqCst);
        let (idle, became_idle) = &self.idle;
        let mut guard = lock(idle);
        let result = loop {
            if self.counts.is_idle() {
                break true;
            }
            let timeout = match deadline.map(time_left) {
                None => Duration::MAX,
                Some(Some(left)) => left,
                Some(None) => break false,
            };
            guard = became_idle
                .wait_timeout(guard, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        drop(guard);
        self.idle_waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Called when a count change left the manager idle.
    pub(super) fn became_idle(&self) {
        if self.idle_waiters.load(Ordering::SeqCst) > 0 {
            let (idle, became_idle) = &self.idle;
            let _guard = lock(idle);
            became_idle.notify_all();
        }
    }

    pub(super) fn left_queue(&self) {
        if self.counts.left_queue() {
            self.became_idle();
        }
    }

    /// Forgets one handler of `source` after it left the system.
    pub(super) fn release_source(&self, source: Option<IpAddr>) {
        let Some(source) = source else { return };
        let mut gate = lock(&self.gate);
        if let Some(count) = gate.per_source.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                gate.per_source.remove(&source);
            }
        }
    }
}

impl<Q: Handler, S> ManagerState<Q, S> {
    pub(super) fn refuse_at_gate(&self, handler: Q, reason: Refusal) -> Refused<Q> {
        self.counters.refused(reason);
        Refused { handler, reason }
    }

    /// Refuses a handler that left the queue; false if it was already gone.
    pub(super) fn refuse_entry(&self, entry: Entry<Q>, reason: Refusal) -> bool {
        let Some(handler) = entry.waiting.claim() else {
            return false;
        };
        self.left_queue();
        self.refuse_waiting(handler, entry.id, entry.source, reason);
        true
    }

    pub(super) fn refuse_waiting(
        &self,
        handler: Q,
        id: u64,
        source: Option<IpAddr>,
        reason: Refusal,
    ) {
        self.release_source(source);
        self.counters.refused(reason);
        guarded("refused", id, || handler.refused(reason));
    }

    /// The deadline thread's verdict on a ticket whose time ran out.
    pub(super) fn expire(&self, ticket: &Ticket<Q>) {
        if let Some(handler) = ticket.claim() {
            self.left_queue();
            self.refuse_waiting(handler, ticket.id, ticket.source, Refusal::QueueTimeout);
        }
    }

    pub(super) fn stop_all(&self, stop: Stop) {
        // The phase first: a hook registered after this sees it at once.
        self.phase.set(stop);
        for slot in self.slots.iter() {
            slot.stop(stop);
        }
    }
}
