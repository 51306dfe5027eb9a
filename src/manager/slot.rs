//! One worker's running slot: what it runs now, and how to ask it to stop.

use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::lock;
use crate::handler::{Stop, StopHook};

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
    info: Option<RunningInfo>,
    hook: Option<StopHook>,
}

/// A worker's slot. The worker fills it when a handler starts and clears it
/// when the handler ends; a shutdown reads it to call stop hooks.
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    phase: Arc<Phase>,
}

impl Slot {
    pub(crate) fn new(phase: Arc<Phase>) -> Slot {
        Slot {
            state: Mutex::default(),
            phase,
        }
    }

    pub(crate) fn occupy(&self, info: RunningInfo) {
        let mut state = lock(&self.state);
        state.info = Some(info);
        state.hook = None;
    }

    pub(crate) fn vacate(&self) {
        let mut state = lock(&self.state);
        state.info = None;
        // Dropped outside the lock: a hook may own a socket or more.
        let hook = state.hook.take();
        drop(state);
        drop(hook);
    }

    pub(crate) fn info(&self) -> Option<RunningInfo> {
        lock(&self.state).info
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
    }

    /// Calls the hook of the handler running here, if any; true if one ran.
    pub(crate) fn stop(&self, stop: Stop) -> bool {
        let state = lock(&self.state);
        if state.info.is_none() {
            return false;
        }
        if let Some(hook) = &state.hook {
            call_hook(hook, stop);
        }
        true
    }
}

/// Calls a stop hook, logging a panic instead of passing it on: the
/// shutdown that calls hooks must reach every slot and join every thread.
fn call_hook(hook: &StopHook, stop: Stop) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| hook(stop))) {
        log::error!("a stop hook panicked: {}", super::panic_message(&*payload));
    }
}
