//! Idle workers that accept (leader/follower): with an [`Acceptor`], a
//! worker that finds the queue empty waits on the acceptor's descriptor
//! itself and runs what it accepts, with no thread in between. A new
//! connection then costs one wake-up, not two (an accepting thread's and
//! then a worker's).
//!
//! Who waits where, all counted under the gate's lock:
//!
//! - **Idle workers** wait in their own epoll set on the acceptor's
//!   descriptor (`EPOLLEXCLUSIVE`, so the kernel wakes one of them per
//!   connection) and on their own [`Bell`].
//! - **The bells** (an eventfd each, one waiter each): for each handler
//!   queued while workers wait there, the one that began to wait last is
//!   rung, so that it takes a handler submitted or accepted by someone
//!   else, as a worker on the token channel would. One bell per worker,
//!   not one for all: a ring then wakes one thread without the kernel
//!   walking every worker's registration.
//! - **The accepting thread** (`<name>-accept`) accepts only while no
//!   worker waits on the acceptor (all are busy), so that connections
//!   still reach the queue, its deadlines and the hang-up watch. It sleeps
//!   on a condition variable otherwise, and in `poll` on the acceptor
//!   while it accepts; a worker that starts to wait wakes it to step back.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};

use rustix::event::epoll::{Event, EventFlags};
use rustix::event::{EventfdFlags, eventfd};

use crate::handler::Handler;
use crate::poller::Poller;
use crate::util::{Backoff, panic_message};

/// Where a manager's idle workers take new handlers themselves: usually a
/// listening socket that turns each accepted connection into a handler.
///
/// Given to [`ManagerBuilder::build_with_acceptor`](crate::ManagerBuilder::build_with_acceptor).
/// A worker with nothing queued waits for [`fd`](Acceptor::fd) to become
/// readable, calls [`accept`](Acceptor::accept), and runs the handler at
/// once; while every worker is busy, the manager's `<name>-accept` thread
/// accepts instead and queues what it takes. Either way the handler goes
/// through the admission policy like a submitted one (a refused one gets
/// [`Handler::refused`] on the thread that accepted it), and a waiting
/// handler always starts before a newer one.
///
/// ```
/// use std::io::{self, Read, Write};
/// use std::net::{TcpListener, TcpStream};
/// use std::os::fd::{AsFd, BorrowedFd};
/// use std::time::Duration;
/// use filesrv::{Acceptor, BoxHandler, Manager, ManagerBuilder, handler_fn};
///
/// /// Says hello to each client.
/// struct Hello(TcpListener);
///
/// impl Acceptor<BoxHandler> for Hello {
///     fn fd(&self) -> BorrowedFd<'_> {
///         self.0.as_fd()
///     }
///
///     fn accept(&self) -> io::Result<Option<BoxHandler>> {
///         match self.0.accept() {
///             Ok((mut stream, peer)) => {
///                 let greet = handler_fn(move |_ctx| stream.write_all(b"hello\n"));
///                 Ok(Some(BoxHandler::new(greet.with_source(peer.ip()))))
///             }
///             // Another thread took the connection first.
///             Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
///             Err(e) => Err(e),
///         }
///     }
/// }
///
/// # fn main() -> io::Result<()> {
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// // Several threads wait on it: it must not block.
/// listener.set_nonblocking(true)?;
/// let addr = listener.local_addr()?;
/// let manager: Manager<BoxHandler> = ManagerBuilder::new(2).build_with_acceptor(Hello(listener))?;
///
/// let mut reply = String::new();
/// TcpStream::connect(addr)?.read_to_string(&mut reply)?;
/// assert_eq!(reply, "hello\n");
/// manager.shutdown(Duration::from_secs(1));
/// # Ok(())
/// # }
/// ```
pub trait Acceptor<Q>: Send + Sync + 'static {
    /// The descriptor that becomes readable when [`accept`](Acceptor::accept)
    /// may have something: a listening socket in non-blocking mode. It
    /// must stay the same open descriptor as long as the manager runs.
    fn fd(&self) -> BorrowedFd<'_>;

    /// Takes the next handler, without blocking (several threads may call
    /// it at once).
    ///
    /// - `Ok(Some(handler))`: offered to the admission policy and, if
    ///   admitted, run (by this worker, unless a handler waits already).
    ///   A policy that panics on it is logged and the handler dropped,
    ///   uncounted; the thread goes on accepting.
    /// - `Ok(None)`: nothing to run: another thread took the connection,
    ///   it died before it was accepted, or the acceptor dealt with it.
    /// - `Err(e)`: accepting failed, as when the process is out of
    ///   descriptors. It is logged, and that thread leaves the acceptor
    ///   alone for 5 ms, doubled on each failure in a row up to 500 ms.
    fn accept(&self) -> io::Result<Option<Q>>;
}

