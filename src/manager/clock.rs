//! The manager's own clock for queue and start times: the kernel's coarse
//! monotonic clock (`CLOCK_MONOTONIC_COARSE`), read as an [`Instant`].
//!
//! [`Instant::now`] reads `CLOCK_MONOTONIC`, which costs 24-47 ns on the
//! virtual machines this crate is measured on (the TSC behind a
//! hypervisor's clock page); the coarse clock is the same clock as of the
//! last timer tick, read from the vDSO for about 5 ns. On a path that
//! hands over millions of handlers a second, one fine read was the single
//! largest cost. The price is precision: a coarse time is the time of the
//! kernel's last timekeeping update, about one tick (1-4 ms, see
//! [`time_resolution`]) behind the fine one, more while that update runs
//! late (measured here: up to 6 ms with a 4 ms tick, on a virtual CPU the
//! hypervisor had descheduled). Queue waits and start times are known to
//! that, as servers that cache their loop's time (nginx, HAProxy) know
//! theirs. Deadlines and timeouts keep the fine clock.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use rustix::time::{ClockId, Timespec, clock_getres, clock_gettime};

/// A coarse clock reading: `CLOCK_MONOTONIC_COARSE` in nanoseconds, kept
/// raw on the hot path (a subtraction gives a wait) and made an
/// [`Instant`] by [`CoarseClock::instant`] only when someone asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(NonZeroU64);

impl Stamp {
    /// A stamp from [`Stamp::nanos`]; `None` for 0.
    #[inline]
    pub(crate) fn from_nanos(nanos: u64) -> Option<Stamp> {
        NonZeroU64::new(nanos).map(Stamp)
    }

    /// Never 0, so 0 can stand for "none" in an atomic word.
    #[inline]
    pub(crate) fn nanos(self) -> u64 {
        self.0.get()
    }

    /// Nanoseconds from `earlier` to this stamp; 0 if it is later.
    #[inline]
    pub(crate) fn nanos_since(self, earlier: Stamp) -> u64 {
        self.nanos().saturating_sub(earlier.nanos())
    }
}

/// Reads the coarse clock and converts its readings to [`Instant`]s: both
/// clocks count from the same origin, so an instant is an anchor read from
/// each plus the coarse time elapsed since.
#[derive(Debug)]
pub(crate) struct CoarseClock {
    anchor: Instant,
    /// `CLOCK_MONOTONIC` at `anchor`, in nanoseconds.
    anchor_nanos: u64,
}

#[inline]
fn nanos(ts: Timespec) -> u64 {
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nsecs = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nsecs)
}

impl CoarseClock {
    pub(crate) fn new() -> CoarseClock {
        // Read back to back: they differ by one clock read (tens of ns).
        let anchor = Instant::now();
        let anchor_nanos = nanos(clock_gettime(ClockId::Monotonic));
        CoarseClock {
            anchor,
            anchor_nanos,
        }
    }

    /// Now, to within one tick.
    #[inline]
    pub(crate) fn stamp(&self) -> Stamp {
        let now = nanos(clock_gettime(ClockId::MonotonicCoarse));
        Stamp(NonZeroU64::new(now).unwrap_or(NonZeroU64::MIN))
    }

    /// The instant of a stamp (never later than [`Instant::now`] was when
    /// the stamp was read).
    pub(crate) fn instant(&self, stamp: Stamp) -> Instant {
        let now = stamp.nanos();
        match now.checked_sub(self.anchor_nanos) {
            Some(since) => self.anchor + Duration::from_nanos(since),
            // Within a tick of the anchor: the tick began before it.
            None => self
                .anchor
                .checked_sub(Duration::from_nanos(self.anchor_nanos - now))
                .unwrap_or(self.anchor),
        }
    }
}

/// How precise the times a manager records are: queue and start times
/// ([`RunningInfo`](crate::RunningInfo), [`HandlerContext`](crate::HandlerContext))
/// and queue waits ([`Stats`](crate::Stats)) are read from the kernel's
/// coarse monotonic clock, which lags [`Instant::now`] by about this much
/// (the kernel's timer tick, 1 to 4 ms on Linux), and by more while the
/// kernel's own timekeeping runs late (a virtual CPU descheduled by its
/// hypervisor). It is never ahead.
pub fn time_resolution() -> Duration {
    let res = clock_getres(ClockId::MonotonicCoarse);
    Duration::from_nanos(nanos(res))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_time_lags_the_fine_clock_by_about_a_tick_and_never_leads() {
        let clock = CoarseClock::new();
        let tick = time_resolution();
        assert!(tick > Duration::ZERO && tick <= Duration::from_millis(10));
        let mut worst = Duration::ZERO;
        for _ in 0..1000 {
            let before = Instant::now();
            let coarse = clock.instant(clock.stamp());
            let after = Instant::now();
            assert!(coarse <= after, "{coarse:?} after {after:?}");
            worst = worst.max(before.saturating_duration_since(coarse));
        }
        // About a tick; the kernel's update can run late on a loaded
        // virtual machine (6 ms seen with a 4 ms tick), hence the slack.
        assert!(worst <= 10 * tick, "lagged {worst:?} with a {tick:?} tick");
    }
}
