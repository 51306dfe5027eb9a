//! The work for one client: the [`Handler`] trait, its closure adapter and
//! the context a running handler sees.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use crate::admission::{Key, Refusal};
use crate::manager::{MakeRoom, RunningInfo, Signals, Slot};

/// The work for one client, built when the client arrives but not started.
///
/// A [`Manager`](crate::Manager) owns every handler from
/// [`submit`](crate::Manager::submit) on. Exactly one of these happens to it:
///
/// - [`run`](Handler::run) is called once, on one of the manager's worker
///   threads, when a running slot is free and the handler reaches the head
///   of the queue;
/// - [`refused`](Handler::refused) is called when the admission policy or a
///   shutdown turns it away after it was queued (a queue-wait deadline, or
///   waiting when [`shutdown`](crate::Manager::shutdown) began);
/// - it is dropped unrun when [`is_abandoned`](Handler::is_abandoned) says
///   its client left while it waited.
///
/// A handler refused by [`submit`](crate::Manager::submit) itself comes back
/// to the caller inside [`Refused`](crate::Refused), which can still call
/// [`refused`](Handler::refused) on it, or do something else.
///
/// Handlers need not be sockets: any `Send + 'static` work will do. The two
/// optional queries, [`source`](Handler::source) and
/// [`is_abandoned`](Handler::is_abandoned), let a network handler take part
/// in per-source limits and let the manager skip clients that hung up.
///
/// For one-off work, [`handler_fn`] turns a closure into a handler.
pub trait Handler: Send + Sized + 'static {
    /// Serves the client. Called at most once, on a manager worker thread,
    /// by the default [`serve`](Handler::serve).
    ///
    /// The handler occupies a running slot until this returns (or panics).
    /// Long-running handlers should register a stop hook with
    /// [`HandlerContext::on_stop`] so that a shutdown can ask them to finish.
    ///
    /// An `Err` is logged at debug level and counted in
    /// [`Stats::failed`](crate::Stats::failed); it does not affect other
    /// handlers. A panic is caught, logged at error level, counted in
    /// [`Stats::panicked`](crate::Stats::panicked), and the slot is freed.
    fn run(self, ctx: &HandlerContext) -> io::Result<()>;

    /// Serves the client, and may end the run by handing the handler back
    /// to be parked ([`Served::Park`]) until its client sends more: it then
    /// holds no thread and no running slot. What the manager calls; the
    /// default runs [`run`](Handler::run) and is done.
    ///
    /// A parked handler is watched through its [`socket`](Handler::socket)
    /// (one without a socket is dropped). When the socket becomes readable
    /// (or its client hangs up), it goes through the admission policy
    /// again as an arrival with [`Arrival::returning`](crate::admission::Arrival::returning)
    /// set, and then waits and runs like any other: `serve` is called
    /// again, on whatever worker takes it. A handler should park only
    /// with nothing of its client's unread in its own buffers: the manager
    /// watches the socket, not the handler.
    ///
    /// While parked it leaves by [`refused`](Handler::refused) with
    /// [`Refusal::IdleTimeout`] (parked longer than
    /// [`ManagerBuilder::park_idle_timeout`](crate::ManagerBuilder::park_idle_timeout)),
    /// [`Refusal::Evicted`] (the longest parked when more than
    /// [`ManagerBuilder::max_parked`](crate::ManagerBuilder::max_parked) would be)
    /// or [`Refusal::ShuttingDown`], or is dropped when its client hung up
    /// with nothing sent ([`is_abandoned`](Handler::is_abandoned)).
    fn serve(self, ctx: &HandlerContext) -> io::Result<Served<Self>> {
        self.run(ctx).map(|()| Served::Done)
    }

    /// The address the work came from, for per-source limits and for
    /// [`RunningInfo`](crate::RunningInfo). Called once, at submission.
    ///
    /// The default is `None`: the handler counts against no source.
    fn source(&self) -> Option<IpAddr> {
        None
    }

    /// Whether the client is already gone, so running this handler would be
    /// wasted. Called once when a handler that waited in the queue reaches
    /// its head, and when a parked one's socket wakes; `true` drops it unrun and counts it in
    /// [`Stats::abandoned`](crate::Stats::abandoned). A handler that
    /// starts at once on a free running slot is not asked: its client had
    /// no time to give up, and for a network handler the question is a
    /// system call per connection.
    ///
    /// Also asked, at once, when the client of a waiting handler that
    /// exposes its [`socket`](Handler::socket) hangs up or fails; `true`
    /// then takes it out of the queue without waiting for the head.
    ///
    /// Must not block. The default is `false`.
    fn is_abandoned(&self) -> bool {
        false
    }

    /// The [`Key`] the admission policy counts this handler by (a user, a
    /// tenant, a request class). Called once, at submission.
    ///
    /// The default is `None`: the key is the [`source`](Handler::source)
    /// grouped by [`Key::from_source`] with the manager's
    /// [`ipv6_prefix`](crate::ManagerBuilder::ipv6_prefix), or no key
    /// without a source.
    fn key(&self) -> Option<Key> {
        None
    }

    /// The client's socket, for the manager to watch while the handler
    /// waits. Called once at submission, and only when the handler has to
    /// wait (every running slot taken).
    ///
    /// A watched client that shuts down its write side, closes, or resets
    /// while waiting makes the manager ask
    /// [`is_abandoned`](Handler::is_abandoned) at once (from its watcher
    /// thread, or a worker about to wait, on a socket it must not read
    /// from: a peek); `true` drops the
    /// handler and frees its place in the queue within milliseconds. The
    /// socket must stay open as long as the handler waits.
    ///
    /// The default is `None`: nothing is watched.
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// Tells the handler it will not be run, and why, so a protocol can say
    /// so to its client before the connection closes (`ERR busy`,
    /// `ERR unavailable`). The handler is dropped afterwards.
    ///
    /// Called on the thread that made the decision: the manager's watcher
    /// (a queue deadline passed), a worker (a parked handler evicted or
    /// refused on its return) or the thread that called
    /// [`shutdown`](crate::Manager::shutdown). A handler refused at
    /// [`submit`](crate::Manager::submit) comes back to the submitter
    /// instead, which may call this itself ([`Refused::notify`](crate::Refused::notify)).
    /// It should therefore be quick and must not block for long. The
    /// default does nothing.
    fn refused(self, reason: Refusal) {
        let _ = reason;
    }
}

