//! An epoll set with a wake-up eventfd, for the threads that wait on many
//! sockets at once: the manager's watcher of waiting clients and the file
//! server's PROXY handshake thread. The manager's workers also take one
//! event of the watcher's set at a time without waiting.
//!
//! Built on `rustix`'s epoll and eventfd, already a dependency for the
//! file server's system calls: the `polling` crate would add a portable
//! layer this Linux-only crate does not need and, being level- or
//! oneshot-based, would not express "edge on hang-up only".

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
use rustix::event::{EventfdFlags, Timespec, eventfd};
use rustix::io::Errno;

/// The key of the wake-up eventfd's events; callers' keys stay below it.
const WAKE: u64 = u64::MAX;

/// Events taken per `epoll_wait`.
const BATCH: usize = 64;

/// The longest single wait; old kernels reject larger timeouts.
const MAX_WAIT: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub(crate) struct Poller {
    epoll: OwnedFd,
    wake: OwnedFd,
    /// Set by [`Poller::wake`] until the waiting thread reads the eventfd,
    /// so a burst of wake-ups costs one `write(2)`.
    pending: AtomicBool,
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(&epoll, &wake, EventData::new_u64(WAKE), EventFlags::IN)?;
        Ok(Poller {
            epoll,
            wake,
            pending: AtomicBool::new(false),
        })
    }

    /// Watches `fd` for `flags`, its events carrying `key` (below
    /// `u64::MAX`): added, or changed if it is watched already (a one-shot
    /// registration that fired stays, off, until changed or closed).
    pub(crate) fn watch(&self, fd: impl AsFd, key: u64, flags: EventFlags) -> io::Result<()> {
        self.register(fd, key, flags, false)
    }

    /// As [`watch`](Poller::watch); `registered`: `fd` is most likely in
    /// the set already (a one-shot registration spent), so it is changed
    /// first and added only if that fails: one system call, not two.
    pub(crate) fn register(
        &self,
        fd: impl AsFd,
        key: u64,
        flags: EventFlags,
        registered: bool,
    ) -> io::Result<()> {
        debug_assert_ne!(key, WAKE, "the wake-up's key");
        let data = EventData::new_u64(key);
        let add = || epoll::add(&self.epoll, &fd, data, flags);
        let modify = || epoll::modify(&self.epoll, &fd, data, flags);
        let done = if registered {
            modify().or_else(|e| if e == Errno::NOENT { add() } else { Err(e) })
        } else {
            add().or_else(|e| if e == Errno::EXIST { modify() } else { Err(e) })
        };
        Ok(done?)
    }

    /// Stops watching `fd` (closing it does that too).
    pub(crate) fn delete(&self, fd: impl AsFd) {
        let _ = epoll::delete(&self.epoll, fd);
    }

    /// Ends the current or next [`Poller::wait`] early, reporting a wake-up.
    pub(crate) fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        }
    }

    /// Takes one ready event without blocking, unless it is a wake-up:
    /// that one is left, unread, for the thread that waits, and `None` is
    /// returned even if other events are ready behind it (that thread,
    /// woken anyway, takes them).
    pub(crate) fn try_one(&self) -> Option<(u64, EventFlags)> {
        let mut events = [std::mem::MaybeUninit::<Event>::uninit(); 1];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let (ready, _) = epoll::wait(&self.epoll, &mut events, Some(&zero)).ok()?;
        let event = ready.first()?;
        let key = event.data.u64();
        (key != WAKE).then_some((key, event.flags))
    }

    /// A buffer for [`Poller::wait`].
    pub(crate) fn events() -> Vec<Event> {
        Vec::with_capacity(BATCH)
    }

    /// Blocks until an event, a [`Poller::wake`] or `until`; hands each
    /// event's key and flags to `ready`. `Ok(true)` when woken: what the
    /// waker published before it woke is visible now. An interrupted wait
    /// is `Ok(false)`.
    pub(crate) fn wait(
        &self,
        until: Option<Instant>,
        events: &mut Vec<Event>,
        mut ready: impl FnMut(u64, EventFlags),
    ) -> io::Result<bool> {
        let timeout = until.map(|until| {
            // Rounded up to a millisecond, so a timer never fires early
            // and spins on a deadline less than a millisecond away.
            let left = until
                .saturating_duration_since(Instant::now())
                .min(MAX_WAIT);
            let ms = u64::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
            Timespec {
                tv_sec: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
                tv_nsec: i64::try_from(ms % 1000).unwrap_or(0) * 1_000_000,
            }
        });
        events.clear();
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(events),
            timeout.as_ref(),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let mut woken = false;
        for event in events.iter() {
            match event.data.u64() {
                WAKE => {
                    // Read, then clear: a wake-up between the two found the
                    // flag set and wrote nothing, and the caller, told it
                    // was woken, serves it. Cleared first, a write between
                    // the two would be read away with the flag left set,
                    // and every later wake-up lost. A swap, so the clear
                    // synchronises with the waker's swap.
                    let mut count = [0u8; 8];
                    let _ = rustix::io::read(&self.wake, &mut count);
                    self.pending.swap(false, Ordering::AcqRel);
                    woken = true;
                }
                key => ready(key, event.flags),
            }
        }
        Ok(woken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn no_wake_up_is_lost() {
        // A waker sends numbered wake-ups, each after the waiter saw the
        // previous one; the waiter must see every one, or it sleeps for
        // ever (bounded here by the waker's timeout).
        let poller = Arc::new(Poller::new().unwrap());
        let seen = Arc::new(AtomicU64::new(0));
        const ROUNDS: u64 = 20_000;
        let (p, s) = (poller.clone(), seen.clone());
        let waiter = std::thread::spawn(move || {
            let mut events = Poller::events();
            let mut last = 0;
            while last < ROUNDS {
                p.wait(None, &mut events, |_, _| {}).unwrap();
                last = s.load(Ordering::Acquire);
            }
        });
        let began = Instant::now();
        for round in 1..=ROUNDS {
            seen.store(round, Ordering::Release);
            poller.wake();
            // A second wake-up racing the waiter's read of the first.
            poller.wake();
            assert!(began.elapsed() < Duration::from_secs(20), "stuck");
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = tx.send(waiter.join());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(20)).is_ok(),
            "the waiter missed a wake-up"
        );
    }

    #[test]
    fn a_deadline_under_a_millisecond_away_is_waited_for_not_spun_on() {
        // Rounded down, a 0.3 ms deadline would be a zero timeout: the
        // caller would loop without blocking until it passed.
        let poller = Poller::new().unwrap();
        let mut events = Poller::events();
        let until = Instant::now() + Duration::from_micros(300);
        let woken = poller.wait(Some(until), &mut events, |_, _| {}).unwrap();
        assert!(!woken);
        assert!(Instant::now() >= until, "returned before the deadline");
    }
}
