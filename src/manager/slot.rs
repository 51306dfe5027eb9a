//! One worker's running slot: what it runs now, and how to ask it to stop.

use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::room::{MakeRoom, RoomHook};
use crate::handler::{Stop, StopHook};
use crate::util::lock;

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

/// The manager-wide stop phase, shared by every slot.
#[derive(Debug, Default)]
pub(crate) struct Phase(AtomicU8);

impl Phase {
    const NONE: u8 = 0;
    const GRACEFUL: u8 = 1;
    const NOW: u8 = 2;

    pub(crate) fn get(&self) -> Option<Stop> {
        match self.0.load(Ordering::SeqCst) {
            Self::NONE => None,
            Self::GRACEFUL => Some(Stop::Graceful),
            _ => Some(Stop::Now),
        }
    }

    pub(crate) fn set(&self, stop: Stop) {
        let value = match stop {
            Stop::Graceful => Self::GRACEFUL,
            Stop::Now => Self::NOW,
        };
        self.0.fetch_max(value, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct SlotState {
    /// The last handler run here; current only while `occupant` says so.
    info: Option<RunningInfo>,
    /// Hooks are shared so they can be called outside the lock: a hook
    /// may call back into the manager (`running()` reads this lock).
    hook: Option<Arc<StopHook>>,
    room_hook: Option<Arc<RoomHook>>,
}

/// What the make-room pass needs to know of a running handler.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Occupant {
    pub(crate) id: u64,
    pub(crate) started_at: Instant,
    /// Since when it is idle between requests; `None` while busy (and for
    /// handlers that never report).
    pub(crate) idle_since: Option<Instant>,
}

/// A worker's slot. The worker fills it when a handler starts and clears it
/// when the handler ends; a shutdown reads it to call stop hooks.
///
/// The hot path is cheap: clearing is one atomic store unless the handler
/// registered a stop hook. Aligned so that workers' slots (and the
/// counters in them) never share a cache line.
#[repr(align(128))]
pub(crate) struct Slot {
    /// The running handler's id plus one; 0 while the slot is empty.
    occupant: AtomicU64,
    /// Whether `state.hook` may be set, so clearing knows to lock.
    has_hook: AtomicBool,
    state: Mutex<SlotState>,
    phase: Arc<Phase>,
    /// The manager's start: `idle_since` counts nanoseconds from it.
    epoch: Instant,
    /// Nanoseconds since `epoch` plus one when the handler went idle;
    /// 0 while it is busy. One store per change, read only by the
    /// make-room pass.
    idle_since: AtomicU64,
    /// The [`MakeRoom`] asked of the current handler, as its code; 0: none.
    asked: AtomicU8,
}

impl Slot {
    pub(crate) fn new(phase: Arc<Phase>, epoch: Instant) -> Slot {
        Slot {
            occupant: AtomicU64::new(0),
            has_hook: AtomicBool::new(false),
            state: Mutex::default(),
            phase,
            epoch,
            idle_since: AtomicU64::new(0),
            asked: AtomicU8::new(0),
        }
    }

    /// Fills the slot; true if a request to make room for its previous
    /// handler came after that one left (it must be uncounted).
    pub(crate) fn occupy(&self, info: RunningInfo) -> bool {
        self.idle_since.store(0, Ordering::Relaxed);
        // Under the lock `ask` holds from its check to its store, so a
        // late request for the previous handler is seen here.
        let stale = {
            let mut state = lock(&self.state);
            state.info = Some(info);
            self.take_asked()
        };
        // Published to `stop` and `info` through the state lock they take.
        self.occupant.store(info.id + 1, Ordering::Release);
        stale
    }

    /// Clears the make-room request; true if there was one. `ask` may
    /// race with the handler leaving, so both `vacate` and the next
    /// `occupy` clear it, and exactly one of them sees it.
    fn take_asked(&self) -> bool {
        self.asked.load(Ordering::Acquire) != 0 && self.asked.swap(0, Ordering::AcqRel) != 0
    }

    /// Clears the slot; true if its handler had been asked to make room.
    pub(crate) fn vacate(&self) -> bool {
        self.occupant.store(0, Ordering::Release);
        // A plain load first: most handlers never register a hook.
        if self.has_hook.load(Ordering::Acquire) && self.has_hook.swap(false, Ordering::AcqRel) {
            // Dropped outside the lock: a hook may own a socket or more.
            let hooks = {
                let mut state = lock(&self.state);
                (state.hook.take(), state.room_hook.take())
            };
            drop(hooks);
        }
        self.take_asked()
    }

    /// Records that the handler is idle between requests (`true`) or busy.
    pub(crate) fn set_idle(&self, idle: bool) {
        let since = if idle {
            u64::try_from(self.epoch.elapsed().as_nanos()).map_or(u64::MAX, |n| n + 1)
        } else {
            0
        };
        self.idle_since.store(since, Ordering::Release);
    }

    /// The running handler, for the make-room pass; `None` if the slot is
    /// empty or its handler was already asked.
    pub(crate) fn occupant(&self) -> Option<Occupant> {
        if self.asked.load(Ordering::Acquire) != 0 {
            return None;
        }
        let info = self.info()?;
        let idle_since = match self.idle_since.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        };
        Some(Occupant {
            id: info.id,
            started_at: info.started_at,
            idle_since,
        })
    }

    pub(crate) fn room_requested(&self) -> Option<MakeRoom> {
        MakeRoom::from_code(self.asked.load(Ordering::Acquire))
    }

    /// Asks handler `id`, if it still runs here and was not asked yet, to
    /// make room; counts it in `asked` before its hook can react.
    pub(crate) fn ask(&self, id: u64, why: MakeRoom, asked: &AtomicUsize) -> bool {
        let hook = {
            let state = lock(&self.state);
            if self.occupant.load(Ordering::Acquire) != id + 1
                || self.asked.load(Ordering::Acquire) != 0
            {
                return false;
            }
            asked.fetch_add(1, Ordering::AcqRel);
            self.asked.store(why.code(), Ordering::Release);
            state.room_hook.clone()
        };
        if let Some(hook) = hook {
            call_guarded("make-room hook", || hook(why));
        }
        true
    }

    /// Stores the make-room hook; calls it at once if room was already
    /// asked. `ask` sets the request and reads the hook under the lock
    /// this takes, so a request is never missed.
    pub(crate) fn set_room_hook(&self, hook: RoomHook) {
        let hook = Arc::new(hook);
        let asked = {
            let mut state = lock(&self.state);
            state.room_hook = Some(hook.clone());
            self.has_hook.store(true, Ordering::Release);
            self.room_requested()
        };
        if let Some(why) = asked {
            call_guarded("make-room hook", || hook(why));
        }
    }

    pub(crate) fn info(&self) -> Option<RunningInfo> {
        let occupant = self.occupant.load(Ordering::Acquire);
        let info = lock(&self.state).info?;
        (occupant == info.id + 1).then_some(info)
    }

    pub(crate) fn stop_requested(&self) -> Option<Stop> {
        self.phase.get()
    }

    /// Stores the hook; calls it at once if a stop was already requested.
    /// The phase is read under the slot lock, and [`Slot::stop`] takes the
    /// same lock after setting the phase, so a hook is never missed.
    pub(crate) fn set_hook(&self, hook: StopHook) {
        let hook = Arc::new(hook);
        let stop = {
            let mut state = lock(&self.state);
            state.hook = Some(hook.clone());
            self.has_hook.store(true, Ordering::Release);
            self.phase.get()
        };
        // Called outside the lock: a hook may call back into the manager.
        if let Some(stop) = stop {
            call_guarded("stop hook", || hook(stop));
        }
    }

    /// Calls the stop hook of the handler running here, if it has one.
    pub(crate) fn stop(&self, stop: Stop) {
        let hook = {
            let state = lock(&self.state);
            if self.occupant.load(Ordering::Acquire) == 0 {
                return;
            }
            state.hook.clone()
        };
        if let Some(hook) = hook {
            call_guarded("stop hook", || hook(stop));
        }
    }
}

/// Calls a hook, logging a panic instead of passing it on: the shutdown
/// or make-room pass that calls hooks must reach every slot.
fn call_guarded(what: &str, hook: impl FnOnce()) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(hook)) {
        log::error!(
            "a {what} panicked: {}",
            crate::util::panic_message(&*payload)
        );
    }
}