/// How a [`Handler::serve`] ended.
#[derive(Debug)]
pub enum Served<H> {
    /// The work is done: the handler is dropped and its slot freed.
    Done,
    /// Park the handler until its client sends more; see [`Handler::serve`].
    Park(H),
}

/// A [`Handler`] made from a closure; see [`handler_fn`].
pub struct FnHandler<F> {
    work: F,
    source: Option<IpAddr>,
    key: Option<Key>,
    refused: Option<Box<dyn FnOnce(Refusal) + Send>>,
}

/// Turns a closure into a [`Handler`], for tests, benches and one-off work.
///
/// ```
/// use filesrv::{handler_fn, Handler};
///
/// let h = handler_fn(|_ctx| Ok(())).with_source("127.0.0.1".parse().unwrap());
/// assert_eq!(h.source(), Some("127.0.0.1".parse().unwrap()));
/// ```
pub fn handler_fn<F>(work: F) -> FnHandler<F>
where
    F: FnOnce(&HandlerContext) -> io::Result<()> + Send + 'static,
{
    FnHandler {
        work,
        source: None,
        key: None,
        refused: None,
    }
}

impl<F> FnHandler<F> {
    /// Sets the source address the handler reports (default: none).
    pub fn with_source(mut self, source: IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    /// Sets the key the handler gives (default: none, so its source's).
    pub fn with_key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets what to do if the handler is refused instead of run (see
    /// [`Handler::refused`]): typically to tell the client why, through
    /// a second handle on its connection. Default: nothing.
    ///
    /// ```
    /// use std::io::Write;
    /// use std::net::{TcpListener, TcpStream};
    /// use std::sync::Arc;
    /// use filesrv::handler_fn;
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let _client = TcpStream::connect(listener.local_addr()?)?;
    /// let conn = Arc::new(listener.accept()?.0);
    /// let told = conn.clone();
    /// let handler = handler_fn(move |_ctx| (&*conn).write_all(b"hello\n"))
    ///     .on_refused(move |reason| {
    ///         let _ = writeln!(&*told, "busy: {reason}");
    ///     });
    /// # drop(handler);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn on_refused(mut self, refused: impl FnOnce(Refusal) + Send + 'static) -> Self {
        self.refused = Some(Box::new(refused));
        self
    }
}

impl<F> Handler for FnHandler<F>
where
    F: FnOnce(&HandlerContext) -> io::Result<()> + Send + 'static,
{
    fn run(self, ctx: &HandlerContext) -> io::Result<()> {
        (self.work)(ctx)
    }

    fn source(&self) -> Option<IpAddr> {
        self.source
    }

    fn key(&self) -> Option<Key> {
        self.key
    }

    fn refused(self, reason: Refusal) {
        if let Some(refused) = self.refused {
            refused(reason);
        }
    }
}

impl<F> fmt::Debug for FnHandler<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnHandler")
            .field("source", &self.source)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// How urgently a shutdown asks a running handler to stop; passed to the
/// hook registered with [`HandlerContext::on_stop`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Stop {
    /// The grace period began: finish the request in progress, then stop.
    /// A handler idle between requests should stop now.
    Graceful,
    /// The grace period is over: stop at once (e.g. shut the socket down).
    Now,
}

