//! What the manager's handle, its workers, its deadline thread and its
//! watcher share.

use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use crossbeam_utils::CachePadded;

use super::atomic_instant::AtomicInstant;
use super::clock::{CoarseClock, Stamp};
use super::deadline::Deadlines;
use super::queue::{HeadStamp, Queue};
use super::refused::Refused;
use super::resize::Workers;
use super::room::BusyLimits;
use super::slot::Phase;
use super::source::Sourced;
use super::stats::Counters;
use super::wait_stamps::WaitStamps;
use super::watcher::Watcher;
use crate::admission::{Admission, Departure, Key, Outcome, Refusal};
use crate::handler::{Handler, Stop};
use crate::util::{lock, panic_message, time_left};
use std::sync::Arc;

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

/// A waiting handler.
pub(super) struct Entry<Q> {
    pub(super) id: u64,
    /// The canonical source, when the handler reported one.
    pub(super) source: Option<IpAddr>,
    /// What the policy counts it by.
    pub(super) key: Option<Key>,
    /// When it was queued; `None` if it was queued with a running place
    /// free, to start at once (its start is then its arrival).
    pub(super) queued_at: Option<Stamp>,
    /// Whether the watcher watches its socket.
    pub(super) watched: bool,
    pub(super) handler: Q,
}

/// What the hand-off channel carries to the workers, in arrival order.
pub(super) enum Msg<Q> {
    /// Take the head of the gate's queue. One per handler queued there,
    /// and spare ones to wake a worker (to retire, say); a worker that
    /// finds the queue empty waits again.
    Token,
    /// A handler that cannot leave the queue early (no deadline, no
    /// watched socket): it waits here, in the channel itself, and the
    /// worker that takes it starts it without the admission lock.
    Start(Entry<Q>),
}

/// The admission side and the queue, under one lock: the policy, the
/// waiting handlers and their deadlines.
///
/// The queue is FIFO by id ([`Queue`]), and a handler that leaves from the
/// middle (deadline, hang-up) is removed at once, taking its memory with
/// it. Only such handlers wait here; the rest wait in the hand-off
/// channel ([`Msg`]), where workers sleep.
pub(super) struct Gate<Q, S> {
    pub(super) policy: S,
    /// The hand-off channel's only sender, dropped at shutdown, which
    /// wakes every worker.
    pub(super) channel: Option<Sender<Msg<Q>>>,
    pub(super) waiting: Queue<Q>,
    pub(super) deadlines: Deadlines,
    pub(super) next_id: u64,
}

/// Running and waiting counts packed into one word, so that a start
/// (waiting - 1, running + 1) is a single atomic step and admission never
/// sees a handler in neither place.
///
/// On its own cache line: the submitter and every worker write it.
pub(super) struct Counts(pub(super) CachePadded<AtomicU64>);

impl Counts {
    const WAITING: u64 = 1;
    const RUNNING: u64 = 1 << 32;

    #[inline]
    pub(super) fn get(&self) -> (usize, usize) {
        let word = self.0.load(Ordering::SeqCst);
        ((word >> 32) as usize, (word & 0xFFFF_FFFF) as usize)
    }
    #[inline]
    pub(super) fn queued(&self) {
        self.0.fetch_add(Self::WAITING, Ordering::SeqCst);
    }
    /// Returns whether the manager became idle (nothing running or waiting).
    #[inline]
    pub(super) fn left_queue(&self) -> bool {
        self.0.fetch_sub(Self::WAITING, Ordering::SeqCst) == Self::WAITING
    }
    #[inline]
    pub(super) fn started(&self) {
        self.0
            .fetch_add(Self::RUNNING - Self::WAITING, Ordering::SeqCst);
    }
    /// A handler that ended hands its running place to the head of the
    /// queue: waiting - 1, running unchanged.
    #[inline]
    pub(super) fn handed_on(&self) {
        self.0.fetch_sub(Self::WAITING, Ordering::SeqCst);
    }
    /// Returns whether the manager became idle (nothing running or waiting).
    #[inline]
    pub(super) fn finished(&self) -> bool {
        self.0.fetch_sub(Self::RUNNING, Ordering::SeqCst) == Self::RUNNING
    }

