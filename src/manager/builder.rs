//! Configuring and starting a [`Manager`].

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use super::atomic_instant::AtomicInstant;
use super::clock::CoarseClock;
use super::deadline::Deadlines;
use super::handle::Manager;
use super::queue::{HeadStamp, Queue};
use super::resize::{Workers, check_bound};
use super::room::BusyLimits;
use super::slot::Phase;
use super::source::{Source, Sourced};
use super::state::{Counts, Gate, ManagerState};
use super::wait_stamps::WaitStamps;
use super::watcher::Watcher;
use crate::admission::{Admission, MaxWaiting};
use crate::handler::Handler;
use crate::util::{lock, timeout_setting};

/// Configures and starts a [`Manager`]: `ManagerBuilder::new(max_running)`, then
/// options, then [`build`](ManagerBuilder::build).
#[derive(Debug)]
pub struct ManagerBuilder<S> {
    max_running: usize,
    admission: S,
    name: String,
    limits: BusyLimits,
    ipv6_prefix: u8,
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
            max_running,
            admission: MaxWaiting(1024),
            name: "filesrv".to_owned(),
            limits: BusyLimits::default(),
            ipv6_prefix: 64,
        }
    }
}

impl<S: Admission> ManagerBuilder<S> {
    /// Sets the admission policy (default: [`MaxWaiting`]`(1024)`).
    pub fn admission<S2: Admission>(self, policy: S2) -> ManagerBuilder<S2> {
        ManagerBuilder {
            max_running: self.max_running,
            admission: policy,
            name: self.name,
            limits: self.limits,
            ipv6_prefix: self.ipv6_prefix,
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
        self.ipv6_prefix = bits;
        self
    }

    /// While handlers wait, a running handler idle between requests (as
    /// it reports with [`HandlerContext::set_idle`](crate::HandlerContext::set_idle))
    /// for longer than `timeout` is asked to make room
    /// ([`MakeRoom::IdleTooLong`](crate::MakeRoom::IdleTooLong)), one per
    /// waiting handler, longest past its limit first. Default `None`: no
    /// such limit. With nobody waiting it never applies.
    ///
    /// # Panics
    ///
    /// If `timeout` is `Some(Duration::ZERO)`: a zero is not "none".
    pub fn busy_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limits.idle = timeout_setting(timeout, "busy_idle_timeout");
        self
    }

    /// While handlers wait, a handler running for longer than `limit` is
    /// asked to make room
    /// ([`MakeRoom::RanTooLong`](crate::MakeRoom::RanTooLong)), one per
    /// waiting handler, longest past its limit first. Default `None`: no
    /// such limit. With nobody waiting it never applies.
    ///
    /// # Panics
    ///
    /// If `limit` is `Some(Duration::ZERO)`: a zero is not "none".
    pub fn busy_session_limit(mut self, limit: Option<Duration>) -> Self {
        self.limits.session = timeout_setting(limit, "busy_session_limit");
        self
    }

    /// Names the manager's threads `<name>-worker-<i>`,
    /// `<name>-deadlines` and `<name>-watcher` (default: `filesrv`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Starts the worker threads and returns the manager.
    ///
    /// # Errors
    ///
    /// The OS refused to start a thread or an epoll set, or the process
    /// is too close to its memory-map limit (`vm.max_map_count`) to start
    /// `max_running` threads; the threads already started are stopped and
    /// joined before this returns.
    pub fn build<Q: Handler>(self) -> io::Result<Manager<Q, S>> {
        self.start(None)
    }

    /// Starts the manager, as [`build`](ManagerBuilder::build), with a
    /// [`Source`] its idle workers accept handlers from themselves, plus
    /// a thread (`<name>-accept`) that accepts and queues while every
    /// worker is busy. [`Manager::submit`] still works beside it.
    ///
    /// Not a builder option: the handler type is chosen only here.
    ///
    /// # Errors
    ///
    /// As [`build`](ManagerBuilder::build), or the OS refused an eventfd.
    pub fn build_with_source<Q: Handler>(
        self,
        source: impl Source<Q>,
    ) -> io::Result<Manager<Q, S>> {
        self.start(Some(Sourced::new(Box::new(source))?))
    }