/// A stop hook, as registered with [`HandlerContext::on_stop`].
pub(crate) type StopHook = Box<dyn Fn(Stop) + Send + Sync>;

/// What a running handler knows about its place in the manager.
///
/// Passed to [`Handler::run`]. Cheap to use; all methods are non-blocking.
pub struct HandlerContext<'a> {
    pub(crate) info: RunningInfo,
    pub(crate) slot: &'a Slot,
    pub(crate) signals: &'a Signals,
}

impl HandlerContext<'_> {
    /// The handler's id, unique within its manager, in order of submission.
    pub fn id(&self) -> u64 {
        self.info.id
    }

    /// The source the handler reported, if any.
    pub fn source(&self) -> Option<IpAddr> {
        self.info.source
    }

    /// When the handler was queued.
    pub fn queued_at(&self) -> Instant {
        self.info.queued_at
    }

    /// When the handler was started.
    pub fn started_at(&self) -> Instant {
        self.info.started_at
    }

    /// The most urgent stop requested so far, if a shutdown has begun.
    pub fn stop_requested(&self) -> Option<Stop> {
        self.signals.phase.get()
    }

    /// Registers `hook` to be called when a shutdown asks this handler to
    /// stop: once with [`Stop::Graceful`] when the grace period begins, and
    /// once with [`Stop::Now`] if the handler is still running when it ends.
    /// If a stop was already requested, `hook` is called at once, on this
    /// thread, with the most urgent one so far.
    ///
    /// The hook runs on the thread calling
    /// [`shutdown`](crate::Manager::shutdown) and must not block; typically
    /// it shuts down a socket so that a blocked read or write returns.
    /// A later registration replaces an earlier one.
    pub fn on_stop(&self, hook: impl Fn(Stop) + Send + Sync + 'static) {
        self.slot.set_stop_hook(Box::new(hook), &self.signals.phase);
    }

    /// Tells the manager the handler is idle between requests (waiting for
    /// its client), so the busy idle timeout applies to it while others
    /// wait. Cheap: a brief lock of its own slot, plus a wake-up of the
    /// manager's watcher when handlers are waiting.
    ///
    /// A handler that never calls this counts as busy: only the busy
    /// session limit applies to it.
    pub fn set_idle(&self) {
        self.slot.set_idle(true);
        self.signals.room_may_be_due();
    }

    /// Tells the manager the handler is busy with a request; undoes
    /// [`set_idle`](HandlerContext::set_idle). A brief lock of its slot.
    pub fn set_busy(&self) {
        self.slot.set_idle(false);
    }

    /// Registers `hook` to be called, once, when the manager asks this
    /// handler to make room for a waiting one (see
    /// [`ManagerBuilder::busy_idle_timeout`](crate::ManagerBuilder::busy_idle_timeout)
    /// and
    /// [`ManagerBuilder::busy_session_limit`](crate::ManagerBuilder::busy_session_limit)).
    /// If it was already asked, `hook` is called at once, on this thread.
    ///
    /// The hook runs on the manager's watcher thread and must not block;
    /// typically it wakes a blocked read if the handler is idle. The
    /// handler then leaves the way its protocol says
    /// ([`make_room_requested`](HandlerContext::make_room_requested) tells
    /// it why). A later registration replaces an earlier one.
    pub fn on_make_room(&self, hook: impl Fn(MakeRoom) + Send + Sync + 'static) {
        self.slot.set_room_hook(Box::new(hook));
    }

    /// Whether the manager asked this handler to make room, and why.
    pub fn make_room_requested(&self) -> Option<MakeRoom> {
        self.slot.room_requested()
    }
}

