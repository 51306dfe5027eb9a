//! A worker thread: takes the next handler from the queue and runs it.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use super::slot::Slot;
use super::source::IdleWait;
use super::state::{Entry, ManagerState, Msg, guarded};
use super::stats::{Counters, WorkerCounters};
use crate::admission::{Admission, Departure, Outcome};
use crate::handler::{Handler, HandlerContext};
use crate::util::lock;

thread_local! {
    /// The state of the manager whose worker this thread is (its address),
    /// so a shutdown called from inside a handler is caught, not a
    /// deadlock.
    static WORKER_OF: Cell<usize> = const { Cell::new(0) };
}

impl<Q, S> ManagerState<Q, S> {
    /// Whether the calling thread is one of this manager's workers.
    pub(super) fn on_own_worker(&self) -> bool {
        WORKER_OF.get() == std::ptr::from_ref(self) as usize
    }
}

impl<Q: Handler, S: Admission> ManagerState<Q, S> {
    /// Takes the head of the queue; it counts as running from here on, so
    /// a shutdown either refuses a waiting handler or sees it running.
    ///
    /// `last`, the handler this worker ran before, departs under the same
    /// lock: one lock per handler, and its running place passes straight
    /// to the next one.
    fn pop(&self, last: Option<Departure>) -> Option<Entry<Q>> {
        let mut gate = lock(&self.gate);
        if let Some(d) = last {
            gate.depart(d.id, d.key, d.outcome);
        }
        let entry = gate.waiting.pop();
        match (&entry, last) {
            (Some(_), Some(_)) => self.counts.handed_on(),
            (Some(_), None) => self.counts.started(),
            (None, Some(_)) => {
                drop(gate);
                if self.counts.finished() {
                    self.became_idle();
                }
            }
            (None, None) => {}
        }
        entry
    }

    /// Sends a message into the channel, unless a shutdown closed it.
    fn send(&self, msg: Msg<Q>) {
        if let Some(channel) = lock(&self.gate).channel.clone() {
            let _ = channel.send(msg);
            self.message_sent();
        }
    }

    /// The handler this worker ran departs, with no next one to take.
    fn finish(&self, last: Departure) {
        if S::HEARS_DEPARTURES {
            lock(&self.gate).depart(last.id, last.key, last.outcome);
        }
        if self.counts.finished() {
            self.became_idle();
        }
    }

    /// Counts a handler taken out of the channel as running; `last`, the
    /// handler this worker ran before, departs in the same step.
    fn start_from_channel(&self, last: Option<Departure>) {
        match last {
            Some(d) => {
                if S::HEARS_DEPARTURES {
                    lock(&self.gate).depart(d.id, d.key, d.outcome);
                }
                self.counts.handed_on();
            }
            None => self.counts.started(),
        }
    }
}

impl<Q: Handler, S: Admission> ManagerState<Q, S> {
    /// A worker: take the next handler, run it, repeat until the queue is
    /// closed and empty. The queue is FIFO, so a freed slot always goes
    /// to the head.
    pub(super) fn work(&self, index: usize) {
        WORKER_OF.set(std::ptr::from_ref(self) as usize);
        let slot = self.workers.slots().get(index);
        let counters = self.workers.slots().counters(index);
        // The handler that ran last: it departs (policy told, running
        // count down) with the next one's start, or before this worker
        // sleeps or retires, never later.
        let mut last: Option<Departure> = None;
        let mut idle = IdleWait::default();
        loop {
            if self.workers.retire() {
                break;
            }
            let msg = match last.take() {
                None => self.next_msg(&mut idle),
                Some(done) => match self.channel.try_recv() {
                    Ok(msg) => {
                        last = Some(done);
                        Ok(msg)
                    }
                    Err(_) => {
                        self.finish(done);
                        self.next_msg(&mut idle)
                    }
                },
            };
            let Ok(msg) = msg else {
                break;
            };
            let entry = match msg {
                Msg::Token => {
                    if self.workers.retire() {
                        // The token may be a waiting handler's: pass it on.
                        self.send(Msg::Token);
                        break;
                    }
                    let Some(entry) = self.pop(last.take()) else {
                        // Its handler left the queue early (deadline, hang-up).
                        continue;
                    };
                    entry
                }
                Msg::Start(entry) => {
                    if self.workers.retire() {
                        // Started here it would run beyond the new bound:
                        // it waits in the gate's queue for the next worker.
                        if self.requeue(entry) {
                            self.send(Msg::Token);
                        }
                        break;
                    }
                    if self.closing.load(Ordering::SeqCst) {
                        if let Some(done) = last.take() {
                            self.finish(done);
                        }
                        self.refuse_late(entry);
                        continue;
                    }
                    if entry.queued_at.is_some() {
                        Counters::bump_sole(&counters.stamped_taken);
                    }
                    self.start_from_channel(last.take());
                    entry
                }
            };
            let Entry {
                id,
                source,
                key,
                queued_at,
                watched,
                handler,
            } = entry;
            // Checked first: `socket` is the handler's own code.
            if watched {
                if let Some(socket) = handler.socket() {
                    self.watcher.forget(socket);
                }
            }
            let started = self.clock.stamp();
            let queued = match queued_at {
                Some(at) => {
                    counters.waited(started.nanos_since(at));
                    at
                }
                None => started,
            };
            slot.occupy(id, source, queued, started);
            let vacate = Vacate { shared: self, slot };
            // Others still wait: a make-room pass, if one is due by now
            // (this handler's own limits pass no sooner than the next
            // pass the watcher has set).
            self.room_needed();
            let ctx = HandlerContext {
                id,
                source,
                queued,
                started,
                clock: &self.clock,
                slot,
                manager: self,
            };
            let outcome = self.run_one(&ctx, counters, handler, queued_at.is_some());
            drop(vacate);
            last = Some(Departure { id, key, outcome });
        }
        if let Some(done) = last {
            self.finish(done);
        }
        self.workers.retired(index);
    }

    /// Runs one handler taken from the queue; how it ended. Only one that
    /// `waited` is asked whether its client left meanwhile: one that
    /// started on a free slot had no time to be abandoned, and the
    /// question costs a network handler a system call per connection.
    fn run_one(
        &self,
        ctx: &HandlerContext,
        counters: &WorkerCounters,
        handler: Q,
        waited: bool,
    ) -> Outcome {
        let id = ctx.id;
        if waited && guarded("is_abandoned", id, || handler.is_abandoned()).unwrap_or(true) {
            Counters::bump_sole(&counters.abandoned);
            log::debug!("handler {id} abandoned while waiting");
            guarded("drop", id, || drop(handler));
            return Outcome::Abandoned;
        }
        let (counter, outcome) = match guarded("run", id, || handler.run(ctx)) {
            Some(Ok(())) => (&counters.completed, Outcome::Completed),
            Some(Err(e)) => {
                log::debug!("handler {id} failed: {e}");
                (&counters.failed, Outcome::Failed)
            }
            None => (&counters.panicked, Outcome::Panicked),
        };
        Counters::bump_sole(counter);
        outcome
    }
}

/// Frees a running slot on every path out of a handler run. The running
/// count goes down later, when the handler departs.
struct Vacate<'a, Q, S> {
    shared: &'a ManagerState<Q, S>,
    slot: &'a Slot,
}

impl<Q, S> Drop for Vacate<'_, Q, S> {
    fn drop(&mut self) {
        if self.slot.vacate() {
            self.shared.asked.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
