//! One worker's running slot: what it runs now, and how to ask it to stop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::clock::{CoarseClock, Stamp};
use super::room::{MakeRoom, RoomHook};
use super::seqlock::SeqLock;
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
    /// Hooks are shared so they can be called outside the lock: a hook
    /// may call back into the manager.
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

/// The running handler's info as the slot's sequence lock holds it: its
/// id, its source (a tag, 4 or 6, and 16 address bytes), and its queue
/// and start stamps.
const INFO_WORDS: usize = 6;

/// The occupant word: the running handler's id plus one, shifted past the
/// [`MakeRoom`] code asked of it (ids stay below 2^56: centuries of
/// handlers at millions a second).
const CODE_BITS: u32 = 8;
const CODE_MASK: u64 = (1 << CODE_BITS) - 1;

/// A worker's slot. The worker fills it when a handler starts and clears it
/// when the handler ends; a shutdown reads it to call stop hooks.
///
/// The hot path takes no lock: filling is a few plain stores under a
/// sequence lock and one store of the occupant word, clearing one swap of
/// that word (a plain store without busy limits), unless the handler
/// registered a hook. The slot list pads each to its own cache lines, so
/// workers' slots never share one.
pub(crate) struct Slot {
    /// `(id + 1) << CODE_BITS | make-room code asked`; 0 while empty. One
    /// word, so that a request to make room and the handler's leaving are
    /// ordered: exactly one of `ask` and `vacate` sees the other.
    occupant: AtomicU64,
    /// Whether `state` may hold a hook, so clearing knows to lock.
    has_hook: AtomicBool,
    state: Mutex<SlotState>,
    info: SeqLock<INFO_WORDS>,
    phase: Arc<Phase>,
    clock: Arc<CoarseClock>,
    /// [`Stamp::nanos`] of when the handler went idle; 0 while it is
    /// busy. One store per change, read only by the make-room pass.
    idle_since: AtomicU64,
    /// Whether a make-room pass may ask the handler here to leave (busy
    /// limits are set); if not, clearing is a store, not a swap.
    may_be_asked: bool,
}

impl Slot {
    pub(crate) fn new(phase: Arc<Phase>, clock: Arc<CoarseClock>, may_be_asked: bool) -> Slot {
        Slot {
            occupant: AtomicU64::new(0),
            has_hook: AtomicBool::new(false),
            state: Mutex::default(),
            info: SeqLock::new(),
            phase,
            clock,
            idle_since: AtomicU64::new(0),
            may_be_asked,
        }
    }

    /// Fills the slot with handler `id`, queued and started at the stamps.
    #[inline]
    pub(crate) fn occupy(&self, id: u64, source: Option<IpAddr>, queued: Stamp, started: Stamp) {
        self.idle_since.store(0, Ordering::Relaxed);
        let (tag, high, low) = match source {
            None => (0, 0, 0),
            Some(IpAddr::V4(ip)) => (4, 0, u64::from(ip.to_bits())),
            Some(IpAddr::V6(ip)) => {
                let [high, low] = split(ip.to_bits());
                (6, high, low)
            }
        };
        self.info
            .write([id, tag, high, low, queued.nanos(), started.nanos()]);
        // Published to `stop` and `info` with this store.
        self.occupant
            .store((id + 1) << CODE_BITS, Ordering::Release);
    }

    /// Clears the slot; true if its handler had been asked to make room.
    #[inline]
    pub(crate) fn vacate(&self) -> bool {
        // Only `ask` (a make-room pass) changes the word under a running
        // handler; without busy limits none runs, and a store will do.
        let left = if self.may_be_asked {
            self.occupant.swap(0, Ordering::AcqRel)
        } else {
            self.occupant.store(0, Ordering::Release);
            0
        };
        // A plain load first: most handlers never register a hook.
        if self.has_hook.load(Ordering::Acquire) && self.has_hook.swap(false, Ordering::AcqRel) {
            // Dropped outside the lock: a hook may own a socket or more.
            let hooks = {
                let mut state = lock(&self.state);
                (state.hook.take(), state.room_hook.take())
            };
            drop(hooks);
        }
        left & CODE_MASK != 0
    }

    /// Records that the handler is idle between requests (`true`) or busy.
    pub(crate) fn set_idle(&self, idle: bool) {
        let since = if idle { self.clock.stamp().nanos() } else { 0 };
        self.idle_since.store(since, Ordering::Release);
    }