impl fmt::Debug for HandlerContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerContext")
            .field("id", &self.info.id)
            .field("source", &self.info.source)
            .field("stop_requested", &self.stop_requested())
            .finish_non_exhaustive()
    }
}

/// Object-safe twin of [`Handler`], behind [`BoxHandler`].
trait DynHandler: Send {
    fn run_boxed(self: Box<Self>, ctx: &HandlerContext) -> io::Result<()>;
    fn serve_boxed(self: Box<Self>, ctx: &HandlerContext) -> io::Result<Served<BoxHandler>>;
    fn source(&self) -> Option<IpAddr>;
    fn is_abandoned(&self) -> bool;
    fn key(&self) -> Option<Key>;
    fn socket(&self) -> Option<BorrowedFd<'_>>;
    fn refused_boxed(self: Box<Self>, reason: Refusal);
}

impl<H: Handler> DynHandler for H {
    fn run_boxed(self: Box<Self>, ctx: &HandlerContext) -> io::Result<()> {
        (*self).run(ctx)
    }
    fn serve_boxed(self: Box<Self>, ctx: &HandlerContext) -> io::Result<Served<BoxHandler>> {
        Ok(match (*self).serve(ctx)? {
            Served::Done => Served::Done,
            Served::Park(handler) => Served::Park(BoxHandler::new(handler)),
        })
    }
    fn source(&self) -> Option<IpAddr> {
        Handler::source(self)
    }
    fn is_abandoned(&self) -> bool {
        Handler::is_abandoned(self)
    }
    fn key(&self) -> Option<Key> {
        Handler::key(self)
    }
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        Handler::socket(self)
    }
    fn refused_boxed(self: Box<Self>, reason: Refusal) {
        (*self).refused(reason);
    }
}

/// Any [`Handler`], boxed, so one manager can run handlers of several types.
///
/// ```
/// use filesrv::{BoxHandler, Manager, ManagerBuilder, handler_fn};
///
/// # fn main() -> std::io::Result<()> {
/// let manager: Manager<BoxHandler> = ManagerBuilder::new(2).build()?;
/// manager.submit(BoxHandler::new(handler_fn(|_| Ok(())))).unwrap();
/// # Ok(())
/// # }
/// ```
pub struct BoxHandler(Box<dyn DynHandler>);

impl BoxHandler {
    /// Boxes `handler`.
    pub fn new(handler: impl Handler) -> BoxHandler {
        BoxHandler(Box::new(handler))
    }
}

impl Handler for BoxHandler {
    fn run(self, ctx: &HandlerContext) -> io::Result<()> {
        self.0.run_boxed(ctx)
    }
    fn serve(self, ctx: &HandlerContext) -> io::Result<Served<Self>> {
        self.0.serve_boxed(ctx)
    }
    fn source(&self) -> Option<IpAddr> {
        self.0.source()
    }
    fn is_abandoned(&self) -> bool {
        self.0.is_abandoned()
    }
    fn key(&self) -> Option<Key> {
        self.0.key()
    }
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        self.0.socket()
    }
    fn refused(self, reason: Refusal) {
        self.0.refused_boxed(reason);
    }
}

impl fmt::Debug for BoxHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxHandler")
            .field("source", &self.0.source())
            .finish_non_exhaustive()
    }
}
