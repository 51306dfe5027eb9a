//! A worker thread: takes the next handler from the queue and runs it.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::slot::{RunningInfo, Slot};
use super::state::{Entry, ManagerState, guarded};
use super::stats::Counters;
use crate::admission::Refusal;
use crate::handler::{Handler, HandlerContext};

impl<Q: Handler, S> ManagerState<Q, S> {
    /// A worker: take the next handler, run it, repeat until the queue is
    /// closed and empty. The channel is FIFO, so each worker takes
    /// handlers in queue order, and a freed slot always goes to the head.
    pub(super) fn work(&self, index: usize) {
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
            let ctx = HandlerContext {
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
    shared: &'a ManagerState<Q, S>,
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
