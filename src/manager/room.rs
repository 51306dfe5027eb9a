//! Making room: running handlers cannot hold their slots against waiting
//! ones for ever.
//!
//! With busy limits set ([`ManagerBuilder::busy_idle_timeout`],
//! [`ManagerBuilder::busy_session_limit`]), each waiting handler entitles
//! the manager to ask one running handler that is past a limit to make
//! room: idle between requests (as it reports through
//! [`HandlerContext::set_idle`]) for longer than the busy idle timeout, or
//! running for longer than the busy session limit. The one longest past
//! its limit is asked first. The manager only asks, through the hook of
//! [`HandlerContext::on_make_room`]; the handler decides how to leave.
//!
//! The pass runs on the watcher thread, never in a polling loop: when a
//! handler starts waiting while every slot is taken, when a running
//! handler goes idle or starts while others wait, and at the moment the
//! next running handler will pass a limit (the watcher's `epoll_wait`
//! timeout). With nobody waiting there is no pass and no timer.
//!
//! [`ManagerBuilder::busy_idle_timeout`]: crate::ManagerBuilder::busy_idle_timeout
//! [`ManagerBuilder::busy_session_limit`]: crate::ManagerBuilder::busy_session_limit
//! [`HandlerContext::set_idle`]: crate::HandlerContext::set_idle
//! [`HandlerContext::on_make_room`]: crate::HandlerContext::on_make_room

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::state::ManagerState;

/// Why the manager asks a running handler to make room for a waiting
/// one; passed to the hook of
/// [`HandlerContext::on_make_room`](crate::HandlerContext::on_make_room).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MakeRoom {
    /// It has been idle between requests for longer than the busy idle
    /// timeout: leave now.
    IdleTooLong,
    /// It has run for longer than the busy session limit (whether or not
    /// it is also idle too long): leave as soon as the request in progress,
    /// if any, is done.
    RanTooLong,
}

impl MakeRoom {
    pub(crate) fn code(self) -> u8 {
        match self {
            MakeRoom::IdleTooLong => 1,
            MakeRoom::RanTooLong => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<MakeRoom> {
        match code {
            1 => Some(MakeRoom::IdleTooLong),
            2 => Some(MakeRoom::RanTooLong),
            _ => None,
        }
    }
}

/// A make-room hook, as registered with
/// [`HandlerContext::on_make_room`](crate::HandlerContext::on_make_room).
pub(crate) type RoomHook = Box<dyn Fn(MakeRoom) + Send + Sync>;

/// The limits past which a running handler must make room for a waiting
/// one; `None`: no such limit.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BusyLimits {
    pub(crate) idle: Option<Duration>,
    pub(crate) session: Option<Duration>,
}

impl BusyLimits {
    #[inline]
    pub(crate) fn any(&self) -> bool {
        self.idle.is_some() || self.session.is_some()
    }

    /// The shorter limit: a handler that starts or goes idle now passes
    /// a limit no sooner than this from now.
    fn shortest(&self) -> Option<Duration> {
        [self.idle, self.session].into_iter().flatten().min()
    }
}

/// What a running handler's context tells the manager, without knowing
/// its type parameters.
pub(crate) trait RoomWatch {
    /// The handler went idle: a make-room pass may be due.
    fn went_idle(&self);
}

impl<Q, S> RoomWatch for ManagerState<Q, S> {
    fn went_idle(&self) {
        self.room_needed();
    }
}

impl<Q, S> ManagerState<Q, S> {
    /// One make-room pass: asks as many running handlers past a limit as
    /// there are waiting handlers nobody made room for yet, longest past
    /// first. Returns when the next unasked handler passes a limit, if a
    /// handler still waits for room then.
    ///
    /// It also publishes when the next pass is due ([`ManagerState::room_due`]):
    /// the earliest limit an unasked handler will pass, or a shortest limit
    /// from now (a handler starting or going idle after this pass passes
    /// one no sooner), whichever comes first; or "now" while a waiter
    /// would find a handler past its limit unasked. The hot paths wake the
    /// watcher only once that moment has come, and the timer returned
    /// covers it.
    pub(super) fn make_room(&self) -> Option<Instant> {
        let limits = self.limits;
        if !limits.any() || self.closing.load(Ordering::SeqCst) {
            return None;
        }
        let waiting = self.counts.get().1;
        let mut need = waiting.saturating_sub(self.asked.load(Ordering::Acquire));
        if need == 0 {
            // The next waiter wakes the watcher.
            self.room_due.set(None, Ordering::SeqCst);
            return self.recheck(waiting, None);
        }
        let now = Instant::now();
        let mut past = Vec::new();
        let mut next: Option<Instant> = None;
        let slots = self.workers.slots();
        for (index, slot) in slots.iter().enumerate() {
            let Some(occupant) = slot.occupant() else {
                continue;
            };
            let session_due = limits.session.map(|l| occupant.started_at + l);
            let idle_due = limits.idle.zip(occupant.idle_since).map(|(l, s)| s + l);
            let passed = |due: Option<Instant>| due.filter(|d| *d <= now);
            let (why, due) = match (passed(session_due), passed(idle_due)) {
                (Some(s), i) => (MakeRoom::RanTooLong, i.map_or(s, |i| i.min(s))),
                (None, Some(i)) => (MakeRoom::IdleTooLong, i),
                (None, None) => {
                    next = [next, session_due, idle_due].into_iter().flatten().min();
                    continue;
                }
            };
            past.push((due, index, occupant.id, why));
        }
        // The earliest due is the longest past its limit.
        past.sort_unstable_by_key(|p| (p.0, p.2));
        let mut past = past.into_iter();
        for (_, index, id, why) in past.by_ref() {
            if slots.get(index).ask(id, why, &self.asked) {
                log::debug!("handler {id} asked to make room: {why:?}");
                need -= 1;
                if need == 0 {
                    break;
                }
            }
        }
        if past.len() > 0 {
            // Handlers past a limit are left for the next waiter.
            self.room_due.set(None, Ordering::SeqCst);
            return self.recheck(waiting, None);
        }
        let horizon = limits.shortest().and_then(|l| now.checked_add(l));
        let due = [next, horizon].into_iter().flatten().min();
        self.room_due.set(due, Ordering::SeqCst);
        self.recheck(waiting, due)
    }

    /// After publishing when the next pass is due: if a handler was queued
    /// meanwhile, its submitter may have read the moment before it was
    /// published and not woken the watcher, so the pass is run again at
    /// once. (Both sides write before they read, in sequential order, so
    /// one of them sees the other.)
    fn recheck(&self, waiting: usize, timer: Option<Instant>) -> Option<Instant> {
        if self.counts.get().1 > waiting {
            Some(Instant::now())
        } else {
            timer
        }
    }

    /// Whether a make-room pass is due by now; see [`ManagerState::make_room`].
    pub(super) fn room_pass_due(&self) -> bool {
        self.room_due
            .get(Ordering::SeqCst)
            .is_none_or(|due| due <= Instant::now())
    }
}
