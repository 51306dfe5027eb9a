//! The manager's queue under races and misuse: counts that add up at every
//! quiet moment, shutdown that sees every waiter, panics that cost nothing
//! but the panicking handler, and misuse that fails instead of hanging.
//! Each test loops over a race a bounded number of times.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded};
use filesrv::admission::{Arrival, Decision, MaxWaiting, Unbounded};
use filesrv::{
    Acceptor, Admission, Handler, HandlerContext, MakeRoom, Manager, ManagerBuilder, Refusal, Stats,
};

use crate::support::{LIMIT, rss_kib, run_alone};

/// Queues every arrival with a deadline that has already passed.
struct PastDeadline;

impl Admission for PastDeadline {
    fn decide(&mut self, arrival: &Arrival) -> Decision {
        Decision::QueueUntil(arrival.now)
    }
}

/// Where every submitted handler is: `Stats` promises it equals
/// `submitted` in every snapshot.
pub(super) fn accounted(stats: &Stats) -> u64 {
    (stats.running + stats.waiting + stats.parked) as u64
        + stats.completed
        + stats.failed
        + stats.panicked
        + stats.abandoned
        + stats.refused_total()
}

/// A handler that reports whether it ran and how it was refused.
struct Counted {
    ran: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    abandoned: bool,
}

impl Handler for Counted {
    fn run(self, _: &HandlerContext) -> io::Result<()> {
        self.ran.fetch_add(1, SeqCst);
        Ok(())
    }
    fn is_abandoned(&self) -> bool {
        self.abandoned
    }
    fn refused(self, _: Refusal) {
        self.refused.fetch_add(1, SeqCst);
    }
}

#[test]
fn a_deadline_already_past_keeps_the_counts_whole() {
    let manager: Manager<_, _> = ManagerBuilder::new(1)
        .admission(PastDeadline)
        .build()
        .unwrap();
    let started = Instant::now();
    for _ in 0..2000 {
        let (refused, ran) = (Arc::default(), Arc::default());
        let handler = Counted {
            ran,
            refused,
            abandoned: false,
        };
        manager.submit(handler).map_err(|_| ()).unwrap();
        let stats = manager.stats();
        assert!(
            stats.running <= 1 && stats.waiting <= 1,
            "impossible counts {stats:?}"
        );
        assert!(manager.wait_idle_timeout(LIMIT), "wait_idle hung");
        assert!(started.elapsed() < LIMIT);
    }
}

#[test]
fn counts_add_up_as_soon_as_wait_idle_returns() {
    let manager: Manager<_, _> = ManagerBuilder::new(2).admission(Unbounded).build().unwrap();
    let (ran, refused) = (Arc::new(AtomicUsize::new(0)), Arc::default());
    for round in 0..3000 {
        let handler = Counted {
            ran: ran.clone(),
            refused: Arc::clone(&refused),
            abandoned: round % 2 == 0,
        };
        manager.submit(handler).map_err(|_| ()).unwrap();
        assert!(manager.wait_idle_timeout(LIMIT));
        let stats = manager.stats();
        assert_eq!(
            accounted(&stats),
            stats.submitted,
            "round {round}: {stats:?}"
        );
    }
}

#[test]
fn a_waiter_at_shutdown_is_refused_or_counted_as_running() {
    for round in 0..300 {
        let manager: Manager<_, _> = ManagerBuilder::new(1).admission(Unbounded).build().unwrap();
        // Handlers that start after the shutdown began see a stop at once.
        let late = Arc::new(AtomicUsize::new(0));
        let go = Arc::new(Barrier::new(2));
        let (blocker_go, blocker_late) = (go.clone(), late.clone());
        manager
            .submit(job(move |ctx: &HandlerContext| {
                blocker_go.wait();
                if ctx.stop_requested().is_some() {
                    blocker_late.fetch_add(1, SeqCst);
                }
            }))
            .map_err(|_| ())
            .unwrap();
        for _ in 0..3 {
            let late = late.clone();
            manager
                .submit(job(move |ctx: &HandlerContext| {
                    if ctx.stop_requested().is_some() {
                        late.fetch_add(1, SeqCst);
                    }
                }))
                .map_err(|_| ())
                .unwrap();
        }
        go.wait();
        let report = manager.shutdown(Duration::from_secs(5));
        assert!(
            late.load(SeqCst) <= report.running_at_start,
            "round {round}: {} handlers started after shutdown began, {} counted running",
            late.load(SeqCst),
            report.running_at_start
        );
    }
}

