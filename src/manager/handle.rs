//! The [`Manager`] handle: its whole API.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::outcomes::{Refused, ShutdownReport, Stats};
use super::shared::{Admitting, Shared};
use super::slot::RunningInfo;
use super::watcher::watch;
use super::worker::{accept_loop, on_own_worker, work};
use crate::admission::{Admission, MaxWaiting};
use crate::handler::{Handler, Stop};
use crate::util::lock;

/// Runs handlers ([`Handler`], `Q`) with at most `max_running` at a time,
/// in arrival order, behind an admission policy ([`Admission`], `S`).
///
/// Build one with [`ManagerBuilder`](crate::ManagerBuilder); hand it work with
/// [`submit`](Manager::submit); end it with [`shutdown`](Manager::shutdown).
/// All methods take `&self`, so a manager can be shared (e.g. in an `Arc`).
///
/// # Threads
///
/// `max_running` workers, started up front and reused
/// ([`set_max_running`](Manager::set_max_running) starts more or retires
/// some); a watcher, for queue deadlines, waiting clients that hang up,
/// parked handlers and making room; with an [`Acceptor`](crate::Acceptor),
/// one that accepts while every worker is busy. Idle, they use no CPU.
///
/// # Drop
///
/// Dropping a manager that was not shut down is
/// `shutdown(Duration::ZERO)`. Inside one of its own handlers, where a
/// shutdown panics rather than wait for itself, the last drop stops the
/// manager without waiting.
pub struct Manager<Q: Handler, S: Admission = MaxWaiting> {
    shared: Arc<Shared<Q, S>>,
    /// Every thread started; taken by the shutdown, which joins them.
    threads: Mutex<Option<Vec<JoinHandle<()>>>>,
    report: Mutex<Option<ShutdownReport>>,
    name: String,
}

impl<Q: Handler, S: Admission> Manager<Q, S> {
    /// Starts the watcher and `max_running` workers (the builder's part).
    pub(super) fn start(shared: Shared<Q, S>, name: String) -> io::Result<Manager<Q, S>> {
        let max_running = shared.gate().max_running;
        check_map_room(max_running + 2)?;
        let manager = Manager {
            shared: Arc::new(shared),
            threads: Mutex::new(Some(Vec::with_capacity(max_running + 2))),
            report: Mutex::new(None),
            name,
        };
        let mut threads = lock(&manager.threads);
        let handles = threads.as_mut().expect("taken only by shutdown");
        handles.push(manager.spawn("watcher", watch)?);
        if manager.shared.accepting.is_some() {
            handles.push(manager.spawn("accept", accept_loop)?);
        }
        manager.start_workers(handles, max_running)?;
        drop(threads);
        Ok(manager)
    }

