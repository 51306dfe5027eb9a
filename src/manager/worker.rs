//! The loops of the threads that take handlers: the workers, and the
//! accepting thread for while every worker is busy.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use super::acceptor::{Accepting, IdleWait};
use super::shared::{Admitting, Done, Entry, Next, Shared, abandoned};
use super::slot::{RunningInfo, Slot};
use crate::admission::{Admission, Outcome};
use crate::handler::{Handler, HandlerContext, Served};
use crate::poller::Poller;
use crate::util::{Backoff, guarded, lock, wait};

thread_local! {
    /// The address of the state of the manager whose worker this is: a
    /// shutdown from inside a handler is caught, not a deadlock.
    static WORKER_OF: Cell<usize> = const { Cell::new(0) };
}

/// Whether the calling thread is one of the workers of `shared`.
pub(super) fn on_own_worker<Q, S>(shared: &Shared<Q, S>) -> bool {
    WORKER_OF.get() == std::ptr::from_ref(shared) as usize
}

/// A worker: take the head of the queue (or, idle, accept), run it,
/// repeat; until the manager closes or the bound shrinks below it.
pub(super) fn work<Q: Handler, S: Admission>(shared: &Shared<Q, S>) {
    WORKER_OF.set(std::ptr::from_ref(shared) as usize);
    let slot = Arc::new(Slot::default());
    lock(&shared.slots).push(slot.clone());
    let mut idle = shared.accepting.as_ref().and_then(|accepting| {
        IdleWait::new(accepting)
            .inspect_err(|e| log::error!("a worker cannot wait on the acceptor: {e}"))
            .ok()
    });
    let mut done = None;
    let mut have_token = false;
    // Off once a look found no parked handler back, until the next wait.
    let mut try_parked = true;
    loop {
        let bell = idle.as_ref().map(|i| &i.bell);
        let next = shared.next(done.take(), have_token, bell, try_parked);
        try_parked = true;
        match next {
            Next::TryParked => try_parked = shared.take_parked(),
            Next::Run(entry) => {
                have_token = false;
                done = Some(run(shared, &slot, entry));
            }
            // Woken by a token, or gone when the channel closes at shutdown.
            Next::Wait => match shared.tokens.recv() {
                Ok(()) => have_token = true,
                Err(_) => break,
            },
            Next::WaitOnAcceptor => {
                have_token = false;
                let (Some(accepting), Some(idle)) = (&shared.accepting, &mut idle) else {
                    continue;
                };
                if let Some(pause) = wait_on_acceptor(shared, accepting, idle) {
                    // Queued handlers still run during the back-off.
                    match shared.tokens.recv_timeout(pause) {
                        Ok(()) => have_token = true,
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
            Next::Retire => break,
        }
    }
    lock(&shared.slots).retain(|s| !Arc::ptr_eq(s, &slot));
}

/// Runs one handler taken from the queue; how it ended. Only a new one
/// that waited is asked whether its client left (one back from parking
/// came with a request to read).
fn run<Q: Handler, S: Admission>(shared: &Shared<Q, S>, slot: &Slot, entry: Entry<Q>) -> Done<Q> {
    let (id, handler) = (entry.id, entry.handler);
    let done = |outcome, asked, park| Done {
        id,
        source: entry.source,
        key: entry.key,
        outcome,
        asked,
        park,
        registered: entry.returning,
    };
    if entry.watched {
        if let Some(socket) = handler.socket() {
            // Its client's eventual hang-up must not wake the watcher.
            shared.signals.watcher.delete(socket);
        }
    }
    if entry.waits && !entry.returning && abandoned(id, &handler) {
        log::debug!("handler {id} abandoned while waiting");
        guarded("drop", id, || drop(handler));
        return done(Outcome::Abandoned, false, None);
    }
    let info = RunningInfo {
        id,
        source: entry.source,
        queued_at: entry.queued_at,
        started_at: Instant::now(),
    };
    slot.occupy(info);
    // Others may wait: its limits start counting now.
    shared.signals.room_may_be_due();
    let signals = &shared.signals;
    let ctx = HandlerContext {
        info,
        slot,
        signals,
    };
    // Under catch_unwind: a panic is counted, and the slot freed below.
    let (outcome, park) = match guarded("run", id, || handler.serve(&ctx)) {
        Some(Ok(Served::Park(handler))) => (Outcome::Completed, Some(handler)),
        Some(Ok(Served::Done)) => (Outcome::Completed, None),
        Some(Err(e)) => {
            log::debug!("handler {id} failed: {e}");
            (Outcome::Failed, None)
        }
        None => (Outcome::Panicked, None),
    };
    done(outcome, slot.vacate(), park)
}

/// A worker's wait on the acceptor, as [`Shared::next`] counted it; the
/// back-off to wait out if accepting failed.
pub(super) fn wait_on_acceptor<Q: Handler, S: Admission>(
    shared: &Shared<Q, S>,
    accepting: &Accepting<Q>,
    idle: &mut IdleWait,
) -> Option<Duration> {
    let ready = idle.wait();
    let mut gate = shared.gate();
    // Still counted, unless a ring took it off the list already: then a
    // queued handler is this worker's to run, and what it accepts now
    // needs a worker of its own, rung like any other.
    let counted = gate.on_acceptor.len();
    gate.on_acceptor.retain(|b| !Arc::ptr_eq(b, &idle.bell));
    let rung = gate.on_acceptor.len() == counted;
    if gate.on_acceptor.is_empty() {
        // The accepting thread takes over while this one runs.
        accepting.changed.notify_all();
    }
    let accept = ready && gate.accepting;
    drop(gate);
    // What it accepts, it takes itself (no ring), unless it was rung.
    let how = if rung {
        Admitting::New
    } else {
        Admitting::Accepted
    };
    if let Some(Err(e)) = accept.then(|| shared.accept(accepting, how)) {
        let pause = idle.backoff.failed();
        log::warn!("accept failed: {e}; a worker retries in {pause:?}");
        return Some(pause);
    }
    idle.backoff.reset();
    None
}

/// The accepting thread, for while no worker waits on the acceptor.
pub(super) fn accept_loop<Q: Handler, S: Admission>(shared: &Shared<Q, S>) {
    let Some(accepting) = &shared.accepting else {
        return;
    };
    let mut backoff = Backoff::default();
    let mut events = Poller::events();
    loop {
        let mut gate = shared.gate();
        while gate.accepting && !gate.on_acceptor.is_empty() {
            gate = wait(&accepting.changed, gate);
        }
        if !gate.accepting {
            return;
        }
        drop(gate);
        match accepting.wait_ready(&mut events) {
            // Woken to step back or to stop.
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => log::error!("epoll_wait failed: {e}"),
        }
        // A burst is accepted back to back, while no worker waits.
        while shared.gate().on_acceptor.is_empty() {
            match shared.accept(accepting, Admitting::New) {
                Ok(true) => backoff.reset(),
                Ok(false) => break,
                Err(e) => {
                    let pause = backoff.failed();
                    log::warn!("accept failed: {e}; retrying in {pause:?}");
                    let gate = shared.gate();
                    if gate.accepting {
                        // A stop ends the back-off.
                        let _ = accepting.changed.wait_timeout(gate, pause);
                    }
                    break;
                }
            }
        }
    }
}
