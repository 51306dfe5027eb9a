//! Admission policies: whether an arriving handler waits or is refused.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What the manager looks like to a policy when a handler arrives.
///
/// The counts are taken under the manager's admission lock, so two arrivals
/// never see the same state; handlers leaving concurrently may make them
/// slightly higher than the truth, never lower.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Arrival {
    /// The arriving handler's [`source`](crate::Handler::source).
    pub source: Option<IpAddr>,
    /// Handlers running now.
    pub running: usize,
    /// Handlers queued and not yet started.
    pub waiting: usize,
    /// Running plus waiting handlers from the same source (0 without one).
    pub from_source: usize,
    /// The manager's bound on running handlers.
    pub max_running: usize,
    /// The moment of arrival.
    pub now: Instant,
}

/// A policy's verdict on an arriving handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Queue it; it runs when it reaches the head and a slot is free.
    Queue,
    /// Queue it, but refuse it with [`Refusal::QueueTimeout`] if it has not
    /// started by this instant. The refusal happens when the deadline
    /// passes, not when the handler reaches the head.
    QueueUntil(Instant),
    /// Refuse it now; it comes back to the submitter in
    /// [`Refused`](crate::Refused).
    Refuse(Refusal),
}

impl Decision {
    /// Combines two verdicts: a refusal wins (the first one if both
    /// refuse), then the earlier deadline.
    #[must_use]
    pub fn and(self, other: Decision) -> Decision {
        use Decision::*;
        match (self, other) {
            (Refuse(r), _) | (Queue | QueueUntil(_), Refuse(r)) => Refuse(r),
            (QueueUntil(a), QueueUntil(b)) => QueueUntil(a.min(b)),
            (QueueUntil(d), Queue) | (Queue, QueueUntil(d)) => QueueUntil(d),
            (Queue, Queue) => Queue,
        }
    }
}

/// Why a handler was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The waiting queue was full.
    QueueFull,
    /// Its source already had as many handlers as allowed.
    SourceLimit,
    /// It waited past its queue deadline.
    QueueTimeout,
    /// A policy of the application's own refused it as busy.
    Overloaded,
    /// The manager is shutting down.
    ShuttingDown,
}

impl Refusal {
    /// Every reason, in a fixed order (for counters and reports).
    pub const ALL: [Refusal; 5] = [
        Refusal::QueueFull,
        Refusal::SourceLimit,
        Refusal::QueueTimeout,
        Refusal::Overloaded,
        Refusal::ShuttingDown,
    ];

    /// `true` for a refusal that says "try later, the server is busy";
    /// `false` for [`Refusal::ShuttingDown`] ("unavailable").
    pub fn is_busy(self) -> bool {
        self != Refusal::ShuttingDown
    }

    /// A short human-readable reason, lower case.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::QueueFull => "server busy: waiting queue is full",
            Refusal::SourceLimit => "too many connections from your address",
            Refusal::QueueTimeout => "server busy: waited too long in the queue",
            Refusal::Overloaded => "server busy",
            Refusal::ShuttingDown => "server is shutting down",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// The policy asked about every arriving handler.
///
/// [`decide`](Admission::decide) runs under the manager's admission lock,
/// once per [`submit`](crate::Manager::submit), so it sees a consistent
/// [`Arrival`] and may keep state in `&mut self`; it should be quick and
/// must not block.
///
/// Combine policies with [`and`](Admission::and). Writing your own is one
/// method:
///
/// ```
/// use filesrv::{Admission, Arrival, Decision, Refusal};
///
/// /// Refuses everyone while a maintenance flag is up.
/// struct Maintenance(bool);
///
/// impl Admission for Maintenance {
///     fn decide(&mut self, _arrival: &Arrival) -> Decision {
///         if self.0 { Decision::Refuse(Refusal::Overloaded) } else { Decision::Queue }
///     }
/// }
///
/// let policy = filesrv::MaxWaiting(64).and(Maintenance(false));
/// # let _ = policy;
/// ```
pub trait Admission: Send + 'static {
    /// Decides the fate of one arriving handler.
    fn decide(&mut self, arrival: &Arrival) -> Decision;

    /// Both policies: a refusal by either wins, and the earlier deadline.
    fn and<B: Admission>(self, other: B) -> And<Self, B>
    where
        Self: Sized,
    {
        And(self, other)
    }
}

/// Queues everyone; the queue is unbounded. Useful for batch work, not for
/// servers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unbounded;

impl Admission for Unbounded {
    fn decide(&mut self, _: &Arrival) -> Decision {
        Decision::Queue
    }
}

