//! The [`Manager`]: a FIFO waiting queue, a bounded running set, and the
//! worker threads that move handlers from one to the other.
//!
//! Threads: `max_running` workers and one deadline thread, all started by
//! [`Builder::build`] and joined by [`Manager::shutdown`]. A worker blocks
//! on the queue (a crossbeam channel); a handler arriving there wakes one
//! worker directly, and a worker that finishes takes the next handler at
//! once, so there is no polling anywhere.

mod deadline;
mod slot;
mod stats;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::admission::{Admission, Arrival, Decision, MaxWaiting, Refusal, canonical_source};
use crate::handler::{Handler, Running, Stop};
use deadline::{Deadlines, Ticket};
use slot::Phase;
pub use slot::RunningInfo;
pub(crate) use slot::Slot;
use stats::Counters;
pub use stats::{ShutdownReport, Stats};

/// Locks a mutex, ignoring poison: every critical section in this crate
/// leaves its data consistent, and handlers run outside of them.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The time left until `deadline`; `None` once it has passed.
pub(crate) fn time_left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
}

/// Runs `f`, turning a panic into `None` after logging it.
fn guarded<T>(what: &str, id: u64, f: impl FnOnce() -> T) -> Option<T> {
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

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}

/// A handler submitted but refused; it comes back to the caller.
///
/// Like crossbeam's `TrySendError::Full(T)`, the refusal hands the value
/// back: the caller can still talk to the client, typically through
/// [`Refused::notify`], which calls [`Handler::refused`].
pub struct Refused<Q> {
    handler: Q,
    reason: Refusal,
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

/// How a waiting handler sits in the queue: owned outright, or inside a
/// ticket the deadline thread may claim first.
enum Waiting<Q> {
    Plain(Q),
    Timed(Arc<Ticket<Q>>),
}

impl<Q> Waiting<Q> {
    /// The handler; `None` if the deadline thread claimed it first (and
    /// took it out of the waiting count).
    fn claim(self) -> Option<Q> {
        match self {
            Waiting::Plain(handler) => Some(handler),
            Waiting::Timed(ticket) => ticket.claim(),
        }
    }
}

struct Entry<Q> {
    id: u64,
    /// The canonical source, when the handler reported one.
    source: Option<IpAddr>,
    queued_at: Instant,
    waiting: Waiting<Q>,
}

/// The admission side, under one lock: the policy, per-source counts and
/// the queue's sending end (dropped at shutdown, which wakes every worker).
struct Gate<Q, S> {
    policy: S,
    per_source: HashMap<IpAddr, usize>,
    queue: Option<Sender<Entry<Q>>>,
    next_id: u64,
    /// Counted here rather than in atomics: the lock is held anyway.
    submitted: u64,
    admitted: u64,
}

/// Running and waiting counts packed into one word, so that a start
/// (waiting - 1, running + 1) is a single atomic step and admission never
/// sees a handler in neither place.
///
/// Aligned to its own cache line: the submitter and every worker write it.
#[repr(align(128))]
struct Counts(AtomicU64);

impl Counts {
    const WAITING: u64 = 1;
    const RUNNING: u64 = 1 << 32;

    fn get(&self) -> (usize, usize) {
        let word = self.0.load(Ordering::SeqCst);
        ((word >> 32) as usize, (word & 0xFFFF_FFFF) as usize)
    }
    fn queued(&self) {
        self.0.fetch_add(Self::WAITING, Ordering::SeqCst);
    }
    /// Returns whether the manager became idle (nothing running or waiting).
    fn left_queue(&self) -> bool {
        self.0.fetch_sub(Self::WAITING, Ordering::SeqCst) == Self::WAITING
    }
    fn started(&self) {
        self.0
            .fetch_add(Self::RUNNING - Self::WAITING, Ordering::SeqCst);
    }
    /// Returns whether the manager became idle (nothing running or waiting).
    fn finished(&self) -> bool {
        self.0.fetch_sub(Self::RUNNING, Ordering::SeqCst) == Self::RUNNING
    }