    fn start<Q: Handler>(self, source: Option<Sourced<Q>>) -> io::Result<Manager<Q, S>> {
        check_map_room(self.max_running + 2 + usize::from(source.is_some()))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let phase = Arc::new(Phase::default());
        let clock = Arc::new(CoarseClock::new());
        let workers = Workers::new(
            phase.clone(),
            clock.clone(),
            self.limits.any(),
            self.name.clone(),
        );
        workers.set_target(self.max_running);
        let head = Arc::new(HeadStamp::default());
        let shared = Arc::new(ManagerState {
            workers,
            ipv6_prefix: self.ipv6_prefix,
            gate: CachePadded::new(Mutex::new(Gate {
                policy: self.admission,
                channel: Some(tx),
                waiting: Queue::new(head.clone()),
                deadlines: Deadlines::new(),
                next_id: 0,
            })),
            deadline_wake: Condvar::new(),
            channel: rx,
            counts: Counts(CachePadded::new(AtomicU64::new(0))),
            head,
            stamps: CachePadded::new(WaitStamps::new()),
            clock,
            refused_waiting: AtomicU64::new(0),
            counters: CachePadded::default(),
            phase,
            closing: AtomicBool::new(false),
            idle: (Mutex::new(()), Condvar::new()),
            idle_waiters: AtomicUsize::new(0),
            watcher: Watcher::new()?,
            limits: self.limits,
            room_due: AtomicInstant::new(),
            asked: AtomicUsize::new(0),
            source,
        });
        let manager = Manager {
            shared: shared.clone(),
            threads: Mutex::new(Some(Vec::with_capacity(self.max_running + 1))),
            report: Mutex::new(None),
        };
        let spawn = |name: String, body: Box<dyn FnOnce() + Send>| {
            let handle = thread::Builder::new().name(name).spawn(body)?;
            lock(&manager.threads)
                .as_mut()
                .expect("threads are taken only by shutdown")
                .push(handle);
            io::Result::Ok(())
        };
        let deadlines = shared.clone();
        spawn(
            format!("{}-deadlines", self.name),
            Box::new(move || deadlines.expire_loop()),
        )?;
        let watcher = shared.clone();
        spawn(
            format!("{}-watcher", self.name),
            Box::new(move || watcher.watch_loop()),
        )?;
        if shared.source.is_some() {
            let acceptor = shared.clone();
            spawn(
                format!("{}-accept", self.name),
                Box::new(move || acceptor.accept_loop()),
            )?;
        }
        for _ in 0..self.max_running {
            let mut threads = lock(&manager.threads);
            let threads = threads
                .as_mut()
                .expect("threads are taken only by shutdown");
            manager.start_worker(threads)?;
        }
        Ok(manager)
    }
}

/// Memory maps each thread costs: its stack and guard page, and the
/// alternate signal stack and guard page Rust's runtime maps for it.
const MAPS_PER_THREAD: usize = 4;

/// Fails when starting `threads` more threads would pass the kernel's
/// limit on memory maps (`vm.max_map_count`). Past it, `mmap` fails inside
/// a new thread's start-up, where Rust's runtime can only abort the
/// process; this turns that abort into an error the caller can report.
/// Where `/proc` cannot be read, nothing is checked.
pub(super) fn check_map_room(threads: usize) -> io::Result<()> {
    let Ok(limit) = std::fs::read_to_string("/proc/sys/vm/max_map_count") else {
        return Ok(());
    };
    let Ok(limit) = limit.trim().parse::<usize>() else {
        return Ok(());
    };
    let Ok(maps) = std::fs::read("/proc/self/maps") else {
        return Ok(());
    };
    let used = maps.iter().filter(|&&b| b == b'\n').count();
    // Room for the allocator and the application beyond the threads.
    let needed = threads.saturating_mul(MAPS_PER_THREAD).saturating_add(1024);
    if used.saturating_add(needed) > limit {
        return Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "{threads} threads would need about {needed} memory maps, \
                 but only {} of vm.max_map_count {limit} are free",
                limit.saturating_sub(used)
            ),
        ));
    }
    Ok(())
}
