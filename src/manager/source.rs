//! A source of handlers that idle workers take from themselves
//! (leader/follower): a worker with nothing queued waits on the source's
//! listener and runs what it accepts, with no other thread in between.
//!
//! Three kinds of thread meet here:
//!
//! - **Idle workers.** A worker that finds no message waits in its own
//!   epoll set holding the source (`EPOLLEXCLUSIVE`: the kernel wakes one
//!   waiting worker per connection, not all) and the shared `message_sent`
//!   eventfd (also exclusive). `waiters` counts them.
//! - **Submitters.** A message (a handler, or a token for the queue's
//!   head) sent while a worker waits on the source must wake one: `submit`
//!   writes `message_sent` after sending its message when
//!   `waiters` is above zero. The race with a worker about to wait is
//!   closed Dekker-style: the worker counts itself in `waiters`, then
//!   (SeqCst fence) looks for a message; the submitter sends its message,
//!   then (SeqCst fence) reads `waiters`. At least one of them sees the
//!   other: the worker finds the message, or the submitter finds the waiter and
//!   writes the eventfd, which stays readable until read, so an
//!   `epoll_wait` entered after the write still returns. One write wakes
//!   one worker; a woken worker that takes a message and sees more left
//!   writes again, so a burst wakes as many workers as it needs.
//!   A shutdown is the same: `close` writes once, and each worker that
//!   finds the channel closed writes again for the next before it exits.
//! - **The accepting thread.** While every worker is busy nobody waits on
//!   the source, so connections would sit in the kernel's backlog: the
//!   manager's `-accept` thread then accepts them and submits them, so the
//!   queue, its deadlines, the admission policy's view of the waiting
//!   count and the hang-up watcher keep their meaning. It waits on the
//!   listener only while `waiters` is zero, and otherwise sleeps in its
//!   own poller, which the worker that takes `waiters` from one to zero
//!   wakes. No polling, no timers.
//!
//! FIFO: a worker looks for a message before it waits on the source, and
//! a worker that accepts submits the handler like anyone else and then
//! takes the channel's next message, so a handler that waited is never
//! passed over by a newer connection.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvError, RecvTimeoutError, TryRecvError};
use rustix::event::epoll::{Event, EventFlags};
use rustix::event::{EventfdFlags, eventfd};

use super::handle::Manager;
use super::state::{ManagerState, Msg};
use crate::admission::Admission;
use crate::handler::Handler;
use crate::poller::Poller;
use crate::util::{Backoff, lock, panic_message};

/// Where a manager's idle workers take new handlers themselves: usually a
/// listening socket that turns each accepted connection into a handler.
///
/// Given to [`ManagerBuilder::build_with_source`](crate::ManagerBuilder::build_with_source).
/// A worker with nothing queued waits for the source's descriptor to
/// become readable, calls [`accept`](Source::accept), and runs the handler
/// at once: no accepting thread wakes up and hands it over, which is most
/// of what a new connection costs a thread-per-connection server beyond
/// its own system calls. While every worker is busy, the manager's own
/// accepting thread (named `<name>-accept`) accepts instead and queues
/// what it takes, as a [`submit`](crate::Manager::submit) would.
///
/// Either way a handler from the source goes through the admission policy
/// like a submitted one: a refused one gets [`Handler::refused`] on the
/// thread that accepted it, and a waiting handler always starts before a
/// newer connection. [`Manager::submit`](crate::Manager::submit) still
/// works beside a source. Once [`shutdown`](crate::Manager::shutdown)
/// begins, nothing more is accepted (under socket activation the backlog
/// is the successor's).
///
/// ```
/// use std::io::{self, Read, Write};
/// use std::net::{TcpListener, TcpStream};
/// use std::os::fd::{AsFd, BorrowedFd};
/// use std::time::Duration;
/// use filesrv::{BoxHandler, Manager, ManagerBuilder, Source, handler_fn};
///
/// /// Says hello to each client.
/// struct Hello(TcpListener);
///
/// impl Source<BoxHandler> for Hello {
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
/// let manager: Manager<BoxHandler> = ManagerBuilder::new(2).build_with_source(Hello(listener))?;
///
/// let mut reply = String::new();
/// TcpStream::connect(addr)?.read_to_string(&mut reply)?;
/// assert_eq!(reply, "hello\n");
/// manager.shutdown(Duration::from_secs(1));
/// # Ok(())
/// # }
/// ```
pub trait Source<Q>: Send + Sync + 'static {
    /// The descriptor that becomes readable when [`accept`](Source::accept)
    /// may have something: a listening socket in non-blocking mode.
    ///
    /// Asked once per worker thread, and once for the accepting thread;
    /// it must stay the same open descriptor as long as the manager runs.
    /// Workers wait on it level-triggered with `EPOLLEXCLUSIVE`.
    fn fd(&self) -> BorrowedFd<'_>;

    /// Takes the next handler, without blocking (several threads call it
    /// at once; a listener must be non-blocking).
    ///
    /// - `Ok(Some(handler))`: offered to the admission policy and, if
    ///   admitted, run (by this worker, unless a handler waits already).
    /// - `Ok(None)`: nothing to run now: the backlog was empty (another
    ///   thread took the connection), the connection died before it was
    ///   accepted, or the source dealt with it itself.
    /// - `Err(e)`: accepting failed, as when the process is out of
    ///   descriptors. It is logged, and that thread leaves the source
    ///   alone for 5 ms, doubled on each failure in a row up to 500 ms
    ///   (a worker still runs queued handlers meanwhile).
    fn accept(&self) -> io::Result<Option<Q>>;
}

