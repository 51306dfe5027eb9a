//! One worker's running slot: what it runs now, and how to ask it to stop
//! or to make room.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::room::{Candidate, MakeRoom, RoomHook};
use crate::handler::{Stop, StopHook};
use crate::util::{call_guarded, lock};

/// A snapshot of one running handler; see
/// [`Manager::running`](crate::Manager::running).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunningInfo {
    /// The handler's id, unique within its manager.
    pub id: u64,
    /// The source it reported, if any.
    pub source: Option<IpAddr>,
    /// When it was queued.
    pub queued_at: Instant,
    /// When it started running.
    pub started_at: Instant,
}

/// The running handler, as its slot holds it.
struct Occupant {
    info: RunningInfo,
    /// Since when it is idle between requests; `None` while busy.
    idle_since: Option<Instant>,
    /// Whether, and why, it was asked to make room.
    asked: Option<MakeRoom>,
    stop_hook: Option<Arc<StopHook>>,
    /// The most urgent stop its hook was called with: each stop reaches
    /// the hook once, whether `stop` or the registration delivers it.
    told: Option<Stop>,
    room_hook: Option<Arc<RoomHook>>,
}

/// A worker's slot, filled while a handler runs. One small lock, never
/// held while a hook runs (a hook may call back into the manager).
#[derive(Default)]
pub(crate) struct Slot {
    occupant: Mutex<Option<Occupant>>,
}

impl Slot {
    /// Fills the slot with the handler of `info`.
    pub(super) fn occupy(&self, info: RunningInfo) {
        *lock(&self.occupant) = Some(Occupant {
            info,
            idle_since: None,
            asked: None,
            stop_hook: None,
            told: None,
            room_hook: None,
        });
    }

    /// Empties the slot; true if its handler had been asked to make room.
    pub(super) fn vacate(&self) -> bool {
        // Dropped outside the lock: a hook may own a socket or more.
        let left = lock(&self.occupant).take();
        left.is_some_and(|o| o.asked.is_some())
    }

    /// Records that the handler is idle between requests (`true`) or busy.
    pub(crate) fn set_idle(&self, idle: bool) {
        if let Some(o) = lock(&self.occupant).as_mut() {
            o.idle_since = if idle { Some(Instant::now()) } else { None };
        }
    }

    pub(super) fn info(&self) -> Option<RunningInfo> {
        lock(&self.occupant).as_ref().map(|o| o.info)
    }

    /// The running handler, unless it was asked already.
    pub(super) fn candidate(&self) -> Option<Candidate> {
        let occupant = lock(&self.occupant);
        let o = occupant.as_ref().filter(|o| o.asked.is_none())?;
        Some(Candidate {
            id: o.info.id,
            started_at: o.info.started_at,
            idle_since: o.idle_since,
        })
    }

    pub(crate) fn room_requested(&self) -> Option<MakeRoom> {
        lock(&self.occupant).as_ref().and_then(|o| o.asked)
    }

    /// Asks handler `id`, if it still runs here unasked, to make room; its
    /// hook, if any, is for the caller to call outside the lock.
    pub(super) fn ask(&self, id: u64, why: MakeRoom) -> Option<Option<Arc<RoomHook>>> {
        let mut occupant = lock(&self.occupant);
        let o = occupant
            .as_mut()
            .filter(|o| o.info.id == id && o.asked.is_none())?;
        o.asked = Some(why);
        Some(o.room_hook.clone())
    }

    /// Stores the make-room hook; calls it at once if room was asked already.
    pub(crate) fn set_room_hook(&self, hook: RoomHook) {
        let hook = Arc::new(hook);
        let asked = {
            let mut occupant = lock(&self.occupant);
            let Some(o) = occupant.as_mut() else { return };
            o.room_hook = Some(hook.clone());
            o.asked
        };
        if let Some(why) = asked {
            call_guarded("make-room hook", || hook(why));
        }
    }

