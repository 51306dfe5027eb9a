//! The [`Manager`] handle: submitting, observing and shutting down.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::refused::Refused;
use super::slot::{RunningInfo, Slot};
use super::state::{Entry, Gate, ManagerState, Msg};
use super::stats::{Counters, ShutdownReport, Stats};
use crate::admission::{Admission, Arrival, Decision, Key, MaxWaiting, Refusal, canonical_source};
use crate::handler::{Handler, Stop};
use crate::util::lock;

/// Runs handlers with at most `max_running` at a time, in arrival order,
/// behind an admission policy.
///
/// The two parameters: `Q` is the handler type that waits in the queue
/// (one [`Handler`] per client), `S` is the admission strategy
/// ([`Admission`]) that screens each arrival.
///
/// Build one with [`ManagerBuilder`](crate::ManagerBuilder); hand it work with
/// [`submit`](Manager::submit); end it with [`shutdown`](Manager::shutdown).
/// All methods take `&self`, so a manager can be shared (e.g. in an `Arc`)
/// between an accepting thread and a signal handler.
///
/// # Threads
///
/// `max_running` worker threads are started up front and reused: each
/// takes the next handler the moment its previous one ends.
/// [`set_max_running`](Manager::set_max_running) starts more, or lets
/// surplus ones retire after their current handler. One more
/// thread enforces queue-wait deadlines. Idle, they all sleep in the
/// kernel and use no CPU.
///
/// # Drop
///
/// Dropping a manager that was not shut down is
/// `shutdown(Duration::ZERO)`: waiting handlers are refused with
/// [`Refusal::ShuttingDown`], running ones are asked to stop at once
/// ([`Stop::Now`]), and the drop blocks until every thread is joined.
/// A shutdown called inside one of the manager's own handlers panics
/// rather than wait for itself; the last drop there stops the manager
/// without waiting (see [`Drop`](#impl-Drop-for-Manager<Q,+S>)).
pub struct Manager<Q: Handler, S: Admission = MaxWaiting> {
    pub(super) shared: Arc<ManagerState<Q, S>>,
    pub(super) threads: Mutex<Option<Vec<JoinHandle<()>>>>,
    pub(super) report: Mutex<Option<ShutdownReport>>,
}

impl<Q: Handler, S: Admission> Manager<Q, S> {
    /// Offers a handler to the admission policy.
    ///
    /// - `Ok(())`: it was queued. It will be run, refused when its queue
    ///   deadline passes or a shutdown begins, or dropped as abandoned.
    /// - `Err(refused)`: the policy refused it, or the manager is shutting
    ///   down ([`Refusal::ShuttingDown`]); the handler comes back inside.
    ///
    /// Never blocks beyond the brief admission lock.
    ///
    /// # Panics
    ///
    /// If the admission policy panics; the handler is dropped and nothing
    /// is counted.
    pub fn submit(&self, handler: Q) -> Result<(), Refused<Q>> {
        self.shared.submit(handler, true)
    }
}

