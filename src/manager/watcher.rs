//! The watcher: one thread blocked in `epoll_wait` that notices a waiting
//! client hanging up, and keeps the make-room timer.
//!
//! A handler that exposes a socket ([`Handler::socket`]) and has to wait is
//! registered edge-triggered for `EPOLLRDHUP` (plus the implied `EPOLLHUP`
//! and `EPOLLERR`), never for `EPOLLIN`: a client sending its request wakes
//! nothing; a client that shuts down its write side or resets wakes the
//! thread once, which asks [`Handler::is_abandoned`] and, if the client is
//! gone with nothing sent, takes the handler out of the queue at once.
//! Each registration carries the handler's id, never reused, so an event
//! for a handler that already left is recognised and ignored; the kernel
//! forgets a registration when the socket is closed.
//!
//! Built on `rustix`'s epoll and eventfd, already a dependency for the
//! file server's system calls: the `polling` crate would add a portable
//! layer we do not need (the crate is Linux-only) and, being level- or
//! oneshot-based, would not express "edge on hang-up only".

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
use rustix::event::{EventfdFlags, Timespec, eventfd};

/// The id of the wake-up eventfd's events; handler ids stay far below.
const WAKE: u64 = u64::MAX;

/// Events taken per `epoll_wait`.
const BATCH: usize = 64;

pub(super) struct Watcher {
    epoll: OwnedFd,
    wake: OwnedFd,
    /// Set by [`Watcher::wake`] until the thread reads the eventfd, so a
    /// burst of wake-ups costs one `write(2)`.
    pending: AtomicBool,
}

impl Watcher {
    pub(super) fn new() -> io::Result<Watcher> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(&epoll, &wake, EventData::new_u64(WAKE), EventFlags::IN)?;
        Ok(Watcher {
            epoll,
            wake,
            pending: AtomicBool::new(false),
        })
    }

    /// Watches `socket` for a hang-up while handler `id` waits. A socket
    /// epoll cannot watch is simply not watched.
    pub(super) fn register(&self, socket: BorrowedFd<'_>, id: u64) {
        let flags = EventFlags::RDHUP | EventFlags::ET;
        if let Err(e) = epoll::add(&self.epoll, socket, EventData::new_u64(id), flags) {
            log::debug!("handler {id}: socket not watched: {e}");
        }
    }

    /// Makes the thread run a pass soon.
    pub(super) fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        }
    }

    /// Blocks until an event, a [`Watcher::wake`] or `until`; hands the id
    /// of each handler whose client hung up or failed to `hung_up`.
    pub(super) fn wait(
        &self,
        until: Option<Instant>,
        events: &mut Vec<Event>,
        mut hung_up: impl FnMut(u64),
    ) {
        let timeout = until.map(|until| {
            // Rounded up to a millisecond, so a timer never fires early
            // and spins; capped where old kernels reject larger values.
            let left = until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(3600));
            let ms = u64::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(3_600_000);
            Timespec {
                tv_sec: i64::try_from(ms / 1000).unwrap_or(3600),
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
            Err(e) => {
                if e != rustix::io::Errno::INTR {
                    log::error!("epoll_wait failed: {e}");
                }
                return;
            }
        }
        for event in events.iter() {
            match event.data.u64() {
                WAKE => {
                    // Read, then clear: a wake-up between the two found the
                    // flag set and wrote nothing, and the pass that follows
                    // this wait serves it. Cleared first, a write between
                    // the two would be read away with the flag left set,
                    // and every later wake-up lost.
                    let mut count = [0u8; 8];
                    let _ = rustix::io::read(&self.wake, &mut count);
                    self.pending.store(false, Ordering::Release);
                }
                id => hung_up(id),
            }
        }
    }

    pub(super) fn events() -> Vec<Event> {
        Vec::with_capacity(BATCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn no_wake_up_is_lost() {
        // A waker sends numbered wake-ups, each after the watcher saw the
        // previous one; the watcher must see every one, or it sleeps for
        // ever (bounded here by the waker's timeout).
        let watcher = Arc::new(Watcher::new().unwrap());
        let seen = Arc::new(AtomicU64::new(0));
        const ROUNDS: u64 = 20_000;
        let (w, s) = (watcher.clone(), seen.clone());
        let waiter = std::thread::spawn(move || {
            let mut events = Watcher::events();
            let mut last = 0;
            while last < ROUNDS {
                w.wait(None, &mut events, |_| {});
                last = s.load(Ordering::Acquire);
            }
        });
        let began = Instant::now();
        for round in 1..=ROUNDS {
            seen.store(round, Ordering::Release);
            watcher.wake();
            // A second wake-up racing the watcher's read of the first.
            watcher.wake();
            assert!(began.elapsed() < Duration::from_secs(20), "stuck");
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = tx.send(waiter.join());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(20)).is_ok(),
            "the watcher missed a wake-up"
        );
    }
}