    /// The running handler, for the make-room pass; `None` if the slot is
    /// empty or its handler was already asked.
    pub(crate) fn occupant(&self) -> Option<Occupant> {
        let word = self.occupant.load(Ordering::Acquire);
        if word & CODE_MASK != 0 {
            return None;
        }
        let info = self.info()?;
        let idle_since = Stamp::from_nanos(self.idle_since.load(Ordering::Acquire))
            .map(|stamp| self.clock.instant(stamp));
        Some(Occupant {
            id: info.id,
            started_at: info.started_at,
            idle_since,
        })
    }

    pub(crate) fn room_requested(&self) -> Option<MakeRoom> {
        let code = self.occupant.load(Ordering::Acquire) & CODE_MASK;
        MakeRoom::from_code(u8::try_from(code).unwrap_or(0))
    }

    /// Asks handler `id`, if it still runs here and was not asked yet, to
    /// make room; counts it in `asked` before its hook can react.
    pub(crate) fn ask(&self, id: u64, why: MakeRoom, asked: &AtomicUsize) -> bool {
        debug_assert!(self.may_be_asked, "asked without busy limits");
        let hook = {
            // Under the lock `set_room_hook` takes: exactly one of the two
            // calls the hook.
            let state = lock(&self.state);
            // Counted first: `vacate` may uncount it the moment it is set.
            asked.fetch_add(1, Ordering::AcqRel);
            let running = (id + 1) << CODE_BITS;
            let set = running | u64::from(why.code());
            let swapped =
                self.occupant
                    .compare_exchange(running, set, Ordering::AcqRel, Ordering::Acquire);
            if swapped.is_err() {
                // Gone, or asked already.
                asked.fetch_sub(1, Ordering::AcqRel);
                return false;
            }
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

    /// The running handler's info; `None` while the slot is empty.
    pub(crate) fn info(&self) -> Option<RunningInfo> {
        let id = (self.occupant.load(Ordering::Acquire) >> CODE_BITS).checked_sub(1)?;
        let [info_id, tag, high, low, queued, started] = self.info.read();
        // The info of a handler that started since is not this one's.
        if info_id != id {
            return None;
        }
        let source = match tag {
            4 => u32::try_from(low)
                .ok()
                .map(|v4| Ipv4Addr::from_bits(v4).into()),
            6 => Some(Ipv6Addr::from_bits((u128::from(high) << 64) | u128::from(low)).into()),
            _ => None,
        };
        let instant = |nanos| Stamp::from_nanos(nanos).map(|s| self.clock.instant(s));
        Some(RunningInfo {
            id,
            source,
            queued_at: instant(queued)?,
            started_at: instant(started)?,
        })
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

/// An IPv6 address's two halves, high first.
#[inline]
fn split(bits: u128) -> [u64; 2] {
    let bytes = bits.to_be_bytes();
    let (high, low) = bytes.split_at(8);
    [high, low].map(|half| u64::from_be_bytes(half.try_into().expect("8 bytes")))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn slot() -> (Slot, Arc<CoarseClock>) {
        let clock = Arc::new(CoarseClock::new());
        (Slot::new(Arc::default(), clock.clone(), true), clock)
    }

    #[test]
    fn info_reads_back_what_occupy_wrote() {
        let (slot, clock) = slot();
        assert_eq!(slot.info(), None);
        let queued = clock.stamp();
        let started = Stamp::from_nanos(queued.nanos() + 5_000_000).unwrap();
        for source in [
            None,
            Some("192.0.2.7".parse().unwrap()),
            Some("2001:db8::1:2:3".parse().unwrap()),
        ] {
            slot.occupy(41, source, queued, started);
            let info = slot.info().unwrap();
            assert_eq!((info.id, info.source), (41, source));
            assert_eq!(info.started_at - info.queued_at, Duration::from_millis(5));
            assert!(!slot.vacate());
            assert_eq!(slot.info(), None);
        }
    }

    #[test]
    fn a_request_to_make_room_is_seen_by_exactly_one_of_ask_and_vacate() {
        let (slot, clock) = slot();
        let asked = AtomicUsize::new(0);
        let now = clock.stamp();
        slot.occupy(7, None, now, now);
        assert!(!slot.ask(8, MakeRoom::IdleTooLong, &asked), "not running");
        assert!(slot.ask(7, MakeRoom::RanTooLong, &asked));
        assert!(!slot.ask(7, MakeRoom::IdleTooLong, &asked), "asked already");
        assert_eq!(slot.room_requested(), Some(MakeRoom::RanTooLong));
        assert!(slot.occupant().is_none(), "the pass skips it");
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert!(slot.vacate(), "it left asked: the caller uncounts it");
        // The next handler starts unasked.
        slot.occupy(9, None, now, now);
        assert_eq!(slot.room_requested(), None);
        assert_eq!(slot.occupant().map(|o| o.id), Some(9));
    }
}