/// Bounds the waiting queue: an arrival is queued while
/// `running + waiting < max_running + N`, so at most `N` handlers wait
/// beyond the running slots. `MaxWaiting(0)` refuses whenever every running
/// slot is taken.
#[derive(Clone, Copy, Debug)]
pub struct MaxWaiting(pub usize);

impl Admission for MaxWaiting {
    fn decide(&mut self, a: &Arrival) -> Decision {
        if a.running + a.waiting < a.max_running.saturating_add(self.0) {
            Decision::Queue
        } else {
            Decision::Refuse(Refusal::QueueFull)
        }
    }
}

/// Caps running plus waiting handlers from one source address at `N`
/// (IPv4-mapped IPv6 addresses count as their IPv4 address). Handlers
/// without a source are not capped.
#[derive(Clone, Copy, Debug)]
pub struct PerSourceCap(pub usize);

impl Admission for PerSourceCap {
    fn decide(&mut self, a: &Arrival) -> Decision {
        if a.source.is_some() && a.from_source >= self.0 {
            Decision::Refuse(Refusal::SourceLimit)
        } else {
            Decision::Queue
        }
    }
}

/// Refuses a handler with [`Refusal::QueueTimeout`] once it has waited
/// this long without starting.
#[derive(Clone, Copy, Debug)]
pub struct QueueTimeout(pub Duration);

impl Admission for QueueTimeout {
    fn decide(&mut self, a: &Arrival) -> Decision {
        match a.now.checked_add(self.0) {
            Some(deadline) => Decision::QueueUntil(deadline),
            None => Decision::Queue,
        }
    }
}

/// Two policies combined; see [`Admission::and`].
#[derive(Clone, Copy, Debug)]
pub struct And<A, B>(pub A, pub B);

impl<A: Admission, B: Admission> Admission for And<A, B> {
    fn decide(&mut self, arrival: &Arrival) -> Decision {
        let first = self.0.decide(arrival);
        if let Decision::Refuse(_) = first {
            return first;
        }
        first.and(self.1.decide(arrival))
    }
}

/// The source key per-source counts use: IPv4-mapped IPv6 folded to IPv4.
pub(crate) fn canonical_source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(running: usize, waiting: usize, from_source: usize) -> Arrival {
        Arrival {
            source: Some("10.0.0.1".parse().unwrap()),
            running,
            waiting,
            from_source,
            max_running: 2,
            now: Instant::now(),
        }
    }

    #[test]
    fn max_waiting_counts_free_slots() {
        let mut p = MaxWaiting(1);
        assert_eq!(p.decide(&arrival(0, 0, 0)), Decision::Queue);
        assert_eq!(p.decide(&arrival(2, 0, 0)), Decision::Queue);
        assert_eq!(
            p.decide(&arrival(2, 1, 0)),
            Decision::Refuse(Refusal::QueueFull)
        );
        let mut none = MaxWaiting(0);
        assert_eq!(none.decide(&arrival(1, 0, 0)), Decision::Queue);
        assert_eq!(
            none.decide(&arrival(2, 0, 0)),
            Decision::Refuse(Refusal::QueueFull)
        );
    }

    #[test]
    fn per_source_cap_ignores_sourceless() {
        let mut p = PerSourceCap(2);
        assert_eq!(p.decide(&arrival(0, 0, 1)), Decision::Queue);
        assert_eq!(
            p.decide(&arrival(0, 0, 2)),
            Decision::Refuse(Refusal::SourceLimit)
        );
        let mut a = arrival(0, 0, 5);
        a.source = None;
        assert_eq!(p.decide(&a), Decision::Queue);
    }

    #[test]
    fn and_prefers_refusal_then_earliest_deadline() {
        let a = arrival(2, 1, 0);
        let soon = a.now + Duration::from_secs(1);
        let mut p = QueueTimeout(Duration::from_secs(5)).and(QueueTimeout(Duration::from_secs(1)));
        assert_eq!(p.decide(&a), Decision::QueueUntil(soon));
        let mut q = QueueTimeout(Duration::from_secs(1)).and(MaxWaiting(1));
        assert_eq!(q.decide(&a), Decision::Refuse(Refusal::QueueFull));
        assert_eq!(
            Decision::Refuse(Refusal::SourceLimit).and(Decision::Refuse(Refusal::QueueFull)),
            Decision::Refuse(Refusal::SourceLimit)
        );
    }

    #[test]
    fn mapped_ipv6_is_ipv4() {
        let mapped: IpAddr = "::ffff:127.0.0.9".parse().unwrap();
        assert_eq!(
            canonical_source(mapped),
            "127.0.0.9".parse::<IpAddr>().unwrap()
        );
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(canonical_source(v6), v6);
    }
}
