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
//! [`Handler::socket`]: crate::Handler::socket
//! [`Handler::is_abandoned`]: crate::Handler::is_abandoned

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use rustix::event::epoll::{Event, EventFlags};

use crate::poller::Poller;

pub(super) struct Watcher(Poller);

impl Watcher {
    pub(super) fn new() -> io::Result<Watcher> {
        Poller::new().map(Watcher)
    }

    /// Watches `socket` for a hang-up while handler `id` waits; false if
    /// epoll cannot watch it (it is then simply not watched).
    pub(super) fn register(&self, socket: BorrowedFd<'_>, id: u64) -> bool {
        match self.0.add(socket, id, EventFlags::RDHUP | EventFlags::ET) {
            Ok(()) => true,
            Err(e) => {
                log::debug!("handler {id}: socket not watched: {e}");
                false
            }
        }
    }

    /// Stops watching `socket`, whose handler left the queue to run: its
    /// client's eventual hang-up must not wake the thread for nothing
    /// (one wake-up and two context switches a connection, when every
    /// connection waits a moment, as with a new connection per request).
    pub(super) fn forget(&self, socket: BorrowedFd<'_>) {
        self.0.delete(socket);
    }

    /// Makes the thread run a pass soon.
    pub(super) fn wake(&self) {
        self.0.wake();
    }

    /// Blocks until an event, a [`Watcher::wake`] or `until`; hands the id
    /// of each handler whose client hung up or failed to `hung_up`.
    pub(super) fn wait(
        &self,
        until: Option<Instant>,
        events: &mut Vec<Event>,
        mut hung_up: impl FnMut(u64),
    ) {
        if let Err(e) = self.0.wait(until, events, |id, _| hung_up(id)) {
            log::error!("epoll_wait failed: {e}");
        }
    }

    pub(super) fn events() -> Vec<Event> {
        Poller::events()
    }
}