    #[inline]
    pub(super) fn is_idle(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

/// How a handler left the queue without running.
#[derive(Clone, Copy)]
pub(super) enum Left {
    Refused(Refusal),
    Abandoned,
}

impl Left {
    fn outcome(self) -> Outcome {
        match self {
            Left::Refused(reason) => Outcome::Refused(reason),
            Left::Abandoned => Outcome::Abandoned,
        }
    }
}

impl<Q, S: Admission> Gate<Q, S> {
    /// Tells the policy an admitted handler left. A policy that panics
    /// here is logged, and the manager goes on.
    pub(super) fn depart(&mut self, id: u64, key: Option<Key>, outcome: Outcome) {
        if !S::HEARS_DEPARTURES {
            return;
        }
        let departure = Departure { id, key, outcome };
        guarded("Admission::departed", id, || {
            self.policy.departed(&departure);
        });
    }
}

pub(super) struct ManagerState<Q, S> {
    /// The bound on running handlers, the workers and their slots.
    pub(super) workers: Workers,
    /// The prefix length IPv6 sources are grouped by into keys.
    pub(super) ipv6_prefix: u8,
    /// On a line of its own: every submission writes it, and a worker
    /// reading a neighbour (the busy limits, say) would pull the line away
    /// from the submitter on every job.
    pub(super) gate: CachePadded<Mutex<Gate<Q, S>>>,
    /// The deadline thread sleeps on this, with the gate lock.
    pub(super) deadline_wake: Condvar,
    /// The hand-off channel: workers block here.
    pub(super) channel: Receiver<Msg<Q>>,
    pub(super) counts: Counts,
    /// When the head of the queue was queued, for reading without the lock.
    pub(super) head: Arc<HeadStamp>,
    /// When the handlers waiting in the channel were queued; written on
    /// every submission that waits, so on a line of its own too.
    pub(super) stamps: CachePadded<WaitStamps>,
    /// Queue and start times.
    pub(super) clock: Arc<CoarseClock>,
    /// Waiting handlers refused because a shutdown began.
    pub(super) refused_waiting: AtomicU64,
    /// Counters the submitting side writes; workers count in their slots.
    pub(super) counters: CachePadded<Counters>,
    pub(super) phase: Arc<Phase>,
    pub(super) closing: AtomicBool,
    /// Signalled when the manager becomes idle while someone waits for it.
    pub(super) idle: (Mutex<()>, Condvar),
    pub(super) idle_waiters: AtomicUsize,
    pub(super) watcher: Watcher,
    pub(super) limits: BusyLimits,
    /// When the next make-room pass is due; `None`: now.
    pub(super) room_due: AtomicInstant,
    /// Running handlers asked to make room that have not left yet.
    pub(super) asked: AtomicUsize,
    /// Where idle workers take handlers themselves, if anywhere.
    pub(super) source: Option<Sourced<Q>>,
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

    /// Wakes the watcher for a make-room pass, if any limit is set and
    /// someone waits.
    pub(super) fn room_needed(&self) {
        if self.limits.any() && self.counts.get().1 > 0 && self.room_pass_due() {
            self.watcher.wake();
        }
    }
}

impl<Q: Handler, S: Admission> ManagerState<Q, S> {
    pub(super) fn refuse_at_gate(&self, handler: Q, reason: Refusal) -> Refused<Q> {
        self.counters.refused(reason);
        Refused { handler, reason }
    }

    /// Settles a handler taken out of the gate's queue (under the gate
    /// lock, where the policy was told of its departure) that will not
    /// run, and takes a message out of the channel in its token's stead.
    pub(super) fn leave_queue(&self, entry: Entry<Q>, how: Left) {
        self.settle(entry, how);
        // Its token stays behind unless one is taken here (tokens are
        // alike); a worker that took it already finds the queue without
        // this entry and waits again. A handler at the channel's head
        // moves to the gate's queue instead, where that token finds it.
        if let Ok(Msg::Start(entry)) = self.channel.try_recv() {
            self.requeue(entry);
        }
    }

    /// Counts and settles a handler that left the queue without running.
    /// Its outcome is counted before it leaves the waiting count, so the
    /// counts add up the moment the manager looks idle.
    fn settle(&self, entry: Entry<Q>, how: Left) {
        match how {
            Left::Refused(reason) => {
                if reason == Refusal::ShuttingDown {
                    self.refused_waiting.fetch_add(1, Ordering::Relaxed);
                }
                self.counters.refused(reason);
            }
            Left::Abandoned => Counters::bump(&self.counters.abandoned),
        }
        if self.counts.left_queue() {
            self.became_idle();
        }
        let Entry { id, handler, .. } = entry;
        match how {
            Left::Refused(reason) => {
                guarded("refused", id, || handler.refused(reason));
            }
            Left::Abandoned => {
                log::debug!("handler {id} abandoned while waiting");
                guarded("drop", id, || drop(handler));
            }
        }
    }

    /// Puts a handler taken out of the channel, unstarted, into the gate's
    /// queue in id order (it is older than those queued after it); true
    /// if queued, false if refused because a shutdown began. The caller
    /// sees to its token.
    pub(super) fn requeue(&self, mut entry: Entry<Q>) -> bool {
        let mut gate = lock(&self.gate);
        if gate.channel.is_none() {
            drop(gate);
            self.refuse_late(entry);
            return false;
        }
        if entry.queued_at.is_some() {
            self.stamps.took_one();
        }
        entry.queued_at.get_or_insert_with(|| self.clock.stamp());
        gate.waiting.insert(entry);
        true
    }

    /// Refuses a handler taken out of the channel after a shutdown began.
    pub(super) fn refuse_late(&self, entry: Entry<Q>) {
        if entry.queued_at.is_some() {
            self.stamps.took_one();
        }
        let how = Left::Refused(Refusal::ShuttingDown);
        if S::HEARS_DEPARTURES {
            lock(&self.gate).depart(entry.id, entry.key, how.outcome());
        }
        self.settle(entry, how);
    }

    /// The deadline thread: refuses each waiting handler the moment its
    /// deadline passes, until the queue closes. Sleeps until the earliest
    /// deadline, so an idle manager costs nothing.
    pub(super) fn expire_loop(&self) {
        let mut gate = lock(&self.gate);
        while gate.channel.is_some() {
            let now = Instant::now();
            if let Some(id) = gate.deadlines.pop_due(now) {
                if let Some(entry) = gate.waiting.remove(id) {
                    let how = Left::Refused(Refusal::QueueTimeout);
                    gate.depart(id, entry.key, how.outcome());
                    drop(gate);
                    self.leave_queue(entry, how);
                    gate = lock(&self.gate);
                }
                continue;
            }
            gate = match gate.deadlines.next() {
                None => self
                    .deadline_wake
                    .wait(gate)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(due) => {
                    self.deadline_wake
                        .wait_timeout(gate, due - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// The watcher thread: takes waiting handlers whose clients hung up
    /// out of the queue, and runs make-room passes, until shutdown.
    pub(super) fn watch_loop(&self) {
        let mut events = Watcher::events();
        while !self.closing.load(Ordering::SeqCst) {
            let next = self.make_room();
            self.watcher.wait(next, &mut events, |id| self.hung_up(id));
        }
    }

    /// A watched socket reported a hang-up or error: if its handler still
    /// waits and says its client is gone, it leaves the queue now.
    fn hung_up(&self, id: u64) {
        let mut gate = lock(&self.gate);
        let Some(entry) = gate.waiting.get(id) else {
            return;
        };
        // A peek, under the lock: it must not block.
        if !guarded("is_abandoned", id, || entry.handler.is_abandoned()).unwrap_or(true) {
            return;
        }
        let Some(entry) = gate.waiting.remove(id) else {
            return;
        };
        gate.depart(id, entry.key, Outcome::Abandoned);
        drop(gate);
        self.leave_queue(entry, Left::Abandoned);
    }

    /// Closes admission and refuses every waiting handler in the gate's
    /// queue; workers refuse those still in the channel as they take them.
    /// Later calls find nothing to do.
    pub(super) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let (channel, waiting) = {
            let mut gate = lock(&self.gate);
            gate.deadlines.clear();
            let waiting = gate.waiting.take_all();
            for entry in &waiting {
                let outcome = Outcome::Refused(Refusal::ShuttingDown);
                gate.depart(entry.id, entry.key, outcome);
            }
            (gate.channel.take(), waiting)
        };
        // Without a sender, workers see the channel disconnect once the
        // messages left in it are taken, and exit after their handler.
        drop(channel);
        self.source_closed();
        self.deadline_wake.notify_all();
        self.watcher.wake();
        for entry in waiting {
            self.leave_queue(entry, Left::Refused(Refusal::ShuttingDown));
        }
        // Those waiting in the channel are refused now too, not when a
        // worker frees up; a worker taking one meanwhile refuses it.
        while let Ok(msg) = self.channel.try_recv() {
            if let Msg::Start(entry) = msg {
                self.refuse_late(entry);
            }
        }
    }

    pub(super) fn stop_all(&self, stop: Stop) {
        // The phase first: a hook registered after this sees it at once.
        self.phase.set(stop);
        for slot in self.workers.slots().iter() {
            slot.stop(stop);
        }
    }
}