/// Event keys in a worker's epoll set.
pub(super) const READY: u64 = 0;
const BELL: u64 = 1;

/// A manager's acceptor and what its users share; who waits on it is
/// counted in the gate.
pub(super) struct Accepting<Q> {
    pub(super) acceptor: Box<dyn Acceptor<Q>>,
    /// Wakes the accepting thread from its `poll`.
    pub(super) step_back: OwnedFd,
    /// With the gate's lock: the accepting thread waits for no worker to
    /// wait on the acceptor, or for a stop.
    pub(super) changed: Condvar,
    /// Held from an `accept` to the admission of what it took, so that
    /// handlers are admitted in the order they were accepted, and so that
    /// a stop can wait for the last `accept` to end.
    pub(super) in_turn: Mutex<()>,
}

impl<Q: Handler> Accepting<Q> {
    pub(super) fn new(acceptor: Box<dyn Acceptor<Q>>) -> io::Result<Accepting<Q>> {
        let flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
        Ok(Accepting {
            acceptor,
            step_back: eventfd(0, flags)?,
            changed: Condvar::new(),
            in_turn: Mutex::new(()),
        })
    }

    /// Resets the accepting thread's wake-up.
    pub(super) fn answer_step_back(&self) {
        let _ = rustix::io::read(&self.step_back, &mut [0u8; 8]);
    }

    /// Wakes the accepting thread, to step back or to stop.
    pub(super) fn wake_thread(&self) {
        let _ = rustix::io::write(&self.step_back, &1u64.to_ne_bytes());
    }

    /// The acceptor's `accept`, a panic in it an error like any other.
    pub(super) fn accept(&self) -> io::Result<Option<Q>> {
        panic::catch_unwind(AssertUnwindSafe(|| self.acceptor.accept())).unwrap_or_else(|payload| {
            let message = panic_message(&*payload);
            Err(io::Error::other(format!(
                "the acceptor panicked: {message}"
            )))
        })
    }
}

/// A worker's own doorbell, which only it waits on.
pub(super) struct Bell(OwnedFd);

impl Bell {
    fn new() -> io::Result<Arc<Bell>> {
        let flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
        Ok(Arc::new(Bell(eventfd(0, flags)?)))
    }

    /// Wakes its worker, or makes its next wait return at once.
    pub(super) fn ring(&self) {
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    fn answer(&self) {
        let _ = rustix::io::read(&self.0, &mut [0u8; 8]);
    }
}

/// A worker's own epoll set on the acceptor and its bell.
pub(super) struct IdleWait {
    pub(super) poller: Poller,
    pub(super) events: Vec<Event>,
    pub(super) backoff: Backoff,
    pub(super) bell: Arc<Bell>,
}

impl IdleWait {
    pub(super) fn new<Q: Handler>(accepting: &Accepting<Q>) -> io::Result<IdleWait> {
        let poller = Poller::new()?;
        let bell = Bell::new()?;
        let flags = EventFlags::IN | EventFlags::EXCLUSIVE;
        poller.watch(accepting.acceptor.fd(), READY, flags)?;
        poller.watch(&bell.0, BELL, EventFlags::IN)?;
        Ok(IdleWait {
            poller,
            events: Poller::events(),
            backoff: Backoff::default(),
            bell,
        })
    }

    /// Waits for a connection or a ring; whether a connection is ready.
    pub(super) fn wait(&mut self) -> bool {
        let (mut ready, mut rung) = (false, false);
        let waited = self
            .poller
            .wait(None, &mut self.events, |key, _| match key {
                READY => ready = true,
                _ => rung = true,
            });
        if let Err(e) = waited {
            log::error!("epoll_wait failed: {e}");
        }
        if rung {
            self.bell.answer();
        }
        ready
    }
}
