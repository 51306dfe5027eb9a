//! Counters and the snapshots made from them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::admission::Refusal;

/// A snapshot of a manager's counters; see [`Manager::stats`](crate::Manager::stats).
///
/// Every submitted handler ends up in exactly one place, so at any quiet
/// moment `submitted == running + waiting + completed + failed + panicked +
/// abandoned + refused_total()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Handlers running now.
    pub running: usize,
    /// Handlers queued and not yet started.
    pub waiting: usize,
    /// Handlers ever passed to [`submit`](crate::Manager::submit).
    pub submitted: u64,
    /// Handlers the admission policy queued.
    pub admitted: u64,
    /// Handlers whose `run` returned `Ok`.
    pub completed: u64,
    /// Handlers whose `run` returned `Err`.
    pub failed: u64,
    /// Handlers whose `run` panicked.
    pub panicked: u64,
    /// Handlers dropped unrun because their client left while they waited.
    pub abandoned: u64,
    /// How long the oldest waiting handler has waited; zero when none
    /// waits. A queue building up shows here first.
    pub oldest_waiting: Duration,
    /// The queue-wait time of every handler that left the queue to run,
    /// summed (HAProxy's `qtime`, as a total: divide by the handlers
    /// started for a mean).
    pub queue_wait_total: Duration,
    /// The longest queue wait of a handler that left the queue to run
    /// (HAProxy's `qtmax`).
    pub queue_wait_max: Duration,
    /// Refusals by reason, indexed as [`Refusal::ALL`]; see [`Stats::refused`].
    refused: [u64; Refusal::ALL.len()],
}

impl Stats {
    /// Handlers refused for `reason`, at submission or while waiting.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason.index()]
    }

    /// Handlers refused for any reason.
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().sum()
    }
}

/// Refusal counts, on a cache line of their own (the manager keeps them
/// in a `CachePadded`) so that refusing does not slow the workers down.
/// (Submissions and admissions are counted under the admission lock;
/// completions in each worker's slot.)
#[derive(Default)]
pub(crate) struct Counters {
    /// Counted under the admission lock, read without it.
    pub(crate) submitted: AtomicU64,
    pub(crate) admitted: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    /// Waiting handlers the watcher found abandoned.
    pub(crate) abandoned: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Counts one on a counter that one thread at a time writes (under
    /// the admission lock, or a worker its own counters): a load and a
    /// store, no read-modify-write.
    #[inline]
    pub(crate) fn bump_sole(counter: &AtomicU64) {
        counter.store(counter.load(Relaxed) + 1, Relaxed);
    }

    pub(crate) fn refused(&self, reason: Refusal) {
        Self::bump(&self.refused[reason.index()]);
    }

    /// The snapshot, before the workers' counts are added.
    pub(crate) fn snapshot(&self, running: usize, waiting: usize) -> Stats {
        Stats {
            running,
            waiting,
            submitted: self.submitted.load(Relaxed),
            admitted: self.admitted.load(Relaxed),
            refused: self.refused.each_ref().map(|c| c.load(Relaxed)),
            abandoned: self.abandoned.load(Relaxed),
            ..Stats::default()
        }
    }
}

/// One worker's counters, beside its slot: only that worker writes them.
/// A cache line each, so workers never write to one another's line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct WorkerCounters {
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    /// Queue-wait nanoseconds of the handlers started here: sum and max.
    waited_total: AtomicU64,
    waited_max: AtomicU64,
    /// Stamped handlers this worker took out of the hand-off channel
    /// (see `WaitStamps`).
    pub(crate) stamped_taken: AtomicU64,
}

impl WorkerCounters {
    /// Adds these counters to `totals`: summed as plain integers, converted
    /// once by [`WorkerTotals::add_to`].
    pub(crate) fn add_to(&self, totals: &mut WorkerTotals) {
        totals.completed += self.completed.load(Relaxed);
        totals.failed += self.failed.load(Relaxed);
        totals.panicked += self.panicked.load(Relaxed);
        totals.abandoned += self.abandoned.load(Relaxed);
        let waited = self.waited_total.load(Relaxed);
        totals.waited_total = totals.waited_total.saturating_add(waited);
        totals.waited_max = totals.waited_max.max(self.waited_max.load(Relaxed));
        totals.stamped_taken += self.stamped_taken.load(Relaxed);
    }

    /// Counts a handler that waited `nanos` before it started. Only this
    /// slot's worker writes, so plain loads and stores suffice.
    #[inline]
    pub(crate) fn waited(&self, nanos: u64) {
        let total = self.waited_total.load(Relaxed).saturating_add(nanos);
        self.waited_total.store(total, Relaxed);
        if nanos > self.waited_max.load(Relaxed) {
            self.waited_max.store(nanos, Relaxed);
        }
    }
}

/// Every worker's counters summed.
#[derive(Default)]
pub(crate) struct WorkerTotals {
    completed: u64,
    failed: u64,
    panicked: u64,
    abandoned: u64,
    waited_total: u64,
    waited_max: u64,
    pub(crate) stamped_taken: u64,
}

impl WorkerTotals {
    pub(crate) fn add_to(&self, stats: &mut Stats) {
        stats.completed += self.completed;
        stats.failed += self.failed;
        stats.panicked += self.panicked;
        stats.abandoned += self.abandoned;
        stats.queue_wait_total = Duration::from_nanos(self.waited_total);
        stats.queue_wait_max = Duration::from_nanos(self.waited_max);
    }
}

/// What [`Manager::shutdown`](crate::Manager::shutdown) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Waiting handlers refused with [`Refusal::ShuttingDown`].
    pub refused_waiting: u64,
    /// Handlers that were running when the shutdown began.
    pub running_at_start: usize,
    /// Of those, handlers still running when the grace period ended, and
    /// so asked to stop at once with [`Stop::Now`](crate::Stop::Now).
    pub cut: usize,
    /// How long the shutdown took, joining every thread included.
    pub took: Duration,
}