/// Event keys in the workers' and the accepting thread's epoll sets.
const LISTENER: u64 = 0;
const MESSAGE_SENT: u64 = 1;

/// A manager's source and what its waiters share.
pub(super) struct Sourced<Q> {
    source: Box<dyn Source<Q>>,
    /// Workers waiting on the source now (counted from before they look
    /// for a token last, until they have accepted or given up).
    waiters: AtomicUsize,
    /// Written when a token is sent while workers wait on the source;
    /// each waiting worker's epoll set holds it with `EPOLLEXCLUSIVE`, so
    /// one write wakes one worker. Non-blocking: a woken worker resets it
    /// with a read that may find it read already.
    message_sent: OwnedFd,
    /// The accepting thread sleeps here while workers wait on the source.
    acceptor: Poller,
    /// Set once by [`Manager::stop_accepting`] (or the shutdown): nobody
    /// waits on the source or calls its `accept` any more.
    stopped: AtomicBool,
    /// Threads inside the source's `accept` now, so that a stop can wait
    /// for the last one to leave.
    in_accept: AtomicUsize,
    /// Signalled when the last of them leaves after the stop.
    drained: (Mutex<()>, Condvar),
}

impl<Q: Handler> Sourced<Q> {
    pub(super) fn new(source: Box<dyn Source<Q>>) -> io::Result<Sourced<Q>> {
        Ok(Sourced {
            source,
            waiters: AtomicUsize::new(0),
            message_sent: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
            acceptor: Poller::new()?,
            stopped: AtomicBool::new(false),
            in_accept: AtomicUsize::new(0),
            drained: (Mutex::new(()), Condvar::new()),
        })
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// The source's `accept`, unless stopped (`None`). Dekker-style with
    /// [`Sourced::stop`]: this counts itself in, then reads `stopped`;
    /// the stop sets `stopped`, then waits for the count to reach zero.
    ///
    /// A panic in the source's `accept` is an error like any other: the
    /// thread backs off and lives on (and the count stays exact).
    fn accept(&self) -> Option<io::Result<Option<Q>>> {
        self.in_accept.fetch_add(1, Ordering::SeqCst);
        let taken = (!self.stopped()).then(|| {
            panic::catch_unwind(AssertUnwindSafe(|| self.source.accept())).unwrap_or_else(
                |payload| {
                    let message = panic_message(&*payload);
                    Err(io::Error::other(format!("the source panicked: {message}")))
                },
            )
        });
        if self.in_accept.fetch_sub(1, Ordering::SeqCst) == 1 && self.stopped() {
            let _guard = lock(&self.drained.0);
            self.drained.1.notify_all();
        }
        taken
    }

    /// Stops every use of the source and returns once no thread is inside
    /// its `accept`: the workers waiting on it go back to the hand-off
    /// channel (one woken, which wakes the next), the accepting thread
    /// ends.
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake_one();
        self.acceptor.wake();
        let mut guard = lock(&self.drained.0);
        while self.in_accept.load(Ordering::SeqCst) > 0 {
            guard = self
                .drained
                .1
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Wakes one worker waiting on the source, if any, to look for messages
    /// (or the channel's end). Called after a message is sent.
    fn wake_one(&self) {
        // Pairs with the waiter's fence: see the module's comment.
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _ = rustix::io::write(&self.message_sent, &1u64.to_ne_bytes());
        }
    }

    /// A worker stops waiting on the source; the last one to stop hands
    /// the listener to the accepting thread.
    fn unwait(&self) {
        if self.waiters.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.acceptor.wake();
        }
    }
}