    /// Stores the stop hook; calls it at once if a stop was requested
    /// already. `phase` is read under the slot's lock, which [`Slot::stop`]
    /// takes after the phase is set: a stop is never missed, and `told`
    /// keeps it from being delivered twice.
    pub(crate) fn set_stop_hook(&self, hook: StopHook, phase: &Phase) {
        let hook = Arc::new(hook);
        let stop = {
            let mut occupant = lock(&self.occupant);
            let Some(o) = occupant.as_mut() else { return };
            o.stop_hook = Some(hook.clone());
            o.tell(phase.get())
        };
        if let Some(stop) = stop {
            call_guarded("stop hook", || hook(stop));
        }
    }

    /// Calls the stop hook, unless it heard this stop already.
    pub(super) fn stop(&self, stop: Stop) {
        let hook = lock(&self.occupant).as_mut().and_then(|o| {
            o.tell(Some(stop))?;
            o.stop_hook.clone()
        });
        if let Some(hook) = hook {
            call_guarded("stop hook", || hook(stop));
        }
    }
}

impl Occupant {
    /// `stop` if the hook is set and has not heard it or a more urgent
    /// one, marking it heard.
    fn tell(&mut self, stop: Option<Stop>) -> Option<Stop> {
        let stop = stop.filter(|s| self.stop_hook.is_some() && Some(*s) > self.told)?;
        self.told = Some(stop);
        Some(stop)
    }
}

/// The manager-wide stop phase: the most urgent stop requested so far.
/// An atomic, not a lock: every request of every worker reads it, and a
/// lock shared by all made their cores pass its cache line around.
#[derive(Debug, Default)]
pub(crate) struct Phase(AtomicU8);

impl Phase {
    /// The phases in order: none, then each stop as it grows urgent.
    const ALL: [Option<Stop>; 3] = [None, Some(Stop::Graceful), Some(Stop::Now)];

    pub(crate) fn get(&self) -> Option<Stop> {
        Self::ALL[usize::from(self.0.load(Ordering::Acquire))]
    }

    pub(super) fn set(&self, stop: Stop) {
        let index = match stop {
            Stop::Graceful => 1,
            Stop::Now => 2,
        };
        self.0.fetch_max(index, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64) -> RunningInfo {
        let now = Instant::now();
        RunningInfo {
            id,
            source: None,
            queued_at: now,
            started_at: now,
        }
    }

    #[test]
    fn a_request_to_make_room_is_seen_once_and_by_the_one_asked() {
        let slot = Slot::default();
        slot.occupy(info(7));
        assert!(slot.ask(8, MakeRoom::IdleTooLong).is_none(), "not running");
        assert!(slot.ask(7, MakeRoom::RanTooLong).is_some());
        assert!(
            slot.ask(7, MakeRoom::IdleTooLong).is_none(),
            "asked already"
        );
        assert_eq!(slot.room_requested(), Some(MakeRoom::RanTooLong));
        assert!(slot.candidate().is_none(), "the pass skips it");
        assert!(slot.vacate(), "it left asked");
        slot.occupy(info(9));
        assert_eq!(slot.room_requested(), None);
        assert_eq!(slot.candidate().map(|c| c.id), Some(9));
        assert!(!slot.vacate());
        assert_eq!(slot.info(), None);
    }

    #[test]
    fn a_stop_hook_set_after_the_stop_is_called_at_once() {
        let slot = Slot::default();
        let phase = Phase::default();
        slot.occupy(info(1));
        phase.set(Stop::Graceful);
        let (tx, rx) = crossbeam_channel::unbounded();
        slot.set_stop_hook(Box::new(move |s| tx.send(s).unwrap()), &phase);
        assert_eq!(rx.try_recv(), Ok(Stop::Graceful));
        // The shutdown's pass reaching this slot after the registration
        // must not call it again with the same stop (the hook would run on
        // the shutdown's thread, not at once), only with a more urgent one.
        slot.stop(Stop::Graceful);
        assert_eq!(rx.try_recv(), Err(crossbeam_channel::TryRecvError::Empty));
        slot.stop(Stop::Now);
        assert_eq!(rx.try_recv(), Ok(Stop::Now));
        slot.stop(Stop::Now);
        assert!(rx.try_recv().is_err(), "each stop once");
        phase.set(Stop::Now);
        phase.set(Stop::Graceful);
        assert_eq!(phase.get(), Some(Stop::Now), "never less urgent");
    }
}
