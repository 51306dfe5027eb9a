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
    loop {
        let bell = idle.as_ref().map(|i| &i.bell);
        match step(shared, done.take(), &mut have_token, bell) {
            Next::TryParked => unreachable!("step takes parked handlers back itself"),
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

/// [`Shared::next`], taking back the parked handlers whose events are
/// ready, one at a time, while the queue is empty; never
/// [`Next::TryParked`].
pub(super) fn step<Q: Handler, S: Admission>(
    shared: &Shared<Q, S>,
    mut done: Option<Done<Q>>,
    have_token: &mut bool,
    bell: Option<&Arc<Poller>>,
) -> Next<Q> {
    let mut try_parked = true;
    loop {
        match shared.next(done.take(), *have_token, bell, try_parked) {
            Next::TryParked => {
                // The queue was empty: a token held now is spent (its
                // handler went to another worker), and a handler taken
                // back brings its own.
                *have_token = false;
                try_parked = shared.take_parked();
            }
            next => return next,
        }
    }
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

#[cfg(test)]
mod tests {
    use std::io::{self, Write};
    use std::os::fd::{AsFd, BorrowedFd};
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::admission::Unbounded;
    use crate::manager::room::BusyLimits;
    use crate::manager::shared::{Options, ParkLimits};

    /// A handler with a socket to park on.
    struct Socket(UnixStream);

    impl Handler for Socket {
        fn run(self, _: &HandlerContext) -> io::Result<()> {
            Ok(())
        }

        fn socket(&self) -> Option<BorrowedFd<'_>> {
            Some(self.0.as_fd())
        }
    }

    fn run_of(next: Next<Socket>) -> Entry<Socket> {
        match next {
            Next::Run(entry) => entry,
            _ => panic!("expected a handler to run"),
        }
    }

    /// A worker woken by a token whose handler another worker took finds
    /// the queue empty and a parked handler back. It takes that one back
    /// and runs it: the token it held is spent, and the one the handler
    /// taken back brought must not be left in the channel with nothing
    /// queued (it would wake a worker for nothing, and go round). Found
    /// by review; before the fix one token was left over.
    #[test]
    fn a_token_held_through_taking_a_parked_handler_back_is_not_left_over() {
        let options = Options {
            max_running: 2,
            name: "t".into(),
            limits: BusyLimits::default(),
            ipv6_prefix: 64,
            park: ParkLimits {
                idle: None,
                max: 16,
            },
        };
        let shared = Shared::new(Unbounded, &options, None).unwrap();
        // A runs and parks.
        let (a, mut a_client) = UnixStream::pair().unwrap();
        assert!(shared.submit(Socket(a), Admitting::New).is_ok());
        let mut have_token = false;
        let entry = run_of(step(&shared, None, &mut have_token, None));
        let parked = Done {
            id: entry.id,
            source: None,
            key: None,
            outcome: Outcome::Completed,
            asked: false,
            park: Some(entry.handler),
            registered: false,
        };
        assert!(matches!(
            shared.next(Some(parked), false, None, false),
            Next::Wait
        ));
        // H's token wakes W1, but W2, ending a run, takes H first.
        let (h, _h_client) = UnixStream::pair().unwrap();
        assert!(shared.submit(Socket(h), Admitting::New).is_ok());
        shared.tokens.recv().unwrap();
        let _h = run_of(shared.next(None, false, None, true));
        // A's client speaks; W1 goes on, holding the token.
        a_client.write_all(b"again\n").unwrap();
        let mut have_token = true;
        let a = run_of(step(&shared, None, &mut have_token, None));
        assert!(a.returning, "A, back from parking");
        assert_eq!(shared.stats().waiting, 0);
        assert_eq!(shared.tokens.len(), 0, "a token left with nothing queued");
    }
}