impl<Q: Handler, S: Admission> ManagerState<Q, S> {
    /// [`Manager::submit`]; `wake_idle`: whether to wake a worker waiting
    /// on the source for it (not when the submitting worker takes it).
    pub(super) fn submit(&self, handler: Q, wake_idle: bool) -> Result<(), Refused<Q>> {
        let shared = self;
        let source = handler.source().map(canonical_source);
        let key = handler
            .key()
            .or_else(|| source.map(|ip| Key::from_source(ip, shared.ipv6_prefix)));
        let mut gate = lock(&shared.gate);
        if gate.channel.is_none() {
            Counters::bump_sole(&shared.counters.submitted);
            drop(gate);
            return Err(shared.refuse_at_gate(handler, Refusal::ShuttingDown));
        }
        let (running, waiting) = shared.counts.get();
        let id = gate.next_id;
        let arrival = Arrival {
            id,
            source,
            key,
            running,
            waiting,
            max_running: shared.workers.target(),
            now: Cell::new(None),
        };
        // Counted once the policy has decided (and heard it admitted): a
        // policy that panics leaves no trace in the counts.
        let decision = gate.policy.decide(&arrival);
        if !matches!(decision, Decision::Refuse(_)) {
            // From here on the policy hears of its departure, once.
            gate.policy.admitted(&arrival);
        }
        Counters::bump_sole(&shared.counters.submitted);
        let deadline = match decision {
            Decision::Refuse(reason) => {
                drop(gate);
                return Err(shared.refuse_at_gate(handler, reason));
            }
            Decision::Queue => None,
            Decision::QueueUntil(deadline) => Some(deadline),
        };
        gate.next_id += 1;
        // Every slot taken: it will wait, so watch its client.
        let will_wait = running + waiting >= shared.workers.target();
        let watched = will_wait
            && handler
                .socket()
                .is_some_and(|socket| shared.watcher.register(socket, id));
        shared.counts.queued();
        Counters::bump_sole(&shared.counters.admitted);
        // A handler that will wait is stamped now, for its queue-wait time;
        // one that starts at once on an idle worker takes its start as its
        // arrival (no wait).
        let queued_at = will_wait.then(|| shared.clock.stamp());
        let entry = Entry {
            id,
            source,
            key,
            queued_at,
            watched,
            handler,
        };
        // A handler that may leave the queue early (a deadline passing
        // while it waits, a watched client hanging up) waits in the gate's
        // queue, where it can be taken out, with a token in the channel.
        // Any other goes into the channel itself: no admission lock for
        // its worker. Sent under the lock, so the channel keeps the order
        // of ids even between submitting threads (`stress` in
        // tests/manager.rs checks it); a send that wakes a parked worker
        // makes a futex call under the lock, which costs only when a
        // policy's departures want the lock at that moment.
        let deadline = deadline.filter(|_| will_wait);
        if deadline.is_none() && !watched {
            if let Some(at) = queued_at {
                shared.stamps.push(at);
            }
            if let Some(channel) = &gate.channel {
                // The receiver lives as long as `shared`: this cannot fail.
                let _ = channel.send(Msg::Start(entry));
            }
            drop(gate);
            if wake_idle {
                shared.message_sent();
            }
        } else {
            gate.waiting.push(entry);
            // Watched only once queued: the deadline thread finds it there.
            let earliest = deadline.is_some_and(|deadline| {
                let Gate {
                    deadlines, waiting, ..
                } = &mut *gate;
                deadlines.watch(deadline, id, |id| waiting.contains(id))
            });
            // The token is sent after the lock is released, so the worker
            // it wakes does not block at once on the lock the sender
            // holds. A shutdown in between refuses the handler; the token
            // then finds nothing, and the clone's drop ends the channel.
            let channel = gate.channel.clone();
            drop(gate);
            if let Some(channel) = channel {
                let _ = channel.send(Msg::Token);
                if wake_idle {
                    shared.message_sent();
                }
            }
            if earliest {
                shared.deadline_wake.notify_all();
            }
        }
        if will_wait {
            shared.room_needed();
        }
        Ok(())
    }
}

impl<Q: Handler, S: Admission> Manager<Q, S> {
    /// A snapshot of the counters. Cheap enough to read on every request:
    /// atomic loads (a few, and seven per worker slot) with no lock and no
    /// write to shared memory, and a clock read while someone waits.
    pub fn stats(&self) -> Stats {
        let shared = &*self.shared;
        let (running, waiting) = shared.counts.get();
        let mut stats = shared.counters.snapshot(running, waiting);
        let started = shared.workers.slots().sum_counters(&mut stats);
        // A head with no stamp is starting on an idle worker: no wait.
        let oldest = match (shared.head.get(), shared.stamps.oldest(started)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        stats.oldest_waiting =
            oldest.map_or(Duration::ZERO, |at| shared.clock.instant(at).elapsed());
        stats
    }

    /// Calls `f` with the admission policy, under the admission lock: no
    /// arrival is decided and no handler departs meanwhile. For changing
    /// a policy at run time (a maintenance switch, a new cap) or reading
    /// its counts. `f` must be quick and must not call back into this
    /// manager (the lock is not reentrant).
    ///
    /// ```
    /// use filesrv::{ManagerBuilder, PerSourceCap};
    /// # use filesrv::{Manager, BoxHandler};
    ///
    /// # fn main() -> std::io::Result<()> {
    /// let manager: Manager<BoxHandler, _> =
    ///     ManagerBuilder::new(2).admission(PerSourceCap::new(4)).build()?;
    /// let key = filesrv::Key::Source("10.0.0.1".parse().unwrap());
    /// assert_eq!(manager.with_policy(|cap| cap.count(&key)), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_policy<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut lock(&self.shared.gate).policy)
    }

