//! Admission policies: whether an arriving handler waits or is refused.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// What the manager looks like to a policy when a handler arrives.
///
/// The counts are taken under the manager's admission lock, so two arrivals
/// never see the same state; handlers leaving concurrently may make them
/// slightly higher than the truth, never lower.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Arrival {
    /// The id the handler gets if it is queued (ids rise with arrival).
    pub id: u64,
    /// The arriving handler's [`source`](crate::Handler::source).
    pub source: Option<IpAddr>,
    /// The handler's [`Key`]: the one it gives
    /// ([`Handler::key`](crate::Handler::key)), or else its source grouped
    /// by [`Key::from_source`]; `None` without either.
    pub key: Option<Key>,
    /// Handlers running now.
    pub running: usize,
    /// Handlers queued and not yet started.
    pub waiting: usize,
    /// The manager's bound on running handlers now.
    pub max_running: usize,
    /// The moment of arrival.
    pub now: Instant,
    /// Whether it is a parked handler coming back (see
    /// [`Handler::serve`](crate::Handler::serve)): admitted before and not
    /// departed since, so a policy that counts admissions counts it
    /// already, and [`Admission::admitted`] is not called for it again.
    pub returning: bool,
}

/// What a policy counts handlers by: a source address (grouped, see
/// [`Key::from_source`]) or any class a handler gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Key {
    /// A source address: IPv4, or an IPv6 network.
    Source(IpAddr),
    /// A key of the handler's own: a user, a tenant, a request class.
    Class(u64),
}

impl Key {
    /// The key of a source address: IPv4-mapped IPv6 counts as its IPv4
    /// address, and other IPv6 addresses as their network of
    /// `v6_prefix` bits (one host usually holds a whole /64).
    ///
    /// ```
    /// use filesrv::Key;
    ///
    /// let a = Key::from_source("2001:db8::1".parse().unwrap(), 64);
    /// let b = Key::from_source("2001:db8::ffff:2".parse().unwrap(), 64);
    /// assert_eq!(a, b);
    /// let v4 = Key::from_source("::ffff:10.0.0.1".parse().unwrap(), 64);
    /// assert_eq!(v4, Key::Source("10.0.0.1".parse().unwrap()));
    /// ```
    pub fn from_source(ip: IpAddr, v6_prefix: u8) -> Key {
        let ip = match canonical_source(ip) {
            IpAddr::V6(v6) => {
                let bits = u32::from(v6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
            v4 => v4,
        };
        Key::Source(ip)
    }
}

/// How an admitted handler left the manager; see [`Departure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Its `run` returned `Ok`.
    Completed,
    /// Its `run` returned `Err`.
    Failed,
    /// Its `run` panicked, or the policy's `decide` did when it came back
    /// from being parked.
    Panicked,
    /// Its client left while it waited: dropped unrun.
    Abandoned,
    /// Refused after it was queued: its queue deadline passed
    /// ([`Refusal::QueueTimeout`]) or a shutdown began
    /// ([`Refusal::ShuttingDown`]).
    Refused(Refusal),
}

/// An admitted handler leaving, as told to
/// [`Admission::departed`]: once per admitted handler, whatever the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Departure {
    /// Its id, as in [`Arrival::id`].
    pub id: u64,
    /// Its key, as in [`Arrival::key`].
    pub key: Option<Key>,
    /// How it left.
    pub outcome: Outcome,
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
    /// A policy of the application's own refused it as unavailable
    /// (a maintenance switch, say): "not now", not "busy".
    Unavailable,
    /// It was parked for longer than the idle timeout.
    IdleTimeout,
    /// It was the longest parked when the most that may be parked were.
    Evicted,
}

impl Refusal {
    /// Every reason, in a fixed order (for counters and reports).
    pub const ALL: [Refusal; 8] = [
        Refusal::QueueFull,
        Refusal::SourceLimit,
        Refusal::QueueTimeout,
        Refusal::Overloaded,
        Refusal::ShuttingDown,
        Refusal::Unavailable,
        Refusal::IdleTimeout,
        Refusal::Evicted,
    ];

    /// `true` for a refusal that says "try later, the server is busy";
    /// `false` for [`Refusal::ShuttingDown`] and [`Refusal::Unavailable`]
    /// ("unavailable"), and for the two ways a parked handler is closed,
    /// [`Refusal::IdleTimeout`] and [`Refusal::Evicted`].
    pub fn is_busy(self) -> bool {
        !matches!(
            self,
            Refusal::ShuttingDown | Refusal::Unavailable | Refusal::IdleTimeout | Refusal::Evicted
        )
    }

