//! A worker thread: takes the next handler from the queue and runs it.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::slot::{RunningInfo, Slot};
use super::state::{Entry, ManagerState, guarded};
use super::stats::Counters;
use crate::handler::{Handler, HandlerContext};

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

    /// Takes the head of the queue; it counts as running from here on, so
    /// a shutdown either refuses a waiting handler or sees it running.
    fn pop(&self) -> Option<Entry<Q>> {
        let mut gate = self
            .gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (_, entry) = gate.waiting.pop_first()?;
        self.counts.started();
        Some(entry)
    }
}

impl<Q: Handler, S> ManagerState<Q, S> {
    /// A worker: take the next handler, run it, repeat until the queue is
    /// closed and empty. The queue is FIFO, so a freed slot always goes
    /// to the head.
    pub(super) fn work(&self, index: usize) {
        WORKER_OF.set(std::ptr::from_ref(self) as usize);
        let slot = &self.slots[index];
        while self.tokens.recv().is_ok() {
            let Some(Entry {
                id,
                source,
                queued_at,
                handler,
            }) = self.pop()
            else {
                // Its handler left the queue early (deadline, hang-up).
                continue;
            };
            let started_at = Instant::now();
            slot.counters.waited(started_at - queued_at);
            if slot.occupy(RunningInfo {
                id,
                source,
                queued_at,
                started_at,
            }) {
                self.asked.fetch_sub(1, Ordering::AcqRel);
            }
            let _release = Release {
                shared: self,
                slot,
                source,
            };
            // Others still wait: this handler's session limit is a new
            // deadline for the make-room timer.
            self.room_needed();
            if guarded("is_abandoned", id, || handler.is_abandoned()).unwrap_or(true) {
                Counters::bump(&slot.counters.abandoned);
                log::debug!("handler {id} abandoned while waiting");
                guarded("drop", id, || drop(handler));
                continue;
            }
            let ctx = HandlerContext {
                id,
                source,
                queued_at,
                started_at,
                slot,
                manager: self,
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
    shared: &'a ManagerState<Q, S>,
    slot: &'a Slot,
    source: Option<IpAddr>,
}

impl<Q, S> Drop for Release<'_, Q, S> {
    fn drop(&mut self) {
        if self.slot.vacate() {
            self.shared.asked.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared.release_source(self.source);
        if self.shared.counts.finished() {
            self.shared.became_idle();
        }
    }
}