    /// The handlers running now, in no particular order.
    pub fn running(&self) -> Vec<RunningInfo> {
        let slots = self.shared.workers.slots();
        slots.iter().filter_map(Slot::info).collect()
    }

    /// The bound on running handlers; see
    /// [`set_max_running`](Manager::set_max_running).
    pub fn max_running(&self) -> usize {
        self.shared.workers.target()
    }

    /// Blocks until nothing runs or waits. Handlers submitted meanwhile
    /// are waited for too.
    pub fn wait_idle(&self) {
        self.shared.wait_idle(None);
    }

    /// Blocks until nothing runs or waits, or until `timeout` passes.
    ///
    /// - `true`: the manager was idle at some moment before the timeout.
    /// - `false`: the timeout passed first.
    pub fn wait_idle_timeout(&self, timeout: Duration) -> bool {
        self.shared.wait_idle(Instant::now().checked_add(timeout))
    }

    /// Blocks until nothing runs or waits, or until `deadline`.
    ///
    /// - `true`: the manager was idle at some moment before the deadline.
    /// - `false`: the deadline passed first.
    pub fn wait_idle_deadline(&self, deadline: Instant) -> bool {
        self.shared.wait_idle(Some(deadline))
    }

    /// Whether [`shutdown`](Manager::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.closing.load(Ordering::SeqCst)
    }

    /// Stops the manager and joins every thread it started.
    ///
    /// 1. Admission closes: later [`submit`](Manager::submit)s are refused
    ///    with [`Refusal::ShuttingDown`].
    /// 2. Every waiting handler is refused with [`Refusal::ShuttingDown`].
    /// 3. Running handlers get [`Stop::Graceful`] through their stop hooks
    ///    and until `grace` has passed to finish.
    /// 4. Those still running then get [`Stop::Now`], and the call waits
    ///    for them to return before joining the threads.
    ///
    /// A handler that ignores both stops delays this call until it returns.
    /// Calling it again, or from several threads at once, is safe: the
    /// first call does the work and every call returns its report.
    ///
    /// # Panics
    ///
    /// If called from inside one of this manager's own handlers (on one of
    /// its workers): the call would wait for its own handler to return.
    pub fn shutdown(&self, grace: Duration) -> ShutdownReport {
        assert!(
            !self.shared.on_own_worker(),
            "Manager::shutdown called from inside one of its own handlers"
        );
        let mut report = lock(&self.report);
        if let Some(report) = *report {
            return report;
        }
        let shared = &*self.shared;
        let began = Instant::now();
        let deadline = began.checked_add(grace);
        shared.close();

        let running_at_start = shared.counts.get().0;
        shared.stop_all(Stop::Graceful);
        shared.wait_idle(deadline);
        let cut = shared.counts.get().0;
        if cut > 0 {
            shared.stop_all(Stop::Now);
        }

        let threads = lock(&self.threads).take().unwrap_or_default();
        for thread in threads {
            // Handlers run under catch_unwind, so a worker never panics.
            let _ = thread.join();
        }
        let done = ShutdownReport {
            // Read once every worker is joined: each refusal is counted.
            refused_waiting: shared.refused_waiting.load(Ordering::Relaxed),
            running_at_start,
            cut,
            took: began.elapsed(),
        };
        *report = Some(done);
        done
    }
}

impl<Q: Handler, S: Admission> Drop for Manager<Q, S> {
    /// `shutdown(Duration::ZERO)`; dropped on one of its own workers (the
    /// last handle dropped inside a handler), it cannot wait for itself:
    /// it closes admission, refuses the waiting handlers, asks the running
    /// ones to stop at once, and lets its threads end on their own.
    fn drop(&mut self) {
        if self.shared.on_own_worker() {
            self.shared.close();
            self.shared.stop_all(Stop::Now);
            return;
        }
        self.shutdown(Duration::ZERO);
    }
}

impl<Q: Handler, S: Admission> fmt::Debug for Manager<Q, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("max_running", &self.max_running())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
