//! Configuring and starting a [`Manager`].

use std::io;
use std::time::Duration;

use super::acceptor::{Accepting, Acceptor};
use super::handle::{Manager, check_bound};
use super::room::BusyLimits;
use super::shared::{Options, ParkLimits, Shared};
use crate::admission::{Admission, MaxWaiting};
use crate::handler::Handler;
use crate::util::timeout_setting;

/// Configures and starts a [`Manager`]: `ManagerBuilder::new(max_running)`, then
/// options, then [`build`](ManagerBuilder::build).
#[derive(Debug)]
pub struct ManagerBuilder<S> {
    admission: S,
    options: Options,
}

impl ManagerBuilder<MaxWaiting> {
    /// A builder for a manager running at most `max_running` handlers at
    /// once, with the default policy [`MaxWaiting`]`(1024)`.
    ///
    /// # Panics
    ///
    /// If `max_running` is 0 or above 2³¹.
    pub fn new(max_running: usize) -> ManagerBuilder<MaxWaiting> {
        check_bound(max_running);
        ManagerBuilder {
            admission: MaxWaiting(1024),
            options: Options {
                max_running,
                name: "filesrv".to_owned(),
                limits: BusyLimits::default(),
                ipv6_prefix: 64,
                park: ParkLimits {
                    idle: None,
                    max: 10_000,
                },
            },
        }
    }
}

impl<S: Admission> ManagerBuilder<S> {
    /// Sets the admission policy (default: [`MaxWaiting`]`(1024)`).
    pub fn admission<S2: Admission>(self, policy: S2) -> ManagerBuilder<S2> {
        ManagerBuilder {
            admission: policy,
            options: self.options,
        }
    }

    /// The prefix length by which IPv6 sources are grouped into one
    /// [`Key`](crate::Key) (default 64: one host usually holds a /64;
    /// 128 counts every address apart). See
    /// [`Key::from_source`](crate::Key::from_source).
    ///
    /// # Panics
    ///
    /// If `bits` is above 128.
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        assert!(
            bits <= 128,
            "an IPv6 prefix has at most 128 bits, got {bits}"
        );
        self.options.ipv6_prefix = bits;
        self
    }

    /// While handlers wait, a running handler idle between requests (as
    /// it reports with [`HandlerContext::set_idle`](crate::HandlerContext::set_idle))
    /// for longer than `timeout` is asked to make room
    /// ([`MakeRoom::IdleTooLong`](crate::MakeRoom::IdleTooLong)), one per
    /// waiting handler, longest past its limit first. Default `None`.
    ///
    /// # Panics
    ///
    /// If `timeout` is `Some(Duration::ZERO)`: a zero is not "none".
    pub fn busy_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.options.limits.idle = timeout_setting(timeout, "busy_idle_timeout");
        self
    }

    /// As [`busy_idle_timeout`](ManagerBuilder::busy_idle_timeout), for a
    /// handler running for longer than `limit`
    /// ([`MakeRoom::RanTooLong`](crate::MakeRoom::RanTooLong)). Default
    /// `None`.
    ///
    /// # Panics
    ///
    /// If `limit` is `Some(Duration::ZERO)`: a zero is not "none".
    pub fn busy_session_limit(mut self, limit: Option<Duration>) -> Self {
        self.options.limits.session = timeout_setting(limit, "busy_session_limit");
        self
    }

    /// How long a parked handler (see [`Handler::serve`]) may stay parked
    /// before it is refused with
    /// [`Refusal::IdleTimeout`](crate::Refusal::IdleTimeout). Default
    /// `None`: no limit.
    ///
    /// # Panics
    ///
    /// If `timeout` is `Some(Duration::ZERO)`: a zero is not "none".
    pub fn park_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.options.park.idle = timeout_setting(timeout, "park_idle_timeout");
        self
    }

    /// The most handlers parked at once (default 10,000): parking one more
    /// refuses the longest parked with
    /// [`Refusal::Evicted`](crate::Refusal::Evicted). 0 turns parking off:
    /// a handler that asks to be parked is evicted at once.
    pub fn max_parked(mut self, n: usize) -> Self {
        self.options.park.max = n;
        self
    }

    /// Names the manager's threads `<name>-worker-<i>`, `<name>-watcher`
    /// and `<name>-accept` (default: `filesrv`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.options.name = name.into();
        self
    }

    /// Starts the worker threads and the watcher, and returns the manager.
    ///
    /// # Errors
    ///
    /// The OS refused a thread or an epoll set, or the process is too close
    /// to its memory-map limit (`vm.max_map_count`) for `max_running`
    /// threads; the threads already started are stopped and joined first.
    pub fn build<Q: Handler>(self) -> io::Result<Manager<Q, S>> {
        self.start(None)
    }

    /// As [`build`](ManagerBuilder::build), with an [`Acceptor`] that idle
    /// workers accept handlers from, and a thread (`<name>-accept`) that
    /// accepts while every worker is busy. [`Manager::submit`] still works.
    ///
    /// # Errors
    ///
    /// As [`build`](ManagerBuilder::build), or the OS refused an eventfd.
    pub fn build_with_acceptor<Q: Handler>(
        self,
        acceptor: impl Acceptor<Q>,
    ) -> io::Result<Manager<Q, S>> {
        self.start(Some(Accepting::new(Box::new(acceptor))?))
    }

    fn start<Q: Handler>(self, accepting: Option<Accepting<Q>>) -> io::Result<Manager<Q, S>> {
        let shared = Shared::new(self.admission, &self.options, accepting)?;
        Manager::start(shared, self.options.name)
    }
}
