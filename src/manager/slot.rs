//! One worker's running slot: what it runs now, and how to ask it to stop.

use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::stats::WorkerCounters;
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
    hook: Option<StopHook>,
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
    pub(crate) counters: WorkerCounters,
}

impl Slot {
    pub(crate) fn new(phase: Arc<Phase>) -> Slot {
        Slot {
            occupant: AtomicU64::new(0),
            has_hook: AtomicBool::new(false),
            state: Mutex::default(),
            phase,
            counters: WorkerCounters::default(),
        }
    }

    pub(crate) fn occupy(&self, info: RunningInfo) {
        lock(&self.state).info = Some(info);
        // Published to `stop` and `info` through the state lock they take.
        self.occupant.store(info.id + 1, Ordering::Release);
    }

    pub(crate) fn vacate(&self) {
        self.occupant.store(0, Ordering::Release);
        // A plain load first: most handlers never register a hook.
        if self.has_hook.load(Ordering::Acquire) && self.has_hook.swap(false, Ordering::AcqRel) {
            // Dropped outside the lock: a hook may own a socket or more.
            let hook = lock(&self.state).hook.take();
            drop(hook);
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
        let mut state = lock(&self.state);
        if let Some(stop) = self.phase.get() {
            call_hook(&hook, stop);
        }
        state.hook = Some(hook);
        self.has_hook.store(true, Ordering::Release);
    }

    /// Calls the stop hook of the handler running here, if it has one.
    pub(crate) fn stop(&self, stop: Stop) {
        let state = lock(&self.state);
        if self.occupant.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(hook) = &state.hook {
            call_hook(hook, stop);
        }
    }
}

/// Calls a stop hook, logging a panic instead of passing it on: the
/// shutdown that calls hooks must reach every slot and join every thread.
fn call_hook(hook: &StopHook, stop: Stop) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| hook(stop))) {
        log::error!(
            "a stop hook panicked: {}",
            crate::util::panic_message(&*payload)
        );
    }
}
