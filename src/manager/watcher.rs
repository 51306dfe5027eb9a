//! The watcher thread's loop. It blocks in `epoll_wait` until a waiting
//! client hangs up (registered edge-triggered for `EPOLLRDHUP` only, under
//! the handler's id, never reused), a parked handler's socket reports
//! (one-shot, level-triggered), the earliest queue deadline or parked
//! expiry, or a make-room pass is due (see `room.rs`). A worker about to
//! wait may take one of those socket events first
//! (`Shared::take_parked`); it handles it with the same code.

use std::time::Instant;

use super::shared::{Admitting, Shared};
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
            shared.socket_event(id, flags, Admitting::Returning)
        }) {
            log::error!("epoll_wait failed: {e}");
        }
    }
}

/// One make-room pass: asks as many running handlers past a limit as
/// there are handlers waiting for a place that nobody made room for yet.
/// Returns when to run the next pass if some still wait for room.
///
/// It publishes when a pass can next find anyone to ask
/// (`Signals::set_room_due`: the earliest a running handler passes a
/// limit, or the shortest limit from now; now if some past one were left
/// unasked), so that a handler queued, started or going idle before then
/// wakes nobody.
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
    // Under the lock a submission reads it with: a handler queued since
    // the pass began either sees it, or is seen here.
    let gate = shared.gate();
    if gate.crowding().saturating_sub(gate.asked) > left {
        signals.set_room_due(None);
        return Some(now);
    }
    signals.set_room_due(due);
    if left > 0 { due } else { None }
}