/// A worker's own state for waiting on the source, made the first time
/// it waits there.
#[derive(Default)]
pub(super) struct IdleWait {
    /// Its epoll set: the source and `message_sent`, both exclusive.
    poller: Option<Poller>,
    events: Vec<Event>,
    /// The back-off after `accept` errors in a row.
    backoff: Backoff,
}

impl IdleWait {
    /// The worker's epoll set, made on first use; `None` if the OS
    /// refused one (the worker then waits on the hand-off channel only).
    fn poller<Q: Handler>(&mut self, sourced: &Sourced<Q>) -> Option<&Poller> {
        if self.poller.is_none() {
            let made = Poller::new().and_then(|poller| {
                let flags = EventFlags::IN | EventFlags::EXCLUSIVE;
                poller.add(sourced.source.fd(), LISTENER, flags)?;
                poller.add(&sourced.message_sent, MESSAGE_SENT, flags)?;
                Ok(poller)
            });
            match made {
                Ok(poller) => {
                    self.poller = Some(poller);
                    self.events = Poller::events();
                }
                Err(e) => {
                    log::error!("a worker cannot wait on the source: {e}");
                    return None;
                }
            }
        }
        self.poller.as_ref()
    }
}

/// What a worker's wait on the source ended with.
enum Waited<Q> {
    /// Look for a message again.
    Again,
    /// The channel's answer while backing off.
    Got(Result<Msg<Q>, RecvError>),
}

impl<Q: Handler, S: Admission> ManagerState<Q, S> {
    /// A worker's wait for its next message: an error once the channel is
    /// closed and empty. Without a source, a blocking `recv`; with one, an
    /// idle worker waits on the source too, and a handler it accepts is
    /// submitted (behind any that wait) and then taken from the channel.
    pub(super) fn next_msg(&self, idle: &mut IdleWait) -> Result<Msg<Q>, RecvError> {
        let Some(sourced) = &self.source else {
            return self.channel.recv();
        };
        loop {
            let msg = match self.channel.try_recv() {
                Ok(msg) => Ok(msg),
                Err(TryRecvError::Disconnected) => Err(RecvError),
                Err(TryRecvError::Empty) => {
                    // Stopped, or surplus after a shrink (a token comes to
                    // retire it): the source is not this worker's any more.
                    let stopped = sourced.stopped();
                    let off_duty = stopped || self.workers.live() > self.workers.target();
                    match idle.poller(sourced).filter(|_| !off_duty) {
                        None => {
                            if stopped {
                                // The stop woke one waiting worker.
                                sourced.wake_one();
                            }
                            self.channel.recv()
                        }
                        Some(_) => match self.wait_on_source(sourced, idle) {
                            Waited::Again => continue,
                            Waited::Got(msg) => msg,
                        },
                    }
                }
            };
            // One write of `message_sent` woke one worker: more messages,
            // or the channel's end, wake the next.
            if msg.is_err() || !self.channel.is_empty() {
                sourced.wake_one();
            }
            return msg;
        }
    }

    /// Waits on the source and `message_sent` (unless a message or a close
    /// is already there), and accepts if the source is ready.
    fn wait_on_source(&self, sourced: &Sourced<Q>, idle: &mut IdleWait) -> Waited<Q> {
        let IdleWait {
            poller: Some(poller),
            events,
            backoff,
        } = idle
        else {
            return Waited::Again;
        };
        sourced.waiters.fetch_add(1, Ordering::SeqCst);
        // Pairs with `wake_one`'s fence: see the module's comment.
        fence(Ordering::SeqCst);
        let (mut ready, mut woken) = (false, false);
        if self.channel.is_empty() && !sourced.stopped() {
            let waited = poller.wait(None, events, |key, _| match key {
                LISTENER => ready = true,
                _ => woken = true,
            });
            if let Err(e) = waited {
                log::error!("epoll_wait failed: {e}");
            }
        }
        if woken {
            // Reset before looking for messages: a write after this read
            // wakes a worker again.
            let mut count = [0u8; 8];
            let _ = rustix::io::read(&sourced.message_sent, &mut count);
        }
        // Still counted as waiting while it accepts: a connection this
        // worker takes does not need the accepting thread.
        let failed = if ready {
            self.take_from(sourced, backoff)
        } else {
            None
        };
        sourced.unwait();
        match failed {
            None => Waited::Again,
            // Queued handlers still run during the back-off.
            Some(pause) => match self.channel.recv_timeout(pause) {
                Ok(msg) => Waited::Got(Ok(msg)),
                Err(RecvTimeoutError::Timeout) => Waited::Again,
                Err(RecvTimeoutError::Disconnected) => Waited::Got(Err(RecvError)),
            },
        }
    }

