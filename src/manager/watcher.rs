//! The watcher: the one service thread of a manager. It blocks in
//! `epoll_wait` and wakes for these, none of them by polling:
//!
//! - a waiting client hanging up: a handler that exposes a socket
//!   ([`Handler::socket`]) and has to wait is registered edge-triggered
//!   for `EPOLLRDHUP` (plus the implied `EPOLLHUP` and `EPOLLERR`), never
//!   for `EPOLLIN`, so a client sending its request wakes nothing. The
//!   thread asks [`Handler::is_abandoned`] and, if the client is gone,
//!   takes the handler out of the queue at once. Each registration
//!   carries the handler's id, never reused, so an event for a handler
//!   that already left is ignored;
//! - a parked handler's socket becoming readable (registered one-shot,
//!   level-triggered, for `EPOLLIN` and `EPOLLRDHUP`): the handler goes
//!   through admission again, or is dropped if its client hung up;
//! - the earliest queue deadline or parked handler's idle expiry (the
//!   `epoll_wait` timeout), when the handlers past it are refused; with
//!   parking on and none parked, the idle timeout from now, so that a
//!   handler parking later never has to wake the thread;
//! - a make-room pass (see `room.rs`): woken when a handler starts to
//!   wait for a place or a running one goes idle while others wait, and
//!   timed for when the next running handler passes a busy limit.
//!
//! [`Handler::socket`]: crate::Handler::socket
//! [`Handler::is_abandoned`]: crate::Handler::is_abandoned

use std::time::Instant;

use super::shared::Shared;
use crate::admission::Admission;
use crate::handler::Handler;
use crate::poller::Poller;
use crate::util::{call_guarded, lock};

/// The watcher thread's loop, until the manager closes.
pub(super) fn watch<Q: Handler, S: Admission>(shared: &Shared<Q, S>) {
    let mut events = Poller::events();
    loop {
        let Ok(deadline) = shared.expire(Instant::now()) else {
            return;
        };
        let pass = make_room(shared);
        let until = [deadline, pass].into_iter().flatten().min();
        let watcher = &shared.signals.watcher;
        if let Err(e) = watcher.wait(until, &mut events, |id, flags| {
            shared.socket_event(id, flags)
        }) {
            log::error!("epoll_wait failed: {e}");
        }
    }
}

/// One make-room pass: asks as many running handlers past a limit as
/// there are handlers waiting for a place that nobody made room for yet.
/// Returns when to run the next pass if some still wait for room.
///
/// It also publishes when a pass can next find anyone to ask
/// (`Signals::set_room_due`), so that a handler queued, started or going
/// idle before then wakes nobody. That moment is the earliest a running
/// handler not past a limit will pass one, or a shortest limit from now (a
/// handler starting or going idle after this pass passes one no sooner);
/// or now, if handlers past a limit were left unasked.
fn make_room<Q: Handler, S: Admission>(shared: &Shared<Q, S>) -> Option<Instant> {
    let signals = &shared.signals;
    let limits = signals.limits;
    if !limits.any() {
        return None;
    }
    let need = {
        let gate = shared.gate();
        let need = gate.crowding().saturating_sub(gate.asked);
        if need == 0 {
            // The next waiter wakes the watcher.
            signals.set_room_due(None);
            return None;
        }
        need
    };
    let now = Instant::now();
    let slots = lock(&shared.slots).clone();
    let candidates = slots.iter().enumerate();
    let candidates = candidates.filter_map(|(i, slot)| slot.candidate().map(|c| (i, c)));
    let (chosen, past_left, next) = limits.choose(now, need, candidates);
    let mut left = need;
    for (index, id, why) in chosen {
        // Counted before it is asked, so its departure never comes first.
        shared.gate().asked += 1;
        match slots[index].ask(id, why) {
            Some(hook) => {
                log::debug!("handler {id} asked to make room: {why:?}");
                left -= 1;
                if let Some(hook) = hook {
                    call_guarded("make-room hook", || hook(why));
                }
            }
            None => shared.gate().asked -= 1,
        }
    }
    let due = if past_left {
        None
    } else {
        let horizon = limits.shortest().and_then(|l| now.checked_add(l));
        [next, horizon].into_iter().flatten().min()
    };
    // Published under the lock a submission reads it with: a handler
    // queued since the pass began either sees it, or is seen here.
    let gate = shared.gate();
    if gate.crowding().saturating_sub(gate.asked) > left {
        signals.set_room_due(None);
        return Some(now);
    }
    signals.set_room_due(due);
    // The timer covers a handler that goes idle after this pass: it
    // passes a limit no sooner than `due`, and wakes nobody before then.
    if left > 0 { due } else { None }
}