/// A closure run as a handler, so handlers of one manager can differ.
struct Job(Box<dyn FnOnce(&HandlerContext) + Send>);

impl Handler for Job {
    fn run(self, ctx: &HandlerContext) -> io::Result<()> {
        (self.0)(ctx);
        Ok(())
    }
}

fn job(f: impl FnOnce(&HandlerContext) + Send + 'static) -> Job {
    Job(Box::new(f))
}

#[test]
fn refused_waiting_counts_every_waiter_refused_by_shutdown() {
    for _ in 0..20 {
        let manager: Manager<_, _> = ManagerBuilder::new(2).admission(Unbounded).build().unwrap();
        let (ran, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        for _ in 0..2000 {
            let handler = Counted {
                ran: ran.clone(),
                refused: refused.clone(),
                abandoned: false,
            };
            manager.submit(handler).map_err(|_| ()).unwrap();
        }
        let report = manager.shutdown(LIMIT);
        assert_eq!(report.refused_waiting, refused.load(SeqCst) as u64);
        assert_eq!(ran.load(SeqCst) + refused.load(SeqCst), 2000);
    }
}

/// Abandoned while waiting, with a `Drop` that panics.
struct PanicsOnDrop;

impl Handler for PanicsOnDrop {
    fn run(self, _: &HandlerContext) -> io::Result<()> {
        Ok(())
    }
    fn is_abandoned(&self) -> bool {
        true
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("drop panics");
    }
}

enum Either {
    Bad(PanicsOnDrop),
    Good(Box<dyn FnOnce() + Send>),
}

impl Handler for Either {
    fn run(self, _: &HandlerContext) -> io::Result<()> {
        match self {
            Either::Bad(bad) => bad.run_unused(),
            Either::Good(f) => {
                f();
                Ok(())
            }
        }
    }
    fn is_abandoned(&self) -> bool {
        matches!(self, Either::Bad(_))
    }
}

impl PanicsOnDrop {
    fn run_unused(self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn an_abandoned_handler_that_panics_in_drop_keeps_its_worker() {
    let manager: Manager<_, _> = ManagerBuilder::new(1).admission(Unbounded).build().unwrap();
    // The bad one waits behind a holder: only a handler that waited is
    // asked whether it was abandoned.
    let (started, is_started) = bounded(1);
    let (release, released) = bounded::<()>(1);
    let holder = move || {
        started.send(()).unwrap();
        let _ = released.recv_timeout(LIMIT);
    };
    manager
        .submit(Either::Good(Box::new(holder)))
        .map_err(|_| ())
        .unwrap();
    is_started.recv_timeout(LIMIT).unwrap();
    manager
        .submit(Either::Bad(PanicsOnDrop))
        .map_err(|_| ())
        .unwrap();
    release.send(()).unwrap();
    let (done, finished) = bounded(1);
    manager
        .submit(Either::Good(Box::new(move || done.send(()).unwrap())))
        .map_err(|_| ())
        .unwrap();
    assert_eq!(finished.recv_timeout(LIMIT), Ok(()), "the worker died");
    assert!(manager.wait_idle_timeout(LIMIT));
    let stats = manager.stats();
    assert_eq!((stats.abandoned, stats.completed), (1, 2));
}

/// Panics on its first decision, then queues.
/// Panics on its first `n` arrivals, then queues every one.
struct PanicsFirst(usize);

impl Admission for PanicsFirst {
    fn decide(&mut self, _: &Arrival) -> Decision {
        if self.0 > 0 {
            self.0 -= 1;
            panic!("policy panics");
        }
        Decision::Queue
    }
}

#[test]
fn a_panicking_policy_leaves_the_counts_whole() {
    let manager = Arc::new(
        ManagerBuilder::new(1)
            .admission(PanicsFirst(1))
            .build()
            .unwrap(),
    );
    let submitter = manager.clone();
    let result = thread::spawn(move || submitter.submit(job(|_| ())).is_ok()).join();
    assert!(result.is_err(), "the policy's panic reaches the caller");
    manager.submit(job(|_| ())).map_err(|_| ()).unwrap();
    assert!(manager.wait_idle_timeout(LIMIT));
    let stats = manager.stats();
    assert_eq!(stats.submitted, 1, "{stats:?}");
    assert_eq!(accounted(&stats), stats.submitted);
}

/// Says hello to each client it accepts.
struct Greeter(TcpListener);

impl Acceptor<Job> for Greeter {
    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    fn accept(&self) -> io::Result<Option<Job>> {
        match self.0.accept() {
            Ok((mut stream, _)) => Ok(Some(job(move |_| {
                let _ = stream.write_all(b"hello\n");
            }))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Greeter {
    /// A non-blocking listener on a free loopback port, and its address.
    fn bind() -> (Greeter, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        (Greeter(listener), addr)
    }
}

/// Connects to `addr` and reads until the server closes (at most
/// [`LIMIT`]).
fn greeted(addr: SocketAddr) -> io::Result<String> {
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(LIMIT)).unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).map(|_| reply)
}

#[test]
fn a_policy_panicking_on_accepted_handlers_costs_no_thread() {
    // No caller to hand the panic to: each handler is dropped unrun and
    // uncounted, and the thread that accepted it (an idle worker or the
    // accepting thread) goes on. Two panics would otherwise end both.
    let (greeter, addr) = Greeter::bind();
    let manager = ManagerBuilder::new(1)
        .admission(PanicsFirst(2))
        .build_with_acceptor(greeter)
        .unwrap();
    assert_eq!(greeted(addr).unwrap(), "");
    assert_eq!(greeted(addr).unwrap(), "");
    assert_eq!(greeted(addr).expect("nobody accepts any more"), "hello\n");
    assert!(manager.wait_idle_timeout(LIMIT));
    let stats = manager.stats();
    assert_eq!((stats.submitted, stats.completed), (1, 1), "{stats:?}");
}

#[test]
fn shutdown_from_inside_a_handler_panics_instead_of_hanging() {
    let manager = Arc::new(
        ManagerBuilder::new(1)
            .admission(MaxWaiting(4))
            .build::<Job>()
            .unwrap(),
    );
    let (in_shutdown, stopping) = bounded(1);
    let (stopped_tx, stopped) = bounded::<Result<(), ()>>(1);
    let inner = Arc::downgrade(&manager);
    manager
        .submit(job(move |ctx: &HandlerContext| {
            let (hook_tx, hook) = bounded(1);
            ctx.on_stop(move |_| {
                let _ = hook_tx.try_send(());
            });
            let _ = in_shutdown.send(());
            // Wait until another thread is inside shutdown, then call it.
            let _ = hook.recv_timeout(LIMIT);
            let manager = inner.upgrade().expect("the manager lives");
            let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                manager.shutdown(Duration::ZERO);
            }));
            let _ = stopped_tx.send(called.map_err(|_| ()));
        }))
        .map_err(|_| ())
        .unwrap();
    stopping.recv_timeout(LIMIT).unwrap();
    let done = shutdown_elsewhere(&manager);
    assert_eq!(
        stopped.recv_timeout(LIMIT),
        Ok(Err(())),
        "shutdown inside a handler must panic"
    );
    assert_eq!(done.recv_timeout(LIMIT), Ok(()), "the outer shutdown hung");
}

#[test]
fn a_stop_hook_may_ask_what_runs() {
    let manager = Arc::new(
        ManagerBuilder::new(1)
            .admission(MaxWaiting(4))
            .build::<Job>()
            .unwrap(),
    );
    let seen = Arc::new(Mutex::new(None));
    let (running_tx, running) = bounded(1);
    let (weak, hook_seen) = (Arc::downgrade(&manager), seen.clone());
    manager
        .submit(job(move |ctx: &HandlerContext| {
            let (stop_tx, stop) = unbounded();
            ctx.on_stop(move |_| {
                if let Some(manager) = weak.upgrade() {
                    *hook_seen.lock().unwrap() = Some(manager.running().len());
                }
                let _ = stop_tx.send(());
            });
            let _ = running_tx.send(());
            let _ = stop.recv_timeout(LIMIT);
        }))
        .map_err(|_| ())
        .unwrap();
    running.recv_timeout(LIMIT).unwrap();
    let done = shutdown_elsewhere(&manager);
    assert_eq!(
        done.recv_timeout(LIMIT),
        Ok(()),
        "shutdown hung in the hook"
    );
    assert_eq!(*seen.lock().unwrap(), Some(1));
}

/// Queues the first arrival without a deadline, every later one with a
/// deadline that has already passed.
struct PastAfterFirst(bool);

impl Admission for PastAfterFirst {
    fn decide(&mut self, arrival: &Arrival) -> Decision {
        if std::mem::replace(&mut self.0, true) {
            Decision::QueueUntil(arrival.now)
        } else {
            Decision::Queue
        }
    }
}

/// A 1 KiB handler that counts the live instances of its kind; the
/// first one holds the slot until released.
struct Heavy {
    live: Arc<AtomicUsize>,
    hold: Option<(
        crossbeam_channel::Sender<()>,
        crossbeam_channel::Receiver<()>,
    )>,
    _payload: [u8; 1024],
}

impl Heavy {
    fn new(live: &Arc<AtomicUsize>) -> Heavy {
        live.fetch_add(1, SeqCst);
        Heavy {
            live: live.clone(),
            hold: None,
            _payload: [0; 1024],
        }
    }
}

impl Drop for Heavy {
    fn drop(&mut self) {
        self.live.fetch_sub(1, SeqCst);
    }
}

impl Handler for Heavy {
    fn run(mut self, _: &HandlerContext) -> io::Result<()> {
        if let Some((started, release)) = self.hold.take() {
            started.send(()).unwrap();
            let _ = release.recv_timeout(LIMIT);
        }
        Ok(())
    }
}

/// Run alone in a child process by the test below, so that no other test
/// moves the resident set it measures.
#[test]
#[ignore = "run in its own process by expired_waiters_free_their_memory_when_they_leave"]
fn expiry_at_a_high_arrival_rate_alone() {
    // One slot held, four places, deadlines already past: every waiter
    // expires at once. What the queue holds must stay O(max_waiting)
    // however many arrive, not grow until a worker reaches it.
    let manager = ManagerBuilder::new(1)
        .admission(MaxWaiting(4).and(PastAfterFirst(false)))
        .build::<Heavy>()
        .unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    let (started_tx, started) = bounded(1);
    let (release_tx, release) = bounded::<()>(0);
    let mut holder = Heavy::new(&live);
    holder.hold = Some((started_tx, release));
    manager.submit(holder).map_err(|_| ()).unwrap();
    started.recv_timeout(LIMIT).unwrap();
    let before = rss_kib();
    // Until enough were admitted (and so expired): on a loaded machine
    // the watcher may get little CPU while this loop runs, so a refused
    // submission yields the processor to it instead of spinning on.
    // Bounded in count and time.
    let mut admitted = 0;
    let began = Instant::now();
    for _ in 0..50_000_000 {
        if manager.submit(Heavy::new(&live)).is_ok() {
            admitted += 1;
        } else {
            thread::yield_now();
        }
        if admitted > 2000 || began.elapsed() > LIMIT {
            break;
        }
    }
    let grown = rss_kib().saturating_sub(before);
    drop(release_tx);
    assert!(manager.wait_idle_timeout(LIMIT));
    assert!(admitted > 1000, "only {admitted} admitted");
    assert!(
        grown < 10 * 1024,
        "RSS grew by {grown} KiB for {admitted} admitted"
    );
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn expired_waiters_free_their_memory_when_they_leave() {
    run_alone("core::races::expiry_at_a_high_arrival_rate_alone");
}

/// A handler that holds its slot until asked to make room, and reports
/// why; `idle` says whether it reports itself idle first.
fn holds_until_asked(
    idle: bool,
    started: crossbeam_channel::Sender<()>,
    asked: crossbeam_channel::Sender<(Option<MakeRoom>, Option<MakeRoom>)>,
) -> Job {
    job(move |ctx: &HandlerContext| {
        let (room_tx, room) = bounded(1);
        ctx.on_make_room(move |why| {
            let _ = room_tx.try_send(why);
        });
        if idle {
            ctx.set_idle();
        }
        started.send(()).unwrap();
        let why = room.recv_timeout(LIMIT).ok();
        let _ = asked.send((why, ctx.make_room_requested()));
    })
}

#[test]
fn the_manager_asks_a_running_handler_to_make_room_only_while_one_waits() {
    for (idle, want) in [(true, MakeRoom::IdleTooLong), (false, MakeRoom::RanTooLong)] {
        // An idle handler under the idle limit alone; a busy one (it
        // never reports idle) under the session limit.
        let limit = Some(Duration::from_millis(200));
        let manager = ManagerBuilder::new(1)
            .admission(MaxWaiting(4))
            .busy_idle_timeout(limit)
            .busy_session_limit(limit.filter(|_| !idle))
            .build::<Job>()
            .unwrap();
        let (started_tx, started) = bounded(1);
        let (asked_tx, asked) = bounded(1);
        manager
            .submit(holds_until_asked(idle, started_tx, asked_tx))
            .map_err(|_| ())
            .unwrap();
        started.recv_timeout(LIMIT).unwrap();
        // Past its limit with nobody waiting: not asked (a timed wait for
        // a known deadline).
        assert!(asked.recv_timeout(Duration::from_millis(600)).is_err());
        manager.submit(job(|_| ())).map_err(|_| ()).unwrap();
        let (why, requested) = asked.recv_timeout(LIMIT).unwrap();
        assert_eq!((why, requested), (Some(want), Some(want)), "idle: {idle}");
        assert!(manager.wait_idle_timeout(LIMIT));
    }
}

/// Starts `manager.shutdown` (30 s grace) on another thread; the receiver
/// hears when it returns.
fn shutdown_elsewhere<Q: Handler, S: Admission>(
    manager: &Arc<Manager<Q, S>>,
) -> crossbeam_channel::Receiver<()> {
    let (done_tx, done) = bounded(1);
    let closer = manager.clone();
    thread::spawn(move || {
        closer.shutdown(Duration::from_secs(30));
        let _ = done_tx.send(());
    });
    done
}

#[test]
fn a_worker_retiring_after_it_accepted_leaves_the_connection_to_one_that_stays() {
    // After the bound shrinks, the workers waiting on the acceptor are
    // surplus: one a connection wakes accepts it, finds itself past the
    // bound and retires. The connection it queued must still start at
    // once, on a worker that stays (it waited for the next connection).
    let (greeter, addr) = Greeter::bind();
    let manager = ManagerBuilder::new(4).build_with_acceptor(greeter).unwrap();
    let hello = |n: usize| {
        let reply = greeted(addr).unwrap_or_else(|e| panic!("client {n}: {e}"));
        assert_eq!(reply, "hello\n", "client {n}");
    };
    // Each worker has served once and gone back to the acceptor.
    (0..8).for_each(hello);
    assert!(manager.wait_idle_timeout(LIMIT));
    manager.set_max_running(1).unwrap();
    (8..14).for_each(hello);
    assert!(manager.wait_idle_timeout(LIMIT));
    let stats = manager.stats();
    assert_eq!((stats.submitted, stats.completed), (14, 14), "{stats:?}");
}

#[test]
fn a_connection_accepted_by_a_worker_rung_for_another_handler_starts_on_a_sleeping_one() {
    // A worker rung for a submitted handler can find a connection ready in
    // the same wake-up and accept it. It runs the submitted one (the head
    // of the queue), so the connection needs another worker: one sleeping
    // on the acceptor must be rung for it, not left asleep while the
    // connection waits for the submitted handler to end. Each round makes
    // the submission and the connection meet; the submitted handler is
    // held until the connection was served or its client gave up.
    let (greeter, addr) = Greeter::bind();
    let manager = ManagerBuilder::new(3).build_with_acceptor(greeter).unwrap();
    // Bounded in count and in time: a slow machine runs fewer rounds,
    // rather than failing for its slowness.
    let began = Instant::now();
    for round in (0..2000).take_while(|_| began.elapsed() < 3 * LIMIT) {
        let (release, held) = bounded::<()>(1);
        let meet = Arc::new(Barrier::new(2));
        let client = {
            let meet = meet.clone();
            thread::spawn(move || {
                let mut client = TcpStream::connect_timeout(&addr, LIMIT).unwrap();
                client.set_read_timeout(Some(LIMIT)).unwrap();
                meet.wait();
                let mut reply = String::new();
                client.read_to_string(&mut reply).map(|_| reply)
            })
        };
        meet.wait();
        // Held past the client's patience: a connection queued behind it
        // is never served in time.
        manager
            .submit(job(move |_| {
                let _ = held.recv_timeout(2 * LIMIT);
            }))
            .unwrap();
        let reply = client.join().unwrap();
        let _ = release.send(());
        assert_eq!(
            reply.ok().as_deref(),
            Some("hello\n"),
            "round {round}: the connection waited behind the submitted handler"
        );
        assert!(manager.wait_idle_timeout(LIMIT));
    }
}