    /// Accepts one handler from the source and submits it, without waking
    /// a worker for it (the caller takes it from the channel); the back-off to wait
    /// out if accepting failed.
    fn take_from(&self, sourced: &Sourced<Q>, backoff: &mut Backoff) -> Option<Duration> {
        match sourced.accept()? {
            Ok(Some(handler)) => {
                backoff.reset();
                if let Err(refused) = self.submit(handler, false) {
                    refused.notify();
                }
                None
            }
            Ok(None) => None,
            Err(e) => {
                let pause = backoff.failed();
                log::warn!("accept failed: {e}; a worker retries in {pause:?}");
                Some(pause)
            }
        }
    }

    /// After a message was sent by anyone but a worker that will take it
    /// itself: wakes a worker waiting on the source, if any.
    pub(super) fn message_sent(&self) {
        if let Some(sourced) = &self.source {
            sourced.wake_one();
        }
    }

    /// At shutdown, after the hand-off channel closed: stops the source.
    pub(super) fn source_closed(&self) {
        if let Some(sourced) = &self.source {
            sourced.stop();
        }
    }

    /// The accepting thread, for while no worker waits on the source:
    /// accepts and submits, as a server's own accepting thread would.
    pub(super) fn accept_loop(&self) {
        let Some(sourced) = &self.source else {
            return;
        };
        let mut events = Poller::events();
        let mut watching = false;
        let mut backoff = Backoff::default();
        while !sourced.stopped() {
            if sourced.waiters.load(Ordering::SeqCst) > 0 {
                // A worker takes the next connection; sleep until the
                // last one stops waiting (it wakes this poller).
                if watching {
                    sourced.acceptor.delete(sourced.source.fd());
                    watching = false;
                }
                self.acceptor_wait(sourced, None, &mut events);
                continue;
            }
            let Some(taken) = sourced.accept() else {
                break;
            };
            match taken {
                Ok(Some(handler)) => {
                    backoff.reset();
                    if let Err(refused) = self.submit(handler, true) {
                        refused.notify();
                    }
                }
                Ok(None) => {
                    if !watching {
                        // Added while readable, it reports at once.
                        let fd = sourced.source.fd();
                        if let Err(e) = sourced.acceptor.add(fd, LISTENER, EventFlags::IN) {
                            log::error!("the accepting thread cannot wait on the source: {e}");
                            return;
                        }
                        watching = true;
                    }
                    // A connection, a worker gone idle or busy, or the close.
                    self.acceptor_wait(sourced, None, &mut events);
                }
                Err(e) => {
                    let pause = backoff.failed();
                    log::warn!("accept failed: {e}; retrying in {pause:?}");
                    // A failed accept leaves the listener readable: the
                    // back-off must not wait on it.
                    if watching {
                        sourced.acceptor.delete(sourced.source.fd());
                        watching = false;
                    }
                    self.acceptor_wait(sourced, Instant::now().checked_add(pause), &mut events);
                }
            }
        }
    }

    fn acceptor_wait(&self, sourced: &Sourced<Q>, until: Option<Instant>, events: &mut Vec<Event>) {
        if let Err(e) = sourced.acceptor.wait(until, events, |_, _| {}) {
            log::error!("epoll_wait failed: {e}");
        }
    }
}

impl<Q: Handler, S: Admission> Manager<Q, S> {
    /// Stops taking handlers from the [`Source`]: once this returns, no
    /// thread calls its [`accept`](Source::accept) again, and idle
    /// workers wait for submitted handlers only. Handlers taken already
    /// run or wait as usual, and [`submit`](Manager::submit) still works.
    ///
    /// For a server that stops accepting before a graceful
    /// [`shutdown`](Manager::shutdown) (which does this first anyway):
    /// under socket activation the listener's backlog then belongs to the
    /// successor. Without a source it does nothing; calling it again
    /// returns at once.
    pub fn stop_accepting(&self) {
        if let Some(sourced) = &self.shared.source {
            sourced.stop();
        }
    }
}