    /// A short human-readable reason, lower case.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::QueueFull => "server busy: waiting queue is full",
            Refusal::SourceLimit => "too many connections from your address",
            Refusal::QueueTimeout => "server busy: waited too long in the queue",
            Refusal::Overloaded => "server busy",
            Refusal::ShuttingDown => "server is shutting down",
            Refusal::Unavailable => "server unavailable",
            Refusal::IdleTimeout => "idle too long",
            Refusal::Evicted => "too many idle connections",
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

/// The policy asked about every arriving handler, and told about every
/// one it let in when it leaves.
///
/// [`decide`](Admission::decide) runs under the manager's admission lock,
/// once per [`submit`](crate::Manager::submit), so it sees a consistent
/// [`Arrival`] and may keep state in `&mut self`; it should be quick and
/// must not block. So do [`admitted`](Admission::admitted), called when the
/// final verdict queued the handler, and
/// [`departed`](Admission::departed), called exactly once for every
/// admitted handler when it leaves, by any path. A policy that counts
/// handlers per [`Key`] counts up in `admitted` and down in `departed`
/// ([`PerKeyCap`] does just that). The manager's owner can reach the
/// policy at run time with [`Manager::with_policy`](crate::Manager::with_policy).
///
/// Combine policies with [`and`](Admission::and). Writing your own is one
/// method; the crate documentation has a keyed policy and a request-class
/// policy. A maintenance switch, flipped on a running manager:
///
/// ```
/// use filesrv::admission::{Admission, Arrival, Decision, MaxWaiting, Refusal};
/// use filesrv::{Manager, ManagerBuilder};
/// use filesrv::{handler_fn, FnHandler, HandlerContext};
/// # type Work = FnHandler<fn(&HandlerContext) -> std::io::Result<()>>;
///
/// /// Refuses everyone as unavailable while switched on.
/// #[derive(Default)]
/// struct Maintenance {
///     on: bool,
/// }
///
/// impl Admission for Maintenance {
///     fn decide(&mut self, _arrival: &Arrival) -> Decision {
///         if self.on { Decision::Refuse(Refusal::Unavailable) } else { Decision::Queue }
///     }
/// }
///
/// # fn main() -> std::io::Result<()> {
/// let manager: Manager<Work, _> = ManagerBuilder::new(2)
///     .admission(MaxWaiting(64).and(Maintenance::default()))
///     .build()?;
/// let work: Work = handler_fn(|_| Ok(()));
/// assert!(manager.submit(work).is_ok());
///
/// // From an operator's signal or a control socket, at run time:
/// manager.with_policy(|policy| policy.1.on = true);
/// let refused = manager.submit(handler_fn(|_| Ok(()))).unwrap_err();
/// assert_eq!(refused.reason(), Refusal::Unavailable); // "ERR unavailable"
///
/// manager.with_policy(|policy| policy.1.on = false);
/// assert!(manager.submit(handler_fn(|_| Ok(()))).is_ok());
/// # Ok(())
/// # }
/// ```
pub trait Admission: Send + 'static {
    /// Decides the fate of one arriving handler.
    fn decide(&mut self, arrival: &Arrival) -> Decision;

    /// The handler of `arrival` was queued: every policy combined said
    /// so. Not called for a refused arrival. The default does nothing.
    fn admitted(&mut self, arrival: &Arrival) {
        let _ = arrival;
    }

    /// A handler this policy saw admitted left the manager. Called under
    /// the admission lock, on the thread where it left (a worker, the
    /// watcher, or the one calling
    /// [`shutdown`](crate::Manager::shutdown)). The default does nothing.
    fn departed(&mut self, departure: &Departure) {
        let _ = departure;
    }

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
/// `waiting < N + free slots` (free slots: `max_running - running`, or
/// none), so at most `N` handlers wait beyond the running slots.
/// `MaxWaiting(0)` refuses whenever every running slot is taken. After
/// [`set_max_running`](crate::Manager::set_max_running) shrank the bound,
/// handlers still running above it leave the queue its `N` places.
#[derive(Clone, Copy, Debug)]
pub struct MaxWaiting(pub usize);

impl Admission for MaxWaiting {
    fn decide(&mut self, a: &Arrival) -> Decision {
        let free = a.max_running.saturating_sub(a.running);
        if a.waiting < free.saturating_add(self.0) {
            Decision::Queue
        } else {
            Decision::Refuse(Refusal::QueueFull)
        }
    }
}

/// Caps running plus waiting handlers of one [`Key`] at `N`: by default
/// one source address (IPv4-mapped IPv6 addresses count as their IPv4
/// address, other IPv6 addresses by network, see
/// [`ManagerBuilder::ipv6_prefix`](crate::ManagerBuilder::ipv6_prefix)),
/// or the key a handler gives. Handlers without a key are not capped; a
/// parked handler (see [`Handler::serve`](crate::Handler::serve)) counts
/// until it leaves for good.
///
/// An ordinary policy: it counts a key up when a handler is admitted and
/// down when it departs, and forgets a key whose count falls to zero, so
/// it holds one entry per key with handlers in the manager.
#[derive(Clone, Debug)]
pub struct PerKeyCap {
    cap: usize,
    counts: HashMap<Key, usize>,
}

impl PerKeyCap {
    /// At most `cap` handlers per key.
    pub fn new(cap: usize) -> PerKeyCap {
        PerKeyCap {
            cap,
            counts: HashMap::new(),
        }
    }