    /// Starts `n` more workers; on an error, the bound is what started.
    fn start_workers(&self, threads: &mut Vec<JoinHandle<()>>, n: usize) -> io::Result<()> {
        self.shared.gate().workers += n;
        for started in 0..n {
            match self.spawn(&format!("worker-{}", threads.len()), work) {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    let mut gate = self.shared.gate();
                    gate.workers -= n - started;
                    gate.max_running = gate.workers;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Starts the thread `<name>-<role>`, running `body`.
    fn spawn(&self, role: &str, body: fn(&Shared<Q, S>)) -> io::Result<JoinHandle<()>> {
        let shared = self.shared.clone();
        let name = format!("{}-{role}", self.name);
        thread::Builder::new()
            .name(name)
            .spawn(move || body(&shared))
    }

    /// Offers a handler to the admission policy.
    ///
    /// - `Ok(())`: it was queued. It will be run, refused when its queue
    ///   deadline passes or a shutdown begins, or dropped as abandoned.
    /// - `Err(refused)`: the policy refused it, or the manager is shutting
    ///   down ([`Refusal::ShuttingDown`](crate::Refusal::ShuttingDown));
    ///   the handler comes back inside.
    ///
    /// Never blocks beyond the brief admission lock.
    ///
    /// # Panics
    ///
    /// If the admission policy panics; the handler is dropped and nothing
    /// is counted.
    pub fn submit(&self, handler: Q) -> Result<(), Refused<Q>> {
        self.shared.submit(handler, Admitting::New)
    }

    /// A snapshot of the counters, taken under the admission lock: every
    /// count of one snapshot is of the same moment.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Calls `f` with the admission policy, under the admission lock (no
    /// arrival or departure meanwhile): to change a policy at run time or
    /// read its counts. `f` must be quick and must not call back into
    /// this manager (the lock is not reentrant).
    ///
    /// ```
    /// use filesrv::ManagerBuilder;
    /// use filesrv::admission::PerKeyCap;
    /// # use filesrv::{Manager, BoxHandler};
    ///
    /// # fn main() -> std::io::Result<()> {
    /// let manager: Manager<BoxHandler, _> =
    ///     ManagerBuilder::new(2).admission(PerKeyCap::new(4)).build()?;
    /// let key = filesrv::admission::Key::Source("10.0.0.1".parse().unwrap());
    /// assert_eq!(manager.with_policy(|cap| cap.count(&key)), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_policy<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut self.shared.gate().policy)
    }

    /// The handlers running now, in no particular order.
    pub fn running(&self) -> Vec<RunningInfo> {
        let slots = lock(&self.shared.slots).clone();
        slots.iter().filter_map(|slot| slot.info()).collect()
    }

    /// The bound on running handlers; see
    /// [`set_max_running`](Manager::set_max_running).
    pub fn max_running(&self) -> usize {
        self.shared.gate().max_running
    }

    /// Changes the bound on running handlers of a running manager.
    ///
    /// Growing starts workers at once, and waiting handlers start on them
    /// in queue order. Shrinking never cuts a handler: surplus workers
    /// retire as their handler ends (idle ones at once), and no handler
    /// starts beyond the new bound meanwhile. After a shutdown began it
    /// does nothing.
    ///
    /// # Errors
    ///
    /// The OS refused to start a thread, or the process is too close to
    /// its memory-map limit; the bound is what the workers started make.
    ///
    /// # Panics
    ///
    /// If `n` is 0 or above 2³¹.
    pub fn set_max_running(&self, n: usize) -> io::Result<()> {
        check_bound(n);
        // Held throughout: two calls do not interleave.
        let mut threads = lock(&self.threads);
        let Some(handles) = threads.as_mut() else {
            return Ok(());
        };
        // Handles of retired workers are joined here, so they do not pile up.
        let (done, alive): (Vec<_>, Vec<_>) = handles.drain(..).partition(JoinHandle::is_finished);
        *handles = alive;
        for thread in done {
            let _ = thread.join();
        }
        let more = {
            let mut gate = self.shared.gate();
            if gate.is_closed() {
                return Ok(());
            }
            gate.max_running = n;
            let surplus = gate.workers.saturating_sub(n);
            // An idle surplus worker needs a token to wake and retire.
            for _ in 0..surplus {
                gate.send_token();
            }
            n.saturating_sub(gate.workers)
        };
        if more > 0 {
            check_map_room(more)?;
            self.start_workers(handles, more)?;
        }
        Ok(())
    }

    /// Stops taking handlers from the [`Acceptor`](crate::Acceptor): once
    /// this returns, no thread calls its `accept` again. Handlers taken
    /// already run or wait as usual, and [`submit`](Manager::submit)
    /// still works. For a server that stops accepting before a graceful
    /// [`shutdown`](Manager::shutdown) (which does this first anyway), so
    /// that the backlog goes to a successor. Without an acceptor it does
    /// nothing.
    pub fn stop_accepting(&self) {
        self.shared.stop_accepting();
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
        self.shared.gate().is_closed()
    }

    /// Stops the manager and joins every thread it started.
    ///
    /// 1. Admission closes: later [`submit`](Manager::submit)s are refused
    ///    with [`Refusal::ShuttingDown`](crate::Refusal::ShuttingDown).
    /// 2. Every waiting handler is refused the same way, and every parked one.
    /// 3. Running handlers get [`Stop::Graceful`] through their stop hooks
    ///    and until `grace` has passed to finish.
    /// 4. Those still running then get [`Stop::Now`], and the call waits
    ///    for them to return before joining the threads.
    ///
    /// Steps 1 and 2 and the count of running handlers are one step under
    /// the admission lock: the report's counts are exact.
    ///
    /// A handler that ignores both stops delays this call until it returns.
    /// Calling it again, or from several threads at once, is safe: every
    /// call returns the first call's report.
    ///
    /// # Panics
    ///
    /// If called from inside one of this manager's own handlers (on one of
    /// its workers): the call would wait for its own handler to return.
    pub fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let shared = &*self.shared;
        assert!(
            !on_own_worker(shared),
            "Manager::shutdown called from inside one of its own handlers"
        );
        let mut report = lock(&self.report);
        if let Some(report) = *report {
            return report;
        }
        let began = Instant::now();
        let deadline = began.checked_add(grace);
        shared.stop_accepting();
        let running_at_start = shared.close();
        shared.stop_all(Stop::Graceful);
        shared.wait_idle(deadline);
        let cut = shared.stats().running;
        if cut > 0 {
            shared.stop_all(Stop::Now);
        }
        let threads = lock(&self.threads).take().unwrap_or_default();
        for thread in threads {
            // Handlers run under catch_unwind, so a worker never panics.
            let _ = thread.join();
        }
        let (refused_waiting, closed_parked) = shared.closed_by_shutdown();
        let done = ShutdownReport {
            refused_waiting,
            closed_parked,
            running_at_start,
            cut,
            took: began.elapsed(),
        };
        *report = Some(done);
        done
    }
}

impl<Q: Handler, S: Admission> Drop for Manager<Q, S> {
    /// `shutdown(Duration::ZERO)`; on one of its own workers, the same
    /// without waiting: its threads end on their own.
    fn drop(&mut self) {
        if on_own_worker(&self.shared) {
            self.shared.stop_accepting();
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

/// Panics unless `n` is a valid bound on running handlers.
pub(super) fn check_bound(n: usize) {
    assert!(
        (1..=1 << 31).contains(&n),
        "max_running must be between 1 and 2^31, got {n}"
    );
}

/// Memory maps each thread costs: its stack and guard page, and the
/// alternate signal stack and guard page Rust's runtime maps for it.
const MAPS_PER_THREAD: usize = 4;

/// Fails when `threads` more threads would pass `vm.max_map_count`:
/// past it, a new thread's `mmap` fails where Rust's runtime can only
/// abort. Where `/proc` cannot be read, nothing is checked.
fn check_map_room(threads: usize) -> io::Result<()> {
    let Ok(limit) = std::fs::read_to_string("/proc/sys/vm/max_map_count") else {
        return Ok(());
    };
    let Ok(limit) = limit.trim().parse::<usize>() else {
        return Ok(());
    };
    let Ok(maps) = std::fs::read("/proc/self/maps") else {
        return Ok(());
    };
    let used = maps.iter().filter(|&&b| b == b'\n').count();
    // Room for the allocator and the application beyond the threads.
    let needed = threads.saturating_mul(MAPS_PER_THREAD).saturating_add(1024);
    if used.saturating_add(needed) > limit {
        return Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "{threads} threads would need about {needed} memory maps, \
                 but only {} of vm.max_map_count {limit} are free",
                limit.saturating_sub(used)
            ),
        ));
    }
    Ok(())
}
