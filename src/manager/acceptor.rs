//! Idle workers that accept (leader/follower): a worker that finds the
//! queue empty waits in its own epoll set on the acceptor's descriptor
//! (`EPOLLEXCLUSIVE`), whose wake-up is its bell, rung for a handler
//! queued by someone else; it runs what it accepts itself, one wake-up per
//! connection. While all are busy, the `<name>-accept` thread accepts and
//! queues. docs/ARCHITECTURE.md ("Accepting") tells why each piece is so.

use std::io;
use std::os::fd::BorrowedFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};

use rustix::event::epoll::{Event, EventFlags};

use crate::handler::Handler;
use crate::poller::Poller;
use crate::util::{Backoff, panic_message};

/// Where a manager's idle workers take new handlers themselves: usually a
/// listening socket that turns each accepted connection into a handler.
///
/// Given to [`ManagerBuilder::build_with_acceptor`](crate::ManagerBuilder::build_with_acceptor).
/// A worker with nothing queued waits for [`fd`](Acceptor::fd) to become
/// readable, calls [`accept`](Acceptor::accept), and runs the handler at
/// once; while every worker is busy, the `<name>-accept` thread accepts
/// and queues. Either way the policy admits it like a submitted one (a
/// refused one gets [`Handler::refused`]), and a waiting handler always
/// starts before a newer one.
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
    /// - `Ok(Some(handler))`: offered to the policy and, if admitted, run
    ///   (by this worker, unless a handler waits already). A policy that
    ///   panics on it is logged and the handler dropped, uncounted.
    /// - `Ok(None)`: nothing to run (another thread took the connection,
    ///   or the acceptor dealt with it).
    /// - `Err(e)`: accepting failed (out of descriptors...): logged, and
    ///   that thread waits 5 ms, doubled on each failure in a row up to
    ///   500 ms.
    fn accept(&self) -> io::Result<Option<Q>>;
}

/// The acceptor's key in the epoll sets that wait on it.
const READY: u64 = 0;

/// A manager's acceptor and what its users share; who waits on it is
/// counted in the gate.
pub(super) struct Accepting<Q> {
    pub(super) acceptor: Box<dyn Acceptor<Q>>,
    /// The accepting thread's epoll set on the acceptor.
    pub(super) thread: Poller,
    /// With the gate's lock: the accepting thread waits for no worker to
    /// wait on the acceptor, or for a stop.
    pub(super) changed: Condvar,
    /// Held from an `accept` to the admission of what it took.
    pub(super) in_turn: Mutex<()>,
}

impl<Q: Handler> Accepting<Q> {
    pub(super) fn new(acceptor: Box<dyn Acceptor<Q>>) -> io::Result<Accepting<Q>> {
        let thread = Poller::new()?;
        thread.watch(acceptor.fd(), READY, EventFlags::ONESHOT)?;
        Ok(Accepting {
            acceptor,
            thread,
            changed: Condvar::new(),
            in_turn: Mutex::new(()),
        })
    }

    /// The accepting thread's wait: `Ok(true)` when woken (to step back or
    /// to stop), else the acceptor may be ready. Armed for one event per
    /// wait, so that connections do not call into its set meanwhile.
    pub(super) fn wait_ready(&self, events: &mut Vec<Event>) -> io::Result<bool> {
        let flags = EventFlags::IN | EventFlags::ONESHOT;
        self.thread
            .register(self.acceptor.fd(), READY, flags, true)?;
        self.thread.wait(None, events, |_, _| {})
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

/// A worker's own epoll set on the acceptor; its wake-up is the worker's
/// bell, which only it waits on.
pub(super) struct IdleWait {
    pub(super) bell: Arc<Poller>,
    events: Vec<Event>,
    pub(super) backoff: Backoff,
}

impl IdleWait {
    pub(super) fn new<Q: Handler>(accepting: &Accepting<Q>) -> io::Result<IdleWait> {
        let bell = Arc::new(Poller::new()?);
        let flags = EventFlags::IN | EventFlags::EXCLUSIVE;
        bell.watch(accepting.acceptor.fd(), READY, flags)?;
        Ok(IdleWait {
            bell,
            events: Poller::events(),
            backoff: Backoff::default(),
        })
    }

    /// Waits for a connection or a ring; whether a connection is ready.
    pub(super) fn wait(&mut self) -> bool {
        let mut ready = false;
        if let Err(e) = self.bell.wait(None, &mut self.events, |_, _| ready = true) {
            log::error!("epoll_wait failed: {e}");
        }
        ready
    }
}
