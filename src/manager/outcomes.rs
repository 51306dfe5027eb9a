//! What the manager hands back: a refused handler, its counters, the
//! shutdown's report.

use std::fmt;
use std::time::{Duration, Instant};

use crate::admission::{Outcome, Refusal};
use crate::handler::Handler;

/// A handler submitted but refused; it comes back to the caller.
///
/// Like crossbeam's `TrySendError::Full(T)`, the refusal hands the value
/// back: the caller can still talk to the client, typically through
/// [`Refused::notify`], which calls [`Handler::refused`].
pub struct Refused<Q> {
    pub(super) handler: Q,
    pub(super) reason: Refusal,
}

impl<Q: Handler> Refused<Q> {
    /// Why the handler was refused.
    pub fn reason(&self) -> Refusal {
        self.reason
    }

    /// The handler, back in the caller's hands.
    pub fn into_handler(self) -> Q {
        self.handler
    }

    /// Tells the handler it was refused ([`Handler::refused`]) and drops it.
    pub fn notify(self) {
        self.handler.refused(self.reason);
    }
}

impl<Q> fmt::Debug for Refused<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refused")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<Q> fmt::Display for Refused<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handler refused: {}", self.reason)
    }
}

impl<Q> std::error::Error for Refused<Q> {}

/// A snapshot of a manager's counters; see [`Manager::stats`](crate::Manager::stats).
///
/// Every submitted handler ends up in exactly one place, and the counts
/// are read under the lock that moves handlers between places, so
/// `submitted == running + waiting + parked + completed + failed +
/// panicked + abandoned + refused_total()` in every snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Handlers running now.
    pub running: usize,
    /// Handlers queued and not yet started.
    pub waiting: usize,
    /// Handlers parked until their client sends more (see
    /// [`Handler::serve`](crate::Handler::serve)).
    pub parked: usize,
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

    /// Counts a handler that left the manager, whatever the way.
    pub(super) fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Completed => self.completed += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Panicked => self.panicked += 1,
            Outcome::Abandoned => self.abandoned += 1,
            Outcome::Refused(reason) => self.refused[reason.index()] += 1,
        }
    }

    /// Counts a handler leaving the queue to run, queued at `queued_at`.
    pub(super) fn started(&mut self, queued_at: Instant, now: Instant) {
        let waited = now.saturating_duration_since(queued_at);
        self.queue_wait_total += waited;
        self.queue_wait_max = self.queue_wait_max.max(waited);
    }
}

/// What [`Manager::shutdown`](crate::Manager::shutdown) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Waiting handlers refused with [`Refusal::ShuttingDown`].
    pub refused_waiting: u64,
    /// Parked handlers closed (refused with [`Refusal::ShuttingDown`]).
    pub closed_parked: u64,
    /// Handlers that were running when the shutdown began.
    pub running_at_start: usize,
    /// Of those, handlers still running when the grace period ended, and
    /// so asked to stop at once with [`Stop::Now`](crate::Stop::Now).
    pub cut: usize,
    /// How long the shutdown took, joining every thread included.
    pub took: Duration,
}
