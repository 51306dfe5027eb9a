//! Crate-private helpers that every layer may use, so that no layer
//! reaches into another's internals for them.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{
    Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
use std::time::{Duration, Instant};

/// Locks a mutex, ignoring poison: every critical section in this crate
/// leaves its data consistent, and handlers run outside of them.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `condvar` with `guard`, ignoring poison as [`lock`] does.
pub(crate) fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// Reads a lock, ignoring poison as [`lock`] does.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Writes a lock, ignoring poison as [`lock`] does.
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// The time left until `deadline`; `None` once it has passed.
pub(crate) fn time_left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
}

/// The text of a panic's payload, for a log line.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}

/// Runs `f`, turning a panic into `None` after logging it as `what` of
/// handler `id`.
pub(crate) fn guarded<T>(what: &str, id: u64, f: impl FnOnce() -> T) -> Option<T> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => Some(value),
        Err(payload) => {
            log::error!(
                "handler {id} panicked in {what}: {}",
                panic_message(&*payload)
            );
            None
        }
    }
}

/// Calls a hook, logging a panic instead of passing it on: the shutdown
/// or make-room pass that calls hooks must reach every one.
pub(crate) fn call_guarded(what: &str, hook: impl FnOnce()) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(hook)) {
        log::error!("a {what} panicked: {}", panic_message(&*payload));
    }
}

/// The pause after an `accept` error such as running out of descriptors,
/// for every accepting loop (the file server's listener, a manager's
/// source): 5 ms, doubled on each failure in a row, up to 500 ms.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    last: Option<Duration>,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_millis(500);

    /// Another failure: the pause to wait out before trying again.
    pub(crate) fn failed(&mut self) -> Duration {
        let pause = self.last.map_or(Self::MIN, |b| (b * 2).min(Self::MAX));
        self.last = Some(pause);
        pause
    }

    /// A success: the next failure starts over.
    pub(crate) fn reset(&mut self) {
        self.last = None;
    }
}

/// Lets a warning that may repeat without end (one per failed request
/// under descriptor starvation) through at most once a second.
#[derive(Debug)]
pub(crate) struct Throttle {
    /// When one was last let through, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub(crate) const fn new() -> Throttle {
        Throttle {
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last one)` when this one may be logged.
    pub(crate) fn allow(&self) -> Option<u64> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => {
                state.1 += 1;
                None
            }
            _ => {
                let held = state.1;
                *state = (Some(now), 0);
                Some(held)
            }
        }
    }
}

/// A wait as `poll` takes it.
pub(crate) fn timespec(wait: Duration) -> rustix::event::Timespec {
    rustix::event::Timespec {
        tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(wait.subsec_nanos()),
    }
}

/// Errors of `accept` about one connection that died before it was
/// accepted: the next one may do.
pub(crate) fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    )
}

/// How much of a buffer of `max` bytes a body with `remaining` bytes to
/// go needs.
pub(crate) fn chunk_len(remaining: u64, max: usize) -> usize {
    usize::try_from(remaining).map_or(max, |remaining| remaining.min(max))
}

/// A timeout setting as a builder takes it: `None` is no limit, and a
/// zero is refused rather than read as "none" (the crate's one timeout
/// convention, in the crate docs).
///
/// # Panics
///
/// If `timeout` is `Some(Duration::ZERO)`; `name` is the setting's, for
/// the message.
pub(crate) fn timeout_setting(timeout: Option<Duration>, name: &str) -> Option<Duration> {
    assert_ne!(timeout, Some(Duration::ZERO), "use None for no {name}");
    timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_starts_over_after_a_success() {
        let mut backoff = Backoff::default();
        let pauses: Vec<u128> = (0..9).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.failed(), Duration::from_millis(5));
    }
}