    /// Running plus waiting handlers of `key` now.
    pub fn count(&self, key: &Key) -> usize {
        self.counts.get(key).copied().unwrap_or(0)
    }
}

impl Admission for PerKeyCap {
    fn decide(&mut self, a: &Arrival) -> Decision {
        if a.returning {
            // Counted since it was first admitted.
            return Decision::Queue;
        }
        match a.key {
            Some(key) if self.count(&key) >= self.cap => Decision::Refuse(Refusal::SourceLimit),
            _ => Decision::Queue,
        }
    }

    fn admitted(&mut self, a: &Arrival) {
        if let Some(key) = a.key {
            *self.counts.entry(key).or_insert(0) += 1;
        }
    }

    fn departed(&mut self, d: &Departure) {
        let Some(key) = d.key else { return };
        if let Some(count) = self.counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&key);
            }
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

    fn admitted(&mut self, arrival: &Arrival) {
        self.0.admitted(arrival);
        self.1.admitted(arrival);
    }

    fn departed(&mut self, departure: &Departure) {
        self.0.departed(departure);
        self.1.departed(departure);
    }
}

/// A source with IPv4-mapped IPv6 folded to IPv4.
pub(crate) fn canonical_source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(running: usize, waiting: usize) -> Arrival {
        let source = "10.0.0.1".parse().unwrap();
        Arrival {
            id: 0,
            source: Some(source),
            key: Some(Key::from_source(source, 64)),
            running,
            waiting,
            max_running: 2,
            now: Instant::now(),
            returning: false,
        }
    }

    #[test]
    fn max_waiting_counts_free_slots() {
        let mut p = MaxWaiting(1);
        assert_eq!(p.decide(&arrival(0, 0)), Decision::Queue);
        assert_eq!(p.decide(&arrival(2, 0)), Decision::Queue);
        assert_eq!(
            p.decide(&arrival(2, 1)),
            Decision::Refuse(Refusal::QueueFull)
        );
        let mut none = MaxWaiting(0);
        assert_eq!(none.decide(&arrival(1, 0)), Decision::Queue);
        assert_eq!(
            none.decide(&arrival(2, 0)),
            Decision::Refuse(Refusal::QueueFull)
        );
    }

    #[test]
    fn max_waiting_keeps_its_places_while_a_shrunk_bound_is_exceeded() {
        // Three running over a bound of two, as after a shrink.
        let mut p = MaxWaiting(1);
        assert_eq!(p.decide(&arrival(3, 0)), Decision::Queue);
        assert_eq!(
            p.decide(&arrival(3, 1)),
            Decision::Refuse(Refusal::QueueFull)
        );
        assert_eq!(
            MaxWaiting(0).decide(&arrival(3, 0)),
            Decision::Refuse(Refusal::QueueFull)
        );
    }

    #[test]
    fn per_source_cap_counts_admitted_until_they_depart() {
        let mut p = PerKeyCap::new(2);
        let a = arrival(0, 0);
        for _ in 0..2 {
            assert_eq!(p.decide(&a), Decision::Queue);
            p.admitted(&a);
        }
        assert_eq!(p.decide(&a), Decision::Refuse(Refusal::SourceLimit));
        let gone = Departure {
            id: 0,
            key: a.key,
            outcome: Outcome::Completed,
        };
        p.departed(&gone);
        assert_eq!(p.decide(&a), Decision::Queue);
        p.departed(&gone);
        assert!(p.counts.is_empty(), "a key at zero is forgotten");
        let mut keyless = a.clone();
        keyless.key = None;
        p.counts.insert(a.key.unwrap(), 9);
        assert_eq!(p.decide(&keyless), Decision::Queue);
    }

    #[test]
    fn ipv6_groups_by_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let key = |s: &str, p| Key::from_source(ip(s), p);
        assert_eq!(key("2001:db8:0:1::9", 64), key("2001:db8:0:1:ffff::1", 64));
        assert_ne!(key("2001:db8:0:1::9", 64), key("2001:db8:0:2::9", 64));
        assert_ne!(key("2001:db8::1", 128), key("2001:db8::2", 128));
        assert_eq!(key("2001:db8::1", 0), Key::Source(ip("::")));
        assert_eq!(key("::ffff:1.2.3.4", 64), Key::Source(ip("1.2.3.4")));
        assert_eq!(key("1.2.3.4", 0), Key::Source(ip("1.2.3.4")));
    }

    #[test]
    fn and_prefers_refusal_then_earliest_deadline() {
        let a = arrival(2, 1);
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