    fn is_idle(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

struct Shared<Q, S> {
    max_running: usize,
    gate: Mutex<Gate<Q, S>>,
    /// Workers block here; a shutdown drains it.
    queue: Receiver<Entry<Q>>,
    counts: Counts,
    /// Counters the submitting side writes; workers count in their slots.
    counters: Counters,
    slots: Box<[Slot]>,
    phase: Arc<Phase>,
    closing: AtomicBool,
    /// Signalled when the manager becomes idle while someone waits for it.
    idle: (Mutex<()>, Condvar),
    idle_waiters: AtomicUsize,
    deadlines: Deadlines<Q>,
}

/// Runs handlers with at most `max_running` at a time, in arrival order,
/// behind an admission policy.
///
/// The two parameters: `Q` is the handler type that waits in the queue
/// (one [`Handler`] per client), `S` is the admission strategy
/// ([`Admission`]) that screens each arrival.
///
/// Build one with [`Builder`]; hand it work with
/// [`submit`](Manager::submit); end it with [`shutdown`](Manager::shutdown).
/// All methods take `&self`, so a manager can be shared (e.g. in an `Arc`)
/// between an accepting thread and a signal handler.
///
/// # Threads
///
/// `max_running` worker threads are started up front and reused: each
/// takes the next handler the moment its previous one ends. One more
/// thread enforces queue-wait deadlines. Idle, they all sleep in the
/// kernel and use no CPU.
///
/// # Drop
///
/// Dropping a manager that was not shut down is
/// `shutdown(Duration::ZERO)`: waiting handlers are refused with
/// [`Refusal::ShuttingDown`], running ones are asked to stop at once
/// ([`Stop::Now`]), and the drop blocks until every thread is joined.
/// So neither a shutdown nor the last drop may happen on one of the
/// manager's own workers (inside a handler): it would wait for itself.
pub struct Manager<Q: Handler, S: Admission = MaxWaiting> {
    shared: Arc<Shared<Q, S>>,
    threads: Mutex<Option<Vec<JoinHandle<()>>>>,
    report: Mutex<Option<ShutdownReport>>,
}

/// Configures and starts a [`Manager`]: `Builder::new(max_running)`, then
/// options, then [`build`](Builder::build).
#[derive(Debug)]
pub struct Builder<S> {
    max_running: usize,
    admission: S,
    name: String,
}

impl Builder<MaxWaiting> {
    /// A builder for a manager running at most `max_running` handlers at
    /// once, with the default policy [`MaxWaiting`]`(1024)`.
    ///
    /// # Panics
    ///
    /// If `max_running` is 0 or above 2³¹.
    pub fn new(max_running: usize) -> Builder<MaxWaiting> {
        assert!(
            (1..=1 << 31).contains(&max_running),
            "max_running must be between 1 and 2^31, got {max_running}"
        );
        Builder {
            max_running,
            admission: MaxWaiting(1024),
            name: "filesrv".to_owned(),
        }
    }
}

impl<S: Admission> Builder<S> {
    /// Sets the admission policy (default: [`MaxWaiting`]`(1024)`).
    pub fn admission<S2: Admission>(self, policy: S2) -> Builder<S2> {
        Builder {
            max_running: self.max_running,
            admission: policy,
            name: self.name,
        }
    }

    /// Names the manager's threads `<name>-worker-<i>` and
    /// `<name>-deadlines` (default: `filesrv`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Starts the worker threads and returns the manager.
    ///
    /// # Errors
    ///
    /// The OS refused to start a thread; the threads already started are
    /// stopped and joined before this returns.
    pub fn build<Q: Handler>(self) -> io::Result<Manager<Q, S>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let phase = Arc::new(Phase::default());
        let shared = Arc::new(Shared {
            max_running: self.max_running,
            gate: Mutex::new(Gate {
                policy: self.admission,
                per_source: HashMap::new(),
                queue: Some(tx),
                next_id: 0,
                submitted: 0,
                admitted: 0,
            }),
            queue: rx,
            counts: Counts(AtomicU64::new(0)),
            counters: Counters::default(),
            slots: (0..self.max_running)
                .map(|_| Slot::new(phase.clone()))
                .collect(),
            phase,
            closing: AtomicBool::new(false),
            idle: (Mutex::new(()), Condvar::new()),
            idle_waiters: AtomicUsize::new(0),
            deadlines: Deadlines::new(),
        });
        let manager = Manager {
            shared: shared.clone(),
            threads: Mutex::new(Some(Vec::with_capacity(self.max_running + 1))),
            report: Mutex::new(None),
        };
        let spawn = |name: String, body: Box<dyn FnOnce() + Send>| {
            let handle = thread::Builder::new().name(name).spawn(body)?;
            lock(&manager.threads)
                .as_mut()
                .expect("threads are taken only by shutdown")
                .push(handle);
            io::Result::Ok(())
        };
        let deadlines = shared.clone();
        spawn(
            format!("{}-deadlines", self.name),
            Box::new(move || deadlines.deadlines.run(|t| deadlines.expire(&t))),
        )?;
        for index in 0..self.max_running {
            let worker = shared.clone();
            spawn(
                format!("{}-worker-{index}", self.name),
                Box::new(move || worker.work(index)),
            )?;
        }
        Ok(manager)
    }
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
    pub fn submit(&self, handler: Q) -> Result<(), Refused<Q>> {
        let shared = &*self.shared;
        let source = handler.source().map(canonical_source);
        let now = Instant::now();
        let mut gate = lock(&shared.gate);
        gate.submitted += 1;
        if gate.queue.is_none() {
            drop(gate);
            return Err(shared.refuse_at_gate(handler, Refusal::ShuttingDown));
        }
        let (running, waiting) = shared.counts.get();
        let arrival = Arrival {
            source,
            running,
            waiting,
            from_source: source.map_or(0, |s| gate.per_source.get(&s).copied().unwrap_or(0)),
            max_running: shared.max_running,
            now,
        };
        let deadline = match gate.policy.decide(&arrival) {
            Decision::Refuse(reason) => {
                drop(gate);
                return Err(shared.refuse_at_gate(handler, reason));
            }
            Decision::Queue => None,
            Decision::QueueUntil(deadline) => Some(deadline),
        };
        let id = gate.next_id;
        gate.next_id += 1;
        if let Some(source) = source {
            *gate.per_source.entry(source).or_insert(0) += 1;
        }
        let waiting = match deadline {
            None => Waiting::Plain(handler),
            Some(deadline) => {
                let ticket = Arc::new(Ticket::new(handler, id, source));
                shared.deadlines.watch(deadline, ticket.clone());
                Waiting::Timed(ticket)
            }
        };
        shared.counts.queued();
        gate.admitted += 1;
        let entry = Entry {
            id,
            source,
            queued_at: now,
            waiting,
        };
        if let Some(queue) = &gate.queue {
            // The receiver lives as long as `shared`, so this cannot fail.
            let _ = queue.send(entry);
        }
        Ok(())
    }

    /// A snapshot of the counters. Cheap: the admission lock for a moment
    /// and a few atomic loads.
    pub fn stats(&self) -> Stats {
        let (submitted, admitted) = {
            let gate = lock(&self.shared.gate);
            (gate.submitted, gate.admitted)
        };
        let (running, waiting) = self.shared.counts.get();
        let mut stats = self.shared.counters.snapshot(running, waiting);
        stats.submitted = submitted;
        stats.admitted = admitted;
        for slot in self.shared.slots.iter() {
            slot.counters.add_to(&mut stats);
        }
        stats
    }

    /// The handlers running now, in no particular order.
    pub fn running(&self) -> Vec<RunningInfo> {
        self.shared.slots.iter().filter_map(Slot::info).collect()
    }

    /// The bound on running handlers.
    pub fn max_running(&self) -> usize {
        self.shared.max_running
    }

    /// Blocks until nothing runs or waits, or until `timeout` passes
    /// (`None`: no limit). Handlers submitted meanwhile are waited for too.
    ///
    /// - `true`: the manager was idle at some moment before the timeout.
    /// - `false`: the timeout passed first.
    pub fn wait_idle(&self, timeout: Option<Duration>) -> bool {
        self.shared
            .wait_idle(timeout.and_then(|t| Instant::now().checked_add(t)))
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
    pub fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let mut report = lock(&self.report);
        if let Some(report) = *report {
            return report;
        }
        let shared = &*self.shared;
        let began = Instant::now();
        let deadline = began.checked_add(grace);
        // Closing the gate drops the only sender: workers see the queue
        // disconnect once it is empty and exit after their current handler.
        shared.closing.store(true, Ordering::SeqCst);
        let sender = lock(&shared.gate).queue.take();
        drop(sender);
        let mut refused_waiting = 0;
        while let Ok(entry) = shared.queue.try_recv() {
            if shared.refuse_entry(entry, Refusal::ShuttingDown) {
                refused_waiting += 1;
            }
        }
        shared.deadlines.stop();

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
            refused_waiting,
            running_at_start,
            cut,
            took: began.elapsed(),
        };
        *report = Some(done);
        done
    }
}

impl<Q: Handler, S: Admission> Drop for Manager<Q, S> {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

impl<Q: Handler, S: Admission> fmt::Debug for Manager<Q, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("max_running", &self.shared.max_running)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<Q, S> Shared<Q, S> {
    /// Waits until idle or `deadline` (`None`: none); true if idle.
    fn wait_idle(&self, deadline: Option<Instant>) -> bool {
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
    fn became_idle(&self) {
        if self.idle_waiters.load(Ordering::SeqCst) > 0 {
            let (idle, became_idle) = &self.idle;
            let _guard = lock(idle);
            became_idle.notify_all();
        }
    }

    fn left_queue(&self) {
        if self.counts.left_queue() {
            self.became_idle();
        }
    }

    /// Forgets one handler of `source` after it left the system.
    fn release_source(&self, source: Option<IpAddr>) {
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

impl<Q: Handler, S> Shared<Q, S> {
    fn refuse_at_gate(&self, handler: Q, reason: Refusal) -> Refused<Q> {
        self.counters.refused(reason);
        Refused { handler, reason }
    }

    /// Refuses a handler that left the queue; false if it was already gone.
    fn refuse_entry(&self, entry: Entry<Q>, reason: Refusal) -> bool {
        let Some(handler) = entry.waiting.claim() else {
            return false;
        };
        self.left_queue();
        self.refuse_waiting(handler, entry.id, entry.source, reason);
        true
    }

    fn refuse_waiting(&self, handler: Q, id: u64, source: Option<IpAddr>, reason: Refusal) {
        self.release_source(source);
        self.counters.refused(reason);
        guarded("refused", id, || handler.refused(reason));
    }

    /// The deadline thread's verdict on a ticket whose time ran out.
    fn expire(&self, ticket: &Ticket<Q>) {
        if let Some(handler) = ticket.claim() {
            self.left_queue();
            self.refuse_waiting(handler, ticket.id, ticket.source, Refusal::QueueTimeout);
        }
    }

    fn stop_all(&self, stop: Stop) {
        // The phase first: a hook registered after this sees it at once.
        self.phase.set(stop);
        for slot in self.slots.iter() {
            slot.stop(stop);
        }
    }

    /// A worker: take the next handler, run it, repeat until the queue is
    /// closed and empty. The channel is FIFO, so each worker takes
    /// handlers in queue order, and a freed slot always goes to the head.
    fn work(&self, index: usize) {
        let slot = &self.slots[index];
        while let Ok(entry) = self.queue.recv() {
            let Entry {
                id,
                source,
                queued_at,
                waiting,
            } = entry;
            let Some(handler) = waiting.claim() else {
                continue;
            };
            if self.closing.load(Ordering::SeqCst) {
                self.left_queue();
                self.refuse_waiting(handler, id, source, Refusal::ShuttingDown);
                continue;
            }
            if guarded("is_abandoned", id, || handler.is_abandoned()).unwrap_or(true) {
                self.left_queue();
                self.release_source(source);
                Counters::bump(&slot.counters.abandoned);
                log::debug!("handler {id} abandoned while waiting");
                continue;
            }
            self.counts.started();
            let ctx = Running {
                id,
                source,
                queued_at,
                started_at: Instant::now(),
                slot,
            };
            slot.occupy(RunningInfo {
                id,
                source,
                queued_at,
                started_at: ctx.started_at,
            });
            let _release = Release {
                shared: self,
                slot,
                source,
            };
            let counter = match guarded("run", id, || handler.run(&ctx)) {
                Some(Ok(())) => &slot.counters.completed,
                Some(Err(e)) => {
                    log::debug!("handler {id} failed: {e}");
                    &slot.counters.failed
                }
                None => &slot.counters.panicked,
            };
            Counters::bump(counter);
        }
    }
}

/// Frees a running slot on every path out of a handler run.
struct Release<'a, Q, S> {
    shared: &'a Shared<Q, S>,
    slot: &'a Slot,
    source: Option<IpAddr>,
}

impl<Q, S> Drop for Release<'_, Q, S> {
    fn drop(&mut self) {
        self.slot.vacate();
        self.shared.release_source(self.source);
        if self.shared.counts.finished() {
            self.shared.became_idle();
        }
    }
}
